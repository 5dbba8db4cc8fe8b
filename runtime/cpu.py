"""The CPU's instruction set as int8 inference sees it: which dot-product path ONNX Runtime's
integer kernels take on this machine, for the manifest (where a bundle was exported), `Info`
(where it is served) and every benchmark's machine line.

    cpu_isa()  ->  CpuIsa(arch="x86_64", int8_path="AVX2", vnni=False, model="AMD EPYC")
    str(...)   ->  "x86_64 AVX2 (no VNNI), AMD EPYC"

Why the distinction matters: x86 CPUs without VNNI multiply uint8 activations by int8 weights with
VPMADDUBSW, which adds each pair of products into a saturating int16; VNNI (VPDPBUSD) and ARM's
dot-product instructions accumulate in int32 and are exact. docs/decisions.md §5 has how the int8
graphs are built so that no kernel saturates.

    needed_session_config(graph's entries, cpu_isa())  ->  the entries a session sets on this CPU
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 flags, best first: the int8 dot-product path ONNX Runtime's kernels choose on that CPU
X86_PATHS = (
    ("amx_int8", "AMX-INT8", True),
    ("avx512_vnni", "AVX-512 VNNI", True),
    ("avx_vnni", "AVX-VNNI", True),
    ("avx512bw", "AVX-512", False),
    ("avx2", "AVX2", False),
    ("sse4_1", "SSE4.1", False),
)


@dataclass(frozen=True)
class CpuIsa:
    arch: str  # platform.machine(): "x86_64", "aarch64", ...
    int8_path: str  # "AVX-512 VNNI", "AVX2", "NEON dotprod", ... ("unknown" where undetectable)
    vnni: bool  # int8 products accumulate exactly (VNNI, AMX, ARM): no int16 saturation
    model: str  # CPU model name, "" where unknown

    def __str__(self) -> str:
        no_vnni = " (no VNNI)" if self.arch in ("x86_64", "AMD64") and not self.vnni else ""
        return f"{self.arch} {self.int8_path}{no_vnni}" + (f", {self.model}" if self.model else "")


def parse_cpuinfo(text: str, arch: str) -> CpuIsa:
    """The ISA from the text of /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model") and not model:
            model = value.strip()
    if arch in ("aarch64", "arm64"):
        if "sme" in flags:  # ONNX Runtime takes Arm's KleidiAI SME kernels for int8 GEMMs there
            return CpuIsa(arch, "SME", True, model)
        if "i8mm" in flags:
            return CpuIsa(arch, "NEON i8mm", True, model)
        if "asimddp" in flags:
            return CpuIsa(arch, "NEON dotprod", True, model)
        return CpuIsa(arch, "NEON" if "asimd" in flags else "unknown", True, model)
    for flag, name, exact in X86_PATHS:
        if flag in flags:
            return CpuIsa(arch, name, exact, model)
    return CpuIsa(arch, "unknown", False, model)


@lru_cache(maxsize=1)
def cpu_isa() -> CpuIsa:
    """This machine's ISA (read once). Outside Linux: the architecture only, path "unknown"."""
    arch = platform.machine()
    try:
        text = CPUINFO.read_text()
    except OSError:
        return CpuIsa(arch, "unknown", False, platform.processor())
    return parse_cpuinfo(text, arch)


# ONNX Runtime's exact-int8 switch turns a graph's int8 weights into uint8 and runs its u8u8 kernel
# on every x86 CPU whose u8u8 and u8s8 GEMMs differ, which includes VNNI ones: there the u8s8 kernel
# already sums in int32, so the switch changes no bit of the output and only costs speed (measured:
# docs/decisions.md §5).
ONLY_WITHOUT_VNNI = frozenset({"session.x64quantprecision"})


def needed_session_config(config: dict[str, str], isa: CpuIsa) -> dict[str, str]:
    """The session config entries a graph records (GraphSpec.session_config) that `isa` needs: all
    of them, less the exact-int8 switch where the CPU's int8 products are exact already."""
    return {k: v for k, v in config.items() if not (isa.vnni and k in ONLY_WITHOUT_VNNI)}
