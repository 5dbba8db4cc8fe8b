"""Benchmark: the built-in index at a million vectors against FAISS, quiet and beside a busy neighbour.

Data: the shipped model's own embeddings (the EfficientNet-lite0 + MiniLM bundle, d 512): Flickr8k
dev captions and images through its ONNX graphs are the anchors; the collection is anchor + Gaussian
noise, renormalised, replicated to --size vectors; held-out real caption embeddings are the queries.
The built-in index routes by the bundle's learned codebook (K = 256, split into sub-lists as codes
grow: runtime/index/builtin.py); FAISS's IVF by its own k-means (1,024 lists).

Measured twice — alone, and with a CPU-bound process running beside it (the realistic case on a
shared host) — all at default flags (the server as `runtime serve` starts; FAISS as imported):
- in-process: built-in exact and routed (an nprobe sweep), FAISS IndexFlatIP, IndexIVFFlat 1024
  (nprobe sweep), IndexHNSWFlat 32 (efSearch sweep): recall@10 against exact, p50/p99 of one query
  at a time; throughput of batches of BATCH queries; built-in ingest records/s (fsync always);
- over gRPC: a `runtime serve` process fed by the Python client (requests of INGEST_BATCH vectors,
  UPSERT_IN_FLIGHT outstanding): ingest records/s, the server's RSS after ingest and its peak,
  exact and routed p50/p99.

    python -m bench.search [--size 1000000] [--queries 200] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import CAPTIONS, EDGE_CHECKPOINT, machine, publish
from bench.serve import ensure_bundle
from runtime.bundle import Bundle, load_bundle
from runtime.client import UPSERT_IN_FLIGHT, UPSERT_ITEMS
from runtime.index.base import CollectionSpec
from runtime.index.builtin import BuiltinCollection
from runtime.index.scan import KERNEL, set_policy
from runtime.launch import ServerProcess
from runtime.preprocess import ImageDecoder, TextTokenizer

NPROBES = (8, 12, 16, 24, 32, 64)  # built-in lists (codes, or sub-lists of about 512 vectors)
IVF_LISTS, IVF_NPROBES = 1024, (6, 8, 12, 16, 32, 64)
HNSW_M, HNSW_EFS = 32, (16, 64, 256, 1024)
BATCH = 64  # queries per batched call
INGEST_BATCH = UPSERT_ITEMS  # records per upsert, in-process and per request over gRPC (the default limit)

NOISE = 0.35  # noise norm relative to the unit anchor; neighbours of one anchor stay close


def real_embeddings(bundle: Bundle, n_texts: int, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(caption embeddings (n_texts, d), image embeddings (n_images, d)) of Flickr8k dev data."""
    rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines()]
    rows = [r for r in rows if r.get("split") == "dev"] or rows
    captions = [c for r in rows for c in r["captions"]][:n_texts]
    tok = TextTokenizer(bundle, 8192)
    text = ort.InferenceSession(str(bundle.graph_path("text")), providers=["CPUExecutionProvider"])
    texts = []
    for i in range(0, len(captions), 128):
        ids, mask = tok.pad([tok.encode(c) for c in captions[i : i + 128]])
        texts.append(text.run(None, {"input_ids": ids, "attention_mask": mask})[0])
    decoder = ImageDecoder.for_bundle(bundle, 10**8)
    image = ort.InferenceSession(str(bundle.graph_path("image")), providers=["CPUExecutionProvider"])
    root = CAPTIONS.parent / "images"
    images = []
    for i in range(0, min(n_images, len(rows)), 32):
        pixels = np.stack([decoder.decode((root / r["image"]).read_bytes()) for r in rows[i : i + 32]])
        images.append(image.run(None, {"pixels": pixels})[0])
    return np.concatenate(texts), np.concatenate(images)[:n_images]


def synthetic(anchors: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, anchors.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.normal(size=(m, anchors.shape[1])).astype(np.float32) * (
            NOISE / np.sqrt(anchors.shape[1])
        )
        x = anchors[rng.integers(0, len(anchors), m)] + noise  # (m, d)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentiles(times_s: list[float]) -> tuple[float, float]:
    t = np.asarray(times_s) * 1e3
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def recall(got: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)]))


def one_at_a_time(search: Callable[[int], list[int]], n_queries: int) -> tuple[list[list[int]], list[float]]:
    """Top-10 ids and seconds of each query, one at a time."""
    got, times = [], []
    for i in range(n_queries):
        t0 = time.perf_counter()
        got.append(search(i))
        times.append(time.perf_counter() - t0)
    return got, times


