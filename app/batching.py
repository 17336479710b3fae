"""Group commit: what concurrent callers submit is handled together, a batch at a time.

A caller that arrives while fewer than `concurrency` batches run leads: it
runs a batch made of its own item and whatever waits. The others wait; when
a batch ends, the oldest waiters are given the lead. Nobody waits for a
timer: alone, a caller runs a batch of one at once; under load, a batch holds
what arrived while the batches before it ran. When every running batch has
run for `stalled_after` seconds (stuck on a lock, say), another one starts,
up to `most`, so a stuck batch holds up only its own items.

There is no background thread to start or stop: the callers do the work.
Uses `threading`, which gevent patches, so it serves greenlets and threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiter(Generic[Item, Result]):
    __slots__ = ("batch", "item", "outcome", "woken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.woken = threading.Event()
        self.batch: _Batch | None = None  # set when it is given the lead
        self.outcome: Result | BaseException | None = None


class _Batch:
    __slots__ = ("keys", "started")

    def __init__(self, key: Hashable) -> None:
        self.keys = {key}
        self.started = time.monotonic()


class GroupCommit(Generic[Item, Result]):
    """`submit(item)` returns `run(batch)`'s answer for that item, or raises its exception.

    `run` takes a list of items and returns one result or exception per item,
    in order; if it raises, every item of the batch gets that exception. A
    batch holds at most `max_size` items, and an item whose `key` is in a
    running batch waits for a later one, so items with one key never run at
    the same time and run in the order they came.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Sequence[Result | BaseException]],
        *,
        key: Callable[[Item], Hashable],
        max_size: int,
        concurrency: int = 1,
        stalled_after: float = 0.2,
        most: int | None = None,
    ) -> None:
        self._run = run
        self._key = key
        self.max_size = max_size
        self.concurrency = concurrency
        self.stalled_after = stalled_after
        self.most = max(most or concurrency, concurrency)
        self._running: list[_Batch] = []
        self._waiting: deque[_Waiter[Item, Result]] = deque()
        self._lock = threading.Lock()

    def submit(self, item: Item) -> Result:
        waiter: _Waiter[Item, Result] = _Waiter(item)
        with self._lock:
            self._waiting.append(waiter)
            self._start_batches()
        while waiter.batch is None and not waiter.woken.wait(self.stalled_after):
            with self._lock:  # every batch may be stuck: start another if allowed
                self._start_batches()
        if waiter.batch is not None:
            self._run_batch(waiter, waiter.batch)
        if isinstance(waiter.outcome, BaseException):
            # A batch's error is one object raised in many callers: each gets its own traceback.
            raise waiter.outcome.with_traceback(None)
        return waiter.outcome  # type: ignore[return-value]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _start_batches(self) -> None:
        """Give the lead to the oldest waiters that may run, while batches may start. Holds the lock."""
        while self._waiting and self._may_start():
            leader = next((w for w in self._waiting if not self._in_flight(self._key(w.item))), None)
            if leader is None:
                return
            self._waiting.remove(leader)
            leader.batch = _Batch(self._key(leader.item))
            self._running.append(leader.batch)
            leader.woken.set()

    def _may_start(self) -> bool:
        if len(self._running) < self.concurrency:
            return True
        stalled_since = time.monotonic() - self.stalled_after
        return len(self._running) < self.most and all(batch.started <= stalled_since for batch in self._running)

    def _in_flight(self, key: Hashable) -> bool:
        return any(key in batch.keys for batch in self._running)

    def _run_batch(self, leader: _Waiter[Item, Result], batch: _Batch) -> None:
        members = self._take(leader, batch)
        try:
            outcomes: Sequence[Result | BaseException] = self._run([waiter.item for waiter in members])
            if len(outcomes) != len(members):
                raise RuntimeError(f"a batch of {len(members)} got {len(outcomes)} results")
        except BaseException as error:  # every caller of the batch hears of it, then the leader raises it too
            outcomes = [error] * len(members)
            raise
        finally:
            with self._lock:
                self._running.remove(batch)
                self._start_batches()
            for waiter, outcome in zip(members, outcomes, strict=True):
                waiter.outcome = outcome
                if waiter is not leader:
                    waiter.woken.set()

    def _take(self, leader: _Waiter[Item, Result], batch: _Batch) -> list[_Waiter[Item, Result]]:
        """The leader and the oldest waiters after it, none with a key already running."""
        members, passed_over = [leader], []
        with self._lock:
            looked_at = 0
            while self._waiting and len(members) < self.max_size and looked_at < 2 * self.max_size:
                waiter = self._waiting.popleft()
                looked_at += 1
                key = self._key(waiter.item)
                if self._in_flight(key):
                    passed_over.append(waiter)
                else:
                    batch.keys.add(key)
                    members.append(waiter)
            self._waiting.extendleft(reversed(passed_over))
        return members
