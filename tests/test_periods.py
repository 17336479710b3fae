"""Boards with resets, in the domain, with the database's clock moved (not waited for).

Each engine here sees the database's clock shifted by its own offset
(`leaderboard.clock_offset`, app.sql): an engine set just before a boundary
and one set just after it are the same database before and after the reset.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.keeper import BoardKeeper
from app.leaderboard import Board, BoardCache, BoardRegistry, Submitted
from app.leaderboard.boards import BoardDefaults
from app.leaderboard.ranks import around, page, ranks_of, user_rank
from app.leaderboard.rebuild import top_standings
from app.leaderboard.seasons import database_now, period_named
from app.leaderboard.writes import commit_submissions, submit_score
from config.settings import normalize_database_url


@pytest.fixture
def clocked(database_url: str, engine: Engine) -> Iterator[Callable[[datetime], Engine]]:
    """Engines whose database clock reads `at` (naive UTC) now, and runs on from there."""
    made: list[Engine] = []

    def make(at: datetime) -> Engine:
        offset = (at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        clocked = create_engine(
            normalize_database_url(database_url), connect_args={"options": f"-c leaderboard.clock_offset={offset}"}
        )
        made.append(clocked)
        return clocked

    yield make
    for one in made:
        one.dispose()


def registry_on(engine: Engine, board_name: str) -> BoardRegistry:
    return BoardRegistry(
        engine, BoardDefaults(default_id=board_name, default_channel="unused", top_n=10, max_increment=1_000_000)
    )


def rows(engine: Engine, board: Board) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT period, user_id, total FROM scores WHERE board = :b ORDER BY period, user_id"), {"b": board.id}
        )
        return [tuple(row) for row in found]  # type: ignore[misc]


def latest(redis_conn: redis.Redis, board: Board) -> dict[str, object]:
    raw = redis_conn.get(board.keys.latest)
    assert raw is not None
    return json.loads(raw)  # type: ignore[arg-type, no-any-return]


def test_a_daily_board_across_midnight_in_berlin_on_the_dst_day(
    clocked: Callable[[datetime], Engine], board_name: str, redis_conn: redis.Redis
) -> None:
    """2026-03-29 in Berlin has 23 hours; its midnight is 22:00 UTC. A submission counts in the
    period of the database's clock when it is written, and the live board moves on at the reset."""
    before = clocked(datetime(2026, 3, 29, 21, 59, 59))
    after = clocked(datetime(2026, 3, 29, 22, 0, 1))
    registry, cache = registry_on(before, board_name), BoardCache(redis_conn)
    board, _ = registry.put(f"{board_name}-daily", {"reset": "daily", "timezone": "Europe/Berlin", "top_n": 3})
    assert board.period_id == "2026-03-29"
    assert board.as_json()["periodEnds"] == "2026-03-30T00:00:00+02:00"

    first = submit_score(before, cache, Submitted(board, "alice", 10))
    assert (first.period, first.total, first.rank) == ("2026-03-29", 10, 1)
    assert latest(redis_conn, board)["period"] == "2026-03-29"

    # The same board as the process before midnight knew it: the database's clock has moved on.
    late = submit_score(after, cache, Submitted(board, "alice", 5))
    bob = submit_score(after, cache, Submitted(board, "bob", 7))
    assert (late.period, late.total, late.rank) == ("2026-03-30", 5, 1)
    assert (bob.period, bob.total, bob.rank) == ("2026-03-30", 7, 1)
    assert rows(after, board) == [("2026-03-29", "alice", 10), ("2026-03-30", "alice", 5), ("2026-03-30", "bob", 7)]

    message = latest(redis_conn, board)
    assert message["period"] == "2026-03-30"
    assert message["periodEnds"] == "2026-03-31T00:00:00+02:00"
    assert message["top"] == [["bob", "7"], ["alice", "5"]]

    ended = board.at(period_named("daily", "Europe/Berlin", "2026-03-29"))
    assert ended.period is not None
    assert (ended.period.end - ended.period.start).total_seconds() == 23 * 3600
    with Session(after) as session:
        assert [(s.user_id, s.total) for s in top_standings(session, ended)] == [("alice", 10)]
    assert user_rank(after, board.id, "alice", period="2026-03-29") == (10, 1)
    assert user_rank(after, board.id, "bob", period="2026-03-29") is None


def test_a_weekly_board_switches_on_monday_with_nobody_submitting_and_never_goes_back(
    clocked: Callable[[datetime], Engine], board_name: str, redis_conn: redis.Redis
) -> None:
    sunday = clocked(datetime(2026, 12, 6, 23, 59, 59, 500000))  # UTC
    monday = clocked(datetime(2026, 12, 7, 0, 0, 0, 500000))
    cache = BoardCache(redis_conn)
    board, _ = registry_on(sunday, board_name).put(f"{board_name}-weekly", {"reset": "weekly", "top_n": 3})
    assert board.period_id == "2026-W49"
    for user, value in (("alice", 30), ("bob", 20)):
        submit_score(sunday, cache, Submitted(board, user, value))
    assert latest(redis_conn, board)["top"] == [["alice", "30"], ["bob", "20"]]
    version = int(latest(redis_conn, board)["version"])  # type: ignore[call-overload]

    keeper = BoardKeeper(monday, cache, registry_on(monday, board_name))
    assert keeper.reconcile().get(board.id) == "switched"
    switched = latest(redis_conn, board)
    assert (switched["period"], switched["top"], switched["updatedUser"]) == ("2026-W50", [], None)
    assert switched["periodEnds"] == "2026-12-14T00:00:00+00:00"
    assert int(switched["version"]) > version  # type: ignore[call-overload]
    assert keeper.reconcile().get(board.id) != "switched"  # once

    # A keeper whose database clock says it is still Sunday does not take the board back,
    # and a write of the old week (committed before the reset) stays out of the new board.
    stale_keeper = BoardKeeper(sunday, cache, registry_on(sunday, board_name))
    assert stale_keeper.reconcile().get(board.id) == "ahead"
    assert cache.apply(board, [], mode="replace").status == "ended"
    assert latest(redis_conn, board) == switched

    # The week that ended is still there, whole, in SQL.
    week_49 = board.at(period_named("weekly", "UTC", "2026-W49"))
    assert [(e.rank, e.user_id, e.score) for e in page(monday, week_49, 0, 10).entries] == [
        (1, "alice", 30),
        (2, "bob", 20),
    ]
    assert page(monday, board.at(period_named("weekly", "UTC", "2026-W50")), 0, 10).count == 0


