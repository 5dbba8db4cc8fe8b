"""Bundles edited on purpose, for tests: a copy with its manifest or reference arrays changed, then
re-sealed (checksums and digest renewed) as the exporter would have written it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import MANIFEST, checksums, digest


def rewritten(
    bundle: Path,
    to: Path,
    edit_manifest: Callable[[dict[str, Any]], None] | None = None,
    edit_reference: Callable[[dict[str, np.ndarray]], None] | None = None,
    seal: bool = True,
) -> Path:
    """A copy of `bundle` with its manifest and/or reference arrays edited; sealed unless `seal` is
    False (a hand edit that the digest must catch)."""
    shutil.copytree(bundle, to)
    manifest = json.loads((to / MANIFEST).read_text())
    if edit_reference is not None:
        path = to / manifest["reference"]["file"]
        with np.load(path) as ref:
            arrays = {name: ref[name] for name in ref.files}
        edit_reference(arrays)
        np.savez_compressed(path, **arrays)
    if edit_manifest is not None:
        edit_manifest(manifest)
    if seal:
        manifest["files"] = checksums(to)
        manifest["digest"] = digest(manifest)
    (to / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return to
