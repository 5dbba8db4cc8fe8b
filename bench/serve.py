"""Benchmark: the server against ONNX Runtime called directly, on this CPU.

For the tiny shapes bundle and the EfficientNet-lite0 + MiniLM-L6 bundle (exported from `--tiny`,
`--edge` checkpoints into runs/bench/, reused when present), in one run:

1. direct: ONNX Runtime on the bundle's fp32 graphs at batch 32, and at the mean batch size the
   saturated server formed ("at the same batch size"), medians of repeats — items/s;
2. served: `python -m runtime serve` (max batch 32, max wait 5 ms) at saturation, 64 concurrent
   clients each sending single-item Embed requests back to back — items/s; for text also with
   --whole-text-batches (each batch one engine call padded to its longest, no length split);
3. unbatched: the same server with --max-batch-size 1;
4. latency: requests paced at half the saturated rate (open loop, evenly spaced) — p50/p99,
   against the bound 2 x (one batch-32 engine call + max wait).

Images travel as raw pixels at the model's size (what the direct call gets, so the comparison is
the serving overhead, not JPEG decoding); texts are Flickr8k captions (or built-in sentences).
The load generator is one asyncio gRPC client in this process: on 2 cores it shares the CPU with
the server, as a co-located client would.

    python -m bench.serve [--duration-s 8] [--tiny CKPT] [--edge CKPT] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.common import captions, machine, median, publish
from bench.export import fresh_checkpoint
from export.parity import SENTENCES
from runtime.bundle import Bundle, load_bundle
from runtime.launch import ServerProcess as Server
from runtime.preprocess import TextTokenizer
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from runtime.textsplit import measure_call_tokens, split_by_length, text_probe
from train.data.shapes import render, scene

CLIENTS = 64
BATCH = 32
MAX_WAIT_MS = 5.0


def ensure_bundle(name: str, checkpoint: Path) -> Path:
    from export.pipeline import Exporter, ExportOptions

    out = Path("runs/bench") / f"bundle-{name}"
    if (out / "manifest.json").is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint
        if not checkpoint.is_file():
            ckpt = Path(tmp) / "model.pt"
            fresh_checkpoint(name, ckpt)
        Exporter(ExportOptions(ckpt, out, max_batch=BATCH), lambda _: None).run()
    return out


def items(bundle: Bundle, modality: str, n: int) -> list[pb.Item]:
    if modality == "text":
        return [pb.Item(text=t) for t in captions(n, SENTENCES)]
    s = bundle.manifest.image.size_px
    pics = [np.asarray(render(scene(1, "bench", i % 64), s), dtype=np.uint8) for i in range(n)]
    return [pb.Item(pixels=pb.RawImage(width=s, height=s, rgb=p.tobytes())) for p in pics]


def direct_batch_s(
    bundle: Bundle, modality: str, batch: list[pb.Item], repeats: int, split: bool = False
) -> float:
    """Median seconds of ONNX Runtime on `batch`, inputs prepared as the server does: one call padded
    to the longest text, or (`split`) one call per length group as runtime/textsplit.py cuts it."""
    session = ort.InferenceSession(str(bundle.graph_path(modality)), providers=["CPUExecutionProvider"])
    if modality == "text":
        tok = TextTokenizer(bundle, 8192)
        rows = [tok.encode(i.text) for i in batch]
        groups = [list(range(len(rows)))]
        if split:
            probe = text_probe(lambda feeds: session.run(None, feeds))
            groups = split_by_length([len(r) for r in rows], measure_call_tokens(probe, BATCH, tok.max_len))
        feeds = []
        for g in groups:
            ids, mask = tok.pad([rows[i] for i in g])
            feeds.append({"input_ids": ids, "attention_mask": mask})
    else:
        s = bundle.manifest.image.size_px
        pixels = [np.frombuffer(i.pixels.rgb, np.uint8).reshape(s, s, 3) for i in batch]
        feeds = [{"pixels": np.stack(pixels)}]  # (B, S, S, 3)
    for feed in feeds:
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for feed in feeds:
            session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return median(times)


async def saturate(target: str, pool: list[pb.Item], duration_s: float) -> float:
    """items/s with CLIENTS concurrent clients, each sending one item per request back to back."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TesseraStub(channel)
        await stub.Embed(pb.EmbedRequest(items=pool[:1]))
        done = 0
        end = time.perf_counter() + duration_s

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < end:
                await stub.Embed(pb.EmbedRequest(items=[pool[i % len(pool)]]))
                done += 1
                i += CLIENTS

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(CLIENTS)))
        return done / (time.perf_counter() - t0)


