"""Measured numbers live in docs/, not in the code's comments and docstrings
(tools/numbers_in_comments.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO_ROOT


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("numbers", REPO_ROOT / "tools" / "numbers_in_comments.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_comment_or_docstring_quotes_a_measured_number() -> None:
    assert load_tool().offenders() == []


def test_the_tool_finds_a_number_with_a_unit_and_every_allowance_is_still_used(tmp_path: Path) -> None:
    tool = load_tool()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "m.py").write_text('"""Fast: 1.8x fp32 at batch 32."""\nX = 1  # takes 12 ms\n')
    found = sorted(line.split(": ", 1)[0] for line in tool.offenders(tmp_path))
    assert found == ["runtime/m.py:1", "runtime/m.py:2"]
    lines = {
        (rel, text) for rel in {p for p, _ in tool.ALLOWED}
        for _, text in tool.text_lines(REPO_ROOT / rel)
    }  # fmt: skip
    unused = [a for a in tool.ALLOWED if not any(rel == a[0] and a[1] in text for rel, text in lines)]
    assert unused == [], "allowances that no longer match a line: remove them"
