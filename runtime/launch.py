"""`ServerProcess`: `python -m runtime serve` as a child process, for tests, benchmarks, the demo
and anyone embedding a server in a Python program (from a checkout or an installed package, in
any working directory) — started on ephemeral ports (gRPC, metrics and HTTP, parsed from its
log), waited on until SERVING, stopped with SIGTERM (the graceful drain) and its exit status
returned."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from runtime.client import TesseraClient
from runtime.metrics import parse_metrics

LISTEN = re.compile(r"listening on [\d.]+:(\d+)")
METRICS = re.compile(r"metrics on http://[\d.]+:(\d+)/metrics")
HTTP = re.compile(r"http on https?://[\d.]+:(\d+)")
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])  # where `runtime` is importable from


def child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """This environment, `extra`, and the `runtime` package importable whatever the child's working
    directory (an installed package already is; a checkout is through PYTHONPATH)."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH", "")) if p)
    return env


class ServerProcess:
    """A `python -m runtime serve` subprocess; its stderr is collected, its ports parsed."""

    def __init__(
        self, bundle: Path, *flags: str, env: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> None:
        import tempfile

        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="tessera-data-"))
        ports = ["--port", "0", "--metrics-port", "0", "--http-port", "0"]
        cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), *ports,
               "--data-dir", str(self.data_dir), *flags]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=child_env(env),
        )  # fmt: skip
        self.lines: list[str] = []
        self.port = self.metrics_port = self.http_port = 0
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while not (self.port and self.metrics_port and self.http_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start:\n" + "".join(self.lines))
            time.sleep(0.02)
        self.target = f"127.0.0.1:{self.port}"
        scheme = "https" if "--tls-cert" in flags else "http"
        self.http = f"{scheme}://127.0.0.1:{self.http_port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := LISTEN.search(line):
                self.port = int(m.group(1))
            if m := METRICS.search(line):
                self.metrics_port = int(m.group(1))
            if m := HTTP.search(line):
                self.http_port = int(m.group(1))

    def client(self, timeout_s: float = 30.0) -> TesseraClient:
        client = TesseraClient(self.target, timeout_s)
        client.wait_ready()
        return client

    def metrics(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no drain, no snapshot (the durability tests)."""
        self.proc.kill()
        self.proc.wait(30)
