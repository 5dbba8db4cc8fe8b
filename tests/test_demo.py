"""The CI's end-to-end smoke: `python -m demo --smoke` trains a few steps, exports, serves, embeds,
indexes, searches, draws the picture and stops the server cleanly — so a broken demo cannot land."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration  # runs the demo in processes of its own


def test_demo_smoke_runs_end_to_end(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = demo_run
    cmd = [sys.executable, "-m", "demo", "--smoke", "--out", str(out)]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("[1/5] train", "[2/5] export", "[3/5] serve", "[4/5] use", "[5/5] stop"):
        assert step in result.stdout, step
    assert "server drained and exited with status 0" in result.stdout
    assert "indexed 60 validation images" in result.stdout
    assert result.stdout.count("  query: ") == 8
    with Image.open(out / "retrievals.png") as picture:
        assert picture.width > 600 and picture.height > 8 * 128
    assert len(list((out / "images").glob("dev-*.png"))) == 60  # the README's commands use them
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout  # a re-run reuses what is built


def test_demo_reports_an_export_failure_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "model").mkdir(parents=True)
    (out / "model" / "best.pt").write_bytes(b"not a checkpoint")  # reused by step 1, refused by export
    cmd = [sys.executable, "-m", "demo", "--smoke", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: export failed: "), result.stderr
    assert not (out / "bundle").exists()
