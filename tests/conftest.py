"""Shared fixtures: the repository root and `shared/` (golden files, Flickr8k) beside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# Tests that use these fixtures start servers or processes, or train a model to export: the
# `integration` lane (`make test-fast` leaves it out). Modules that do so without them mark themselves.
INTEGRATION_FIXTURES = {"server", "bundle", "demo_run", "web"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def shared_root() -> Path:
    """`$TESSERA_SHARED`, else the `shared/` folder beside the checkout (as CI lays it out)."""
    return Path(os.environ.get("TESSERA_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "golden").is_dir():
        pytest.fail(
            f"shared/ not found at {root}: set TESSERA_SHARED to the folder holding golden/ and data/"
        )
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`python -m demo --smoke` once for the session: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    cmd = [sys.executable, "-m", "demo", "--smoke", "--out", str(out)]
    return out, subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
