"""The export pipeline: checkpoint -> verified bundle, written to a temporary directory and renamed
into place only when every stage has passed.

Stages (each announced by `progress`): load -> onnx (image, text) -> assets (codebook, tokenizer)
-> parity fp32 (ONNX Runtime CPU vs torch: max |Δ| ≤ 1e-4, min cosine ≥ 0.99999) -> int8 (optional:
the reference (real inputs and the fp32 graphs' embeddings of them, reference.npz), quantise, min
cosine ≥ 0.99 to the reference by the check the server repeats at start (runtime/selfcheck.py),
Recall@1 change on calibration data) -> tensorrt (optional) -> manifest (checksums, fingerprint,
this machine's CPU) -> verify (load it back with `runtime.bundle`) -> publish.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from export.onnx import EXPORTER, ImageGraph, TextGraph, export_graph, image_specs, text_specs
from export.parity import Comparison, compare, image_inputs, merge, real_images, sentences, text_inputs
from export.quantize import AttentionShape, quantize_graph
from runtime.bundle import (
    MANIFEST,
    SCHEMA,
    GraphSpec,
    ImageSpec,
    Manifest,
    ParityRecord,
    ReferenceSpec,
    TextSpec,
    checksums,
    fingerprint,
    load_bundle,
)
from runtime.cpu import cpu_isa, needed_session_config
from runtime.selfcheck import Reference, check_engine
from train.checkpoint import load_model
from train.config import to_dict
from train.data.datasets import ImageLoader, InputPolicy
from train.data.tokenizer import TextEncoder, text_encoder
from train.model import DualEncoder

FP32_ATOL, FP32_MIN_COSINE, INT8_MIN_COSINE = 1e-4, 0.99999, 0.99


class ExportError(RuntimeError):
    """A stage failed; nothing is left at the destination."""


@dataclass(frozen=True)
class SessionGraph:
    """An ONNX Runtime session as `runtime.selfcheck` runs it (the server's engines look the same)."""

    graph: str  # bundle file
    session: ort.InferenceSession

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    opset: int = 17
    max_batch: int = 32
    int8: bool = False
    tensorrt: bool = False
    fp16: bool = True
    calibration: Path | None = None  # a JSONL of captioned images (its "dev" split, else all)
    force: bool = False


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _session(
    path: Path, disabled_optimizers: list[str] | None = None, config: dict[str, str] | None = None
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for key, value in needed_session_config(config or {}, cpu_isa()).items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(
        str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers
    )


def _torch_image(model: DualEncoder, pixels: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        emb, scores = ImageGraph(model)(torch.from_numpy(pixels))
    return [emb.numpy(), scores.numpy()]


def _torch_text(model: DualEncoder, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        emb, scores = TextGraph(model)(torch.from_numpy(ids), torch.from_numpy(mask))
    return [emb.numpy(), scores.numpy()]


def _compare_runs(cases: list[tuple[str, list[np.ndarray], list[np.ndarray]]]) -> tuple[Comparison, str]:
    """Merged comparison of (description, got, want) over both outputs of every case."""
    parts = [compare(g, w) for _, got, want in cases for g, w in zip(got, want, strict=True)]
    return merge(parts), "; ".join(d for d, _, _ in cases)


class Exporter:
    def __init__(self, opts: ExportOptions, progress: Callable[[str], None]) -> None:
        self.opts, self.progress = opts, progress
        self.parity: list[ParityRecord] = []
        self.graphs: dict[str, GraphSpec] = {}
        self.calibration_note: dict[str, Any] = {}
        self.int8_notes: dict[str, dict[str, Any]] = {}  # graph -> what quantize_graph did
        self.reference: ReferenceSpec | None = None  # with int8: reference.npz
        self.policy = InputPolicy()  # the model's crop and caption clean-up, once it is loaded

    def run(self) -> Path:
        o = self.opts
        if o.out.exists() and not o.force:
            raise ExportError(f"{o.out} exists; pass --force to replace it")
        o.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{o.out.name}.", dir=o.out.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary directory
        try:
            self.build(tmp)
            self.publish(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return o.out

    def build(self, tmp: Path) -> None:
        o = self.opts
        self.progress(f"load     {o.checkpoint}")
        model, ckpt = load_model(o.checkpoint)
        model.float().eval()
        self.policy = InputPolicy.of(model.cfg)
        text = text_encoder(model.cfg, _tokenizer(ckpt["tokenizer"]))
        self.stage_onnx(model, text, tmp)
        self.stage_assets(model, ckpt["tokenizer"], tmp)
        self.stage_parity(model, text, tmp)
        if o.int8:
            self.stage_int8(model, text, tmp)
        manifest = self.manifest(model, ckpt, text)
        manifest = replace(manifest, fingerprint=fingerprint(checksums(tmp), manifest.model_fields()))
        if o.tensorrt:
            from export.tensorrt_plans import build_engines  # tensorrt is imported lazily, there

            manifest = build_engines(manifest, tmp, o, self.progress)
        self.progress("manifest checksums and fingerprint")
        files = checksums(tmp)
        assert fingerprint(files, manifest.model_fields()) == manifest.fingerprint  # engines were keyed by it
        (tmp / MANIFEST).write_text(replace(manifest, files=files).sealed().to_json())
        self.progress("verify   reload with runtime.bundle")
        load_bundle(tmp)

    def stage_onnx(self, model: DualEncoder, text: TextEncoder, tmp: Path) -> None:
        o = self.opts
        s = model.cfg.image.image_size
        self.progress(f"onnx     image encoder (opset {o.opset})")
        inputs, outputs = image_specs(model)
        export_graph(ImageGraph(model), (torch.zeros(2, s, s, 3, dtype=torch.uint8),), inputs, outputs,
                     tmp / "image_encoder.onnx", o.opset)  # fmt: skip
        self.graphs["image"] = GraphSpec("image_encoder.onnx", "fp32", inputs, outputs)
        self.progress(f"onnx     text encoder (opset {o.opset})")
        inputs, outputs = text_specs(model)
        ids, mask = text.encode(["an example caption", "a longer example caption of some words"])
        export_graph(TextGraph(model), (ids, mask), inputs, outputs, tmp / "text_encoder.onnx", o.opset)
        self.graphs["text"] = GraphSpec("text_encoder.onnx", "fp32", inputs, outputs)

    def stage_assets(self, model: DualEncoder, tokenizer_json: str, tmp: Path) -> None:
        self.progress("assets   codebook.npy, tokenizer.json")
        np.save(tmp / "codebook.npy", model.codebook.vectors().detach().float().numpy().astype(np.float32))
        (tmp / "tokenizer.json").write_text(tokenizer_json)

    def _image_cases(self, model: DualEncoder, session: Any, reference: Callable) -> list:
        size = model.cfg.image.image_size
        real = _calibration_images(self.opts.calibration, self.opts.max_batch, self.policy, size)
        cases = []
        for what, pixels in image_inputs(model.cfg.image.image_size, self.opts.max_batch, real):
            cases.append((what, session.run(None, {"pixels": pixels}), reference(pixels)))
        return cases

    def _text_cases(self, model: DualEncoder, text: TextEncoder, session: Any, reference: Callable) -> list:
        cases = []
        for what, ids, mask in text_inputs(text, model.cfg.text.vocab_size, self.opts.max_batch):
            cases.append(
                (what, session.run(None, {"input_ids": ids, "attention_mask": mask}), reference(ids, mask))
            )
        return cases

    def stage_parity(self, model: DualEncoder, text: TextEncoder, tmp: Path) -> None:
        backend = f"onnxruntime-cpu {ort.__version__}"
        image_session, text_session = (
            _session(tmp / "image_encoder.onnx"),
            _session(tmp / "text_encoder.onnx"),
        )
        for key, cases in (
            ("image", self._image_cases(model, image_session, lambda p: _torch_image(model, p))),
            ("text", self._text_cases(model, text, text_session, lambda i, m: _torch_text(model, i, m))),
        ):  # fmt: skip
            result, what = _compare_runs(cases)
            ok = result.passes(FP32_ATOL, FP32_MIN_COSINE)
            self.parity.append(ParityRecord(key, backend, "torch fp32", what, result.n, result.max_abs_diff,
                                            result.min_cosine, ok))  # fmt: skip
            self.progress(
                f"parity   {key} fp32: max |Δ| {result.max_abs_diff:.2e}, min cosine {result.min_cosine:.7f}"
            )
            if not ok:
                raise ExportError(
                    f"{key} encoder parity failed: ONNX Runtime vs torch max |Δ| {result.max_abs_diff:.3g} "
                    f"(limit {FP32_ATOL}), min cosine {result.min_cosine:.7f} (limit {FP32_MIN_COSINE})"
                )

    def stage_reference(self, model: DualEncoder, text: TextEncoder, tmp: Path) -> Reference:
        """reference.npz: the real inputs lower-precision graphs are judged on (pictures, sentences)
        and the fp32 graphs' embeddings of them. Random token ids and noise pixels are left out:
        they drive activations far outside anything served, and only there does dynamic
        quantisation drift."""
        self.progress("int8     reference inputs and fp32 embeddings")
        o = self.opts
        real = _calibration_images(o.calibration, o.max_batch, self.policy, model.cfg.image.image_size)
        what_images, pixels = real_images(model.cfg.image.image_size, o.max_batch, real)
        what_texts, ids, mask = sentences(text)
        inputs = {"image": {"pixels": pixels}, "text": {"input_ids": ids, "attention_mask": mask}}
        embeddings = {
            key: _session(tmp / self.graphs[key].file).run(None, feeds)[0] for key, feeds in inputs.items()
        }
        arrays = {f"{key}.{name}": x for key, feeds in inputs.items() for name, x in feeds.items()}
        arrays |= {f"{key}.embedding": e for key, e in embeddings.items()}
        np.savez_compressed(tmp / "reference.npz", **arrays)
        self.reference = ReferenceSpec(
            "reference.npz",
            {"image": f"{what_images}, batch {len(pixels)}", "text": what_texts},
            {"int8": INT8_MIN_COSINE},
        )
        return Reference(self.reference, inputs, embeddings, text.pad_to_max_len)

    def stage_int8(self, model: DualEncoder, text: TextEncoder, tmp: Path) -> None:
        backend = f"onnxruntime-cpu {ort.__version__}"
        reference = self.stage_reference(model, text, tmp)
        for key, name in (("image", "image_encoder"), ("text", "text_encoder")):
            self.progress(f"int8     quantise {name}")
            t = model.cfg.text
            shape, feeds = None, None
            if key == "text":  # real sentences calibrate the FFN outlier channels (export/outliers.py)
                shape = AttentionShape(t.heads, t.width, t.depth)
                feeds = [
                    {"input_ids": ids, "attention_mask": mask}
                    for what, ids, mask in text_inputs(text, t.vocab_size, self.opts.max_batch)
                    if not what.startswith("random")
                ]
            self.int8_notes[key] = quantize_graph(
                tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx", shape, feeds
            )
            spec, notes = self.graphs[key], self.int8_notes[key]
            disabled, config = notes["disabled_optimizers"], notes["session_config"]
            self.graphs[f"{key}_int8"] = GraphSpec(
                f"{name}.int8.onnx", "int8", spec.inputs, spec.outputs, disabled, session_config=config
            )
            int8 = SessionGraph(f"{name}.int8.onnx", _session(tmp / f"{name}.int8.onnx", disabled, config))
            check = check_engine(int8, reference, key, "int8")  # the check the server repeats at start
            what = reference.spec.inputs[key]
            self.parity.append(ParityRecord(f"{key}_int8", backend, "onnxruntime fp32", what, check.rows,
                                            check.max_abs_diff, check.min_cosine, check.passed))  # fmt: skip
            self.progress(f"parity   {key} int8 vs fp32: min cosine {check.min_cosine:.5f}")
            if not check.passed:
                raise ExportError(check.describe())
        if self.opts.calibration is not None:
            self.calibration_note = _recall_change(tmp, text, model, self.opts, self.graphs, self.policy)
            self.progress(f"int8     Recall@1 change on calibration data: {self.calibration_note}")

    def manifest(self, model: DualEncoder, ckpt: dict, text: TextEncoder) -> Manifest:
        cfg, tok = model.cfg, text.tokenizer
        assert cfg.image.mean is not None and cfg.image.std is not None
        sha = hashlib.sha256(Path(self.opts.checkpoint).read_bytes()).hexdigest()
        return Manifest(
            schema=SCHEMA,
            fingerprint="",
            embed_dim=cfg.embed_dim,
            codebook_size=cfg.codebook_size,
            codebook_temp=cfg.codebook_temp,
            max_batch=self.opts.max_batch,
            image=ImageSpec(
                size_px=cfg.image.image_size,
                resize="bicubic",
                crop="center" if self.policy.center_crop else "none",
                layout="NHWC",
                channels="RGB",
                mean=list(cfg.image.mean),
                std=list(cfg.image.std),
            ),
            text=TextSpec(
                "tokenizer.json",
                cfg.text.max_len,
                _lowercases(tok),
                self.policy.clean_captions,
                text.pad_to_max_len,
                text.pad_id,
                tok.token_to_id("[CLS]") or 0,
                tok.token_to_id("[SEP]") or 0,
            ),
            graphs=dict(self.graphs),
            codebook="codebook.npy",
            files={},
            provenance={
                "checkpoint": Path(self.opts.checkpoint).name,
                "checkpoint_sha256": sha,
                "checkpoint_step": ckpt.get("step"),
                "checkpoint_metrics": ckpt.get("metrics"),
                "code_version": ckpt.get("code_version"),
                # how the codebook began: k-means of a corpus (then trained for checkpoint_step
                # steps: 0 for a model exported as it is), else random and trained
                "codebook": ckpt.get("codebook_fit") or {"init": "random"},
                "training_config": to_dict(ckpt["config"]),
                "exporter": EXPORTER,
                "opset": self.opts.opset,
                "versions": {
                    "tessera-embed": _version("tessera-embed"),
                    "torch": torch.__version__,
                    "onnx": _version("onnx"),
                    "onnxruntime": ort.__version__,
                },
                "int8_calibration": self.calibration_note,
                "int8_graphs": self.int8_notes,
                "exported_on": asdict(cpu_isa()),  # the parity records' CPU (runtime/cpu.py)
            },
            parity=list(self.parity),
            reference=self.reference,
        )

    def publish(self, tmp: Path) -> None:
        out = self.opts.out
        self.progress(f"publish  {out}")
        if out.exists():  # --force: swap, then remove the old bundle
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)


def _tokenizer(json_text: str):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json_text)


def _lowercases(tok: Any) -> bool:
    normalizer = tok.normalizer
    return normalizer is not None and normalizer.normalize_str("A") == "a"


def _calibration_images(
    path: Path | None, n: int, policy: InputPolicy, size_px: int
) -> list[Image.Image] | None:
    if path is None:
        return None
    loader = _calibration_loader(path, policy, size_px)
    return [loader(it.image) for it in _calibration_items(path, policy)[:n]]


def _calibration_loader(path: Path, policy: InputPolicy, size_px: int) -> Callable[[str], Image.Image]:
    """Opens a calibration image as training does (the model's crop; the views resize)."""
    return ImageLoader(path.parent / "images", size_px, center_crop=policy.center_crop)


def _calibration_items(path: Path, policy: InputPolicy) -> list:
    from train.data.captions import load_jsonl

    try:
        return load_jsonl(path, "dev", 30, clean=policy.clean_captions)
    except ValueError:
        return load_jsonl(path, None, 30, clean=policy.clean_captions)


def _recall_change(
    tmp: Path, text: TextEncoder, model: DualEncoder, opts: ExportOptions, graphs: dict[str, GraphSpec],
    policy: InputPolicy,
) -> dict[str, float]:  # fmt: skip
    """Recall@1 (both ways) of the fp32 and int8 graphs on up to 500 calibration images."""
    from train.data.augment import eval_view
    from train.data.captions import retrieval_set
    from train.evaluate import recall_at_k

    assert opts.calibration is not None
    rset = retrieval_set(_calibration_items(opts.calibration, policy)[:500])
    size = model.cfg.image.image_size
    loader = _calibration_loader(opts.calibration, policy, size)
    out: dict[str, float] = {}
    for suffix in ("", "_int8"):
        img_s, txt_s = (  # each with the session its graph asks for
            _session(tmp / graphs[f"{key}{suffix}"].file, graphs[f"{key}{suffix}"].disabled_optimizers,
                     graphs[f"{key}{suffix}"].session_config)
            for key in ("image", "text")
        )  # fmt: skip
        images = [np.asarray(eval_view(loader(r), size), dtype=np.uint8) for r in rset.images]
        img = np.concatenate(
            [img_s.run(None, {"pixels": np.stack(images[i : i + 32])})[0] for i in range(0, len(images), 32)]
        )
        caps = []
        for i in range(0, len(rset.captions), 64):
            ids, mask = text.encode(rset.captions[i : i + 64])
            caps.append(txt_s.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])
        m = recall_at_k(torch.from_numpy(img @ np.concatenate(caps).T), torch.tensor(rset.caption_image))
        tag = "int8" if suffix else "fp32"
        out[f"{tag}_i2t_r1"], out[f"{tag}_t2i_r1"] = m["i2t_r1"], m["t2i_r1"]
    out["delta_i2t_r1"] = out["int8_i2t_r1"] - out["fp32_i2t_r1"]
    out["delta_t2i_r1"] = out["int8_t2i_r1"] - out["fp32_t2i_r1"]
    out["n_images"] = float(len(rset.images))
    return out
