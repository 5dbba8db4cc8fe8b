"""Benchmark: the image towers an edge user chooses between — EfficientNet-lite0, -lite1 and
-lite2, each in the shipped recipe's model (images encoded with their mirror, MiniLM text) — as
served images/s on this CPU, fp32 and int8, side by side.

Each tower's bundle (runs/bench/bundle-TOWER-minilm-int8) is exported from `--checkpoint
TOWER=CKPT`, else from a fresh model of the recipe with the tower's ImageNet weights (the speed
does not depend on how the heads were trained). Every tower and precision gets its own `python -m
runtime serve` (max batch 32, max wait 5 ms; `--int8 on` for int8), all up at once; each round
saturates each server in turn with 64 clients sending single-image Embed requests (raw pixels at
the tower's size) and times ONNX Runtime directly at batch 32 on the same graph; the table gives
medians over rounds. Convolutions stay fp32 in the int8 graphs (export/quantize.py), so int8
moves little on these towers: the table measures how little.

    python -m bench.towers [--duration-s 6] [--rounds 3] [--checkpoint efficientnet_lite1=CKPT ...] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np

from bench.common import machine, median, publish
from bench.export import throughput
from bench.serve import BATCH, MAX_WAIT_MS, ensure_bundle, items, saturate
from runtime.bundle import Bundle, load_bundle
from runtime.engines import OnnxRuntimeEngine
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb

TOWERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
NAMES = {"efficientnet_lite0": "efficientnet-minilm"}  # the serving benchmark's bundle name for lite0
PRECISIONS = ("fp32", "int8")
FRESH = "fresh (the ImageNet tower, untrained heads)"


def bundle_name(tower: str) -> str:
    return NAMES.get(tower, f"{tower}-minilm")


def direct_rates(bundle: Bundle, pool: list[pb.Item], repeats: int) -> dict[str, float]:
    """images/s of the fp32 and int8 image graphs called directly at batch 32, interleaved."""
    engines = {
        p: OnnxRuntimeEngine(bundle, "image" if p == "fp32" else "image_int8", False, 0) for p in PRECISIONS
    }
    s = bundle.manifest.image.size_px
    pixels = np.stack([np.frombuffer(i.pixels.rgb, np.uint8).reshape(s, s, 3) for i in pool[:BATCH]])
    return throughput(engines, [{"pixels": pixels}] * 4, repeats)  # (32, S, S, 3) four times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=6.0, help="saturation per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="direct ONNX Runtime passes timed per round")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="TOWER=CKPT",
                        help="a trained checkpoint of a tower's recipe (default: a fresh model)")  # fmt: skip
    parser.add_argument("--towers", default=",".join(TOWERS))
    parser.add_argument("--record", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    checkpoints = dict(c.split("=", 1) for c in args.checkpoint)
    towers = args.towers.split(",")
    paths = {t: ensure_bundle(bundle_name(t), Path(checkpoints.get(t, "-")), int8=True) for t in towers}
    servers: dict[tuple[str, str], ServerProcess] = {}
    served: dict[tuple[str, str], list[float]] = {}
    direct: dict[tuple[str, str], list[float]] = {}
    flags = ("--max-batch-size", str(BATCH), "--max-wait-ms", str(MAX_WAIT_MS))
    try:
        for t in towers:
            for precision in ("fp32", "int8"):
                extra = ("--int8", "on") if precision == "int8" else ()
                servers[t, precision] = ServerProcess(paths[t], *flags, *extra)
                servers[t, precision].client().close()
        bundles = {t: load_bundle(paths[t]) for t in towers}
        pools = {t: items(bundles[t], "image", 256) for t in towers}
        for key, srv in servers.items():
            asyncio.run(saturate(srv.target, pools[key[0]], 0.5))  # warm-up
        for _ in range(args.rounds):
            for key, srv in servers.items():
                rate = asyncio.run(saturate(srv.target, pools[key[0]], args.duration_s))
                served.setdefault(key, []).append(rate)
            for t in towers:
                for precision, rate in direct_rates(bundles[t], pools[t], args.repeats).items():
                    direct.setdefault((t, precision), []).append(rate)
    finally:
        for srv in servers.values():
            srv.stop()
    lines = [
        "Image towers of the shipped recipe (mirror-averaged images: two passes per image), served.",
        "",
        f"- Machine: {machine()}",
        f"- Command: `python -m bench.towers --duration-s {args.duration_s:g} --rounds {args.rounds}`",
        "- Checkpoints: " + ", ".join(f"{t} {checkpoints.get(t, FRESH)}" for t in towers),
        "",
        "| tower | size | served fp32 | served int8 | int8 / fp32 | direct fp32, batch 32 | direct int8 "
        "| unit |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in towers:
        f32, i8 = median(served[t, "fp32"]), median(served[t, "int8"])
        manifest = load_bundle(paths[t]).manifest  # the tower the bundle really holds
        kind = manifest.provenance["training_config"]["model"]["image"]["kind"]
        lines.append(
            f"| {kind} | {manifest.image.size_px} | {f32:.1f} | {i8:.1f} | {i8 / f32:.2f}x "
            f"| {median(direct[t, 'fp32']):.1f} | {median(direct[t, 'int8']):.1f} | images/s |"
        )
    publish("towers", lines, args.record)


if __name__ == "__main__":
    main()
