"""The CPU's int8 path, read from /proc/cpuinfo the way each kind of machine writes it."""

from __future__ import annotations

import platform

import pytest

from runtime.cpu import CpuIsa, cpu_isa, needed_session_config, parse_cpuinfo

AMD_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes
"""
XEON_VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
flags\t\t: fpu sse4_1 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16
"""
SKYLAKE_AVX512 = (
    "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: sse4_1 avx2 avx512f avx512bw avx512vl\n"
)
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-1260P\nflags\t\t: sse4_1 avx2 avx_vnni\n"
JETSON_ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
JETSON_NANO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
GRACE = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16\n"
SME_CORE = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16 sme smei8i32\n"


@pytest.mark.parametrize(
    "text, arch, want",
    [
        (AMD_AVX2, "x86_64", CpuIsa("x86_64", "AVX2", False, "AMD EPYC")),
        (XEON_VNNI, "x86_64", CpuIsa("x86_64", "AVX-512 VNNI", True, "Intel(R) Xeon(R) Processor @ 2.50GHz")),
        (SKYLAKE_AVX512, "x86_64", CpuIsa("x86_64", "AVX-512", False, "Intel(R) Xeon(R) Gold 6148")),
        (ALDER_LAKE, "x86_64", CpuIsa("x86_64", "AVX-VNNI", True, "12th Gen Intel(R) Core(TM) i7-1260P")),
        (JETSON_ORIN, "aarch64", CpuIsa("aarch64", "NEON dotprod", True, "")),
        (JETSON_NANO, "aarch64", CpuIsa("aarch64", "NEON", True, "")),
        (GRACE, "aarch64", CpuIsa("aarch64", "NEON i8mm", True, "")),
        (SME_CORE, "aarch64", CpuIsa("aarch64", "SME", True, "")),
        ("", "x86_64", CpuIsa("x86_64", "unknown", False, "")),
    ],
)
def test_the_int8_path_is_read_from_cpuinfo(text: str, arch: str, want: CpuIsa) -> None:
    assert parse_cpuinfo(text, arch) == want


def test_the_one_line_names_the_missing_vnni_on_x86_only() -> None:
    assert str(parse_cpuinfo(AMD_AVX2, "x86_64")) == "x86_64 AVX2 (no VNNI), AMD EPYC"
    assert str(parse_cpuinfo(XEON_VNNI, "x86_64")).startswith("x86_64 AVX-512 VNNI, Intel")
    assert str(parse_cpuinfo(JETSON_ORIN, "aarch64")) == "aarch64 NEON dotprod"


def test_this_machine_is_read() -> None:
    isa = cpu_isa()
    assert isa.arch == platform.machine() and isa.int8_path


@pytest.mark.parametrize(
    ("text", "arch", "kept"),
    [(AMD_AVX2, "x86_64", True), ("", "x86_64", True), (XEON_VNNI, "x86_64", False),
     (ALDER_LAKE, "x86_64", False), (JETSON_ORIN, "aarch64", False)],
)  # fmt: skip
def test_the_exact_int8_switch_is_set_only_where_products_can_clip(text: str, arch: str, kept: bool) -> None:
    graph = {"session.x64quantprecision": "1", "session.other": "x"}
    want = graph if kept else {"session.other": "x"}
    assert needed_session_config(graph, parse_cpuinfo(text, arch)) == want
