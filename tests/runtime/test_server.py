"""The server end to end: a real `python -m runtime serve` on 127.0.0.1, called over gRPC.

References are computed independently of runtime/: ONNX Runtime on the bundle's graphs, the
tokenizer file with the training clean-up (`train.data.captions.clean_caption`), Pillow decode +
bicubic resize as the training eval view does."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from tokenizers import Tokenizer

from runtime.client import image_item, vector_item
from runtime.proto.tessera.v1 import tessera_pb2 as pb
from runtime.proto.tessera.v1 import tessera_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT
from tests.runtime.conftest import Server
from train.data.captions import clean_caption

TEXTS = ["A red circle above a small blue square.", "two green triangles", "x", "big " * 30]


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def reference_text(bundle: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    m = manifest(bundle)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.enable_truncation(m["text"]["max_len"])
    session = ort.InferenceSession(str(bundle / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    embs, scores = [], []
    for t in texts:
        ids = np.asarray([tok.encode(clean_caption(t, 10**6)).ids], dtype=np.int64)  # (1, L)
        e, s = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        embs.append(e[0])
        scores.append(s[0])
    return np.stack(embs), np.stack(scores)


def reference_image(bundle: Path, pixels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    size = manifest(bundle)["image"]["size_px"]
    session = ort.InferenceSession(str(bundle / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    batch = np.stack(
        [
            np.asarray(Image.fromarray(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
            for p in pixels
        ]
    )
    return tuple(session.run(None, {"pixels": batch}))  # type: ignore[return-value]


def picture(seed: int, w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)  # smooth-ish, JPEG-friendly
    return np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def test_embeddings_equal_onnxruntime_for_text_jpeg_png_and_pixels(server: Server, bundle: Path) -> None:
    size = manifest(bundle)["image"]["size_px"]
    pics = [picture(0, 48, 40), picture(1, 70, 50), picture(2, size, size), picture(3, 45, 61)]
    jpeg = encode(pics[0], "JPEG")
    decoded_jpeg = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    items = [pb.Item(text=t) for t in TEXTS] + [
        pb.Item(image=jpeg), pb.Item(image=encode(pics[1], "PNG")), image_item(pics[2]), image_item(pics[3]),
    ]  # fmt: skip
    with server.client() as client:
        got = client.embed(items, top_codes=3)
    want_t, scores_t = reference_text(bundle, TEXTS)
    want_i, scores_i = reference_image(bundle, [decoded_jpeg, pics[1], pics[2], pics[3]])
    want, scores = np.concatenate([want_t, want_i]), np.concatenate([scores_t, scores_i])
    assert got.vectors.dtype == np.float32 and got.vectors.shape == want.shape
    assert np.abs(got.vectors - want).max() <= 1e-6
    top = np.argsort(-scores, axis=1)[:, :3]
    assert [[c for c, _ in codes] for codes in got.codes] == top.tolist()
    assert got.fingerprint == manifest(bundle)["fingerprint"]
    assert got.timings.total_ms > 0 and got.timings.inference_ms > 0


def test_lookup_codes_are_the_top_code_scores(server: Server, bundle: Path) -> None:
    want_t, scores_t = reference_text(bundle, TEXTS[:2])
    codebook = np.load(bundle / "codebook.npy")
    with server.client() as client:
        by_text = client.lookup([pb.Item(text=t) for t in TEXTS[:2]], top_k=2)
        by_vector = client.lookup(want_t, top_k=2, fingerprint=manifest(bundle)["fingerprint"])
        vectors = client.code_vectors([0, 3])
    for codes, row in zip(by_text, scores_t, strict=True):
        assert [c for c, _ in codes] == np.argsort(-row)[:2].tolist()
        assert [s for _, s in codes] == pytest.approx(np.sort(row)[::-1][:2].tolist(), abs=1e-6)
    assert [[c for c, _ in r] for r in by_vector] == [[c for c, _ in r] for r in by_text]
    assert np.array_equal(vectors, codebook[[0, 3]])


def test_concurrent_single_item_calls_are_batched(server: Server) -> None:
    before = server.metrics()

    async def burst() -> list[pb.EmbedResponse]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.TesseraStub(channel)
            calls = [
                stub.Embed(pb.EmbedRequest(items=[pb.Item(text=f"shape number {i}")])) for i in range(64)
            ]
            return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    assert len(replies) == 64 and all(len(r.embeddings) == 1 for r in replies)
    after = server.metrics()

    def grew(name: str) -> float:
        key = f'{name}{{modality="text"}}'
        return after[key] - before.get(key, 0)

    batches, items = grew("tessera_batch_size_count"), grew("tessera_batch_size_sum")
    assert items == 64
    assert items / batches > 8, f"mean batch {items / batches:.1f}"
    # a batch runs as one or more engine calls (split by length), never more tokens than padded whole
    calls, tokens = grew("tessera_engine_calls_total"), grew("tessera_engine_tokens_total")
    assert batches <= calls <= items
    assert 0 < tokens <= grew("tessera_batch_padded_tokens_sum")


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def queue_depth(s: Server) -> float:
    return s.metrics().get('tessera_queue_depth{modality="text"}', 0)


def test_expired_deadline_costs_no_inference(bundle: Path) -> None:
    s = Server(bundle, "--max-wait-ms", "400")  # the batch is cut long after the deadline
    try:
        with s.client() as client:
            before = s.metrics().get('tessera_inference_items_total{modality="text"}', 0)
            with pytest.raises(grpc.RpcError) as err:
                client.stub.Embed(pb.EmbedRequest(items=[pb.Item(text="too late")]), timeout=0.1)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            # gRPC cancels the call at its deadline, so the item leaves as `cancelled` (or `deadline`
            # when the batch is cut first): either way it never reaches the engine
            def dropped() -> float:
                m = s.metrics()
                return sum(m.get(f'tessera_dropped_items_total{{modality="text",reason="{r}"}}', 0)
                           for r in ("deadline", "cancelled"))  # fmt: skip

            wait_until(lambda: dropped() == 1)
            assert s.metrics().get('tessera_inference_items_total{modality="text"}', 0) == before
            assert len(client.embed_texts(["still serving"])) == 1
    finally:
        assert s.stop() == 0


def test_full_queue_answers_resource_exhausted(bundle: Path) -> None:
    s = Server(bundle, "--max-wait-ms", "1000", "--max-queue", "4")
    try:
        with s.client() as client:

            async def flood() -> list[grpc.StatusCode]:
                async with grpc.aio.insecure_channel(s.target) as channel:
                    stub = pb_grpc.TesseraStub(channel)
                    held = [stub.Embed(pb.EmbedRequest(items=[pb.Item(text=f"t{i}")])) for i in range(4)]
                    await asyncio.to_thread(wait_until, lambda: queue_depth(s) == 4)  # waiting for the batch
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Embed(pb.EmbedRequest(items=[pb.Item(text="one too many")]))
                    await asyncio.gather(*held)  # the held ones are still served
                    return [err.value.code()]

            assert asyncio.run(flood()) == [grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert s.metrics()['tessera_dropped_items_total{modality="text",reason="queue_full"}'] == 1
            assert len(client.embed_texts(["after the flood"])) == 1
    finally:
        assert s.stop() == 0


def png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


BAD = {
    "undecodable image": (pb.EmbedRequest(items=[pb.Item(text="ok"), pb.Item(image=b"not an image at all")]),
                          "item 1: image could not be decoded"),
    "zero bytes": (pb.EmbedRequest(items=[pb.Item(image=b"")]), "item 0: image is empty"),
    "30000x30000 PNG header": (pb.EmbedRequest(items=[pb.Item(image=png_header_claiming(30000, 30000))]),
                               "-pixel cap"),
    "empty request": (pb.EmbedRequest(), "no items"),
    "empty item": (pb.EmbedRequest(items=[pb.Item()]), "item 0: empty item"),
    "too many items": (pb.EmbedRequest(items=[pb.Item(text="a")] * 300),
                       "300 items is over the 256-item limit"),
    "oversized message": (pb.EmbedRequest(items=[pb.Item(text="a"), pb.Item(image=b"\0" * (6 << 20))]),
                          "over the 4,194,304-byte limit"),
    "raw pixels of the wrong length": (
        pb.EmbedRequest(items=[pb.Item(pixels=pb.RawImage(width=4, height=4, rgb=b"\0" * 10))]),
        "item 0: raw pixels of 4x4 need 48 bytes"),
    "vector to embed": (pb.EmbedRequest(items=[vector_item(np.zeros(16))]),
                        "item 0: a vector cannot be embedded"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(server: Server, case: str) -> None:
    request, message = BAD[case]
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Embed(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert message in err.value.details()
        assert client.embed_texts(["a good request right after"]).shape == (1, 16)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.LookupRequest(items=[vector_item(np.ones(15))]),
            "item 0: vector of 60 bytes; expected 16 float32",
        ),
        (
            pb.LookupRequest(items=[vector_item(np.ones(16), "0" * 64)]),
            "item 0: vector from model 000000000000",
        ),
        (pb.LookupRequest(items=[vector_item(np.full(16, np.nan))]), "NaN"),
        (pb.LookupRequest(code_ids=[99]), "code id 99 is out of range"),
        (pb.LookupRequest(items=[pb.Item(text="a")], top_k=9), "top_k 9 is over the codebook size 8"),
    ],
)
def test_bad_lookup_is_invalid_argument(server: Server, request_: pb.LookupRequest, message: str) -> None:
    with server.client() as client:
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Lookup(request_, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in err.value.details()
        assert len(client.lookup([pb.Item(text="fine")])) == 1


def test_stream_answers_each_request_in_order(server: Server, bundle: Path) -> None:
    want, _ = reference_text(bundle, TEXTS)
    with server.client() as client:
        batches = [[pb.Item(text=t)] for t in TEXTS] * 3
        got = list(client.embed_stream(iter(batches)))
    assert len(got) == 12
    assert np.abs(np.concatenate(got[:4]) - want).max() <= 1e-6
    assert np.abs(np.concatenate(got[8:]) - want).max() <= 1e-6


def test_serving_process_never_imports_torch(server: Server) -> None:
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    libs = {line.split()[-1] for line in maps.splitlines() if line.count(" ") >= 5 and "/" in line}
    assert not [lib for lib in libs if "torch" in lib], "the server mapped torch libraries"
    assert any("onnxruntime" in lib for lib in libs), "sanity: ONNX Runtime is mapped"


def test_health_info_and_reflection(server: Server, bundle: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with server.client() as client:
        info = client.info()
        health = health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service="tessera.v1.Tessera"), timeout=5
        )
        refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        reply = next(
            refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (
        info.fingerprint == manifest(bundle)["fingerprint"]
        and info.embed_dim == 16
        and info.codebook_size == 8
    )
    assert [e.modality for e in info.engines] == ["image", "text"]
    assert "CPUExecutionProvider" in info.engines[0].backend
    names = {s.name for s in reply.list_services_response.service}
    assert {"tessera.v1.Tessera", "grpc.health.v1.Health"} <= names


def test_sigterm_drains_in_flight_requests_then_exits_0(bundle: Path) -> None:
    s = Server(bundle, "--max-wait-ms", "1500")
    with s.client() as client:
        future = client.stub.Embed.future(pb.EmbedRequest(items=[pb.Item(text="in flight")]), timeout=30)
        wait_until(lambda: queue_depth(s) == 1)  # accepted, waiting for its batch
        assert s.stop() == 0
        assert len(future.result().embeddings) == 1  # finished, not dropped
        with pytest.raises(grpc.RpcError) as err:
            client.stub.Embed(pb.EmbedRequest(items=[pb.Item(text="too late")]), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert any("draining" in line for line in s.lines)


def test_environment_variables_configure_the_server(bundle: Path) -> None:
    s = Server(bundle, env={"TESSERA_MAX_BATCH_SIZE": "8", "TESSERA_INT8": "true"})
    try:
        with s.client() as client:
            info = client.info()
            assert info.limits.max_batch_size == 8
            assert {e.precision for e in info.engines} == {"int8"}
            assert client.embed_texts(["int8 still embeds"]).shape == (1, 16)
    finally:
        assert s.stop() == 0


def test_bad_start_fails_with_one_clear_line(bundle: Path, tmp_path: Path) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "runtime", "serve", "--port", "0", *args]
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    missing = start("--bundle", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "is not a bundle" in missing.stderr
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        trt = start("--bundle", str(bundle), "--backend", "tensorrt")
        assert trt.returncode == 1 and "TensorRT is not installed" in trt.stderr
    too_big = start("--bundle", str(bundle), "--max-batch-size", "64")
    assert too_big.returncode == 1 and "re-export with --max-batch 64" in too_big.stderr


def test_client_cli_prints_vectors_and_codes(server: Server, tmp_path: Path) -> None:
    image = tmp_path / "p.png"
    image.write_bytes(encode(picture(5, 40, 40), "PNG"))
    cmd = [sys.executable, "-m", "runtime.client", "--target", server.target, "embed",
           "--text", "a red circle", "--image", str(image), "--top-k", "2", "--json"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["item"] for r in rows] == ["text 'a red circle'", f"image {image}"]
    assert all(len(r["vector"]) == 16 and len(r["codes"]) == 2 for r in rows)


@pytest.mark.gpu
def test_tensorrt_backend_builds_in_the_background_then_serves(bundle: Path, tmp_path: Path) -> None:
    """Where TensorRT and a GPU are present: ONNX Runtime serves at once, the plan built in the
    background takes over, and its embeddings agree with ONNX Runtime (cosine ≥ 0.999)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack, or NVIDIA's index)")
    s = Server(bundle, "--backend", "tensorrt", "--engine-cache", str(tmp_path / "engines"))
    try:
        with s.client(timeout_s=300) as client:
            want = client.embed_texts(TEXTS)  # served by ONNX Runtime while the plan builds
            deadline = time.monotonic() + 600
            while not all(e.backend.startswith("tensorrt") for e in client.info().engines):
                assert time.monotonic() < deadline, "TensorRT plans were not built in 10 minutes"
                time.sleep(2)
            got = client.embed_texts(TEXTS)
        assert (got * want).sum(1).min() >= 0.999
        assert list((tmp_path / "engines").glob("*.plan"))
    finally:
        assert s.stop() == 0


