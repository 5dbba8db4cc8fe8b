"""The runtime must stay lean: importing it never loads torch, train or export (docs/architecture.md §1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration  # starts processes, trains or exports (tests/conftest.py)

FORBIDDEN = ("torch", "train", "export")


def test_importing_runtime_loads_no_training_stack() -> None:
    code = (
        "import json, sys, pkgutil, importlib, runtime\n"
        "for m in pkgutil.walk_packages(runtime.__path__, 'runtime.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert "runtime" in loaded
    assert not bad, f"importing runtime loaded {bad}"
