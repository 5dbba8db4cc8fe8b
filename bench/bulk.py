"""Benchmark: a bulk embed to Parquet (`runtime.client embed --from ... --out ...`) against the
server's saturated throughput on the same items.

The EfficientNet-lite0 + MiniLM-L6 bundle (default flags), one server. The items: `--texts`
Flickr8k captions and `--images` Flickr8k photos (JPEG files read in place; rendered shapes where
the data is absent), as one JSONL. Each of `--rounds` rounds measures, back to back:

1. saturated: 64 concurrent clients, each sending single-item Embed requests of these items (the
   JPEG bytes as files hold them) back to back over the whole list — items/s;
2. bulk: `runtime.bulk.embed_to_file` over the same list into a fresh Parquet file (EmbedStream,
   parts written by rename, joined at the end) — items/s, the writing included.

The ratio bulk / saturated is taken within each round; the target is ≥ 90 %. Both clients run in
this process, sharing the 2 cores with the server.

    python -m bench.bulk [--texts 2000] [--images 400] [--rounds 3] [--edge CKPT] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from bench.common import CAPTIONS, EDGE_CHECKPOINT, machine, median, publish
from bench.serve import CLIENTS, ensure_bundle
from runtime.bulk import Source, embed_to_file, sources
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from train.data.shapes import render, scene


def job(folder: Path, n_texts: int, n_images: int) -> Path:
    """A JSONL of captions and photos (Flickr8k where present), in `folder`."""
    lines = []
    if CAPTIONS.is_file():
        rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines()]
        caps = [c for r in rows for c in r["captions"]][:n_texts]
        photos = [CAPTIONS.parent / "images" / r["image"] for r in rows[:n_images]]
    else:
        caps = [f"a red circle number {i}" for i in range(n_texts)]
        photos = []
        for i in range(n_images):
            p = folder / f"shape{i:05d}.jpg"
            Image.fromarray(np.asarray(render(scene(0, "bulk", i), 320), np.uint8)).save(p, quality=90)
            photos.append(p)
    lines += [json.dumps({"id": f"t{i}", "text": t}) for i, t in enumerate(caps)]
    lines += [json.dumps({"id": f"i{i}", "image": str(p)}) for i, p in enumerate(photos)]
    out = folder / "items.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


async def saturated(target: str, items: list[Source]) -> float:
    """items/s: CLIENTS clients sending one item per request until every item is sent once."""
    messages = [s.item() for s in items]
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = pb_grpc.TesseraStub(ch)
        await stub.Embed(pb.EmbedRequest(items=messages[:1]))
        next_item = 0

        async def client() -> None:
            nonlocal next_item
            while next_item < len(messages):
                i, next_item = next_item, next_item + 1
                await stub.Embed(pb.EmbedRequest(items=[messages[i]]))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(CLIENTS)))
        return len(messages) / (time.perf_counter() - t0)


def bulk(server: ServerProcess, items: list[Source], folder: Path) -> float:
    out = folder / f"v{time.monotonic_ns()}.parquet"
    with server.client(timeout_s=600) as client:
        t0 = time.perf_counter()
        report = embed_to_file(client, items, out)
        seconds = time.perf_counter() - t0
    assert report.embedded == len(items) and not report.skipped
    return len(items) / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    bundle = ensure_bundle("efficientnet-minilm", args.edge)
    with tempfile.TemporaryDirectory() as tmp:
        items = sources(job(Path(tmp), args.texts, args.images))
        server = ServerProcess(bundle)
        try:
            server.client().close()
            sat, blk = [], []
            for r in range(args.rounds):
                sat.append(asyncio.run(saturated(server.target, items)))
                blk.append(bulk(server, items, Path(tmp)))
                print(f"round {r + 1}: saturated {sat[-1]:.0f}, bulk {blk[-1]:.0f} items/s", file=sys.stderr)
        finally:
            server.stop()
    ratio = median([b / s for b, s in zip(blk, sat, strict=True)])
    data = "Flickr8k captions and photos" if CAPTIONS.is_file() else "generated captions and shapes"
    publish("bulk", [
        f"- Command: `python -m bench.bulk {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; the EfficientNet-lite0 + MiniLM-L6 bundle at default flags; "
        f"{args.texts:,} texts and {args.images:,} images ({data}); {args.rounds} rounds",
        "",
        "| client | items/s (median) | range over rounds |",
        "|---|---:|---:|",
        f"| saturated: {CLIENTS} clients, single-item Embed | {median(sat):,.0f} "
        f"| {min(sat):,.0f}–{max(sat):,.0f} |",
        f"| bulk embed to Parquet (EmbedStream, resumable parts) | {median(blk):,.0f} "
        f"| {min(blk):,.0f}–{max(blk):,.0f} |",
        "",
        f"Bulk / saturated, median of per-round ratios: {ratio:.0%} (target ≥ 90 %: "
        f"{'met' if ratio >= 0.9 else 'NOT met'}).",
    ], args.record)  # fmt: skip


if __name__ == "__main__":
    main()
