"""app.sql: the gate that hands out database connections first come, first served."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.sql import FairGate, check_when_handed_out, fetch_one
from config.settings import Settings
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


# -- check_when_handed_out: the pool's connections looked at, not pinged -----


@pytest.fixture
def pooled(make_settings: Callable[..., Settings]) -> Iterator[Engine]:
    """One pooled connection, set up as the services set up theirs."""
    settings = make_settings()
    options = settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"] | {"pool_size": 1}
    service = create_engine(settings.database_url, **options)
    check_when_handed_out(service)
    yield service
    service.dispose()


def backend_of(pooled: Engine, sql: str = "SELECT pg_backend_pid()") -> int:
    """The server process of the pooled connection, asked as the services ask (app.sql)."""
    row = fetch_one(pooled, sql, {})
    assert row is not None
    return int(row[0])


def last_statement(engine: Engine, pid: int) -> str | None:
    with engine.connect() as connection:
        found = connection.execute(text("SELECT query FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid})
        return found.scalar()


def test_a_live_pooled_connection_is_handed_out_without_a_round_trip(pooled: Engine, engine: Engine) -> None:
    pid = backend_of(pooled, "SELECT pg_backend_pid() -- marked")
    handed_out = pooled.raw_connection()
    try:
        assert last_statement(engine, pid) == "SELECT pg_backend_pid() -- marked"  # not pinged
    finally:
        handed_out.close()
    assert backend_of(pooled) == pid


def test_a_pooled_connection_the_server_closed_is_replaced_before_it_is_used(pooled: Engine, engine: Engine) -> None:
    pid = backend_of(pooled)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert wait_until(lambda: last_statement(engine, pid) is None, timeout=5)
    assert backend_of(pooled) != pid  # no error: the pool made a new connection


def test_a_pooled_connection_something_came_on_is_pinged_and_kept(pooled: Engine, engine: Engine) -> None:
    pid = backend_of(pooled, "LISTEN handed_out; SELECT pg_backend_pid()")
    with engine.connect() as connection:
        connection.exec_driver_sql("NOTIFY handed_out")
        connection.commit()
    time.sleep(0.2)  # the notification reaches the pooled connection's socket
    handed_out = pooled.raw_connection()
    try:
        assert last_statement(engine, pid) == "SELECT 1"
    finally:
        handed_out.close()
    assert backend_of(pooled) == pid
