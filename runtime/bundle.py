"""The bundle contract: what `export` writes and `runtime` serves. No torch here.

    BUNDLE/manifest.json         schema "tessera.bundle/3": everything below, described, sealed
    BUNDLE/image_encoder.onnx    uint8 NHWC RGB [B, S, S, 3] -> embedding [B, d], code_scores [B, K]
    BUNDLE/text_encoder.onnx     input_ids, attention_mask int64 [B, L] -> embedding, code_scores
    BUNDLE/*.int8.onnx           optional dynamically quantised graphs (CPU)
    BUNDLE/tokenizer.json        the training tokenizer (`tokenizers`)
    BUNDLE/codebook.npy          K x d float32, rows L2-normalised
    BUNDLE/reference.npz         with int8 graphs: the real inputs the export checked them on and the
                                 fp32 graphs' embeddings of them (`Reference`), which a serving
                                 machine re-checks its int8 graphs against (runtime/selfcheck.py)
    BUNDLE/engines/*.plan        optional TensorRT plans, keyed in the manifest

The manifest pins the sha256 of every file, and its own `digest` is the sha256 of the rest of it
(canonical JSON), so `load_bundle` refuses a bundle with any changed byte anywhere — a file or the
manifest itself — naming what changed. The model fingerprint is a sha256 over the fp32 graphs,
codebook and tokenizer and the manifest fields that shape the vectors (`MODEL_FIELDS`: dimensions,
image and text preprocessing), so any two bundles of the same model agree on it, a bundle whose
preprocessing was edited (and re-sealed) does not pass for the same model, and vectors from
another model can be refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.errors import BundleError

SCHEMA = "tessera.bundle/3"
MANIFEST = "manifest.json"
FINGERPRINT_PARTS = ("image_encoder.onnx", "text_encoder.onnx", "codebook.npy", "tokenizer.json")
MODEL_FIELDS = ("embed_dim", "codebook_size", "codebook_temp", "image", "text")  # with the files, the model


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "uint8" | "int64" | "float32"
    shape: list[Any]  # ints, or names of dynamic axes ("batch", "sequence")


@dataclass(frozen=True)
class GraphSpec:
    file: str
    precision: str  # "fp32" | "int8"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # ONNX Runtime graph optimisers to switch off when this graph is loaded (names as ONNX Runtime
    # spells them): ones that measured slower on it (docs/decisions.md §5). Optional; default none.
    disabled_optimizers: list[str] = field(default_factory=list)
    # ONNX Runtime session config entries the graph needs (e.g. session.x64quantprecision for exact
    # int8 on x86 without VNNI: export/quantize.py). Optional; default none.
    session_config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    size_px: int  # square side the graph takes
    resize: str  # how to bring an image to size_px: "bicubic" (the interpolation, as in training)
    crop: str  # before it: "none" (the whole image, squashed) | "center" (the centred square, CLIP)
    layout: str  # "NHWC"
    channels: str  # "RGB"
    mean: list[float]  # applied inside the graph to RGB in [0, 1]
    std: list[float]


@dataclass(frozen=True)
class TextSpec:
    tokenizer: str  # file name in the bundle
    max_len: int  # tokens, [CLS] and [SEP] included; longer texts are truncated
    lowercase: bool
    clean: bool  # the training caption clean-up before the tokenizer (False: raw text, CLIP-family)
    pad_to_max_len: bool  # every row padded to max_len (a tower that pools the last position: SigLIP)
    pad_id: int
    cls_id: int
    sep_id: int


@dataclass(frozen=True)
class ParityRecord:
    graph: str  # key in Manifest.graphs
    backend: str  # e.g. "onnxruntime-cpu 1.32.0"
    reference: str  # "torch fp32" | "onnxruntime fp32"
    inputs: str  # what was compared
    n: int  # items compared
    max_abs_diff: float
    min_cosine: float
    passed: bool


@dataclass(frozen=True)
class ReferenceSpec:
    """Where the reference inputs and outputs are, and what a lower-precision graph must reach."""

    file: str  # "reference.npz": arrays "{graph key}.{input name}" and "{graph key}.embedding"
    inputs: dict[str, str]  # graph key ("image", "text") -> what its inputs are
    min_cosine: dict[str, float]  # precision ("int8") -> least cosine of any row to the fp32 reference


@dataclass(frozen=True)
class EngineRecord:
    file: str  # engines/....plan
    graph: str  # key in Manifest.graphs it was built from
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str  # "fp16" | "fp32"
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max] shapes


@dataclass(frozen=True)
class Manifest:
    schema: str
    fingerprint: str
    embed_dim: int
    codebook_size: int
    codebook_temp: float
    max_batch: int
    image: ImageSpec
    text: TextSpec
    graphs: dict[str, GraphSpec]
    codebook: str
    files: dict[str, str]  # relative path -> sha256 (every file but the manifest)
    provenance: dict[str, Any]  # checkpoint sha256, training config, exporter and library versions, opset
    parity: list[ParityRecord] = field(default_factory=list)
    engines: list[EngineRecord] = field(default_factory=list)
    reference: ReferenceSpec | None = None  # with int8 graphs
    digest: str = ""  # sha256 of the canonical JSON of every other field (`seal`)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def model_fields(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in MODEL_FIELDS}

    def sealed(self) -> Manifest:
        """This manifest with its digest set: what the exporter writes."""
        return replace(self, digest=digest(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            return cls(
                schema=data["schema"],
                fingerprint=data["fingerprint"],
                embed_dim=int(data["embed_dim"]),
                codebook_size=int(data["codebook_size"]),
                codebook_temp=float(data["codebook_temp"]),
                max_batch=int(data["max_batch"]),
                image=ImageSpec(**data["image"]),
                text=TextSpec(**data["text"]),
                graphs={
                    k: GraphSpec(
                        file=g["file"],
                        precision=g["precision"],
                        inputs=[TensorSpec(**t) for t in g["inputs"]],
                        outputs=[TensorSpec(**t) for t in g["outputs"]],
                        disabled_optimizers=[str(o) for o in g.get("disabled_optimizers", [])],
                        session_config={str(k): str(v) for k, v in g.get("session_config", {}).items()},
                    )
                    for k, g in data["graphs"].items()
                },
                codebook=data["codebook"],
                files=dict(data["files"]),
                provenance=dict(data["provenance"]),
                parity=[ParityRecord(**p) for p in data.get("parity", [])],
                engines=[EngineRecord(**e) for e in data.get("engines", [])],
                reference=ReferenceSpec(**data["reference"]) if data.get("reference") else None,
                digest=str(data.get("digest", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest is malformed: {e!r}") from e


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical(value: Any) -> bytes:
    """The one JSON text of a value (sorted keys, no spaces) that digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(files: dict[str, str], model: dict[str, Any]) -> str:
    """sha256 over the fp32 graphs, codebook and tokenizer digests, in a fixed order, and the
    manifest's MODEL_FIELDS (`model`, as `Manifest.model_fields` gives them)."""
    h = hashlib.sha256()
    for name in FINGERPRINT_PARTS:
        h.update(name.encode() + b"\0" + files[name].encode() + b"\n")
    h.update(canonical({k: model[k] for k in MODEL_FIELDS}))
    return h.hexdigest()


