"""Benchmark: the batch job (`python -m runtime.batch`) on Ray Data against the bundle's engines
called directly and against the saturated server, and bulk loads of its shards.

The EfficientNet-lite0 + MiniLM-L6 bundle, fp32. The items: `--images` Flickr8k photos (JPEG files
read in place) and `--texts` captions (rendered shapes and generated captions where the data is
absent), each modality a job of its own. In each of `--rounds` rounds, per modality, back to back:

1. direct: runtime/encoder.py's Encoder in this process, ONNX Runtime on every core, over the same
   shards — the throughput the job's actors could reach with nothing around them;
2. Ray, 1 worker of 2 CPUs and 2 workers of 1 CPU each, on one local cluster of 2 CPUs started
   once: end to end (actors starting included) and steady (from the first shard written to the
   last; the figure for a corpus of millions, where the start is amortised);
3. saturated: the server (default flags) under 64 clients sending single-item Embeds.

The target: the job's steady throughput ≥ 90 % of direct, median of per-round ratios.

Bulk load: `--load-records` vectors (the job's own vectors, repeated with noise) as shards, loaded
by `runtime.client load`'s code through the server into a built-in collection and a Milvus one
(milvus-lite: the server's own file) — records/s.

    python -m bench.batch [--images 512] [--texts 4096] [--rounds 2] [--load-records 50000] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bulk import job as write_items
from bench.bulk import saturated
from bench.common import CAPTIONS, EDGE_CHECKPOINT, machine, median, publish
from bench.serve import ensure_bundle
from runtime.batch import run
from runtime.bulk import Source, sources
from runtime.bundle import load_bundle
from runtime.config import ServeConfig
from runtime.encoder import Encoder
from runtime.launch import ServerProcess
from runtime.shards import Folder, Job

CPUS = 2  # the local Ray cluster: this machine's cores


class Clock:
    """A progress callback that keeps when each shard finished."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []  # (time, items done)

    def __call__(self, done: int, total: int, skipped: int) -> None:
        self.marks.append((time.perf_counter(), done))

    def steady(self) -> float:
        """items/s from the first shard written to the last."""
        written = [(t, n) for t, n in self.marks if n > 0]
        (t0, n0), (t1, n1) = written[0], written[-1]
        return (n1 - n0) / (t1 - t0)


def direct(encoder: Encoder, items: list[Source], shard_items: int) -> float:
    t0 = time.perf_counter()
    for k in range(0, len(items), shard_items):
        encoder.encode(items[k : k + shard_items])
    return len(items) / (time.perf_counter() - t0)


def on_ray(bundle: Path, source: Path, out: Path, shard_items: int, workers: int) -> tuple[float, float]:
    """(end-to-end, steady) items/s of one job."""
    clock = Clock()
    t0 = time.perf_counter()
    report = run(str(bundle), str(source), str(out), shard_items, workers=workers,
                 cpus_per_worker=CPUS / workers, progress=clock)  # fmt: skip
    assert not report.skipped, report.skipped[:3]
    return report.embedded / (time.perf_counter() - t0), clock.steady()


def load_rate(server: ServerProcess, folder: Path, backend: str) -> float:
    with server.client(timeout_s=600) as client:
        t0 = time.perf_counter()
        loaded = client.load_vectors(str(folder), f"load_{backend}_{time.monotonic_ns()}", backend)
        return loaded / (time.perf_counter() - t0)


