"""Export: a checkpoint trained here becomes a bundle whose ONNX Runtime outputs equal torch, that
loads without torch, refuses tampering, and is never left half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.parity import image_inputs, text_inputs
from export.pipeline import Exporter, ExportError, ExportOptions
from runtime.bundle import BundleError, load_bundle
from runtime.cpu import cpu_isa
from tests.bundles import rewritten
from tests.conftest import REPO_ROOT
from tests.helpers import small
from train.checkpoint import load_model
from train.data.tokenizer import TextEncoder
from train.loop import train

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(small("optim.max_steps=3"), out)
    return out / "best.pt"


@pytest.fixture(scope="module")
def bundle(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = subprocess.run(
        [sys.executable, "-m", "export", str(checkpoint), "--out", str(out), "--int8", "--max-batch", "8"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    for stage in ("load", "onnx", "parity", "int8", "manifest", "verify", "publish", "done"):
        assert f"] {stage}" in result.stdout, stage
    return out


TORCH_FREE_RUNNER = """
import json, sys
import numpy as np
import onnxruntime as ort
from runtime.bundle import load_bundle
bundle = load_bundle(sys.argv[1])
feeds = np.load(sys.argv[2])
out = {}
for key, names in (("image", ["pixels"]), ("text", ["input_ids", "attention_mask"])):
    s = ort.InferenceSession(str(bundle.graph_path(key)), providers=["CPUExecutionProvider"])
    emb, scores = s.run(None, {n: feeds[f"{key}_{n}"] for n in names})
    out[f"{key}_embedding"], out[f"{key}_scores"] = emb, scores
np.savez(sys.argv[3], **out)
print(json.dumps({"torch": "torch" in sys.modules, "train": "train" in sys.modules,
                  "export": "export" in sys.modules, "fingerprint": bundle.manifest.fingerprint}))
