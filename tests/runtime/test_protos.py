"""The committed stubs are what `python protos/generate.py` makes from the committed .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_committed_stubs_equal_a_fresh_generation(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    fresh = generate.generate(tmp_path)
    assert fresh, "nothing generated"
    for path in fresh:
        committed = generate.OUT_DIR / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is not committed: run python protos/generate.py"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run python protos/generate.py"
        )
