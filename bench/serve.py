"""Benchmark: the server against ONNX Runtime called directly, on this CPU.

For the tiny shapes bundle and the EfficientNet-lite0 + MiniLM-L6 bundle (exported from `--tiny`,
`--edge` checkpoints into runs/bench/, reused when present), side by side: the three servers and
the floor below run at once, and each of `--rounds` rounds measures, back to back, direct ONNX
Runtime and every server, so that ratios are taken within a round (this shared host drifts by
tens of percent between minutes) and reported as medians over rounds:

1. direct: ONNX Runtime on the bundle's fp32 graphs at batch 32, and at the mean batch size the
   saturated server formed ("at the same batch size"), medians of repeats — items/s;
2. served: `python -m runtime serve` (max batch 32, max wait 5 ms) at saturation, 64 concurrent
   clients each sending single-item Embed requests back to back — items/s; for text also with
   --whole-text-batches (each batch one engine call padded to its longest, no length split);
3. unbatched: the same server with --max-batch-size 1;
4. latency: requests paced at half the saturated rate (open loop, evenly spaced) — p50/p99,
   against the bound 2 x (one batch-32 engine call + max wait);
5. where a request's CPU goes: the transport floor (bench/grpc_floor.py, a gRPC server answering
   with a canned response, saturated by the same load generator with the same requests), the CPU
   per request of server and client processes in both, the transport-bound ceiling
   (1 / (1/floor + 1/direct): engine and transport sharing the same cores), and Tessera's own Python
   per request with the engine replaced by an instant one (no transport; min of repeats).

Images travel as raw pixels at the model's size (what the direct call gets, so the comparison is
the serving overhead, not JPEG decoding); texts are Flickr8k captions (or built-in sentences).
The load generator is one asyncio gRPC client in this process: on 2 cores it shares the CPU with
the server, as a co-located client would.

    python -m bench.serve [--duration-s 8] [--rounds 4] [--tiny CKPT] [--edge CKPT] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench.common import EDGE_CHECKPOINT, REPO_ROOT, captions, machine, median, publish
from bench.export import fresh_checkpoint
from export.parity import SENTENCES
from runtime.bundle import Bundle, load_bundle, sha256_file
from runtime.config import ServeConfig
from runtime.embedder import Embedder
from runtime.engines import EngineSet
from runtime.errors import BundleError
from runtime.grpc_api import Servicer
from runtime.launch import ServerProcess as Server
from runtime.metrics import Metrics
from runtime.preprocess import TextTokenizer
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from runtime.service import Service
from runtime.textsplit import measure_call_tokens, split_by_length, text_probe
from train.data.shapes import render, scene

CLIENTS = 64
BATCH = 32
MAX_WAIT_MS = 5.0


def ensure_bundle(name: str, checkpoint: Path, int8: bool = False) -> Path:
    """runs/bench/bundle-NAME (-int8: with int8 graphs too) exported from `checkpoint` (a fresh model
    of the same towers where the file is absent); reused only while it was exported from that very
    checkpoint."""
    from export.pipeline import Exporter, ExportOptions

    out = Path("runs/bench") / f"bundle-{name}{'-int8' if int8 else ''}"
    if (out / "manifest.json").is_file():
        try:
            made_from = load_bundle(out).manifest.provenance.get("checkpoint_sha256")
        except BundleError:  # an older schema, or damaged: export again
            made_from = None
        else:
            if not checkpoint.is_file() or made_from == sha256_file(checkpoint):
                return out
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint
        if not checkpoint.is_file():
            ckpt = Path(tmp) / "model.pt"
            fresh_checkpoint(name, ckpt)
        Exporter(ExportOptions(ckpt, out, max_batch=BATCH, int8=int8, force=True), lambda _: None).run()
    return out


def items(bundle: Bundle, modality: str, n: int) -> list[pb.Item]:
    if modality == "text":
        return [pb.Item(text=t) for t in captions(n, SENTENCES)]
    s = bundle.manifest.image.size_px
    pics = [np.asarray(render(scene(1, "bench", i % 64), s), dtype=np.uint8) for i in range(n)]
    return [pb.Item(pixels=pb.RawImage(width=s, height=s, rgb=p.tobytes())) for p in pics]


class Direct:
    """ONNX Runtime called directly on one bundle graph, inputs prepared as the server prepares them:
    texts tokenised and padded to the batch's longest, or (`split`) one call per length group as
    runtime/textsplit.py cuts it; images as uint8 pixels."""

    def __init__(self, bundle: Bundle, modality: str, pool: list[pb.Item]) -> None:
        self.modality, self.pool = modality, pool
        self.session = ort.InferenceSession(
            str(bundle.graph_path(modality)), providers=["CPUExecutionProvider"]
        )
        self.size_px = bundle.manifest.image.size_px
        self.tokenizer = TextTokenizer(bundle, 8192)
        self.call_tokens = 0
        if modality == "text":
            probe = text_probe(lambda feeds: self.session.run(None, feeds))
            self.call_tokens = measure_call_tokens(probe, BATCH, self.tokenizer.max_len)

    def items_per_s(self, n: int, repeats: int, split: bool = False) -> float:
        """Median items/s over `repeats` timed runs of the pool's first n items (after one warm-up)."""
        feeds = self.feeds(self.pool[:n], split)
        for feed in feeds:
            self.session.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for feed in feeds:
                self.session.run(None, feed)
            times.append(time.perf_counter() - t0)
        return n / median(times)

    def feeds(self, batch: list[pb.Item], split: bool) -> list[dict[str, np.ndarray]]:
        if self.modality != "text":
            s = self.size_px
            pixels = [np.frombuffer(i.pixels.rgb, np.uint8).reshape(s, s, 3) for i in batch]
            return [{"pixels": np.stack(pixels)}]  # (B, S, S, 3)
        rows = [self.tokenizer.encode(i.text) for i in batch]
        groups = (
            split_by_length([len(r) for r in rows], self.call_tokens) if split else [list(range(len(rows)))]
        )
        feeds = []
        for g in groups:
            ids, mask = self.tokenizer.pad([rows[i] for i in g])  # (G, L) each
            feeds.append({"input_ids": ids, "attention_mask": mask})
        return feeds


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


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def saturate_cpu(
    target: str, server_pid: int, pool: list[pb.Item], duration_s: float
) -> tuple[float, float, float]:
    """`saturate`, plus the CPU µs per request it cost the server process and this client process."""
    own0, srv0 = resource.getrusage(resource.RUSAGE_SELF), process_cpu_s(server_pid)
    t0 = time.perf_counter()
    rate = asyncio.run(saturate(target, pool, duration_s))
    n = rate * (time.perf_counter() - t0)  # requests (the warm-up call is not counted)
    own1, srv1 = resource.getrusage(resource.RUSAGE_SELF), process_cpu_s(server_pid)
    client_s = own1.ru_utime + own1.ru_stime - own0.ru_utime - own0.ru_stime
    return rate, 1e6 * (srv1 - srv0) / n, 1e6 * client_s / n