def digest(manifest: dict[str, Any]) -> str:
    """sha256 of a manifest's fields but `digest` itself, as canonical JSON."""
    return hashlib.sha256(canonical({k: v for k, v in manifest.items() if k != "digest"})).hexdigest()


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the manifest, by relative POSIX path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, name: str) -> Path:
        return self.root / name

    def graph_path(self, key: str) -> Path:
        try:
            return self.root / self.manifest.graphs[key].file
        except KeyError as e:
            have = ", ".join(sorted(self.manifest.graphs))
            raise BundleError(f"bundle {self.root} has no graph {key!r} (it has: {have})") from e


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Reads and checks a bundle: schema, every file present, every checksum, the fingerprint."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: no {MANIFEST}")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{manifest_path}: unreadable manifest: {e}") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else None
        older = " (exported by an earlier Tessera: re-export it with `python -m export`)" if found else ""
        raise BundleError(f"{manifest_path}: schema {found!r} is not {SCHEMA!r}{older}")
    manifest = Manifest.from_dict(data)
    if verify:
        if data.get("digest") != digest(data):
            raise BundleError(
                f"{manifest_path} was changed after export (its digest does not match its contents): "
                "restore it, or re-export the bundle"
            )
        for name, want in manifest.files.items():
            path = root / name
            if not path.is_file():
                raise BundleError(f"bundle {root}: {name} is missing")
            if sha256_file(path) != want:
                raise BundleError(f"bundle {root}: {name} does not match its sha256 (changed or corrupt)")
        if fingerprint(manifest.files, manifest.model_fields()) != manifest.fingerprint:
            raise BundleError(
                f"bundle {root}: the model fingerprint does not match its files and model fields"
            )
    return Bundle(root, manifest)
