"""Benchmark of numerics, not speed: the int8 graphs' check on ARM CPUs, emulated.

No ARM machine is at hand, but QEMU's user-mode emulation executes the aarch64 instructions ONNX
Runtime's int8 kernels use (NEON, the dot products, i8mm, SVE, SME) with their exact semantics. So
each bundle is exported here, natively, and then `python -m runtime check` — the check `serve
--int8` makes at start (runtime/selfcheck.py) — runs under an aarch64 Python with aarch64 wheels of
the same numpy and ONNX Runtime, once per emulated CPU:

    cortex-a57       NEON without dot products (Jetson Nano, TX2)
    neoverse-n1      NEON + dot products (as Jetson Orin's Cortex-A78AE)
    max,sme=off      + i8mm and SVE (as Graviton 3/4, Jetson Thor's Neoverse V3AE)
    max              + SME (QEMU 7.2's SME emulation; Apple M4-class cores)

Speed under emulation means nothing and is not reported. The emulated Python is Debian's arm64
python3.11 with its libraries, unpacked (no chroot) into SYSROOT together with the wheels;
`/proc/cpuinfo` is redirected there too (qemu's `-L`), written to match each CPU, because ONNX
Runtime's CPU probe cannot parse the host's x86 one. Needs root once, for `dpkg
--add-architecture arm64` and `apt-get install qemu-user-static`.

    python -m bench.arm_int8 [--tiny CKPT] [--edge CKPT] [--cpus cortex-a57,max] [--record]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from bench.common import EDGE_CHECKPOINT, machine, publish

REPO = Path(__file__).resolve().parents[1]
SYSROOT = Path.home() / ".cache" / "tessera" / "arm64"
DEBS = [  # Debian's arm64 python3.11 and what it and ONNX Runtime's libraries load
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g",
    "libffi8", "libssl3", "libstdc++6", "libgcc-s1", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1",
    "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libnsl2", "libtirpc3", "libgssapi-krb5-2",
    "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1", "libdb5.3", "libgdbm6",
]  # fmt: skip
CPUS = {  # qemu -cpu -> (what it stands for, the /proc/cpuinfo Features and CPU part it gets)
    "cortex-a57": ("Jetson Nano / TX2", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "0xd07"),
    "neoverse-n1": (
        "Jetson Orin's A78AE",
        "fp asimd aes pmull sha1 sha2 crc32 atomics asimdrdm asimddp",
        "0xd0c",
    ),
    "max,sme=off": (
        "Graviton 3/4, Thor",
        "fp asimd aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm",
        "0xd0c",
    ),
    "max": ("SME cores", "fp asimd aes pmull sha1 sha2 crc32 atomics asimddp sve i8mm sme", "0xd0c"),
}
CHECK_LINE = re.compile(r"^(image|text) int8 graph \S+: min cosine (-?[\d.]+) .* on this CPU \((.*)\)$")


def sysroot(root: Path) -> Path:
    """The aarch64 python3.11 with numpy and onnxruntime, built once under `root`."""
    python = root / "usr" / "bin" / "python3.11"
    if python.exists() and (root / "site" / "onnxruntime").is_dir():
        return python
    if "arm64" not in subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                     text=True).stdout:  # fmt: skip
        subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-qq", *(f"{p}:arm64" for p in DEBS)], cwd=debs, check=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    import numpy
    import onnxruntime

    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
                    "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_aarch64", "--platform",
                    "manylinux2014_aarch64", "-d", str(wheels), f"onnxruntime=={onnxruntime.__version__}",
                    f"numpy=={numpy.__version__}"], check=True)  # fmt: skip
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(root / "site")
    return python


def run_check(cmd: list[str], env: dict[str, str] | None) -> dict[str, tuple[float, str]]:
    """`python -m runtime check`'s lines: modality -> (min cosine, the CPU it names)."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=3600).stdout
    return {m[1]: (float(m[2]), m[3]) for line in out.splitlines() if (m := CHECK_LINE.match(line))}


def emulated(python: Path, root: Path, cpu: str, bundle: Path) -> dict[str, tuple[float, str]]:
    """The check under the emulated CPU, its /proc/cpuinfo written to match."""
    _, features, part = CPUS[cpu]
    block = "processor\t: {}\nFeatures\t: {}\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: {}\n"
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc" / "cpuinfo").write_text("\n".join(block.format(n, features, part) for n in range(2)))
    cmd = ["qemu-aarch64-static", "-cpu", cpu, "-L", str(root), str(python), "-m", "runtime", "check",
           "--bundle", str(bundle)]  # fmt: skip
    return run_check(cmd, {"PYTHONPATH": f"{root / 'site'}:{REPO}", "PATH": "/usr/bin:/bin"})


def exported(name: str, checkpoint: Path, out: Path) -> Path:
    """`python -m export --int8` of the checkpoint (a fresh model of its config where absent)."""
    from bench.export import fresh_checkpoint

    if not checkpoint.is_file():
        checkpoint = out / f"{name}.pt"
        fresh_checkpoint(name, checkpoint)
    bundle = out / name
    cmd = [sys.executable, "-m", "export", str(checkpoint), "--out", str(bundle), "--int8"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return bundle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", type=Path, default=Path("runs/tiny-shapes/best.pt"))
    parser.add_argument("--edge", type=Path, default=EDGE_CHECKPOINT)
    parser.add_argument("--cpus", default=",".join(CPUS), help="qemu CPU models, comma-separated")
    parser.add_argument("--sysroot", type=Path, default=SYSROOT)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("qemu-aarch64-static") is None:
        sys.exit("qemu-aarch64-static not found: apt-get install qemu-user-static")
    python = sysroot(args.sysroot)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ckpt in (("tiny", args.tiny), ("efficientnet-minilm", args.edge)):
            bundle = exported(name, ckpt, Path(tmp))
            native = [sys.executable, "-m", "runtime", "check", "--bundle", str(bundle)]
            runs = [("this machine, natively", run_check(native, None))]
            for cpu in [c for c in args.cpus.split(",") if c]:
                runs.append((f"`{cpu}` ({CPUS[cpu][0]})", emulated(python, args.sysroot, cpu, bundle)))
            for where, result in runs:
                cells = [f"{result[m][0]:.4f}" if m in result else "failed to run" for m in ("image", "text")]
                isa = next((isa for _, isa in result.values()), "?")
                rows.append(f"| {name} | {where} | {isa} | {' | '.join(cells)} |")
    lines = [
        f"- Command: `python -m bench.arm_int8 {' '.join(sys.argv[1:])}`",
        f"- Exported on: {machine()}; checked under qemu-aarch64 (user mode) with aarch64 wheels of "
        "the same ONNX Runtime and numpy; cosines are `python -m runtime check`'s (threshold 0.99)",
        "",
        "| bundle | CPU | int8 path it reads | image int8 min cosine | text int8 min cosine |",
        "|---|---|---|---:|---:|",
        *rows,
    ]
    publish("arm_int8", lines, args.record)


if __name__ == "__main__":
    main()
