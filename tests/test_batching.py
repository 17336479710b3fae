"""app.batching: group commit, with threads standing in for the requests of a worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from app.batching import GroupCommit
from tests.conftest import wait_until


class Batches:
    """A `run` that records its batches, answers each item with ("done", item), and can hold the first batch."""

    def __init__(self, fail_with: Callable[[list[Any]], BaseException | None] = lambda batch: None) -> None:
        self.seen: list[list[Any]] = []
        self.first_running = threading.Event()
        self.release_first = threading.Event()
        self.fail_with = fail_with

    def __call__(self, batch: list[Any]) -> Sequence[Any]:
        self.seen.append(list(batch))
        if len(self.seen) == 1:
            self.first_running.set()
            assert self.release_first.wait(5)
        error = self.fail_with(batch)
        if error is not None:
            raise error
        return [item if isinstance(item, BaseException) else ("done", item) for item in batch]


class Callers:
    """Callers of one GroupCommit, each on its own thread, queued in the order they are added."""

    def __init__(self, commit: GroupCommit[Any, Any]) -> None:
        self.commit = commit
        self.answers: dict[Any, Any] = {}
        self.threads: list[threading.Thread] = []

    def add(self, item: Any, *, queued: bool = True) -> None:
        def call() -> None:
            try:
                self.answers[item] = self.commit.submit(item)
            except BaseException as error:
                self.answers[item] = error

        waiting = self.commit.waiting
        self.threads.append(threading.Thread(target=call))
        self.threads[-1].start()
        if queued:  # in line before the next one comes
            assert wait_until(lambda: self.commit.waiting == waiting + 1)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in self.threads)


def holding_the_first_batch(batches: Batches, commit: GroupCommit[Any, Any], first: Any) -> Callers:
    callers = Callers(commit)
    callers.add(first, queued=False)
    assert batches.first_running.wait(5)
    return callers


def test_a_lone_caller_runs_its_batch_at_once() -> None:
    batches = Batches()
    batches.release_first.set()
    commit: GroupCommit[str, Any] = GroupCommit(batches, key=lambda item: item, max_size=8)
    assert commit.submit("a") == ("done", "a")
    assert commit.submit("b") == ("done", "b")
    assert batches.seen == [["a"], ["b"]]


def test_callers_arriving_during_a_batch_run_together_in_the_next_each_with_its_own_answer() -> None:
    batches = Batches()
    commit: GroupCommit[str, Any] = GroupCommit(batches, key=lambda item: item, max_size=8)
    callers = holding_the_first_batch(batches, commit, "a")
    for item in ("b", "c", "d"):
        callers.add(item)
    batches.release_first.set()
    callers.join()
    assert batches.seen == [["a"], ["b", "c", "d"]]
    assert callers.answers == {item: ("done", item) for item in "abcd"}


def test_one_key_is_never_twice_in_a_batch_and_its_items_keep_their_order() -> None:
    batches = Batches()
    commit: GroupCommit[tuple[str, int], Any] = GroupCommit(batches, key=lambda item: item[0], max_size=8)
    callers = holding_the_first_batch(batches, commit, ("w", 0))
    for item in (("x", 1), ("y", 1), ("x", 2), ("z", 1), ("x", 3)):
        callers.add(item)
    batches.release_first.set()
    callers.join()
    assert batches.seen == [[("w", 0)], [("x", 1), ("y", 1), ("z", 1)], [("x", 2)], [("x", 3)]]


def test_a_batch_holds_at_most_max_size_items() -> None:
    batches = Batches()
    commit: GroupCommit[int, Any] = GroupCommit(batches, key=lambda item: item, max_size=2)
    callers = holding_the_first_batch(batches, commit, 0)
    for item in range(1, 6):
        callers.add(item)
    batches.release_first.set()
    callers.join()
    assert batches.seen == [[0], [1, 2], [3, 4], [5]]
    assert callers.answers == {item: ("done", item) for item in range(6)}


def test_a_failed_batch_fails_all_its_callers_and_the_next_batch_still_runs() -> None:
    batches = Batches(fail_with=lambda batch: RuntimeError("database gone") if "boom" in batch else None)
    commit: GroupCommit[str, Any] = GroupCommit(batches, key=lambda item: item, max_size=2)
    callers = holding_the_first_batch(batches, commit, "a")
    for item in ("boom", "b", "c"):
        callers.add(item)
    batches.release_first.set()
    callers.join()
    assert batches.seen == [["a"], ["boom", "b"], ["c"]]
    assert isinstance(callers.answers["boom"], RuntimeError)
    assert isinstance(callers.answers["b"], RuntimeError)
    assert callers.answers["a"] == ("done", "a")
    assert callers.answers["c"] == ("done", "c")
    assert commit.submit("d") == ("done", "d")  # the lead was handed on, not lost


def test_an_error_for_one_item_goes_to_its_caller_alone() -> None:
    batches = Batches()
    commit: GroupCommit[Any, Any] = GroupCommit(batches, key=lambda item: id(item), max_size=8)
    refused = ValueError("refused")
    callers = holding_the_first_batch(batches, commit, "a")
    callers.add(refused)
    callers.add("b")
    batches.release_first.set()
    callers.join()
    assert callers.answers["a"] == ("done", "a")
    assert callers.answers["b"] == ("done", "b")
    assert callers.answers[refused] is refused
    with pytest.raises(ValueError, match="refused"):
        commit.submit(refused)


def test_with_a_concurrency_of_two_a_second_caller_does_not_wait_for_the_first_batch() -> None:
    batches = Batches()
    commit: GroupCommit[str, Any] = GroupCommit(batches, key=lambda item: item, max_size=8, concurrency=2)
    callers = holding_the_first_batch(batches, commit, "a")
    assert commit.submit("b") == ("done", "b")
    assert "a" not in callers.answers  # still held
    batches.release_first.set()
    callers.join()
    assert batches.seen == [["a"], ["b"]]


def test_when_every_running_batch_is_stuck_another_starts_for_the_waiters() -> None:
    batches = Batches()
    commit: GroupCommit[str, Any] = GroupCommit(
        batches, key=lambda item: item, max_size=8, concurrency=1, stalled_after=0.1, most=2
    )
    callers = holding_the_first_batch(batches, commit, "stuck")
    started = time.monotonic()
    assert commit.submit("b") == ("done", "b")
    assert 0.1 <= time.monotonic() - started < 2
    assert "stuck" not in callers.answers  # still held
    batches.release_first.set()
    callers.join()
    assert batches.seen == [["stuck"], ["b"]]


def test_a_key_in_a_stuck_batch_waits_for_it_while_others_go_by() -> None:
    batches = Batches()
    commit: GroupCommit[tuple[str, int], Any] = GroupCommit(
        batches, key=lambda item: item[0], max_size=8, concurrency=1, stalled_after=0.1, most=4
    )
    callers = holding_the_first_batch(batches, commit, ("x", 1))
    callers.add(("x", 2))
    callers.add(("y", 1), queued=False)  # it may go by at once if ("x", 1) is stuck already
    assert wait_until(lambda: ("y", 1) in callers.answers)
    assert ("x", 2) not in callers.answers
    batches.release_first.set()
    callers.join()
    assert batches.seen == [[("x", 1)], [("y", 1)], [("x", 2)]]
    assert callers.answers == {item: ("done", item) for item in [("x", 1), ("x", 2), ("y", 1)]}
