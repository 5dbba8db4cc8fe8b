"""Self-describing checkpoints that load with `torch.load(weights_only=True)`.

A checkpoint holds everything to rebuild, export or resume a run, and nothing that needs pickle:

    format        "tessera.checkpoint/1"
    config        the TrainConfig as plain dicts (model shapes, objective constants, data, ...)
    tokenizer     the tokenizer.json text (the bundle ships the same file)
    code_version  package version and git commit of the code that wrote it
    model         state dict: online + momentum towers and heads, codebook, τ, queue
    optimizer     AdamW state;  step, epoch: progress;  rng: torch CPU/CUDA generator states
    metrics       the last evaluation

Writes go to a temporary file renamed into place: a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from train.config import TrainConfig, from_dict, to_dict

FORMAT = "tessera.checkpoint/1"


def code_version() -> str:
    """'tessera-embed VERSION (git COMMIT)' where the commit can be read."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("tessera-embed")
    except PackageNotFoundError:
        v = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"tessera-embed {v}" + (f" (git {commit})" if commit else "")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically writes `payload` (see module docstring) with the format tag added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def make_payload(
    cfg: TrainConfig,
    tokenizer_json: str,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    step: int,
    epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    return {
        "config": to_dict(cfg),
        "tokenizer": tokenizer_json,
        "code_version": code_version(),
        "model": model_state,
        "optimizer": optimizer_state,
        "step": step,
        "epoch": epoch,
        "rng": rng_state(),
        "metrics": metrics,
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads and checks the format; the config comes back as a `TrainConfig`. A file torch cannot
    read raises ValueError naming it, in one line (torch's own message runs to several)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # missing, unreadable: the OS's own message names the file
    except Exception as e:  # garbage fails in the unpickler in many ways (struct, pickle, zip, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable {FORMAT} checkpoint ({first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    ckpt["config"] = from_dict(TrainConfig, ckpt["config"])
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(DualEncoder in eval mode, checkpoint dict) — no pretrained files are read."""
    from train.model import DualEncoder

    ckpt = load_checkpoint(path, map_location)
    model = DualEncoder(ckpt["config"].model, load_weights=False)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
