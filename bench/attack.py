"""Benchmark: the server under hostile clients, and its footprint.

Part 1, attacks (the tiny bundle, default flags): a 200-client mixed load of small requests
(single texts, and one image in four as a 64 px PNG) runs for `--seconds` alone, then beside each
attack in turn, all in one server, `--rounds` times over:

- streams: 6 EmbedStreams each sending requests without reading a reply;
- big embeds: 100 clients each sending Embed requests of one raw-pixel image back to back;
- pixel bombs: 40 clients each sending a 115 KB PNG that decodes to 6300 x 6300.

Streams and big embeds run twice: with 16 MB requests (the probe that found the problem; the
default --max-request-bytes is 4 MiB, so gRPC refuses them from their length prefix, unread) and
with requests of exactly the largest size the defaults accept, which the in-flight budget admits.

For each phase: the load's requests and their p50/p99 latency, every status code they got, what
the attackers got, the server's peak and final resident memory (sampled every 20 ms from /proc),
and the share of the machine's CPU time the hypervisor gave to other guests meanwhile (CPU steal:
on a shared virtual machine, bursts of it slow every process at once and show as latency).
Targets: peak RSS ≤ the in-flight budget + 300 MB, the load's p99 under attack ≤ 3x its p99 alone,
none of its requests lost to anything but RESOURCE_EXHAUSTED. The p99 ratio is taken within each
round (the attack against the round's own load alone, a minute apart at most: the machine's speed
drifts) and quoted as the median and each round's over rounds.

Part 2, footprint: for each bundle (tiny, EfficientNet-lite0 + MiniLM-L6), a fresh server's
resident memory once warmed up and idle, and its peak under the 200-client load. Targets: idle ≤ 3x
the fp32 graphs' size + 150 MB, peak ≤ idle + the in-flight budget.

The load generator is an asyncio gRPC client in this process; the attackers run in a process of
their own (`--attacker KIND`, channels of their own, pre-serialized requests sent as raw bytes), as
hostile clients would, and the load starts once they say they are ready (their start-up, imports
and requests built, is not part of the attack). All share the 2 cores with the server: latencies
include that contention.

    python -m bench.attack [--seconds 10] [--rounds 3] [--tiny CKPT] [--edge CKPT] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from bench.common import EDGE_CHECKPOINT, CpuSteal, captions, machine, publish
from runtime.config import ServeConfig
from runtime.launch import ServerProcess
from runtime.proto.tessera.v1 import tessera_pb2 as pb

LOAD_CLIENTS = 200
LOAD_CHANNELS = 4  # the load's clients share these (well under the per-connection stream limit)
EMBED = "/tessera.v1.Tessera/Embed"
STREAM = "/tessera.v1.Tessera/EmbedStream"
BUDGET_MB = ServeConfig().max_inflight_mb
ATTACKS = ("streams, 16 MB", "streams, largest allowed", "big embeds, 16 MB", "big embeds, largest allowed",
           "pixel bombs")  # fmt: skip


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def load_requests() -> list[bytes]:
    """The load's requests, serialized: three single-caption texts to one small image."""
    from export.parity import SENTENCES  # here, not above: the attackers' process never imports torch

    rng = np.random.default_rng(0)
    picture = png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = []
    for i, caption in enumerate(captions(60, SENTENCES)):
        item = pb.Item(image=picture) if i % 4 == 3 else pb.Item(text=caption)
        out.append(pb.EmbedRequest(items=[item]).SerializeToString())
    return out


def big_request(nbytes: int) -> bytes:
    """An Embed of about `nbytes`: one raw-pixel square image."""
    side = int((nbytes / 3) ** 0.5) - 8  # room for the message's own bytes
    rgb = np.random.default_rng(1).integers(0, 256, side * side * 3, dtype=np.uint8).tobytes()
    return pb.EmbedRequest(
        items=[pb.Item(pixels=pb.RawImage(width=side, height=side, rgb=rgb))]
    ).SerializeToString()


def pixel_bomb() -> bytes:
    """A flat 6300 x 6300 PNG: ~115 KB on the wire, 119 MB decoded."""
    picture = png(np.full((6300, 6300, 3), 120, dtype=np.uint8))
    return pb.EmbedRequest(items=[pb.Item(image=picture)]).SerializeToString()


