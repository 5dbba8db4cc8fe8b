"""Benchmark: search over the built-in collection against FAISS, and upsert throughput.

Data (d = the EfficientNet-lite0 + MiniLM bundle's 256): anchors are real embeddings — Flickr8k
dev captions and images run through the bundle's ONNX graphs; the 100k and 1M collections are
clustered synthetic vectors drawn around those anchors (anchor + Gaussian noise, renormalised);
queries are held-out real caption embeddings. Each vector's list is its top code in the bundle's
learned codebook (K = 256), as the server assigns it.

On the same vectors, one query at a time (latency p50/p99 over the queries, recall@10 against exact):
- built-in exact (nprobe 0) and codebook-routed search, nprobe 1, 4, 16, 32, 64;
- FAISS IndexFlatIP, and IndexIVFFlat with k-means lists (nlist = K) at the same nprobe.
Then upsert throughput of the built-in collection, records/s, fsync always vs never, for single
records and batches of 256.

    python -m bench.search [--sizes 100000 1000000] [--queries 200] [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.common import CAPTIONS, EDGE_CHECKPOINT, machine, publish
from bench.serve import ensure_bundle
from runtime.bundle import Bundle, load_bundle
from runtime.index.base import CollectionSpec
from runtime.index.builtin import BuiltinCollection
from runtime.preprocess import ImageDecoder, TextTokenizer

NPROBES = (1, 4, 16, 32, 64)
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
    decoder = ImageDecoder(bundle.manifest.image.size_px, 10**8)
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
    t = np.sort(np.asarray(times_s)) * 1e3
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def recall(got: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)]))


def run_faiss(index: object, queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Top-10 ids and seconds of each query, one at a time."""
    got, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, idx = index.search(q[None], 10)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t0)
        got.append(idx[0].tolist())
    return got, times


def bench_size(vectors: np.ndarray, queries: np.ndarray, codebook: np.ndarray, fingerprint: str) -> list[str]:
    import faiss

    n, d = vectors.shape
    k_lists = codebook.shape[0]
    codes = (vectors @ codebook.T).argmax(axis=1).astype(np.int32)  # (n,) top code = list
    q_probe = np.argsort(-(queries @ codebook.T), axis=1)  # (Q, K) codes best first
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        coll = BuiltinCollection(
            CollectionSpec("bench", "builtin", d, k_lists, fingerprint), Path(tmp), "never"
        )
        ids = [str(i) for i in range(n)]
        for s in range(0, n, 20_000):
            coll.upsert(
                ids[s : s + 20_000],
                vectors[s : s + 20_000],
                codes[s : s + 20_000],
                ["{}"] * len(ids[s : s + 20_000]),
            )

        def run_builtin(nprobe: int) -> tuple[list[list[int]], list[float]]:
            got, times = [], []
            for qi, q in enumerate(queries):
                t0 = time.perf_counter()
                hits, _ = coll.search(q, 10, None if nprobe == 0 else q_probe[qi, :nprobe])
                times.append(time.perf_counter() - t0)
                got.append([int(h.id) for h in hits])
            return got, times

        exact, t_exact = run_builtin(0)
        reference = np.argsort(-(vectors @ queries[:5].T), axis=0)[:10].T  # (5, 10) numpy top-10
        assert [e for e in exact[:5]] == reference.tolist(), "built-in exact differs from numpy"
        p50_exact, p99_exact = percentiles(t_exact)
        rows.append((f"{n:,}", "built-in exact", "-", 1.0, p50_exact, p99_exact, 1.0))
        for nprobe in NPROBES:
            got, times = run_builtin(nprobe)
            p50, p99 = percentiles(times)
            rows.append((f"{n:,}", "built-in routed", nprobe, recall(got, exact), p50, p99, p50_exact / p50))
        coll.destroy()

    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    got, times = run_faiss(flat, queries)
    p50, p99 = percentiles(times)
    rows.append((f"{n:,}", "FAISS IndexFlatIP", "-", recall(got, exact), p50, p99, p50_exact / p50))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, k_lists, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[np.random.default_rng(0).choice(n, min(n, 100 * k_lists), replace=False)])
    ivf.add(vectors)
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        got, times = run_faiss(ivf, queries)
        p50, p99 = percentiles(times)
        rows.append((f"{n:,}", "FAISS IndexIVFFlat", nprobe, recall(got, exact), p50, p99, p50_exact / p50))
    return [
        f"| {a} | {b} | {c} | {r:.3f} | {p50:.2f} | {p99:.2f} | {x:.1f}x |"
        for a, b, c, r, p50, p99, x in rows
    ]


def bench_upserts(d: int, k_lists: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows = []
    for fsync in ("always", "never"):
        for batch, n in ((1, 2000), (256, 51_200)):
            vectors = rng.normal(size=(n, d)).astype(np.float32)
            codes = rng.integers(0, k_lists, n).astype(np.int32)
            with tempfile.TemporaryDirectory() as tmp:
                coll = BuiltinCollection(
                    CollectionSpec("u", "builtin", d, k_lists, "f" * 64), Path(tmp), fsync
                )
                t0 = time.perf_counter()
                for s in range(0, n, batch):
                    ids = [f"{i}" for i in range(s, s + batch)]
                    coll.upsert(ids, vectors[s : s + batch], codes[s : s + batch], ['{"k": 1}'] * batch)
                rate = n / (time.perf_counter() - t0)
                coll.destroy()
            rows.append(f"| {fsync} | {batch} | {rate:,.0f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    bundle = load_bundle(ensure_bundle("efficientnet-minilm", args.edge))
    codebook = np.load(bundle.path(bundle.manifest.codebook))
    texts, images = real_embeddings(bundle, 3000 + args.queries, 1000)
    anchors, queries = np.concatenate([texts[args.queries :], images]), texts[: args.queries]
    rows, balance = [], []
    for n in args.sizes:
        vectors = synthetic(anchors, n, seed=n)
        sizes = np.bincount((vectors @ codebook.T).argmax(axis=1), minlength=codebook.shape[0])
        balance.append(
            f"- Codebook lists at {n:,}: {int((sizes == 0).sum())} of {len(sizes)} empty, the largest holds "
            f"{sizes.max() / n:.1%} of the vectors (uniform: {1 / len(sizes):.1%})."
        )
        rows += bench_size(vectors, queries, codebook, bundle.manifest.fingerprint)
        del vectors
    upserts = bench_upserts(codebook.shape[1], codebook.shape[0])
    lines = [
        f"- Command: `python -m bench.search {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; numpy and FAISS with their default threads; one query at a time",
        f"- Data: d = {codebook.shape[1]}, {len(anchors):,} real anchors (Flickr8k dev captions and "
        "images through the EfficientNet-lite0 + MiniLM bundle), synthetic vectors = anchor + noise "
        f"(norm {NOISE}), renormalised; {args.queries} held-out real caption embeddings as queries. "
        f"Lists: the bundle's learned codebook (K = {codebook.shape[0]}) for the built-in index, "
        "k-means (nlist = K) for FAISS IVF.",
        *balance,
        "- recall@10 against built-in exact (itself checked equal to a numpy top-10); speed-up = built-in "
        "exact p50 / this p50.",
        "",
        "| vectors | index | nprobe | recall@10 | p50 ms | p99 ms | speed-up vs exact |",
        "|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Upserts into the built-in collection (write-ahead log, d = 256, JSON payload):",
        "",
        "| fsync | records per upsert | records/s |",
        "|---|---:|---:|",
        *upserts,
    ]
    publish("search", lines, args.record)


if __name__ == "__main__":
    main()