class FloorServer:
    """bench/grpc_floor.py as a child process: the canned-response gRPC server."""

    def __init__(self, dim: int) -> None:
        cmd = [sys.executable, "-m", "bench.grpc_floor", "--dim", str(dim)]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        port = re.search(r"listening on [\d.]+:(\d+)", self.proc.stdout.readline())
        if port is None:
            self.stop()
            raise RuntimeError("bench.grpc_floor did not start")
        self.target = f"127.0.0.1:{port.group(1)}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class InstantEngine:
    """An engine that answers at once (zeros): what is left of a request is Tessera's own Python."""

    name, precision, graph = "instant", "fp32", "-"

    def __init__(self, dim: int, codes: int) -> None:
        self.dim, self.codes = dim, codes

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = next(iter(feeds.values())).shape[0]
        return [np.zeros((rows, self.dim), np.float32), np.zeros((rows, self.codes), np.float32)]


def python_us_per_request(path: Path, pool: list[pb.Item], n: int = 2000, repeats: int = 7) -> float:
    """Event-loop CPU µs per single-item Embed through the real servicer, embedder and batcher, with
    an instant engine and no transport: 64 concurrent callers, min over repeats (noise only adds)."""

    class Context:  # the two ServicerContext methods Embed uses
        def time_remaining(self) -> float:
            return 30.0

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError(f"{code}: {details}")

    async def run() -> float:
        bundle = load_bundle(path)
        m = bundle.manifest
        cfg = ServeConfig(bundle=str(path), max_batch_size=BATCH, max_wait_ms=MAX_WAIT_MS)
        metrics = Metrics()
        embedder = Embedder(bundle, cfg, metrics)
        image, text = (InstantEngine(m.embed_dim, m.codebook_size) for _ in range(2))
        embedder.engines = EngineSet(image, text, {"image": cfg.max_batch_size, "text": cfg.max_batch_size})
        embedder.start()
        service = Service(embedder, cfg, metrics)
        service.ready = True
        servicer = Servicer(service, metrics)
        requests = [pb.EmbedRequest(items=[pool[i % len(pool)]]) for i in range(n)]

        async def caller(k: int) -> None:
            for i in range(k, n, CLIENTS):
                await servicer.Embed(requests[i], Context())

        best = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            await asyncio.gather(*(caller(k) for k in range(CLIENTS)))
            best = min(best, (time.thread_time() - t0) / n)
        await embedder.close()
        return 1e6 * best

    return asyncio.run(run())


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


