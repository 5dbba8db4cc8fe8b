"""`train.prefetch.prefetched`: same items in order, errors surface, an early stop ends the thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from train.prefetch import prefetched


def test_prefetched_yields_every_item_in_order() -> None:
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetched(iter([]))) == []


def test_a_producer_error_is_raised_to_the_consumer_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise KeyError("cache row 7")

    got = []
    with pytest.raises(KeyError, match="cache row 7"):
        for item in prefetched(items()):
            got.append(item)
    assert got == [1]


def test_closing_early_stops_the_producer_thread() -> None:
    produced = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    before = {t.ident for t in threading.enumerate()}
    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # joins the producer: it must notice the stop while its queue is full
    assert {t.ident for t in threading.enumerate() if t.name == "prefetch"} - before == set()
    assert len(produced) <= 3 + 2 + 1  # read ahead by at most depth, plus the one it held
