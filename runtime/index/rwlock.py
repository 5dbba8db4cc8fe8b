"""A read/write lock: many searches at once, or one writer, granted in the order they asked.

First come, first served, so neither side starves: a writer waits for the searches ahead of it and
holds back those behind it, and a thread that writes in a loop cannot keep another writer (a drop,
a snapshot's last step) out. Readers queued together behind a writer go in together. The writing
thread may take the write lock again (a close that snapshots re-enters it).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Waiter:
    writer: int | None  # the writing thread's ident; None for a reader
    granted: threading.Event = field(default_factory=threading.Event)


class ReadWriteLock:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._readers = 0
        self._writer: int | None = None  # the thread holding the write lock
        self._depth = 0  # how many times it holds it
        self._queue: deque[_Waiter] = deque()

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._mutex:
            waiter = None if self._writer is None and not self._queue else self._enqueue(None)
            if waiter is None:
                self._readers += 1
        self._await(waiter)
        try:
            yield
        finally:
            with self._mutex:
                self._readers -= 1
                self._grant()

    @contextmanager
    def write(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._mutex:
            waiter = None
            if self._writer == me:
                self._depth += 1
            elif self._writer is None and not self._readers and not self._queue:
                self._writer, self._depth = me, 1
            else:
                waiter = self._enqueue(me)
        self._await(waiter)
        try:
            yield
        finally:
            with self._mutex:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._grant()

    def _enqueue(self, writer: int | None) -> _Waiter:
        waiter = _Waiter(writer)
        self._queue.append(waiter)
        return waiter

    @staticmethod
    def _await(waiter: _Waiter | None) -> None:
        if waiter is not None:
            waiter.granted.wait()

    def _grant(self) -> None:
        """Lets in the head of the queue: a writer once the lock is free, or every reader up to the
        next writer once no writer holds it (holds the mutex)."""
        while self._queue and self._writer is None:
            head = self._queue[0]
            if head.writer is not None:
                if self._readers:
                    return
                self._writer, self._depth = head.writer, 1
            else:
                self._readers += 1
            self._queue.popleft()
            head.granted.set()
