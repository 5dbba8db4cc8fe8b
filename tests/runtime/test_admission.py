"""The in-flight budget on its own (runtime/admission.py): what waits, what is refused, and that
every byte taken is given back."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from runtime.admission import HEAVY_BURST_S, MB, Budget, HeavyReads
from runtime.errors import InvalidInput, Overloaded


def test_a_read_request_waits_for_room_to_grow_into_rather_than_being_refused() -> None:
    async def run() -> None:
        budget = Budget(10 * MB)
        other = budget.take_now(8 * MB, "another request")
        mine = await budget.take(1 * MB, "a call", wait_s=1.0)  # what reading it needed
        asyncio.get_running_loop().call_later(0.05, other.release)  # the other one is answered
        await mine.grow_to(3 * MB, "its real cost", wait_s=1.0)
        assert (mine.nbytes, budget.used) == (3 * MB, 3 * MB)
        await mine.grow_to(2 * MB, "smaller than read", wait_s=1.0)
        assert budget.used == 2 * MB
        mine.release()
        assert budget.used == 0

    asyncio.run(run())


def test_growth_that_finds_no_room_in_time_is_overloaded_and_holds_what_it_had() -> None:
    async def run() -> None:
        budget = Budget(10 * MB)
        other = budget.take_now(8 * MB, "another request")
        mine = await budget.take(1 * MB, "a call", wait_s=0.0)
        with pytest.raises(Overloaded, match="retry with backoff"):
            await mine.grow_to(3 * MB, "its real cost", wait_s=0.05)
        assert (mine.nbytes, budget.used) == (1 * MB, 9 * MB)
        with pytest.raises(InvalidInput, match="over the whole of"):
            await mine.grow_to(11 * MB, "its real cost", wait_s=1.0)
        mine.release()
        other.release()
        assert budget.used == 0 and not budget.waiters

    asyncio.run(run())


def test_requests_waiting_to_grow_hold_at_most_their_share_and_the_rest_are_refused_at_once() -> None:
    async def run() -> None:
        budget = Budget(40 * MB)  # waiting growers may hold 10 MB
        full = budget.take_now(28 * MB, "others")
        first, second = budget.take_now(6 * MB, "a call"), budget.take_now(6 * MB, "a call")
        waiting = asyncio.ensure_future(first.grow_to(20 * MB, "a big decode", wait_s=5.0))
        for _ in range(100):  # turns of the loop, not time: until the first is waiting
            if budget.waiting_to_grow:
                break
            await asyncio.sleep(0)
        assert budget.waiting_to_grow == 6 * MB and not waiting.done()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(Overloaded):
            await second.grow_to(20 * MB, "a big decode", wait_s=5.0)
        assert loop.time() - t0 < 1.0  # refused at once, not after its wait
        second.release()
        full.release()
        await waiting  # room freed: the first grows
        assert (first.nbytes, budget.used, budget.waiting_to_grow) == (20 * MB, 20 * MB, 0)
        first.release()

    asyncio.run(run())


def test_a_client_of_small_requests_is_served_before_one_that_filled_the_budget_with_large_ones() -> None:
    async def run() -> None:
        budget = Budget(12 * MB)
        held = []
        for _ in range(3):  # the big client: three requests that each turned out to hold 4 MB
            r = await budget.take(4 * MB, "a call", wait_s=1.0, client="big")
            await r.grow_to(4 * MB, "its real cost", wait_s=1.0)
            held.append(r)
        assert budget.used == 12 * MB  # full: the next calls wait
        order: list[str] = []

        async def call(client: str) -> None:
            r = await budget.take(4 * MB, "a call", wait_s=5.0, client=client)
            order.append(client)
            await r.grow_to(1 * MB if client == "small" else 4 * MB, "its real cost", wait_s=5.0)
            r.release()

        big_next = asyncio.ensure_future(call("big"))  # waiting first
        await asyncio.sleep(0)
        small_next = asyncio.ensure_future(call("small"))  # arrives later, owed more
        await asyncio.sleep(0)
        held.pop().release()  # room for one
        await asyncio.gather(big_next, small_next)
        assert order == ["small", "big"]
        for r in held:
            r.release()
        assert budget.used == 0

    asyncio.run(run())


def test_a_call_that_gives_up_as_it_is_granted_leaves_no_bytes_taken() -> None:
    async def run() -> None:
        budget = Budget(4 * MB)
        other = budget.take_now(4 * MB, "another request")
        waiting = asyncio.ensure_future(budget.take(2 * MB, "a call", wait_s=5.0, client="c"))
        await asyncio.sleep(0)
        other.release()  # grants the waiting call ...
        waiting.cancel()  # ... which is cancelled before it runs again
        with contextlib.suppress(asyncio.CancelledError):
            (await waiting).release()
        assert budget.used == 0

    asyncio.run(run())


def test_a_stream_request_that_costs_more_than_its_read_waits_for_its_window() -> None:
    async def run() -> None:
        window = Budget(32 * MB, "this stream's window")
        earlier = window.take_now(20 * MB, "the request before")
        mine = await window.take(12 * MB, "the next request", None)  # what reading it needed
        asyncio.get_running_loop().call_later(0.05, earlier.release)  # its answer is sent
        await mine.grow_to(18 * MB, "a request", None)  # decoded images cost more than the read
        assert window.used == 18 * MB
        mine.release()

    asyncio.run(run())


def test_a_heavy_sender_reads_at_the_rate_and_a_light_one_at_once() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        heavy = HeavyReads(10 * MB)  # 2 MB take 0.2 s of it
        assert await heavy.before_read("big") == 0  # no history: read at once
        heavy.read("big", 2 * MB, 0)
        t0 = loop.time()
        for _ in range(3):  # each reserves the last request's 2 MB before it is read
            reserved = await heavy.before_read("big")
            heavy.read("big", 2 * MB, reserved)
        took = loop.time() - t0
        assert took >= 4 * 0.2 - HEAVY_BURST_S - 0.02, took  # four reads' share of the rate, less its burst
        t1 = loop.time()
        assert await heavy.before_read("small") == 0
        assert loop.time() - t1 < 0.05  # a sender of small requests never waits for it
        heavy.read("big", 100, 0)  # a small request: no longer a heavy sender
        assert await heavy.before_read("big") == 0

    asyncio.run(run())


def test_a_heavy_read_given_up_hands_its_share_of_the_rate_back() -> None:
    async def run() -> None:
        heavy = HeavyReads(1 * MB)
        heavy.read("big", 4 * MB, 0)  # four seconds of the rate owed
        before = heavy.tat
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(heavy.before_read("big"), 0.05)  # its deadline passes
        assert heavy.tat == pytest.approx(before)
        heavy.forget("big")  # its stream ended
        assert await heavy.before_read("big") == 0

    asyncio.run(run())