@dataclass
class Round:
    """One modality's measurements in one round, taken back to back so that the host's drift
    between rounds enters every figure of the round alike."""

    direct: float  # ONNX Runtime items/s at batch 32, padded
    split: float  # the same split by length (text; = direct for images)
    served: float  # the batched server, saturated, items/s
    mean_batch: float  # the batches it formed meanwhile
    at_mean: float  # ONNX Runtime items/s at that mean batch
    unbatched: float  # --max-batch-size 1, saturated
    whole: float  # --whole-text-batches, saturated (text; nan for images)
    floor: float  # the canned-response server, saturated, requests/s
    server_us: float  # CPU µs per request: Tessera's server process (engine included)
    client_us: float  # ... and this load generator
    floor_server_us: float
    floor_client_us: float

    @property
    def best_direct(self) -> float:
        return max(self.direct, self.split)

    @property
    def ceiling(self) -> float:
        """Engine and transport sharing the same cores: their costs per item add."""
        return 1 / (1 / self.floor + 1 / self.best_direct)


def measure_round(
    modality: str,
    direct: Direct,
    servers: dict[str, Server],
    floor: FloorServer,
    burst_s: float,
    repeats: int,
) -> Round:
    pool, text = direct.pool, modality == "text"
    padded = direct.items_per_s(BATCH, repeats)
    split = direct.items_per_s(BATCH, repeats, split=True) if text else padded
    batched = servers["batched"]
    before = batched.metrics()
    served, server_us, client_us = saturate_cpu(batched.target, batched.proc.pid, pool, burst_s)
    after = batched.metrics()
    n, s = (f'tessera_batch_size_{x}{{modality="{modality}"}}' for x in ("count", "sum"))
    mean_batch = (after[s] - before.get(s, 0)) / (after[n] - before.get(n, 0))
    at_mean = direct.items_per_s(max(1, round(mean_batch)), repeats)
    unbatched = asyncio.run(saturate(servers["unbatched"].target, pool, burst_s))
    whole = asyncio.run(saturate(servers["whole"].target, pool, burst_s)) if text else math.nan
    floor_rate, floor_server_us, floor_client_us = saturate_cpu(floor.target, floor.proc.pid, pool, burst_s)
    return Round(padded, split, served, mean_batch, at_mean, unbatched, whole, floor_rate,
                 server_us, client_us, floor_server_us, floor_client_us)  # fmt: skip


