"""Bad input gets the right status and a bounded message, and a bad start stops in one line: a
real `python -m runtime serve` on 127.0.0.1, called over gRPC (raw bytes where the point is bytes
that are not a valid message)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from runtime.client import TesseraClient, vector_item
from runtime.keys import new_key, save
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1.tessera_pb2_grpc import TesseraStub
from tests.conftest import REPO_ROOT
from tests.runtime.conftest import Server

BAD_UTF8_TEXT = bytes([0x0A, 0x04, 0x0A, 0x02, 0xFF, 0xFE])  # EmbedRequest{items: [Item{text: b"\xff\xfe"}]}


def upsert(client: TesseraClient, collection: str, *records: pb.Record) -> pb.UpsertResponse:
    return client.stub.Upsert(pb.UpsertRequest(collection=collection, records=records), timeout=30)


def code_of(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value


@pytest.fixture(scope="module")
def photos(server: Server) -> str:
    with server.client() as client:
        client.stub.CreateCollection(pb.CreateCollectionRequest(name="hardening"), timeout=30)
    return "hardening"


def test_a_deeply_nested_payload_is_invalid_argument(server: Server, photos: str) -> None:
    with server.client() as client:
        for depth in (33, 30_000):  # 30,000 fits the 64 KiB cap and overflows Python's JSON recursion
            record = pb.Record(id="deep", content=pb.Item(text="x"), payload_json="[" * depth + "]" * depth)
            err = code_of(lambda r=record: upsert(client, photos, r))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "nests deeper than 32" in err.details()
        fine = pb.Record(id="ok", content=pb.Item(text="x"), payload_json="[" * 32 + "]" * 32)
        assert upsert(client, photos, fine).upserted == 1


def test_nan_and_infinity_in_a_payload_are_invalid_argument(server: Server, photos: str) -> None:
    with server.client() as client:
        for payload in ('{"x": NaN}', "[Infinity]", '{"y": -Infinity}'):
            record = pb.Record(id="nan", content=pb.Item(text="x"), payload_json=payload)
            err = code_of(lambda r=record: upsert(client, photos, r))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a JSON value" in err.details()


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_greyscale_png_is_embedded_as_its_8_bit_picture(server: Server) -> None:
    rng = np.random.default_rng(0)
    wide = (rng.integers(0, 256, (40, 40)) * 257).astype(np.uint16)  # every 16-bit value v = 257 * (v >> 8)
    assert Image.open(io.BytesIO(png(wide))).mode.startswith("I;16")
    with server.client() as client:
        got, eight, white = client.embed_images(
            [png(wide), png((wide >> 8).astype(np.uint8)), png(np.full((40, 40), 255, np.uint8))]
        )
    assert np.allclose(got, eight, atol=1e-6) and not np.allclose(got, white, atol=1e-3)


def test_bytes_that_are_not_the_request_message_are_invalid_argument_logged_once(server: Server) -> None:
    with server.client() as client:
        embed = client.channel.unary_unary("/tessera.v1.Tessera/Embed")
        for _ in range(20):
            err = code_of(lambda: embed(BAD_UTF8_TEXT, timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "the request is not a valid tessera.v1.EmbedRequest message" in err.details()
        stream = client.channel.stream_stream("/tessera.v1.Tessera/EmbedStream")
        err = code_of(lambda: list(stream(iter([BAD_UTF8_TEXT]), timeout=10)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid" in err.details()
        assert client.embed_texts(["still serving"]).shape[0] == 1
    assert sum("is not a valid tessera.v1.EmbedRequest" in line for line in server.lines) == 1
    assert not any("Traceback" in line for line in server.lines)


def test_collection_names_match_whole_and_long_input_is_not_echoed_whole(server: Server) -> None:
    with server.client() as client:
        err = code_of(
            lambda: client.stub.CreateCollection(pb.CreateCollectionRequest(name="a\n"), timeout=10)
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        long = "n" * 10_000
        err = code_of(lambda: client.stub.CreateCollection(pb.CreateCollectionRequest(name=long), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "(10,000 characters)" in err.details()
        search = pb.SearchRequest(collection=long, query=pb.Item(text="x"), top_k=1)
        err = code_of(lambda: client.stub.Search(search, timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND and len(err.details()) < 300
        request = pb.EmbedRequest(items=[pb.Item(text="x")], request_id="r" * 10_000)
        err = code_of(lambda: list(client.stub.EmbedStream(iter([request, pb.EmbedRequest()]), timeout=10)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(err.details()) < 300


def test_vector_norms_are_taken_without_overflow_or_underflow(server: Server, photos: str) -> None:
    with server.client() as client:
        info = client.info()
        v = np.random.default_rng(1).normal(size=info.embed_dim).astype(np.float32)
        unit = v / np.linalg.norm(v)
        records = [
            pb.Record(id=f"s{i}", content=vector_item(s * v)) for i, s in enumerate((1e30, 1e-30, 1.0))
        ]
        client.stub.Upsert(pb.UpsertRequest(collection=photos, records=records), timeout=30)
        hits = client.stub.Search(
            pb.SearchRequest(collection=photos, query=vector_item(v), top_k=3), timeout=30
        )
        assert {h.id for h in hits.hits} == {"s0", "s1", "s2"}
        assert all(h.score == pytest.approx(1.0, abs=1e-5) for h in hits.hits)
        huge = client.stub.Lookup(pb.LookupRequest(items=[vector_item(1e30 * v)], top_k=1), timeout=10)
        same = client.stub.Lookup(pb.LookupRequest(items=[vector_item(unit)], top_k=1), timeout=10)
        assert huge.results[0].codes[0].id == same.results[0].codes[0].id
        zero = pb.LookupRequest(items=[vector_item(np.zeros(info.embed_dim, np.float32))], top_k=1)
        err = code_of(lambda: client.stub.Lookup(zero, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "zero vector" in err.details()


# -- starts that must stop ------------------------------------------------------------------------


def start(bundle: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "runtime", "serve", "--bundle", str(bundle), *flags]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_a_taken_port_stops_the_start_unless_sharing_is_asked_for(server: Server, bundle: Path) -> None:
    second = start(bundle, "--port", str(server.port), "--metrics-port", "-1")
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"error: port {server.port} on 127.0.0.1 is in use" in second.stderr.strip().splitlines()[-1]


def test_a_taken_metrics_port_stops_the_start_in_one_line(server: Server, bundle: Path) -> None:
    result = start(bundle, "--port", "0", "--metrics-port", str(server.metrics_port))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: metrics port {server.metrics_port} on 127.0.0.1: Address already in use" in result.stderr
    assert "listening on" not in result.stderr


def test_a_backend_that_cannot_load_stops_before_listening_without_noise(bundle: Path) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    result = start(bundle, "--port", "0", "--backend", "tensorrt")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: TensorRT")
    for noise in ("listening on", "Event loop is closed", "never awaited", "Traceback"):
        assert noise not in result.stderr, noise


def test_a_port_is_shared_only_between_servers_that_ask(bundle: Path, tmp_path: Path) -> None:
    a = Server(bundle, "--reuse-port", data_dir=tmp_path / "a")
    try:
        b = Server(bundle, "--reuse-port", "--port", str(a.port), data_dir=tmp_path / "b")
        assert b.port == a.port
        assert b.stop() == 0
        c = start(bundle, "--port", str(a.port), "--metrics-port", "-1", "--data-dir", str(tmp_path / "c"))
        assert c.returncode == 1 and "is in use" in c.stderr
    finally:
        assert a.stop() == 0


# -- admission ------------------------------------------------------------------------------------


def truncated_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height and whose pixel data is cut off: undecodable."""
    whole = png(np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8))
    return whole[: min(4096, len(whole) // 2)]  # the header stays, most of the pixel data goes


def test_images_are_costed_from_their_headers_before_any_decode(bundle: Path, tmp_path: Path) -> None:
    s = Server(bundle, "--max-inflight-mb", "16", "--max-request-bytes", str(4 << 20), data_dir=tmp_path)
    try:
        with s.client() as client:
            request = pb.EmbedRequest(items=[pb.Item(image=truncated_png(3000, 3000))])
            err = code_of(lambda: client.stub.Embed(request, timeout=10))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (
                "over the whole of the server's in-flight budget (16 MB)" in err.details()
            )  # not "could not be decoded"
            small = pb.EmbedRequest(items=[pb.Item(image=truncated_png(40, 40))])
            assert "could not be decoded" in code_of(lambda: client.stub.Embed(small, timeout=10)).details()
    finally:
        assert s.stop() == 0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_refused_request_is_freed_with_its_answer(bundle: Path, tmp_path: Path) -> None:
    """A request refused once read (here: it could never fit the budget) must not outlive its
    answer: gRPC keeps an abort's traceback in a reference cycle that only the cyclic collector
    frees, and a message held by it stays resident, megabytes at a time, under a stream of refusals."""
    s = Server(bundle, "--max-inflight-mb", "16", "--max-request-bytes", str(4 << 20), data_dir=tmp_path)
    side = 1100  # 3.6 MB of raw pixels beside a header that decodes to 36 MB: read, then refused
    pixels = pb.RawImage(width=side, height=side, rgb=bytes(side * side * 3))
    request = pb.EmbedRequest(items=[pb.Item(pixels=pixels), pb.Item(image=truncated_png(3000, 3000))])
    try:
        with s.client() as client:

            def refuse(n: int) -> None:
                for _ in range(n):
                    err = code_of(lambda: client.stub.Embed(request, timeout=10))
                    assert "over the whole of the server's in-flight budget" in err.details()

            refuse(3)  # the allocator's own working set
            before = rss_mb(s.proc.pid)
            refuse(30)  # 30 x 3.6 MB held twice: over 200 MB if they stayed
            deadline = time.monotonic() + 10  # the server trims what was freed every few seconds
            while rss_mb(s.proc.pid) - before >= 40:
                assert time.monotonic() < deadline, f"{rss_mb(s.proc.pid) - before:.0f} MB still held"
                time.sleep(0.1)
    finally:
        assert s.stop() == 0


def test_streams_hold_their_window_of_the_budget_and_what_does_not_fit_is_refused(
    bundle: Path, tmp_path: Path
) -> None:
    flags = ("--max-inflight-mb", "128", "--stream-window-mb", "32", "--max-request-bytes", str(8 << 20))
    s = Server(bundle, *flags, data_dir=tmp_path)
    try:
        with s.client() as client:
            text = pb.EmbedRequest(items=[pb.Item(text="a red circle")])
            release = threading.Event()

            def held_open() -> Iterator[pb.EmbedRequest]:
                yield text
                release.wait(30)  # the stream stays open, holding its window

            opened = [client.stub.EmbedStream(held_open(), timeout=30) for _ in range(2)]
            firsts = [next(stream) for stream in opened]  # both open: 2 x 32 MB, all that streams may hold
            assert all(len(f.embeddings) == 1 for f in firsts)
            third = code_of(lambda: next(client.stub.EmbedStream(iter([text]), timeout=10)))
            assert (
                third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                and "the half of the in-flight budget streams may hold is full" in third.details()
            )
            assert client.embed_texts(["unary calls keep the other half"]).shape[0] == 1
            release.set()
            for stream in opened:
                assert list(stream) == []  # the stream ends and frees its window
            assert client.embed_texts(["served again"]).shape[0] == 1
            big = pb.EmbedRequest(
                items=[pb.Item(image=png(np.full((4000, 4000), 9, np.uint8)))]
            )  # 96 MB decoded
            err = code_of(lambda: list(client.stub.EmbedStream(iter([big]), timeout=10)))
            assert (
                err.code() == grpc.StatusCode.INVALID_ARGUMENT
                and "over the whole of this stream's window (32 MB)" in err.details()
            )
    finally:
        assert s.stop() == 0


def test_rpcs_beyond_the_concurrency_limit_are_resource_exhausted(bundle: Path, tmp_path: Path) -> None:
    s = Server(bundle, "--max-concurrent-rpcs", "4", "--max-wait-ms", "300", data_dir=tmp_path)
    try:
        with s.client() as client:
            calls = [
                client.stub.Embed.future(pb.EmbedRequest(items=[pb.Item(text=f"t{i}")]), timeout=30)
                for i in range(24)
            ]
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes.count(grpc.StatusCode.OK) >= 4
    finally:
        assert s.stop() == 0


def two_mb_of_pixels() -> pb.EmbedRequest:
    """An Embed of 2 MB of raw pixels: half a second of a 4 MB/s heavy-read rate."""
    side = 820
    return pb.EmbedRequest(
        items=[pb.Item(pixels=pb.RawImage(width=side, height=side, rgb=bytes(side * side * 3)))]
    )


def test_large_requests_are_read_at_the_heavy_rate_while_small_ones_pass(
    bundle: Path, tmp_path: Path
) -> None:
    """Receiving a message happens on the event loop that takes every client's calls: a sender of
    large requests reads at `--max-heavy-read-mb-s`, all such senders together, and a client of
    small requests is served meanwhile."""
    s = Server(bundle, "--max-heavy-read-mb-s", "4", data_dir=tmp_path)
    big = two_mb_of_pixels()
    try:
        with s.client() as heavy, s.client() as light:
            heavy.stub.Embed(big, timeout=30)  # the first: read at once, and its sender now heavy
            t0 = time.monotonic()
            sender = threading.Thread(target=lambda: [heavy.stub.Embed(big, timeout=30) for _ in range(4)])
            sender.start()
            time.sleep(0.2)
            t1 = time.monotonic()
            light.embed_texts(["a small request"])
            light_s = time.monotonic() - t1
            sender.join()
            heavy_s = time.monotonic() - t0
    finally:
        assert s.stop() == 0
    assert heavy_s >= 5 * 0.5 - 0.25 - 0.3, heavy_s  # five reads' share of 4 MB/s, less its burst
    assert light_s < 1.0, light_s


def test_a_keyed_client_opening_a_connection_per_large_request_still_reads_at_the_heavy_rate(
    bundle: Path, tmp_path: Path
) -> None:
    """Without keys a sender is its connection, whose history starts empty; with API keys on it is
    its key, so a client that opens a new connection for each large request gains nothing by it."""
    key, entry = new_key(["read"])
    save(keys := tmp_path / "keys.json", [entry])
    s = Server(bundle, "--max-heavy-read-mb-s", "4", "--api-keys", str(keys), data_dir=tmp_path)
    big = two_mb_of_pixels()
    # A channel of its own subchannel pool: gRPC would otherwise share one connection between
    # channels to the same target.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 8 << 20)]

    def embed_on_a_new_connection() -> None:
        with grpc.insecure_channel(s.target, options=options) as channel:
            TesseraStub(channel).Embed(big, metadata=(("authorization", f"Bearer {key}"),), timeout=30)

    try:
        with TesseraClient(s.target, 10, api_key=key) as client:
            client.wait_ready()
        embed_on_a_new_connection()  # the key's first: read at once, and the key now heavy
        t0 = time.monotonic()
        for _ in range(4):
            embed_on_a_new_connection()
        churn_s = time.monotonic() - t0
    finally:
        assert s.stop() == 0
    assert churn_s >= 5 * 0.5 - 0.25 - 0.3, churn_s  # five reads' share of 4 MB/s, less its burst
