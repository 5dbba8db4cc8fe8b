"""Benchmark: the bundle's two encoders in plain torch — the reference our engines must beat.

The Runtime issue asks for the image and text encoders timed with torch on CUDA at batch 1–256 in
fp16, on a device machine: exactly the modules the export traces (`export.onnx.ImageGraph`, uint8
pixels in with the scaling inside; `export.onnx.TextGraph`), under `torch.autocast`, after a
warm-up, each call bracketed by `torch.cuda.synchronize()`. Texts are Flickr8k captions padded to
each batch's longest, as the server pads; images are random uint8 pixels at the model's size.

    python -m bench.gpu_reference --record                       # a device machine: CUDA, fp16
    python -m bench.gpu_reference --device cpu --batches 1,32 --record   # this CPU, fp32

The checkpoint is the shipped Flickr8k model (`--checkpoint`, default runs/flickr8k-ft/best.pt;
where absent, a fresh model of the flickr8k-ft config: same shapes and cost, untrained heads).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer

from bench.common import EDGE_CHECKPOINT, captions, machine, median, publish
from bench.export import fresh_checkpoint
from export.onnx import ImageGraph, TextGraph
from export.parity import SENTENCES
from train.checkpoint import load_model
from train.data.tokenizer import TextEncoder

BATCHES = "1,2,4,8,16,32,64,128,256"


def time_call(call: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `call` (after 3 warm-up calls), synchronising CUDA around each."""
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="default: fp16 on CUDA"
    )
    parser.add_argument("--batches", default=BATCHES, help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if not ckpt.is_file():
            ckpt = Path(tmp) / "model.pt"
            fresh_checkpoint("efficientnet-minilm", ckpt)
        model, payload = load_model(ckpt)
    model = model.to(device)
    image, text = ImageGraph(model).eval(), TextGraph(model).eval()
    tokenizer = TextEncoder(Tokenizer.from_str(payload["tokenizer"]), model.cfg.text.max_len)
    size = model.cfg.image.image_size
    pool = captions(max(batches), SENTENCES)
    generator = torch.Generator().manual_seed(0)

    rows = []
    for batch in batches:
        pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
        pixels = pixels.to(device)  # (B, S, S, 3) uint8
        ids, mask = (t.to(device) for t in tokenizer.encode(pool[:batch]))  # (B, L) each
        for name, graph, inputs in (("image", image, (pixels,)), ("text", text, (ids, mask))):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype_name != "fp32"):
                seconds = time_call(functools.partial(graph, *inputs), device, args.repeats)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "–"
            unit = "images/s" if name == "image" else "texts/s"
            rows.append(
                f"| {name} | {batch} | {1e3 * seconds:.2f} | {batch / seconds:.1f} | {peak} | {unit} |"
            )

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"- Command: `python -m bench.gpu_reference {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; device {where}, torch {torch.__version__}, {dtype_name}"
        + (" (autocast)" if dtype_name != "fp32" else "")
        + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""),
        f"- Checkpoint: `{args.checkpoint}`"
        + ("" if args.checkpoint.is_file() else " (absent: a fresh model of the flickr8k-ft config)")
        + f"; image {size} px, texts padded to each batch's longest (≤ {model.cfg.text.max_len} tokens); "
        f"median of {args.repeats} calls after 3 warm-up calls.",
        "",
        "| encoder | batch | ms per batch | items/s | peak GiB (CUDA) | unit |",
        "|---|---:|---:|---:|---:|---|",
        *rows,
    ]
    publish(f"gpu_reference_{device.type}", lines, args.record)


if __name__ == "__main__":
    main()
