"""Several replicas behind one client: calls go round robin over every address, and a replica that
is gone or draining costs no call — its UNAVAILABLE is retried on another."""

from __future__ import annotations

from pathlib import Path

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
