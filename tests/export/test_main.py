"""`python -m export`'s own messages: a checkpoint that is not there is named, with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_exporting_best_of_a_run_stopped_before_evaluating_names_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from export.__main__ import main as export_main

    (tmp_path / "last.pt").write_bytes(b"")  # what run.stop_after_steps leaves before any evaluation
    assert export_main([str(tmp_path / "best.pt"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "has not been evaluated yet" in err and f"export {tmp_path / 'last.pt'} instead" in err
