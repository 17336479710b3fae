"""app.sql: the gate that hands out database connections first come, first served."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.sql import FairGate
from tests.conftest import wait_until


def test_a_permit_given_back_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    gate = FairGate(1, timeout=5)
    order: list[str] = []
    inside, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with gate.held():
            inside.set()
            leave.wait()
        with gate.held():  # straight back: a newcomer at the very moment a permit is free
            order.append("newcomer")

    def waiter(name: str) -> None:
        with gate.held():
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert inside.wait(5)
    for index in range(5):
        threads.append(threading.Thread(target=waiter, args=(f"waiter{index}",)))
        threads[-1].start()
        assert wait_until(lambda n=index + 1: gate.waiting == n)
    leave.set()
    for thread in threads:
        thread.join(5)
    assert order == [f"waiter{index}" for index in range(5)] + ["newcomer"]


def test_a_waiter_gives_up_after_the_timeout_and_leaves_no_trace() -> None:
    gate = FairGate(1, timeout=0.1)
    with gate.held():
        with pytest.raises(PoolTimeout), gate.held():
            pass
        assert gate.waiting == 0
    with gate.held():  # the permit came back; nothing was lost
        assert gate.waiting == 0


def test_as_many_hold_at_once_as_there_are_permits() -> None:
    gate = FairGate(3, timeout=5)
    holding, most, lock = [0], [0], threading.Lock()
    release = threading.Event()

    def hold() -> None:
        with gate.held():
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            release.wait(5)
            with lock:
                holding[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: gate.waiting == 5)
    release.set()
    for thread in threads:
        thread.join(5)
    assert most[0] == 3