def per_second(run_batch: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    """Queries per second when they come BATCH at a time (the best of two passes)."""
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        for s in range(0, len(queries), BATCH):
            run_batch(queries[s : s + BATCH])
        best = max(best, len(queries) / (time.perf_counter() - t0))
    return best


@contextlib.contextmanager
def neighbour(busy: bool) -> Iterator[None]:
    """Another process spinning one core for as long as the block runs (or none)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) of a process, MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return int(kb["VmRSS"]) / 1024, int(kb["VmHWM"]) / 1024


class Run:
    """One condition (quiet or busy): its table rows and the figures the targets are judged on."""

    def __init__(self, label: str) -> None:
        self.label, self.rows, self.figures = label, [], {}

    def row(self, index: str, setting: str, rec: float, times: list[float] | None, qps: float | None) -> None:
        p50, p99 = percentiles(times) if times else (float("nan"), float("nan"))
        self.rows.append(
            f"| {self.label} | {index} | {setting} | {rec:.3f} | {p50:.2f} | {p99:.2f} | "
            + (f"{qps:,.0f} |" if qps else "- |")
        )
        self.figures[(index, setting)] = (rec, p50, p99)


def builtin_in_process(run: Run, vectors: np.ndarray, queries: np.ndarray, codebook: np.ndarray,
                       fingerprint: str) -> list[list[int]]:  # fmt: skip
    n, d = vectors.shape
    codes = (vectors @ codebook.T).argmax(axis=1).astype(np.int32)  # (n,) the top code, as the server assigns
    q_scores = queries @ codebook.T  # (Q, K)
    ids = [str(i) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        coll = BuiltinCollection(
            CollectionSpec("bench", "builtin", d, codebook.shape[0], fingerprint), Path(tmp)
        )
        t0 = time.perf_counter()
        for s in range(0, n, INGEST_BATCH):
            e = s + INGEST_BATCH
            coll.upsert(ids[s:e], vectors[s:e], codes[s:e], ["{}"] * len(ids[s:e]))
        run.figures["ingest in-process"] = n / (time.perf_counter() - t0)
        coll.wait_for_snapshot()  # the one ingest started: measure search, not the end of ingest
        sizes = coll.list_sizes()
        run.figures["lists"] = (len(sizes), int(sizes.max()), float(np.median(sizes[sizes > 0])))

        def one(nprobe: int) -> Callable[[int], list[int]]:
            return lambda i: [
                int(h.id) for h in coll.search(queries[i : i + 1], 10, nprobe, q_scores[i : i + 1])[0][0]
            ]

        exact, times = one_at_a_time(one(0), len(queries))
        reference = np.argsort(-(vectors @ queries[:3].T), axis=0)[:10].T  # (3, 10) numpy top-10
        assert exact[:3] == reference.tolist(), "built-in exact differs from numpy"
        qps = per_second(lambda b: coll.search(b, 10, 0, b @ codebook.T), queries)
        run.row("built-in exact", "-", 1.0, times, qps)
        for nprobe in NPROBES:
            got, times = one_at_a_time(one(nprobe), len(queries))
            qps = per_second(lambda b, p=nprobe: coll.search(b, 10, p, b @ codebook.T), queries)
            run.row("built-in routed", f"nprobe {nprobe}", recall(got, exact), times, qps)
        coll.destroy()
    return exact


def faiss_indexes(vectors: np.ndarray) -> dict[str, object]:
    import faiss

    d = vectors.shape[1]
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, IVF_LISTS, faiss.METRIC_INNER_PRODUCT)
    ivf.train(
        vectors[
            np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * IVF_LISTS), replace=False)
        ]
    )
    ivf.add(vectors)
    hnsw = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(vectors)
    return {"flat": flat, "ivf": ivf, "hnsw": hnsw}


@contextlib.contextmanager
def faiss_defaults() -> Iterator[None]:
    """FAISS as a user imports it: OpenMP and its BLAS on every core (the server's one-thread policy,
    applied to this process for the built-in rows, is lifted meanwhile)."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    with threadpool_limits(limits=os.cpu_count() or 1, user_api="blas"):
        yield
    faiss.omp_set_num_threads(1)


def faiss_runs(run: Run, indexes: dict[str, object], queries: np.ndarray, exact: list[list[int]]) -> None:
    import faiss

    def one(index: object) -> Callable[[int], list[int]]:
        return lambda i: index.search(queries[i : i + 1], 10)[1][0].tolist()  # type: ignore[attr-defined]

    def batch(index: object) -> Callable[[np.ndarray], object]:
        return lambda b: index.search(b, 10)  # type: ignore[attr-defined]

    flat, ivf, hnsw = indexes["flat"], indexes["ivf"], indexes["hnsw"]
    got, times = one_at_a_time(one(flat), len(queries))  # under the one-thread policy: the kernel alone
    run.row("FAISS Flat, 1 thread", "-", recall(got, exact), times, None)
    assert faiss.omp_get_max_threads() == 1
    with faiss_defaults():
        got, times = one_at_a_time(one(flat), len(queries))
        run.row("FAISS Flat", "-", recall(got, exact), times, per_second(batch(flat), queries))
        for nprobe in IVF_NPROBES:
            ivf.nprobe = nprobe  # type: ignore[attr-defined]
            got, times = one_at_a_time(one(ivf), len(queries))
            qps = per_second(batch(ivf), queries)
            run.row("FAISS IVFFlat 1024", f"nprobe {nprobe}", recall(got, exact), times, qps)
        for ef in HNSW_EFS:
            hnsw.hnsw.efSearch = ef  # type: ignore[attr-defined]
            got, times = one_at_a_time(one(hnsw), len(queries))
            qps = per_second(batch(hnsw), queries)
            run.row("FAISS HNSW32", f"efSearch {ef}", recall(got, exact), times, qps)


def over_grpc(run: Run, bundle: Path, vectors: np.ndarray, queries: np.ndarray, exact: list[list[int]],
              nprobe: int) -> None:  # fmt: skip
    server = ServerProcess(bundle)  # default flags
    try:
        client = server.client(timeout_s=600)
        client.create_collection("bench")
        run.figures["rss idle"] = memory_mb(server.proc.pid)[0]  # the engines' share: the model, not the data
        t0 = time.perf_counter()
        for s in range(0, len(vectors), 100 * INGEST_BATCH):  # the client splits and pipelines requests
            client.upsert(
                "bench",
                [(str(i), vectors[i], None) for i in range(s, min(s + 100 * INGEST_BATCH, len(vectors)))],
            )
        run.figures["ingest gRPC"] = len(vectors) / (time.perf_counter() - t0)
        run.figures["rss"] = memory_mb(server.proc.pid)
        for setting, p in (("-", 0), (f"nprobe {nprobe}", nprobe)):
            got, times = one_at_a_time(
                lambda i, p=p: [int(h[0]) for h in client.search("bench", queries[i], top_k=10, nprobe=p)],
                len(queries),
            )
            run.row("built-in over gRPC", setting, recall(got, exact), times, None)
        run.figures["rss"] = (run.figures["rss"][0], memory_mb(server.proc.pid)[1])
    finally:
        server.stop(timeout_s=600)


def verdicts(run: Run, data_mb: float) -> list[str]:
    """The issue's targets at this size, judged from this condition's own figures."""
    f = run.figures
    exact, flat, one = f[("built-in exact", "-")], f[("FAISS Flat", "-")], f[("FAISS Flat, 1 thread", "-")]
    routed = [v for k, v in f.items() if isinstance(k, tuple) and k[0] == "built-in routed" and v[0] >= 0.95]
    ivf = [v for k, v in f.items() if isinstance(k, tuple) and k[0] == "FAISS IVFFlat 1024" and v[0] >= 0.95]
    ours = min(routed, key=lambda v: v[1]) if routed else None
    theirs = min(ivf, key=lambda v: v[1]) if ivf else None
    mine = [v for k, v in f.items() if isinstance(k, tuple) and k[0].startswith("built-in")]
    worst_tail = max(v[2] / v[1] for v in mine)
    rss, peak = f["rss"]
    lines = [
        f"- {run.label}: exact {exact[1]:.1f} ms p50 vs FAISS Flat {flat[1]:.1f} ms: "
        f"{exact[1] / flat[1]:.2f}x (target ≤ 1.1x); vs FAISS Flat on one thread {one[1]:.1f} ms: "
        f"{exact[1] / one[1]:.2f}x",
        f"- {run.label}: routed at recall@10 ≥ 0.95: "
        + (f"{ours[1]:.2f} ms (recall {ours[0]:.3f})" if ours else "not reached")
        + " vs FAISS IVFFlat "
        + (f"{theirs[1]:.2f} ms (recall {theirs[0]:.3f})" if theirs else "not reached")
        + (f": {ours[1] / theirs[1]:.2f}x (target ≤ 1.5x)" if ours and theirs else ""),
        f"- {run.label}: worst p99/p50 of the built-in rows {worst_tail:.1f} (target ≤ 3)",
        f"- {run.label}: server RSS after ingest {rss:,.0f} MB, peak {peak:,.0f} MB, against "
        f"1.3 × {data_mb:,.0f} MB of vectors + 300 = {1.3 * data_mb + 300:,.0f} MB; above the idle "
        f"server's {f['rss idle']:,.0f} MB (the model): {(rss - f['rss idle']) / data_mb:.2f} × the vectors",
        f"- {run.label}: ingest over gRPC {f['ingest gRPC']:,.0f} records/s, in-process "
        f"{f['ingest in-process']:,.0f}: {f['ingest gRPC'] / f['ingest in-process']:.0%} (target ≥ 50%)",
        f"- {run.label}: built-in lists {f['lists'][0]:,}, the largest {f['lists'][1]:,} vectors, "
        f"median {f['lists'][2]:,.0f}",
    ]
    return lines


def dataset(
    edge: Path, size: int, n_queries: int
) -> tuple[Path, Bundle, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bundle folder, bundle, codebook (K, d), anchors (A, d), queries (Q, d), vectors (size, d)):
    the shipped bundle's real embeddings, its held-out captions as queries, and the synthetic
    collection around the rest."""
    bundle_dir = ensure_bundle("efficientnet-minilm", edge)
    bundle = load_bundle(bundle_dir)
    codebook = np.load(bundle.path(bundle.manifest.codebook))
    cached = bundle_dir.parent / f"search-anchors-{bundle.manifest.fingerprint[:12]}-{n_queries}.npz"
    if not cached.is_file():  # the real embeddings take a minute to compute; they depend on the bundle only
        np.savez(cached, *real_embeddings(bundle, 3000 + n_queries, 1000))
    with np.load(cached) as z:
        texts, images = z["arr_0"], z["arr_1"]
    anchors, queries = np.concatenate([texts[n_queries:], images]), texts[:n_queries]
    return bundle_dir, bundle, codebook, anchors, queries, synthetic(anchors, size, seed=size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--grpc-nprobe", type=int, default=32, help="the routed setting measured over gRPC")
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    set_policy(os.cpu_count() or 1)  # the server's policy, for the in-process built-in rows
    bundle_dir, bundle, codebook, anchors, queries, vectors = dataset(args.edge, args.size, args.queries)
    import faiss

    with faiss_defaults():
        indexes = faiss_indexes(vectors)
    lines, checks = [], []
    for label, busy in (("quiet", False), ("busy", True)):
        run = Run(label)
        with neighbour(busy):
            exact = builtin_in_process(run, vectors, queries, codebook, bundle.manifest.fingerprint)
            faiss_runs(run, indexes, queries, exact)
            over_grpc(run, bundle_dir, vectors, queries, exact, args.grpc_nprobe)
        lines += run.rows
        checks += verdicts(run, vectors.nbytes / 2**20)
        print("\n".join(run.rows + checks[-6:]), flush=True)
    out = [
        f"- Command: `python -m bench.search {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}, faiss-cpu {faiss.__version__}; built-in scan kernel: {KERNEL}",
        f"- Data: {args.size:,} vectors, d = {codebook.shape[1]}, anchor + noise (norm {NOISE}) around "
        f"{len(anchors):,} real embeddings of the shipped bundle; {args.queries} held-out caption "
        "embeddings as queries; recall@10 against built-in exact (checked equal to a numpy top-10).",
        f"- busy = a CPU-bound process spinning beside the benchmark; batches of {BATCH} queries for "
        f"queries/s; ingest in upserts of {INGEST_BATCH:,} vectors, over gRPC {UPSERT_IN_FLIGHT} requests "
        "in flight (fsync always, the default).",
        "",
        "| host | index | setting | recall@10 | p50 ms | p99 ms | batched queries/s |",
        "|---|---|---|---:|---:|---:|---:|",
        *lines,
        "",
        *checks,
    ]
    publish("search", out, args.record)


if __name__ == "__main__":
    main()
