"""Every command the README shows, in order, as printed, on the demo's outputs.

The commands run with bash in a work folder laid out as a checkout after `make demo`: `.venv` (this
interpreter's), `runs/demo` (the smoke demo's outputs), `tests/` (the README's sample image), and a
small Flickr8k-shaped dataset where `../shared/data/flickr8k` would be. Only these are adapted:

- `make …` is not run: the suite is what `make test` runs, and the demo's outputs are made by the
  smoke demo;
- `python -m train` runs get `--set optim.max_steps=2 --set optim.batch_size=8` (a few steps);
- `python -m runtime serve` starts in the background on free ports (each fixed port, and the default
  gRPC port, becomes 0), and
  the commands after it reach the latest plaintext server without keys through $TESSERA_TARGET
  and $TESSERA_HTTP; every server must start and, at the end, stop cleanly;
- a block that needs a tool this machine lacks (grpcurl, curl, jq) is skipped, and said so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.launch import HTTP, LISTEN
from tests.conftest import REPO_ROOT
from tests.helpers import issue, write_pem
from train.data.shapes import render, scene

TOOLS = ("grpcurl", "curl", "jq")
CUT = ["--set", "optim.max_steps=2", "--set", "optim.batch_size=8", "--set", "run.progress=false"]


def without_comment(line: str) -> str:
    """`line` up to its shell comment: a # outside quotes, at the start or after a blank. A README
    command's trailing comment would otherwise swallow the arguments the test appends to it."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


def bash_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks, each as its commands (continuation lines joined, comments and
    blank lines dropped)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)\n```", text, re.S):
        joined = body.replace("\\\n", " ")
        commands = [c for c in (without_comment(line.strip()) for line in joined.splitlines()) if c]
        blocks.append(commands)
    return blocks


def fake_flickr8k(root: Path) -> None:
    """A dataset in Flickr8k's layout (captions.jsonl, images/), 24 train and 8 dev pictures."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for i in range(32):
        name = f"{i:04d}.jpg"
        Image.fromarray(np.asarray(render(scene(5, "readme", i), 240), np.uint8)).save(images / name)
        caps = [f"shapes on a dark background number {i}", f"picture {i} of coloured shapes"]
        rows.append({"image": name, "captions": caps, "split": "train" if i < 24 else "dev"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def self_signed(work: Path) -> None:
    """server.pem and server.key for 127.0.0.1, as the README's TLS command expects."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    write_pem(work / "server.pem", work / "server.key", issue("server", key, None, None), key)


def workspace(tmp_path: Path, demo: Path) -> Path:
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    (work / ".venv").symlink_to(sys.prefix)  # the whole virtualenv: its python finds its packages
    (work / "tests").symlink_to(REPO_ROOT / "tests")
    shutil.copytree(demo, work / "runs" / "demo", ignore=shutil.ignore_patterns("data"))
    fake_flickr8k(tmp_path / "shared" / "data" / "flickr8k")  # ../shared from the work folder
    mine = work / "my"
    fake_flickr8k(mine)  # "my/captions.jsonl", its images beside it
    self_signed(work)
    return work


class Servers:
    """The `runtime serve` commands, running in the background."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[str], list[str]]] = []

    def start(self, command: str, work: Path, env: dict[str, str]) -> None:
        command = re.sub(r"--(port|metrics-port|http-port) \d+", r"--\1 0", command)
        if "--port " not in command:
            command += " --port 0"  # the default port: two servers of the README may be up at once
        proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=work, env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        lines: list[str] = []
        port = http = None
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        while port is None or ("--http-port" in command and http is None):
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"{command} did not start:\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"{command} did not start in 120 s:\n{''.join(lines)}"
            lines.append(line)
            if m := LISTEN.search(line):
                port = int(m.group(1))
            if m := HTTP.search(line):
                http = int(m.group(1))
        self.procs.append((command, proc, lines))
        if "--tls-cert" not in command and "--api-keys" not in command:
            env["TESSERA_TARGET"] = f"127.0.0.1:{port}"
            if http is not None:
                env["TESSERA_HTTP"] = f"http://127.0.0.1:{http}"
        from runtime.client import TesseraClient

        if "--tls-cert" not in command:
            with TesseraClient(f"127.0.0.1:{port}") as client:
                client.wait_ready()

    def stop_all(self) -> list[str]:
        """Stops every server; returns what went wrong."""
        problems = []
        for command, proc, lines in self.procs:
            proc.terminate()
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = -9
            if code != 0:
                problems.append(f"{command} exited {code}: {''.join(lines)[-2000:]}")
        return problems


def run_script(script: list[str], work: Path, env: dict[str, str]) -> list[str]:
    """Runs commands in one bash, stopping at the first that fails (the test fails with its output)."""
    if script:
        run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(script)], cwd=work,
                             env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
        assert run.returncode == 0, f"{script}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    return script


def test_every_readme_command_runs_as_printed(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    demo, result = demo_run
    assert result.returncode == 0, result.stderr[-2000:]
    work = workspace(tmp_path, demo)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    servers, ran, skipped = Servers(), [], []
    try:
        for commands in bash_blocks((REPO_ROOT / "README.md").read_text()):
            missing = [t for t in TOOLS if any(re.search(rf"(^|[|$(] *){t}\b", c) for c in commands)
                       and shutil.which(t) is None]  # fmt: skip
            if missing:
                skipped.append(f"{commands[0]} … ({', '.join(missing)} not installed)")
                continue
            script: list[str] = []
            for command in commands:
                if command.startswith("make "):
                    continue
                if " -m runtime serve " in command:
                    ran += run_script(script, work, env)  # what comes before it, first
                    script = []
                    servers.start(command, work, env)
                    ran.append(command)
                    continue
                if " -m train " in command:
                    command = " ".join([command, *CUT])
                script.append(command)
            ran += run_script(script, work, env)
    finally:
        problems = servers.stop_all()
    assert not problems, problems
    assert any("-m export runs/flickr8k-ft/best.pt" in c for c in ran)  # the real-photo recipe ran
    assert any("search --collection shapes" in c for c in ran) and len(servers.procs) >= 3
    assert (work / "runs" / "demo" / "vectors.parquet").is_file()
    print(f"ran {len(ran)} commands; skipped: {skipped or 'none'}")