class RssSampler:
    """The server's resident memory every 20 ms, on a thread: peak and last."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.last = pid, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) << 10
        return 0

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.last = self.read()
            self.peak = max(self.peak, self.last)

    def __enter__(self) -> RssSampler:
        self.peak = self.last = self.read()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Phase:
    name: str
    latencies_s: list[float]
    load_codes: Counter[str]
    attack_codes: Counter[str]
    peak_rss: int
    end_rss: int
    steal_pct: float  # of the machine's CPU time during the load, taken by the hypervisor

    def p(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        return 1e3 * xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def load(
    target: str, requests: list[bytes], until: float, latencies: list[float], codes: Counter[str]
) -> None:
    """LOAD_CLIENTS clients, each sending the next request when its last is answered."""
    channels = [grpc.aio.insecure_channel(target) for _ in range(LOAD_CHANNELS)]
    calls = [c.unary_unary(EMBED) for c in channels]

    async def client(i: int) -> None:
        call, n = calls[i % LOAD_CHANNELS], i
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                await call(requests[n % len(requests)], timeout=60)
                codes["OK"] += 1
                latencies.append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.05)  # back off, as a client should
            n += LOAD_CLIENTS

    try:
        await asyncio.gather(*(client(i) for i in range(LOAD_CLIENTS)))
    finally:
        for c in channels:
            await c.close()


async def unary_attackers(
    target: str, request: bytes, clients: int, until: float, codes: Counter[str]
) -> None:
    """`clients` attackers on channels of their own, each resending `request` as soon as answered."""

    async def attacker() -> None:
        async with grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as ch:
            call = ch.unary_unary(EMBED)
            while time.monotonic() < until:
                try:
                    await call(request, timeout=60)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

    await asyncio.gather(*(attacker() for _ in range(clients)))


async def stream_attackers(
    target: str, request: bytes, streams: int, until: float, codes: Counter[str]
) -> None:
    """`streams` EmbedStreams that keep sending and never read a reply."""

    async def attacker() -> None:
        async with grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as ch:

            async def requests() -> AsyncIterator[bytes]:
                while time.monotonic() < until:
                    yield request

            call = ch.stream_stream(STREAM)(requests(), timeout=until - time.monotonic() + 30)
            try:
                await asyncio.sleep(max(0.0, until - time.monotonic()))  # sending, never reading
                codes["sent"] += 1
            finally:
                call.cancel()

    await asyncio.gather(*(attacker() for _ in range(streams)))


async def attack_for(kind: str, target: str, seconds: float, ready: Callable[[], None]) -> Counter[str]:
    """One attack (what `--attacker KIND` runs in its own process), `seconds` long from when its
    requests are built and `ready` is called; the codes it got."""
    codes: Counter[str] = Counter()
    size = 16 << 20 if "16 MB" in kind else ServeConfig().max_request_bytes
    request = pixel_bomb() if kind == "pixel bombs" else big_request(size)
    ready()
    until = time.monotonic() + seconds
    if kind.startswith("streams"):
        await stream_attackers(target, request, 6, until, codes)
    elif kind.startswith("big embeds"):
        await unary_attackers(target, request, 100, until, codes)
    elif kind == "pixel bombs":
        await unary_attackers(target, request, 40, until, codes)
    return codes


async def phase(name: str, server: ServerProcess, seconds: float, attack: str) -> Phase:
    latencies: list[float] = []
    load_codes: Counter[str] = Counter()
    attacker = None
    if attack != "none":  # in its own process: its requests do not queue behind the load's in ours
        cmd = [sys.executable, "-m", "bench.attack", "--attacker", attack, "--target", server.target,
               "--seconds", str(seconds + 1.0)]  # fmt: skip
        attacker = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert attacker.stdout is not None
        if (line := await asyncio.to_thread(attacker.stdout.readline)).strip() != "ready":
            raise RuntimeError(f"the {attack} attacker did not start: {line!r}")
        await asyncio.sleep(0.5)  # its requests under way
    until = time.monotonic() + seconds
    attack_codes: Counter[str] = Counter()
    with RssSampler(server.proc.pid) as rss:
        steal = CpuSteal()
        await load(server.target, load_requests(), until, latencies, load_codes)
        steal_pct = steal.percent()
        if attacker is not None:
            out, _ = await asyncio.to_thread(attacker.communicate, timeout=120)
            attack_codes = Counter(json.loads(out.strip().splitlines()[-1]))
        await asyncio.sleep(1.0)  # what is left once the attack stops
    return Phase(name, latencies, load_codes, attack_codes, rss.peak, rss.last, steal_pct)


def verdict(value: float, limit: float, unit: str = "") -> str:
    return f"{value:,.0f}{unit} ≤ {limit:,.0f}{unit}: {'met' if value <= limit else 'NOT met'}"


def steal_cell(phases: list[Phase]) -> str:
    return " / ".join(f"{p.steal_pct:.0f}" for p in phases)


def codes_cell(codes: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(codes.items(), key=lambda kv: -kv[1])) or "-"


def attacks(bundle: Path, seconds: float, rounds: int) -> list[str]:
    names = ("none", *ATTACKS)
    runs: dict[str, list[Phase]] = {name: [] for name in names}
    server = ServerProcess(bundle)
    try:
        server.client().close()
        for r in range(rounds):
            for name in names:
                runs[name].append(asyncio.run(phase(name, server, seconds, name)))
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        server.stop()
    rows = []
    for name, ps in runs.items():
        p99s = [p.p(0.99) for p in ps]
        answered = statistics.median(len(p.latencies_s) for p in ps)
        load_codes, attack_codes = (
            sum((p.load_codes for p in ps), Counter()),
            sum((p.attack_codes for p in ps), Counter()),
        )
        peak_mb, end_mb = max(p.peak_rss for p in ps) / 2**20, ps[-1].end_rss / 2**20
        rows.append(
            f"| {name} | {answered:,.0f} | {statistics.median(p.p(0.5) for p in ps):.1f} "
            f"/ {statistics.median(p99s):.1f} | {min(p99s):.0f}-{max(p99s):.0f} | {codes_cell(load_codes)} "
            f"| {codes_cell(attack_codes)} | {peak_mb:,.0f} | {end_mb:,.0f} | {steal_cell(ps)} |"
        )
    verdicts = []
    for attack in ATTACKS:
        ps = runs[attack]
        lost = sum(v for p in ps for k, v in p.load_codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED"))
        ratios = [p.p(0.99) / alone.p(0.99) for p, alone in zip(ps, runs["none"], strict=True)]
        ratio = statistics.median(ratios)
        verdicts.append(
            f"| {attack} | {verdict(max(p.peak_rss for p in ps) / 2**20, BUDGET_MB + 300)} "
            f"| {ratio:.1f}x ≤ 3x: {'met' if ratio <= 3 else 'NOT met'} "
            f"| {' / '.join(f'{x:.1f}x' for x in ratios)} | {steal_cell(ps)} | {lost} |"
        )
    return [
        "| phase | load requests answered (median) | load p50 / p99 ms (medians) | p99 range ms "
        "| load codes (all rounds) | attacker codes (all rounds) | peak RSS MB | RSS after MB (last round) "
        "| CPU steal %, each round |",
        "|---|---:|---:|---:|---|---|---:|---:|---|",
        *rows,
        "",
        f"| attack | peak RSS MB vs budget ({BUDGET_MB} MB) + 300 | load p99 vs alone (median over rounds) "
        f"| each round | CPU steal %, each round | load requests lost |",
        "|---|---|---|---|---|---:|",
        *verdicts,
    ]


def footprint(name: str, bundle: Path, seconds: float) -> str:
    from runtime.bundle import load_bundle

    b = load_bundle(bundle)
    weights_mb = sum(b.graph_path(k).stat().st_size for k in ("image", "text")) / 2**20
    server = ServerProcess(bundle)
    try:
        server.client().close()
        time.sleep(1.0)
        idle = RssSampler(server.proc.pid).read() / 2**20
        p = asyncio.run(phase("load", server, seconds, "none"))
    finally:
        server.stop()
    peak = p.peak_rss / 2**20
    idle_cell, peak_cell = verdict(idle, 3 * weights_mb + 150), verdict(peak, idle + BUDGET_MB)
    return f"| {name} | {weights_mb:.0f} | {idle_cell} | {peak_cell} | {len(p.latencies_s):,} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase's length")
    parser.add_argument("--rounds", type=int, default=3, help="times every phase is run, in turn")
    parser.add_argument("--tiny", type=Path, default=Path("runs/tiny-shapes/best.pt"))
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--attacker", help=argparse.SUPPRESS)  # run one attack (a child process)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attacker:
        codes = asyncio.run(
            attack_for(args.attacker, args.target, args.seconds, lambda: print("ready", flush=True))
        )
        print(json.dumps(codes))
        return
    from bench.serve import ensure_bundle  # here, not above: the attackers' process never imports torch

    tiny = ensure_bundle("tiny", args.tiny)
    lines = [
        f"- Command: `python -m bench.attack {' '.join(sys.argv[1:])}`",
        f"- Machine: {machine()}; the server at default flags (in-flight budget {BUDGET_MB} MB); load "
        f"generator in one process, attackers in another, beside it; {args.seconds:.0f} s per phase, "
        f"{args.rounds} rounds",
        "",
        "Attacks on the tiny bundle, beside 200 clients of small requests:",
        "",
        *attacks(tiny, args.seconds, args.rounds),
        "",
        "Footprint, a fresh server per bundle (resident memory, MB):",
        "",
        "| bundle | fp32 graphs MB | idle after warm-up vs 3x graphs + 150 | peak under the 200-client load "
        "vs idle + budget | load requests |",
        "|---|---:|---:|---:|---:|",
        footprint("tiny", tiny, args.seconds),
        footprint("efficientnet-minilm", ensure_bundle("efficientnet-minilm", args.edge), args.seconds),
    ]
    publish("attack", lines, args.record)


if __name__ == "__main__":
    main()
