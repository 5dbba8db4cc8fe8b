"""Fixtures for the runtime: a small bundle exported from a checkpoint trained here, and real
servers (`python -m runtime serve` subprocesses on 127.0.0.1, ephemeral ports)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.launch import ServerProcess


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny model (32 px images, d = 16, K = 8), with int8 graphs, max batch 32."""
    from export.pipeline import Exporter, ExportOptions
    from tests.helpers import small
    from train.loop import train

    run = tmp_path_factory.mktemp("run")
    train(small("optim.max_steps=3"), run)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    Exporter(ExportOptions(run / "best.pt", out, max_batch=32, int8=True), lambda _: None).run()
    return out


Server = ServerProcess


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[Server]:
    s = Server(bundle, "--max-wait-ms", "20")
    s.client().close()
    yield s
    assert s.stop() == 0, "".join(s.lines)
