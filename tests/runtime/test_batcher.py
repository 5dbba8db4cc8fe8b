"""The batching contract (docs/architecture.md §5) on a plain-Python engine that records what it was given:
this is the batcher's own logic; tests/runtime/test_server.py checks it again over ONNX Runtime."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from runtime.batcher import Batcher, by_cost, plan
from runtime.errors import EngineFailure, Expired, Overloaded


class Recorder:
    """The engine: records each batch; with `gated`, holds each call until `gate` is set."""

    def __init__(self, fail_on: str | None = None, gated: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.started, self.gate = threading.Event(), threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.started.set()
        assert self.gate.wait(30), "the test never let the engine finish"
        if self.fail_on in items:
            raise RuntimeError("engine exploded")
        return [s.upper() for s in items]


def batcher(engine: Recorder, **kw: object) -> Batcher[str, str]:
    opts: dict = {"max_batch_size": 4, "max_wait_ms": 50, "max_queue": 100} | kw
    b: Batcher[str, str] = Batcher("text", engine, **opts)
    b.start()
    return b


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def queued(b: Batcher[str, str], n: int) -> None:
    """Yields to the loop until `n` items wait in the batcher (a condition, not a pause)."""
    deadline = time.monotonic() + 10
    while b.pending < n:
        assert time.monotonic() < deadline, f"{b.pending} of {n} items queued"
        await asyncio.sleep(0)


def test_a_list_in_gives_the_same_list_out_in_order() -> None:
    async def go() -> list[str]:
        b = batcher(Recorder())
        out = await b.submit(["a", "b", "c", "d", "e", "f"])
        await b.close()
        return [r.value for r in out]

    assert run(go()) == ["A", "B", "C", "D", "E", "F"]


def test_a_full_batch_is_cut_without_waiting() -> None:
    engine = Recorder()

    async def go() -> float:
        b = batcher(engine, max_wait_ms=10_000)
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit([f"x{i}"]) for i in range(8)))
        took = time.perf_counter() - t0
        await b.close()
        return took

    assert run(go()) < 5.0
    assert [len(x) for x in engine.batches] == [4, 4]


def test_a_partial_batch_is_cut_after_max_wait() -> None:
    engine = Recorder()

    async def go() -> tuple[float, float]:
        b = batcher(engine, max_batch_size=100, max_wait_ms=200)
        t0 = time.perf_counter()
        out = await asyncio.gather(*(b.submit([f"x{i}"]) for i in range(3)))
        took = time.perf_counter() - t0
        await b.close()
        return took, out[0][0].queue_ms

    took, queue_ms = run(go())  # type: ignore[misc]
    assert engine.batches == [["x0", "x1", "x2"]]
    assert 0.19 <= took < 2.0 and queue_ms >= 190


def test_a_full_queue_refuses_the_whole_request_and_serves_the_rest() -> None:
    engine = Recorder()

    async def go() -> None:
        b = batcher(engine, max_queue=3, max_wait_ms=300)
        held = asyncio.ensure_future(b.submit(["a", "b"]))
        await queued(b, 2)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit(["c", "d"])
        assert [r.value for r in await held] == ["A", "B"]
        await b.close()

    run(go())
    assert engine.batches == [["a", "b"]]


def test_expired_and_cancelled_items_never_reach_the_engine() -> None:
    engine = Recorder()

    async def go() -> None:
        b = batcher(engine, max_wait_ms=100)
        loop = asyncio.get_running_loop()
        late = asyncio.ensure_future(b.submit(["late"], deadline_s=loop.time() + 0.02))
        gone = asyncio.ensure_future(b.submit(["gone"]))
        kept = asyncio.ensure_future(b.submit(["kept"]))
        await queued(b, 3)
        gone.cancel()  # no await since the check: the batch cannot have been cut in between
        with pytest.raises(Expired, match="deadline passed"):
            await late
        assert [r.value for r in await kept] == ["KEPT"]
        await b.close()

    run(go())
    assert engine.batches == [["kept"]]


def test_an_engine_error_fails_only_its_batch() -> None:
    engine = Recorder(fail_on="bad")

    async def go() -> None:
        b = batcher(engine, max_batch_size=2, max_wait_ms=1000)
        first = asyncio.ensure_future(b.submit(["bad", "x"]))
        second = asyncio.ensure_future(b.submit(["y", "z"]))
        with pytest.raises(EngineFailure, match="engine exploded"):
            await first
        assert [r.value for r in await second] == ["Y", "Z"]
        assert [r.value for r in await b.submit(["after"])] == ["AFTER"]
        await b.close()

    run(go())


def test_text_batches_respect_the_padded_token_budget() -> None:
    engine = Recorder()

    async def go() -> None:
        b = batcher(engine, max_batch_size=8, max_wait_ms=50, cost=len, max_batch_cost=10)
        await asyncio.gather(b.submit(["aaaa", "bbbb", "cccc"]), b.submit(["d"]))
        await b.close()

    run(go())
    # 2 x 4 = 8 fits the budget of 10; 3 x 4 = 12 does not; then "cccc" + "d" pad to 2 x 4
    assert engine.batches == [["aaaa", "bbbb"], ["cccc", "d"]]


def test_the_engine_runs_off_the_event_loop() -> None:
    engine = Recorder(gated=True)

    async def go() -> None:
        b = batcher(engine, max_wait_ms=0)
        job = asyncio.ensure_future(b.submit(["slow"]))
        deadline = time.monotonic() + 10
        while not engine.started.is_set():  # the engine call began (on its thread)
            assert time.monotonic() < deadline, "the engine was never called"
            await asyncio.sleep(0.001)
        for _ in range(20):  # the loop keeps turning while the engine is held
            await asyncio.sleep(0)
        assert not job.done()
        engine.gate.set()
        assert [r.value for r in await job] == ["SLOW"]
        await b.close()

    run(go())


def test_a_full_batch_is_the_oldest_with_the_items_nearest_it_in_length() -> None:
    # sorted: 3 3 4 | 8 9 9; the oldest (9) is in the second batch
    assert sorted(by_cost([9, 3, 9, 4, 3, 8], max_size=3)) == [0, 2, 5]
    assert sorted(by_cost([3, 9, 4, 3, 8, 1], max_size=3)) == [0, 3, 5]
    # the oldest among the longest, where they are too few for a batch: the next shorter join it
    assert sorted(by_cost([30, 1, 2, 3, 4], max_size=3)) == [0, 3, 4]
    # the padded budget bounds a batch drawn by length as it does one in arrival order
    assert by_cost([30, 1, 2, 3, 4], max_size=3, max_cost=40) == [0]
    assert sorted(by_cost([5, 5, 5, 1, 5], max_size=4, max_cost=15)) == [0, 1, 3]  # 3 x 5 ≤ 15


def test_batches_drawn_by_length_pad_less_and_serve_every_item_once() -> None:
    lengths = [5, 30, 6, 28, 7, 29, 5, 31, 6, 27, 8, 30, 5, 29, 7, 28]

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    fifo, drawn = plan(lengths, max_size=4), plan(lengths, max_size=4, lookahead=4)
    assert fifo == [list(range(k, k + 4)) for k in range(0, 16, 4)]
    assert sorted(i for b in drawn for i in b) == list(range(16))
    assert all(len(b) == 4 for b in drawn)
    assert padded(drawn) < 0.7 * padded(fifo)


def test_an_item_passed_over_lookahead_times_is_served_within_twice_as_many_cuts() -> None:
    # Twelve older items, then a long one (position 12), then three younger mates one token longer
    # for each older item, arriving as the window slides: every cut drawn by length takes one older
    # item and its mates and passes the long one over, which by length alone would wait for all
    # twelve. Once passed over `lookahead` (4) times it is due: arrival order, served by cut 8.
    older = [10 * k for k in range(1, 13)]
    mates = [10 * k + 1 for k in range(1, 13) for _ in range(3)]
    lengths = [*older, 1000, *mates]
    batches = plan(lengths, max_size=4, lookahead=4)
    served_at = next(k for k, b in enumerate(batches) if 12 in b)
    assert served_at <= 2 * 4
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))


def test_the_batcher_draws_text_batches_by_length_from_its_queue() -> None:
    engine = Recorder(gated=True)
    texts = ["aaaaaaaa", "b", "cccccccc", "d", "eeeeeeee", "f", "gggggggg", "h"]

    async def go() -> list[str]:
        b = batcher(engine, max_batch_size=2, max_wait_ms=0, cost=len, lookahead=4)
        first = asyncio.ensure_future(b.submit(["held"]))
        while not engine.started.is_set():  # "held" runs alone and holds the engine
            await asyncio.sleep(0.001)
        rest = asyncio.ensure_future(b.submit(texts))
        await queued(b, len(texts))
        engine.gate.set()
        await first
        out = [r.value for r in await rest]
        await b.close()
        return out

    assert run(go()) == [t.upper() for t in texts]  # answered in the request's order
    widths = [{len(t) for t in batch} for batch in engine.batches[1:]]
    assert all(len(w) == 1 for w in widths), engine.batches  # no batch mixes lengths