def test_a_failing_or_cancelled_stream_is_counted_by_its_real_code(server: Server) -> None:
    def count(code: str) -> float:
        return server.metrics().get(
            f'tessera_requests_total{{code="{code}",method="EmbedStream",transport="grpc"}}', 0
        )

    before = {code: count(code) for code in ("OK", "INVALID_ARGUMENT", "CANCELLED")}
    with server.client() as client:
        bad = iter([pb.EmbedRequest(items=[pb.Item(text="fine")]), pb.EmbedRequest()])
        with pytest.raises(grpc.RpcError):
            list(client.stub.EmbedStream(bad, timeout=30))

    async def cancel_after_one_answer() -> None:  # a plain aio channel: no retries, no threads
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = pb_grpc.TesseraStub(channel).EmbedStream()
            await call.write(pb.EmbedRequest(items=[pb.Item(text="then cancelled")]))
            await call.read()  # answered; the request side stays open (no half-close)
            call.cancel()

    asyncio.run(cancel_after_one_answer())
    deadline = time.monotonic() + 10
    while count("CANCELLED") == before["CANCELLED"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the server sees the cancellation a moment later
    assert count("INVALID_ARGUMENT") == before["INVALID_ARGUMENT"] + 1
    assert count("CANCELLED") == before["CANCELLED"] + 1, {c: count(c) for c in ("OK", "CANCELLED")}
    assert count("OK") == before["OK"]
