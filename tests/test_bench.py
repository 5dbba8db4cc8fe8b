"""The benchmarks are not run by the suite (their numbers live in docs/benchmarks.md), but each must
still import and parse its arguments: a benchmark broken by a refactor elsewhere was once found
only when someone next ran it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "common")


def test_every_benchmark_is_listed() -> None:
    assert {"export", "gpu_reference", "grpc_floor", "search", "serve", "train_loop", "train_step"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_and_parses_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"bench.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