"""


def test_bundle_serves_torch_outputs_without_torch(bundle: Path, checkpoint: Path, tmp_path: Path) -> None:
    model, _ = load_model(checkpoint)
    manifest = load_bundle(bundle).manifest
    from tokenizers import Tokenizer

    text = TextEncoder(Tokenizer.from_file(str(bundle / "tokenizer.json")), manifest.text.max_len)
    _, pixels = image_inputs(manifest.image.size_px, 8)[1]  # random pixels, batch 8
    _, ids, mask = text_inputs(text, model.cfg.text.vocab_size, 8)[-1]  # ragged random ids
    np.savez(tmp_path / "feeds.npz", image_pixels=pixels, text_input_ids=ids, text_attention_mask=mask)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TORCH_FREE_RUNNER,
            str(bundle),
            str(tmp_path / "feeds.npz"),
            str(tmp_path / "out.npz"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(result.stdout)
    assert loaded == {"torch": False, "train": False, "export": False, "fingerprint": manifest.fingerprint}
    got = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
        txt = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
    pairs = [
        (got["image_embedding"], image.global_.numpy()),
        (got["image_scores"], model.code_scores(image.global_).detach().numpy()),
        (got["text_embedding"], txt.global_.numpy()),
        (got["text_scores"], model.code_scores(txt.global_).detach().numpy()),
    ]
    for onnx_out, torch_out in pairs:
        assert np.abs(onnx_out - torch_out).max() <= 1e-4
        cos = (
            (onnx_out * torch_out).sum(1)
            / np.linalg.norm(onnx_out, axis=1)
            / np.linalg.norm(torch_out, axis=1)
        )
        assert cos.min() >= 0.99999
    # the bundle's codebook is the model's, normalised
    codebook = np.load(bundle / "codebook.npy")
    assert codebook.shape == (manifest.codebook_size, manifest.embed_dim)
    assert np.allclose(np.linalg.norm(codebook, axis=1), 1, atol=1e-5)


def test_int8_reference_holds_real_inputs_and_their_fp32_embeddings(bundle: Path) -> None:
    """reference.npz: what the serving machine re-checks its int8 graphs against (runtime/selfcheck.py)."""
    m = load_bundle(bundle).manifest
    assert m.reference is not None and m.reference.min_cosine == {"int8": 0.99}
    assert m.reference.file in m.files  # checksummed like every other file
    size = m.image.size_px
    with np.load(bundle / m.reference.file) as ref:
        pixels, ids, mask = ref["image.pixels"], ref["text.input_ids"], ref["text.attention_mask"]
        assert pixels.shape == (8, size, size, 3) and pixels.dtype == np.uint8  # max batch 8
        assert ids.shape == mask.shape and ids.shape[0] == 5 and ids.dtype == np.int64
        assert m.reference.inputs == {
            "image": "rendered shapes, batch 8",
            "text": f"5 sentences padded to {ids.shape[1]}",
        }
        for key, feeds in (
            ("image", {"pixels": pixels}),
            ("text", {"input_ids": ids, "attention_mask": mask}),
        ):
            fp32 = ort.InferenceSession(str(bundle / m.graphs[key].file), providers=["CPUExecutionProvider"])
            assert np.allclose(ref[f"{key}.embedding"], fp32.run(None, feeds)[0], atol=1e-5)
    # the export judged int8 by the same check the server repeats: every row together, then five alone
    records = {p.graph: p for p in m.parity}
    assert records["image_int8"].n == 8 + 5 and records["text_int8"].n == 5 + 5
    assert records["text_int8"].inputs == m.reference.inputs["text"]
    assert m.provenance["exported_on"] == asdict(cpu_isa())


def test_manifest_records_parity_provenance_and_int8(bundle: Path, checkpoint: Path) -> None:
    m = load_bundle(bundle).manifest
    records = {p.graph: p for p in m.parity}
    assert set(records) == {"image", "text", "image_int8", "text_int8"}
    for key in ("image", "text"):
        assert (
            records[key].passed and records[key].max_abs_diff <= 1e-4 and records[key].min_cosine >= 0.99999
        )
        assert records[f"{key}_int8"].passed and records[f"{key}_int8"].min_cosine >= 0.99
    assert m.graphs["text_int8"].precision == "int8" and (bundle / m.graphs["text_int8"].file).is_file()
    # every text layer's attention fused and quantised (QAttention), and the record says so
    depth = m.provenance["training_config"]["model"]["text"]["depth"]
    text_graph = onnx.load(str(bundle / m.graphs["text_int8"].file))
    assert sum(n.op_type == "QAttention" for n in text_graph.graph.node) == depth
    assert m.provenance["int8_graphs"]["text"]["fused_attention"] == depth
    assert len(m.provenance["int8_graphs"]["text"]["ffn_outlier_channels"]) == depth  # every FFN examined
    assert m.provenance["int8_graphs"]["image"]["fused_attention"] == 0
    # the session optimiser that measured slower on the fused graph is switched off, for it alone
    assert m.graphs["text_int8"].disabled_optimizers == ["SkipLayerNormFusion"]
    assert m.graphs["text"].disabled_optimizers == [] and m.graphs["image_int8"].disabled_optimizers == []
    assert not [f for f in bundle.iterdir() if f.name.endswith(".fused")]
    assert m.provenance["exporter"].startswith("torch.onnx") and m.provenance["opset"] == 17
    assert len(m.provenance["checkpoint_sha256"]) == 64
    assert m.provenance["training_config"]["objective"]["preset"] == "tessera"
    assert set(m.files) >= {"image_encoder.onnx", "text_encoder.onnx", "codebook.npy", "tokenizer.json"}


def test_a_changed_byte_is_refused_with_the_file_named(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "codebook.npy").read_bytes())
    data[-1] ^= 0x01
    (copy / "codebook.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"codebook\.npy does not match its sha256"):
        load_bundle(copy)
    (copy / "codebook.npy").unlink()
    with pytest.raises(BundleError, match=r"codebook\.npy is missing"):
        load_bundle(copy)


def test_another_schema_is_refused(bundle: Path, tmp_path: Path) -> None:
    def older(manifest: dict[str, Any]) -> None:
        manifest["schema"] = "tessera.bundle/1"

    with pytest.raises(
        BundleError, match=r"schema 'tessera\.bundle/1' is not 'tessera\.bundle/3' .*re-export"
    ):
        load_bundle(rewritten(bundle, tmp_path / "copy", edit_manifest=older))


def test_an_edited_manifest_is_refused_and_cannot_pass_for_the_same_model(
    bundle: Path, tmp_path: Path
) -> None:
    """A hand edit (the text length 40 -> 6 changes every vector) breaks the manifest's digest; one
    re-sealed on purpose still fails the fingerprint, which covers the model fields."""

    def shorter_texts(manifest: dict[str, Any]) -> None:
        manifest["text"]["max_len"] = 6

    with pytest.raises(BundleError, match=r"manifest.json was changed after export"):
        load_bundle(rewritten(bundle, tmp_path / "edited", edit_manifest=shorter_texts, seal=False))
    with pytest.raises(BundleError, match=r"fingerprint does not match its files and model fields"):
        load_bundle(rewritten(bundle, tmp_path / "resealed", edit_manifest=shorter_texts))


def test_a_manifest_without_optional_graph_fields_loads(bundle: Path, tmp_path: Path) -> None:
    def without(manifest: dict[str, Any]) -> None:
        for graph in manifest["graphs"].values():
            del graph["disabled_optimizers"]  # optional: absent means none

    copy = rewritten(bundle, tmp_path / "copy", edit_manifest=without)
    assert all(g.disabled_optimizers == [] for g in load_bundle(copy).manifest.graphs.values())


def test_a_failure_mid_export_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Exporter, *args: object) -> None:
        raise RuntimeError("injected failure after the graphs were written")

    monkeypatch.setattr(Exporter, "stage_parity", broken)
    out = tmp_path / "bundle"
    with pytest.raises(RuntimeError, match="injected"):
        Exporter(ExportOptions(checkpoint, out, max_batch=4), lambda _: None).run()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory either


def test_an_existing_bundle_needs_force(bundle: Path, checkpoint: Path) -> None:
    with pytest.raises(ExportError, match="exists; pass --force"):
        Exporter(ExportOptions(checkpoint, bundle), lambda _: None).run()
    result = subprocess.run(
        [sys.executable, "-m", "export", str(checkpoint), "--out", str(bundle)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: export failed: {bundle} exists; pass --force to replace it"
    ]


def test_tensorrt_where_it_does_not_import_says_how_to_install(checkpoint: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt imports here: the GPU test below covers the stage")
    out = tmp_path / "bundle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export",
            str(checkpoint),
            "--out",
            str(out),
            "--tensorrt",
            "--max-batch",
            "4",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "TensorRT is not installed" in result.stderr and "pip install tensorrt" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_tensorrt_engines_hold_fp16_and_match_onnxruntime(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack, or NVIDIA's index)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "bundle"
    Exporter(ExportOptions(checkpoint, out, max_batch=8, tensorrt=True), print).run()
    m = load_bundle(out).manifest
    assert {e.graph for e in m.engines} == {"image", "text"}
    assert all(e.precision == "fp16" and (out / e.file).is_file() for e in m.engines)
    trt_parity = [p for p in m.parity if "_trt_" in p.graph]
    assert len(trt_parity) == 2 and all(p.passed and p.min_cosine >= 0.999 for p in trt_parity)


def test_int8_recall_change_is_reported_on_calibration_data(checkpoint: Path, tmp_path: Path) -> None:
    from train.data.shapes import captions, render, scene

    data = tmp_path / "calibration"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        shapes = scene(5, "calibration", i)
        render(shapes, 64).save(data / "images" / f"{i}.png")
        rows.append(
            json.dumps({"image": f"{i}.png", "captions": captions(shapes, 2, str(i)), "split": "dev"})
        )
    (data / "captions.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "bundle"
    opts = ExportOptions(checkpoint, out, max_batch=4, int8=True, calibration=data / "captions.jsonl")
    Exporter(opts, lambda _: None).run()
    note = load_bundle(out).manifest.provenance["int8_calibration"]
    assert note["n_images"] == 12
    for way in ("i2t", "t2i"):
        assert note[f"delta_{way}_r1"] == pytest.approx(note[f"int8_{way}_r1"] - note[f"fp32_{way}_r1"])
        assert 0 <= note[f"fp32_{way}_r1"] <= 100


def test_mirror_averaged_image_and_tapped_text_encoders_export_with_parity(tmp_path: Path) -> None:
    # shapes captions name left and right, so this trains nothing useful: it proves the graphs
    cfg = small(
        "model.image.kind=efficientnet_lite0", "model.image.image_size=64", "model.image.mirror_average=true",
        "model.text.depth=2", "model.text.concat_layers=[1]", "optim.max_steps=1", "run.eval_every_steps=0",
    )  # fmt: skip
    train(cfg, tmp_path / "run")
    out = tmp_path / "bundle"
    Exporter(ExportOptions(tmp_path / "run" / "last.pt", out, max_batch=4), lambda _: None).run()
    parity = {p.graph: p for p in load_bundle(out).manifest.parity if p.reference == "torch fp32"}
    assert parity["image"].passed and parity["image"].max_abs_diff <= 1e-4, parity["image"]
    assert parity["text"].passed and parity["text"].max_abs_diff <= 1e-4, parity["text"]
    model = load_model(tmp_path / "run" / "last.pt")[0]
    assert model.cfg.image.mirror_average and model.online.text_tower.width == 2 * cfg.model.text.width
