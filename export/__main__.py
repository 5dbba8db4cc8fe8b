"""`python -m export CHECKPOINT --out BUNDLE [--opset N] [--max-batch N] [--int8] [--tensorrt [--fp16]]
[--calibration DATA] [--force]` — a progress line per stage; on failure one error line, exit 1,
and nothing at BUNDLE."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export", description="checkpoint -> verified bundle",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (best.pt, or last.pt)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (at least 17)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the engines and parity use")
    parser.add_argument("--int8", action="store_true", help="add dynamically quantised graphs for CPUs")
    parser.add_argument("--tensorrt", action="store_true", help="build TensorRT engines for this GPU")
    parser.add_argument(
        "--fp16", action=argparse.BooleanOptionalAction, default=True, help="TensorRT precision"
    )
    parser.add_argument(
        "--calibration", type=Path, help="captions JSONL: report int8's Recall@1 change on it"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing bundle")
    args = parser.parse_args(argv)
    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        extras = 'pip install -e ".[train,export,cpu]"'
        print(f"error: export needs {', '.join(missing)}: {extras}", file=sys.stderr)
        return 2
    if args.opset < 17:
        print("error: --opset must be at least 17", file=sys.stderr)
        return 2
    if not args.checkpoint.is_file():
        last = args.checkpoint.with_name("last.pt")
        why = (f"; the run has not been evaluated yet (stopped early?): export {last} instead"
               if args.checkpoint.name == "best.pt" and last.is_file() else "")  # fmt: skip
        print(f"error: {args.checkpoint}: no such checkpoint{why}", file=sys.stderr)
        return 2
    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", flush=True)

    from export.pipeline import Exporter, ExportOptions

    opts = ExportOptions(
        args.checkpoint, args.out, args.opset, args.max_batch, args.int8, args.tensorrt, args.fp16,
        args.calibration, args.force,
    )  # fmt: skip
    try:
        Exporter(opts, progress).run()
    except Exception as e:  # one clear line, no traceback, for every failure
        print(f"error: export failed: {e}", file=sys.stderr)
        return 1
    progress(f"done     {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