def load_folder(vectors_from: Path, out: Path, n: int, shard_items: int = 1024) -> Path:
    """`n` records made of a job's vectors, repeated with noise, as a vectors folder of that model."""
    src = Folder(str(vectors_from))
    base = src.job()
    vectors = np.concatenate([s.vectors for _, s in src.shards(base)])  # (m, d)
    rng = np.random.default_rng(0)
    job = Job(base.fingerprint, base.embed_dim, 1, "bench", n, shard_items, "r0", f"r{n - 1}")
    folder = Folder(str(out))
    folder.start(job)
    for k in range(job.shards):
        rows = np.arange(k * shard_items, min(n, (k + 1) * shard_items))
        v = vectors[rows % len(vectors)] + 0.01 * rng.standard_normal((len(rows), base.embed_dim))  # (r, d)
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
        codes = np.zeros((len(rows), 1), np.int32)
        folder.write_shard(k, base.fingerprint, [f"r{i}" for i in rows], v, codes, ["{}"] * len(rows), [])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--load-records", type=int, default=50_000)
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    import ray

    bundle = ensure_bundle("efficientnet-minilm", args.edge)
    shard_items = {"images": max(1, args.images // 16), "texts": max(1, args.texts // 16)}
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = {"images": write_items(_dir(root / "images"), 0, args.images),
                "texts": write_items(_dir(root / "texts"), args.texts, 0)}  # fmt: skip
        encoder = Encoder(load_bundle(bundle), ServeConfig(bundle=str(bundle)))
        server = ServerProcess(bundle)
        ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
        try:
            server.client().close()
            for r in range(args.rounds):
                for modality, source in jobs.items():
                    items, n = sources(source), shard_items[modality]
                    rates.setdefault((modality, "direct"), []).append(direct(encoder, items, n))
                    for w in (1, 2):
                        e2e, steady = on_ray(bundle, source, root / f"out-{modality}-{w}-{r}", n, w)
                        rates.setdefault((modality, f"ray{w} e2e"), []).append(e2e)
                        rates.setdefault((modality, f"ray{w}"), []).append(steady)
                    rates.setdefault((modality, "saturated"), []).append(
                        asyncio.run(saturated(server.target, items))
                    )
                    done = ", ".join(f"{k[1]} {v[-1]:.0f}" for k, v in rates.items() if k[0] == modality)
                    print(f"round {r + 1} {modality}: {done}", file=sys.stderr)
            folder = load_folder(root / "out-texts-2-0", root / "load", args.load_records)
            loads = {
                b: [load_rate(server, folder, b) for _ in range(args.rounds)] for b in ("builtin", "milvus")
            }
        finally:
            ray.shutdown()
            server.stop()
    data = "Flickr8k photos and captions" if CAPTIONS.is_file() else "generated shapes and captions"
    lines = [
        f"- Command: `python -m bench.batch {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; ray {ray.__version__}; the EfficientNet-lite0 + MiniLM-L6 bundle, fp32, "
        f"default flags; {args.images:,} images and {args.texts:,} texts ({data}), each a job of 16 shards; "
        f"{args.rounds} rounds",
        "",
        "| path | images/s (median) | range | texts/s (median) | range |",
        "|---|---:|---:|---:|---:|",
    ]
    one, two = "Ray Data, 1 worker × 2 CPUs", "Ray Data, 2 workers × 1 CPU"
    names = {"direct": "engines called directly (Encoder, ONNX Runtime on 2 threads)",
             "ray1": f"{one}, steady", "ray1 e2e": f"{one}, end to end",
             "ray2": f"{two}, steady", "ray2 e2e": f"{two}, end to end",
             "saturated": "the server, 64 clients of single-item Embeds"}  # fmt: skip
    for key, name in names.items():
        cells = []
        for modality in ("images", "texts"):
            v = rates[(modality, key)]
            cells += [f"{median(v):,.1f}", f"{min(v):,.1f}–{max(v):,.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio (median of per-round ratios) | images | texts | target |", "|---|---:|---:|---|"]
    for key in ("ray1", "ray2", "saturated"):
        cells = []
        for modality in ("images", "texts"):
            v = [a / b for a, b in zip(rates[(modality, key)], rates[(modality, "direct")], strict=True)]
            cells.append(f"{median(v):.0%}")
        target = "≥ 90 %" if key.startswith("ray") else "-"
        lines.append(f"| {names[key]} / direct | " + " | ".join(cells) + f" | {target} |")
    lines += ["", "| bulk load through the server (packed Upserts) | records/s (median) | range |",
              "|---|---:|---:|"]  # fmt: skip
    for backend, v in loads.items():
        name = "the built-in index" if backend == "builtin" else "a Milvus collection (milvus-lite)"
        lines.append(f"| {args.load_records:,} records into {name} | {median(v):,.0f} | "
                     f"{min(v):,.0f}–{max(v):,.0f} |")  # fmt: skip
    publish("batch", lines, args.record)


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    main()
