"""Benchmark: the real training loop (`python -m train`) for a few steps — step time, samples/s and
peak memory, with everything a run does per step (data, augmentation, autocast where the device
has it, objective, backward, clipping, AdamW, momentum update, queue enqueue).

Its main use is the `paper-4m` check of the Train pipeline issue: TCL's model (ViT-B/16 at 256 px,
6-layer BERT-base, queue 65,536, momentum 0.995) on the synthetic shapes data, which needs no
download. On a GPU, a few hundred steps at the paper's batch 64:

    python -m bench.train_loop --config paper-4m --steps 300 --record

and on this CPU, a smoke run of the same model at a batch it can afford (it proves the model,
queue and momentum path run at full size, not the CUDA path):

    python -m bench.train_loop --config paper-4m --steps 4 --batch 4 --workers 2 --record

Step time is the wall time between consecutive steps (data wait included), medians over the steps
after `--warmup`; peak memory is torch's `max_memory_allocated` on CUDA, the process's peak RSS on
the CPU. The run directory is a temporary one, deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO_ROOT, machine, median, publish


def run_loop(
    config: str, steps: int, batch: int, workers: int, device: str, extra: list[str]
) -> tuple[list[dict], dict, float]:
    """Runs `python -m train` for `steps` steps on shapes data; returns its per-step log records, the
    config it ran (config.json) and the child's peak RSS in GiB."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-loop-") as tmp:
        sets = {
            "data.source": "shapes",
            "data.shapes_val_images": "16",  # never evaluated within the steps; kept small anyway
            "run.log_every_steps": "1",
            "run.stop_after_steps": str(steps),
            "run.progress": "false",
            "run.device": device,
        }
        if batch:
            sets["optim.batch_size"] = str(batch)
        if workers:
            sets["data.workers"] = str(workers)
        cmd = [sys.executable, "-m", "train", "--config", config, "--out", f"{tmp}/run"]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        for item in extra:
            cmd += ["--set", item]
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
        peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if r.get("type") == "train"]
        ran = json.loads((Path(tmp) / "run" / "config.json").read_text())
    return records, ran, peak_rss_gib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="paper-4m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--warmup", type=int, default=0, help="steps left out of the medians (0: a tenth, ≥ 1)"
    )
    parser.add_argument("--batch", type=int, default=0, help="per-device batch (0: the config's)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (0: the config's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    records, ran, peak_rss_gib = run_loop(
        args.config, args.steps, args.batch, args.workers, args.device, args.extra
    )
    warmup = args.warmup or max(1, args.steps // 10)
    timed = [r for r in records if r["step"] > warmup]
    if not timed:
        raise SystemExit(f"no steps after the {warmup} warm-up steps: raise --steps")
    cuda = "cuda_peak_gib" in records[-1]
    peak = (
        f"{records[-1]['cuda_peak_gib']:.2f} GiB (CUDA, max allocated)"
        if cuda
        else f"{peak_rss_gib:.2f} GiB (RSS)"
    )
    losses = [r["loss"] for r in records]
    batch = ran["optim"]["batch_size"]
    import torch  # after the run: the child, not this process, does the work

    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    lines = [
        f"- Command: `python -m bench.train_loop {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; device {device}",
        f"- `python -m train --config {args.config}` on the shapes data, {len(records)} steps at batch "
        f"{batch}; medians over steps {warmup + 1}–{records[-1]['step']}.",
        "",
        "| config | device | batch | step s (median) | samples/s (median) | peak memory "
        "| loss, first → last | all losses finite |",
        "|---|---|---:|---:|---:|---|---|---|",
        f"| {args.config} | {device} | {batch} | {median([r['step_s'] for r in timed]):.3f} "
        f"| {median([r['samples_per_s'] for r in timed]):.1f} | {peak} "
        f"| {losses[0]:.3f} → {losses[-1]:.3f} | {'yes' if all(map(math.isfinite, losses)) else 'NO'} |",
    ]
    publish(f"train_loop_{args.config}_{'cuda' if cuda else 'cpu'}", lines, args.record)  # one block each


if __name__ == "__main__":
    main()