def test_each_period_is_ranked_on_its_own(
    clocked: Callable[[datetime], Engine], board_name: str, redis_conn: redis.Redis
) -> None:
    """The rank index, pages, windows and friends lists count the period asked for, only."""
    one = clocked(datetime(2026, 12, 2, 10, 0, 0))
    two = clocked(datetime(2026, 12, 3, 10, 0, 0))
    cache = BoardCache(redis_conn)
    board, _ = registry_on(one, board_name).put(f"{board_name}-ranks", {"reset": "daily", "top_n": 5})
    day_one = registry_on(one, board_name).get(board.id)
    day_two = registry_on(two, board_name).get(board.id)
    assert (day_one.period_id, day_two.period_id) == ("2026-12-02", "2026-12-03")
    commit_submissions(one, cache, [Submitted(day_one, f"u{i}", 100 - i) for i in range(20)])
    commit_submissions(two, cache, [Submitted(day_two, f"u{i}", 1 + i) for i in range(0, 20, 2)])

    assert page(two, day_one, 0, 3).count == 20
    assert page(two, day_two, 0, 3).count == 10
    assert [e.user_id for e in page(two, day_two, 0, 3).entries] == ["u18", "u16", "u14"]
    found = around(two, day_one, "u19", 3)
    assert found is not None
    assert [(e.rank, e.user_id) for e in found.entries] == [(18, "u17"), (19, "u18"), (20, "u19")]
    assert around(two, day_two, "u19", 3) is None
    assert [(e.rank, e.user_id) for e in ranks_of(two, day_two, ["u0", "u1", "u18"])] == [(1, "u18"), (10, "u0")]


def test_a_submission_that_misses_its_period_is_recorded_in_the_current_one(
    clocked: Callable[[datetime], Engine], board_name: str, redis_conn: redis.Redis
) -> None:
    """A process whose idea of the period is behind the database's (its copy of the board, or
    its skew) never writes into a period that has ended: the statement checks the database's
    clock, and the submission goes to the period current then, in the batch path too."""
    after = clocked(datetime(2026, 12, 3, 0, 0, 1))
    cache = BoardCache(redis_conn)
    board, _ = registry_on(after, board_name).put(f"{board_name}-late", {"reset": "daily"})
    yesterday = board.at(period_named("daily", "UTC", "2026-12-02"))
    alone = submit_score(after, cache, Submitted(yesterday, "alice", 3), "key-1")
    batched = commit_submissions(after, cache, [Submitted(yesterday, "bob", 4), Submitted(yesterday, "carol", 5)])
    assert alone.period == "2026-12-03"
    assert [getattr(one, "period", None) for one in batched] == ["2026-12-03", "2026-12-03"]
    assert {row[0] for row in rows(after, board)} == {"2026-12-03"}
    assert database_now(after) >= datetime(2026, 12, 3)


@pytest.mark.parametrize("path", ["batch", "transaction"])
def test_a_write_that_waits_for_its_row_past_the_end_counts_in_the_next_period(
    clocked: Callable[[datetime], Engine], board_name: str, redis_conn: redis.Redis, path: str
) -> None:
    """The period is checked before a write waits for its row (locked by a concurrent one) and
    again once it holds it: a write that waited across the boundary leaves the ended period as
    it was and counts in the new one, in the batch path and in a transaction (Idempotency-Key)."""
    engine = clocked(datetime(2026, 12, 2, 23, 59, 59))
    cache = BoardCache(redis_conn)
    board, _ = registry_on(engine, board_name).put(f"{board_name}-{path}", {"reset": "daily"})
    assert submit_score(engine, cache, Submitted(board, "alice", 1)).period == "2026-12-02"

    answers: list[object] = []

    def write() -> None:
        one = Submitted(board, "alice", 5)
        if path == "batch":
            answers.extend(commit_submissions(engine, cache, [one]))
        else:
            answers.append(submit_score(engine, cache, one, "key-1"))

    with engine.connect() as holder:  # a concurrent write's lock on alice's row, held past midnight
        holder.execute(
            text("SELECT 1 FROM scores WHERE board = :b AND user_id = 'alice' FOR UPDATE"), {"b": board.id}
        ).all()
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.3)
        assert database_now(engine) < datetime(2026, 12, 3)
        assert not answers, "the write did not wait for the row"
        while database_now(engine) < datetime(2026, 12, 3, 0, 0, 0, 200000):
            time.sleep(0.1)
        holder.rollback()
    writer.join(timeout=10)

    assert [getattr(one, "period", one) for one in answers] == ["2026-12-03"]
    assert rows(engine, board) == [("2026-12-02", "alice", 1), ("2026-12-03", "alice", 5)]
    with engine.connect() as conn:
        last_write = conn.execute(
            text("SELECT reached_at FROM scores WHERE board = :b AND period = '2026-12-02'"), {"b": board.id}
        ).scalar_one()
    assert last_write < datetime(2026, 12, 3)