async def paced(target: str, pool: list[pb.Item], rate_per_s: float, duration_s: float) -> list[float]:
    """Latencies (s) of requests sent at evenly spaced times, rate_per_s, whatever the replies do."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TesseraStub(channel)
        await stub.Embed(pb.EmbedRequest(items=pool[:1]))
        latencies: list[float] = []

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            await stub.Embed(pb.EmbedRequest(items=[pool[i % len(pool)]]))
            latencies.append(time.perf_counter() - t0)

        n = int(rate_per_s * duration_s)
        start, tasks = time.perf_counter(), []
        for i in range(n):
            delay = start + i / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        return latencies


def bench_bundle(name: str, path: Path, duration_s: float, repeats: int) -> list[str]:
    bundle = load_bundle(path)
    rows = []
    batched_flags = ("--max-batch-size", str(BATCH), "--max-wait-ms", str(MAX_WAIT_MS))
    batched = Server(path, *batched_flags)
    results, mean_batch = {}, {}
    try:
        batched.client().close()
        for modality in ("image", "text"):
            pool = items(bundle, modality, 256)
            batch_s = direct_batch_s(bundle, modality, pool[:BATCH], repeats)
            split_s = direct_batch_s(bundle, modality, pool[:BATCH], repeats, split=True)
            before = batched.metrics()
            served = asyncio.run(saturate(batched.target, pool, duration_s))
            after = batched.metrics()
            n, s = (f'tessera_batch_size_{x}{{modality="{modality}"}}' for x in ("count", "sum"))
            mean_batch[modality] = (after[s] - before.get(s, 0)) / (after[n] - before.get(n, 0))
            lat = sorted(asyncio.run(paced(batched.target, pool, served / 2, duration_s)))
            at_mean = max(1, round(mean_batch[modality]))  # direct ONNX Runtime at the server's batch
            direct_at_mean = at_mean / direct_batch_s(bundle, modality, pool[:at_mean], repeats)
            results[modality] = (pool, batch_s, split_s, served, lat, direct_at_mean)
    finally:
        batched.stop()
    single: dict[str, float] = {}
    whole = 0.0
    unbatched = ("--max-batch-size", "1", "--max-wait-ms", "0")
    whole_batches = (*batched_flags, "--whole-text-batches")
    for flags in (unbatched, whole_batches):
        server = Server(path, *flags)
        try:
            server.client().close()
            if flags is whole_batches:
                whole = asyncio.run(saturate(server.target, results["text"][0], duration_s))
            else:
                for modality, r in results.items():
                    single[modality] = asyncio.run(saturate(server.target, r[0], duration_s))
        finally:
            server.stop()
    for modality, (_, batch_s, split_s, served, lat, direct_at_mean) in results.items():
        direct = BATCH / batch_s
        p50, p99 = 1e3 * lat[len(lat) // 2], 1e3 * lat[int(0.99 * (len(lat) - 1))]
        bound_ms = 2 * (1e3 * batch_s + MAX_WAIT_MS)
        text = modality == "text"
        unit = "texts/s" if text else "images/s"
        cells = [name, modality, f"{direct:.0f}", f"{BATCH / split_s:.0f}" if text else "–",
                 f"{direct_at_mean:.0f}", f"{served:.0f}", f"{whole:.0f}" if text else "–",
                 f"{served / direct:.0%} / {served / direct_at_mean:.0%}"
                 + (f" / {served * split_s / BATCH:.0%}" if text else ""),
                 f"{single[modality]:.0f}", f"{served / single[modality]:.1f}x",
                 f"{mean_batch[modality]:.1f}", f"{p50:.1f} / {p99:.1f}", f"{bound_ms:.1f}",
                 unit]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=8.0, help="per saturation / latency phase")
    parser.add_argument("--repeats", type=int, default=20, help="direct ONNX Runtime calls timed")
    parser.add_argument("--tiny", type=Path, default=Path("runs/tiny-shapes/best.pt"))
    parser.add_argument("--edge", type=Path, default=Path("runs/f8k-tessera/best.pt"))
    parser.add_argument("--only", choices=("tiny", "efficientnet-minilm"), default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for name, ckpt in (("tiny", args.tiny), ("efficientnet-minilm", args.edge)):
        if args.only in (None, name):
            rows += bench_bundle(name, ensure_bundle(name, ckpt), args.duration_s, args.repeats)
    lines = [
        f"- Command: `python -m bench.serve {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; server and load generator share it; ONNX Runtime CPU, fp32, all cores",
        f"- Server: max batch {BATCH}, max wait {MAX_WAIT_MS:g} ms; {CLIENTS} concurrent clients, one item "
        f"per request; {args.duration_s:g} s per phase. Images as raw pixels at the model's size; texts are "
        "Flickr8k captions.",
        "- direct: ONNX Runtime at batch 32 padded to the longest text, the same batch split by length "
        "as the server splits it (runtime/textsplit.py), and at the mean batch the saturated server formed "
        "(medians of repeats). served: saturated server; whole batches: the same with "
        "--whole-text-batches (one call per batch). unbatched: --max-batch-size 1. p50/p99: requests "
        "paced at half the served rate; bound = 2 x (one batch-32 engine call + max wait).",
        "",
        "| bundle | input | direct items/s, batch 32 | direct, batch 32 split by length "
        "| direct, server's mean batch | served items/s | served, whole batches "
        "| served / direct (32 / mean batch / split) | unbatched items/s | batched / unbatched "
        "| mean batch | p50 / p99 ms at half load | p99 bound ms | unit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
    ]
    publish("serve", lines, args.record)


if __name__ == "__main__":
    main()