def spread(values: list[float], fmt: str, unit: str = "") -> str:
    """The median, and the range over rounds where there are several: "3.1x (2.8–3.4)"."""
    mid = format(median(values), fmt) + unit
    return mid if len(values) == 1 else f"{mid} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def bench_bundle(
    name: str, path: Path, duration_s: float, rounds: int, repeats: int
) -> tuple[list[str], list[str]]:
    """The rows of both tables for one bundle: throughput and latency; where a request's CPU goes."""
    bundle = load_bundle(path)
    batched_flags = ("--max-batch-size", str(BATCH), "--max-wait-ms", str(MAX_WAIT_MS))
    flags = {
        "batched": batched_flags,
        "unbatched": ("--max-batch-size", "1", "--max-wait-ms", "0"),
        "whole": (*batched_flags, "--whole-text-batches"),
    }
    servers: dict[str, Server] = {}
    floor = FloorServer(bundle.manifest.embed_dim)
    measured: dict[str, list[Round]] = {}
    latencies: dict[str, list[float]] = {}
    try:
        for key, f in flags.items():  # all up at once: each round visits every one in turn
            servers[key] = Server(path, *f)
            servers[key].client().close()
        for modality in ("image", "text"):
            pool = items(bundle, modality, 256)
            direct = Direct(bundle, modality, pool)
            for target in (*(srv.target for srv in servers.values()), floor.target):
                asyncio.run(saturate(target, pool, 0.5))  # warm-up
            measured[modality] = [
                measure_round(modality, direct, servers, floor, duration_s / rounds, repeats)
                for _ in range(rounds)
            ]
            half = median([r.served for r in measured[modality]]) / 2
            latencies[modality] = sorted(
                asyncio.run(paced(servers["batched"].target, pool, half, duration_s))
            )
    finally:
        for srv in servers.values():
            srv.stop()
        floor.stop()
    rows, cpu_rows = [], []
    for modality, rs in measured.items():
        text = modality == "text"
        lat = latencies[modality]
        p50, p99 = 1e3 * lat[len(lat) // 2], 1e3 * lat[int(0.99 * (len(lat) - 1))]
        bound_ms = 2 * (1e3 * BATCH / median([r.direct for r in rs]) + MAX_WAIT_MS)
        col = {k: [getattr(r, k) for r in rs] for k in ("direct", "split", "at_mean", "served", "whole",
                                                         "unbatched", "mean_batch")}  # fmt: skip
        ratios = (
            spread([r.served / r.direct for r in rs], ".0%")
            + " / "
            + spread([r.served / r.at_mean for r in rs], ".0%")
        )
        if text:
            ratios += " / " + spread([r.served / r.split for r in rs], ".0%")
        cells = [name, modality, spread(col["direct"], ".0f"), spread(col["split"], ".0f") if text else "–",
                 spread(col["at_mean"], ".0f"), spread(col["served"], ".0f"),
                 spread(col["whole"], ".0f") if text else "–", ratios, spread(col["unbatched"], ".0f"),
                 spread([r.served / r.unbatched for r in rs], ".1f", "x"), spread(col["mean_batch"], ".1f"),
                 f"{p50:.1f} / {p99:.1f}", f"{bound_ms:.1f}", "texts/s" if text else "images/s"]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
        python_us = python_us_per_request(path, items(bundle, modality, 256))
        cells = [name, modality, spread([r.floor for r in rs], ".0f"), spread([r.ceiling for r in rs], ".0f"),
                 spread([r.ceiling / r.best_direct for r in rs], ".0%"),
                 spread([r.served / r.ceiling for r in rs], ".0%"),
                 f"{median([r.floor_server_us for r in rs]):.0f} / {median([r.server_us for r in rs]):.0f}",
                 f"{median([r.floor_client_us for r in rs]):.0f} / {median([r.client_us for r in rs]):.0f}",
                 f"{python_us:.0f}"]  # fmt: skip
        cpu_rows.append("| " + " | ".join(cells) + " |")
    return rows, cpu_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=8.0, help="per saturation / latency phase")
    parser.add_argument("--rounds", type=int, default=4, help="the saturation phases cut into rounds")
    parser.add_argument("--repeats", type=int, default=5, help="direct ONNX Runtime calls timed per round")
    parser.add_argument("--tiny", type=Path, default=Path("runs/tiny-shapes/best.pt"))
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--only", choices=("tiny", "efficientnet-minilm"), default=None)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows, cpu_rows, sources = [], [], []
    for name, ckpt in (("tiny", args.tiny), ("efficientnet-minilm", args.edge)):
        if args.only in (None, name):
            sources.append(
                f"{name} `{ckpt}`" + ("" if ckpt.is_file() else " (absent: a fresh model of its config)")
            )
            bundle_rows, bundle_cpu_rows = bench_bundle(
                name, ensure_bundle(name, ckpt), args.duration_s, args.rounds, args.repeats
            )
            rows += bundle_rows
            cpu_rows += bundle_cpu_rows
    lines = [
        f"- Command: `python -m bench.serve {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; server and load generator share it; ONNX Runtime CPU, fp32, all cores",
        f"- Checkpoints: {', '.join(sources)}",
        f"- Server: max batch {BATCH}, max wait {MAX_WAIT_MS:g} ms; {CLIENTS} concurrent clients, one item "
        f"per request. Images as raw pixels at the model's size; texts are Flickr8k captions.",
        f"- Side by side: the batched, unbatched and whole-batch servers and the gRPC floor run at once; "
        f"{args.rounds} rounds per input each measure, back to back, direct ONNX Runtime and then every "
        f"server saturated for {args.duration_s / args.rounds:g} s. Each cell is the median over rounds "
        "(min–max in brackets); a ratio is the median of the rounds' own ratios, so the host's drift "
        "between rounds cancels.",
        "- direct: ONNX Runtime at batch 32 padded to the longest text, the same batch split by length "
        f"as the server splits it (runtime/textsplit.py), and at the mean batch the saturated server formed "
        f"in that round (median of {args.repeats} calls). served: saturated server; whole batches: the "
        "same with --whole-text-batches (one call per batch). unbatched: --max-batch-size 1. p50/p99: "
        f"requests paced at half the median served rate for {args.duration_s:g} s; bound = 2 x (one "
        "batch-32 engine call + max wait).",
        "",
        "| bundle | input | direct items/s, batch 32 | direct, batch 32 split by length "
        "| direct, server's mean batch | served items/s | served, whole batches "
        "| served / direct (32 / mean batch / split) | unbatched items/s | batched / unbatched "
        "| mean batch | p50 / p99 ms at half load | p99 bound ms | unit |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "Where a request's CPU goes. gRPC floor: bench/grpc_floor.py (a canned response, nothing "
        "else) saturated by the same 64 clients with the same requests. Ceiling: "
        "1 / (1/floor + 1/direct at batch 32, for text the faster of padded and split), what engine "
        "and transport could reach sharing these cores (an estimate: it assumes their costs add). "
        "CPU µs per request of the server and client "
        "processes, floor / Tessera (Tessera's server figure includes the engine). Tessera's Python: "
        "event-loop CPU per single-item Embed through the real servicer, embedder and batcher with an "
        "instant engine and no transport (min of 7 runs of 2,000).",
        "",
        "| bundle | input | gRPC floor req/s | ceiling items/s | ceiling / direct | served / ceiling "
        "| server CPU µs/req, floor / Tessera | client CPU µs/req, floor / Tessera "
        "| Tessera's Python µs/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *cpu_rows,
    ]
    publish("serve", lines, args.record)


if __name__ == "__main__":
    main()
