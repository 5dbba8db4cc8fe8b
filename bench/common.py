"""Helpers every benchmark shares: the machine line, the CPU time the hypervisor took (`CpuSteal`),
medians, the Flickr8k captions used as text load, and recording a table in docs/benchmarks.md
between `<!-- bench:NAME -->` markers (the rest of the page is left alone)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from runtime.cpu import cpu_isa

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
CAPTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k" / "captions.jsonl"
# The EfficientNet-lite0 + MiniLM-L6 model the benchmarks time: the shipped recipe's second stage,
# where the README's commands put it (absent: a fresh model of the same config, see bench/export.py)
EDGE_CHECKPOINT = Path("runs/flickr8k-ft/best.pt")


def captions(n: int, fallback: list[str]) -> list[str]:
    """The first n Flickr8k captions (one per image), or `fallback` repeated where the data is absent."""
    if CAPTIONS.is_file():
        rows = [json.loads(line) for line in CAPTIONS.read_text().splitlines()[:n]]
        return [r["captions"][0] if "captions" in r else r["caption"] for r in rows]
    return (fallback * (n // len(fallback) + 1))[:n]


def machine() -> str:
    """One line: the CPU with its int8 path (runtime/cpu.py: int8 numerics and speed depend on it),
    cores, memory, Python and key library versions."""
    cpu = str(cpu_isa())
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    libs = []
    for name in ("torch", "onnxruntime", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None:
            libs.append(f"{name} {mod.__version__}")
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}, "
        + ", ".join(libs)
    )


def isa_tag() -> str:
    """A block-name suffix for benchmarks whose int8 figures depend on the ISA ("avx2",
    "avx-512-vnni", ...), so that a run on one kind of machine does not overwrite the other's."""
    return cpu_isa().int8_path.lower().replace(" ", "-")


class CpuSteal:
    """The share of this machine's CPU time the hypervisor gave to other guests since `start`, from
    /proc/stat (0 where it is not readable): on a shared virtual machine this, not the code under
    test, can be what slows a phase, and a benchmark shows it beside the phase's figures."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        """(steal, all) jiffies since boot, summed over CPUs."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return 0, 0
        return fields[7], sum(fields)  # user nice system idle iowait irq softirq steal

    def percent(self) -> float:
        steal, total = (b - a for a, b in zip(self.start, self._read(), strict=True))
        return 100.0 * steal / total if total else 0.0


def median(values: list[float]) -> float:
    return statistics.median(values)


def record(name: str, body: str) -> None:
    """Replaces (or appends) the `name` block of docs/benchmarks.md with `body`."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    block = f"{start}\nRecorded {stamp}.\n\n{body.rstrip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)


def publish(name: str, lines: list[str], record_it: bool) -> None:
    """Prints a benchmark's table and, when asked, records it in docs/benchmarks.md."""
    table = "\n".join(lines)
    print(table)
    if record_it:
        record(name, table)
