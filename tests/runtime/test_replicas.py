"""Several replicas behind one client: calls go round robin over every address, and a replica that
is gone or draining costs no call — its UNAVAILABLE is retried on another. Replicas on one Milvus
server share its collections: every acknowledged write is visible from each, and losing a replica
mid-write loses none."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from runtime.client import TesseraClient, channel_target
from runtime.launch import ServerProcess

TEXTS_OK = 'tessera_requests_total{code="OK",method="Embed",transport="grpc"}'


def test_several_targets_make_one_round_robin_target() -> None:
    assert channel_target("127.0.0.1:1") == "127.0.0.1:1"
    assert channel_target("dns:///tessera-headless:50051") == "dns:///tessera-headless:50051"
    assert channel_target(["127.0.0.1:1", "10.0.0.2:2"]) == "ipv4:127.0.0.1:1,10.0.0.2:2"
    assert channel_target("127.0.0.1:1, 10.0.0.2:2") == "ipv4:127.0.0.1:1,10.0.0.2:2"
    with pytest.raises(ValueError, match="dns:///name:port"):
        channel_target("a:1,b:2")


def test_calls_spread_over_replicas_and_survive_losing_them(bundle: Path) -> None:
    replicas = [ServerProcess(bundle) for _ in range(3)]
    try:
        with TesseraClient([r.target for r in replicas], timeout_s=30) as client:
            client.wait_ready()
            for i in range(60):
                assert client.embed_texts([f"a red circle {i}"]).shape[0] == 1
            served = [r.metrics().get(TEXTS_OK, 0.0) for r in replicas]
            assert min(served) >= 10 and sum(served) == 60, served  # each took its share
            assert replicas[0].stop() == 0  # drained and gone
            replicas[1].kill()  # gone without a word
            for i in range(20):  # every call lands on the one left, none fails
                assert client.embed_texts([f"a blue square {i}"]).shape[0] == 1
            assert replicas[2].metrics()[TEXTS_OK] == served[2] + 20
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.kill()


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """A Milvus server process on 127.0.0.1: milvus-lite's gRPC server (Milvus's own protocol, which
    pymilvus speaks to any Milvus) over a data folder. Milvus standalone itself needs Docker or
    binaries this machine cannot run (docs/decisions.md)."""
    pytest.importorskip(
        "milvus_lite.adapter.grpc.server", reason="milvus-lite ≥ 3 (the milvus extra) serves gRPC"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-u", "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus"),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_replicas_on_one_milvus_server_see_every_acknowledged_write(bundle: Path, milvus_server: str) -> None:
    replicas = [ServerProcess(bundle, "--milvus-uri", milvus_server) for _ in range(2)]
    rng = np.random.default_rng(0)
    acknowledged: list[tuple[str, np.ndarray]] = []
    failures: list[BaseException] = []
    try:
        with TesseraClient([r.target for r in replicas], timeout_s=30) as client:
            client.wait_ready()
            fp = client.info().fingerprint
            client.create_collection("shared", "milvus")

            def write(first: int, n: int) -> None:
                for i in range(first, first + n):
                    vectors = rng.standard_normal((8, 16)).astype(np.float32)  # (8, d)
                    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                    records = [(f"r{i}_{j}", vectors[j], {"batch": i}) for j in range(8)]
                    try:
                        assert client.upsert("shared", records, fingerprint=fp) == 8
                    except BaseException as e:  # reported by the test below
                        failures.append(e)
                        return
                    acknowledged.extend((r[0], r[1]) for r in records)

            write(0, 20)  # round robin: each replica took writes
            for r in replicas:
                with r.client() as one:
                    assert {c.name: c.count for c in one.list_collections()}["shared"] == 160
                    for rid, v in acknowledged[::17]:  # another replica's writes included
                        assert one.search("shared", v, top_k=1)[0][0] == rid
            with replicas[0].client() as a, replicas[1].client() as b:
                a.create_collection("gone", "milvus")
                assert a.upsert("gone", [("x", acknowledged[0][1], None)], fingerprint=fp) == 1
                assert b.search("gone", acknowledged[0][1], top_k=1)[0][0] == "x"
                b.drop_collection("gone")  # dropped through the other replica
                with pytest.raises(grpc.RpcError) as refused:
                    a.search("gone", acknowledged[0][1], top_k=1)
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND, refused.value.details()
                assert "gone" not in {c.name for c in a.list_collections()}
            writer = threading.Thread(target=write, args=(20, 200))
            writer.start()
            deadline = time.monotonic() + 60
            while len(acknowledged) < 160 + 8 * 20:
                assert writer.is_alive() and time.monotonic() < deadline, failures
                time.sleep(0.01)
            replicas[0].kill()  # mid-write, without a word
            writer.join(timeout=300)
            assert not failures, failures
            assert len(acknowledged) == 8 * 220
        with replicas[1].client() as survivor:
            assert {c.name: c.count for c in survivor.list_collections()}["shared"] == 8 * 220
            for rid, v in acknowledged[::7]:  # written through either replica, found as written
                assert survivor.search("shared", v, top_k=1)[0][0] == rid
            survivor.drop_collection("shared")
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.kill()
