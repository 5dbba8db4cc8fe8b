"""Every benchmark runs for real in a smoke size: a tiny checkpoint trained here stands in for the
recipe's models, each benchmark measures for a second or so and must print its table (numbers
are not checked: they live in docs/benchmarks.md). The fastest run in the default suite, the
rest in the slow lane; a benchmark that needs what this machine lacks says what. A new benchmark
must be listed in one of the three."""

from __future__ import annotations

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from tests.conftest import REPO_ROOT

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name != "common")
CKPT = "run/best.pt"  # the tiny checkpoint, relative to the smoke run's folder
QUICK = {  # benchmark -> its arguments for a smoke run
    "bulk": f"--texts 32 --images 8 --rounds 1 --edge {CKPT}",
    "export": f"--tiny {CKPT} --edge {CKPT} --repeats 1",
    "search": f"--size 5000 --queries 8 --edge {CKPT}",
    "towers": f"--towers efficientnet_lite0 --checkpoint efficientnet_lite0={CKPT} --duration-s 0.5 "
    "--rounds 1 --repeats 1",
    "train_loop": "--config tiny-shapes --steps 3 --set data.shapes_train_images=64 "
    "--set data.shapes_val_images=16 --set optim.batch_size=8 --set model.queue_size=32",
}
SLOW = {
    "attack": f"--seconds 1 --rounds 1 --tiny {CKPT} --edge {CKPT}",
    "batch": f"--images 16 --texts 64 --rounds 1 --load-records 200 --edge {CKPT}",
    "filtered": f"--size 5000 --queries 8 --milvus-size 0 --edge {CKPT}",
    "serve": f"--tiny {CKPT} --edge {CKPT} --duration-s 1 --rounds 1 --repeats 1",
    "train_step": "--batch 4 --steps 1",
}
NOT_HERE = {
    "arm_int8": "needs qemu-aarch64 user-mode emulation and an aarch64 sysroot",
    "gpu_reference": "needs a CUDA device",
    "grpc_floor": "a canned-response server; bench.serve starts it and measures against it",
    "transports": "needs infinity-emb in its own virtualenv (docs/benchmarks.md says how)",
}
ROW = re.compile(r"^\|.*\| [\d.,]+x? \|", re.M)  # a table row with a number in it


def test_every_benchmark_has_a_smoke_run_or_a_reason() -> None:
    assert sorted([*QUICK, *SLOW, *NOT_HERE]) == MODULES


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding run/best.pt, a tiny model trained for a few steps; benchmarks write their
    bundles under its runs/bench/."""
    from tests.helpers import small
    from train.loop import train

    folder = tmp_path_factory.mktemp("smoke")
    train(small("optim.max_steps=3"), folder / "run")
    return folder


def smoke(name: str, args: str, folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args.split()], cwd=folder, capture_output=True,
        text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert ROW.search(done.stdout), done.stdout[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(QUICK))
def test_benchmark_measures_in_a_smoke_size(name: str, smoke_dir: Path) -> None:
    smoke(name, QUICK[name], smoke_dir)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slower_benchmark_measures_in_a_smoke_size(name: str, smoke_dir: Path) -> None:
    smoke(name, SLOW[name], smoke_dir)


@pytest.mark.parametrize("name", sorted(NOT_HERE))
def test_a_benchmark_this_machine_cannot_run_still_parses_its_arguments(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"bench.{name}").main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out
