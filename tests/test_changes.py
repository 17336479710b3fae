"""The change log (app.leaderboard.changes and APPLY_SCRIPT's part of it) against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import Board, BoardCache, Standing, Submitted, changes
from app.leaderboard.writes import commit_submissions, submit_score

T0 = datetime(2026, 1, 1, 12, 0, 0)


def entries(client: redis.Redis, board: Board) -> list[dict[str, Any]]:
    return [json.loads(fields["data"]) for _, fields in client.xrange(board.keys.changes)]


def submit(engine: Engine, cache: BoardCache, board: Board, user: str, value: int, key: str | None = None) -> Any:
    return submit_score(engine, cache, Submitted(board, user, value), key)


def test_each_change_is_logged_once_with_its_values_rank_and_board_version_and_no_change_is_not(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(2, operator="best", order="asc", score_min=0)
    submit(engine, cache, board, "ann", 50)  # in one statement, with others' (group commit's path)
    submit(engine, cache, board, "ann", 40, key="k1")  # in a transaction, with an Idempotency-Key
    submit(engine, cache, board, "ann", 45)  # worse: no change, nothing logged
    submit(engine, cache, board, "bob", 60)
    submit(engine, cache, board, "cat", 70)  # past the top 2: logged, rank null, the board unchanged
    logged = entries(redis_conn, board)
    assert [(e["userId"], e["score"], e["previous"], e["rank"]) for e in logged] == [
        ("ann", 50, None, 1),
        ("ann", 40, 50, 1),
        ("bob", 60, None, 2),
        ("cat", 70, None, None),
    ]
    assert all(e["type"] == "score" and e["board"] == board.id for e in logged)
    version = int(redis_conn.get(board.keys.version) or 0)
    assert logged[-1]["version"] == logged[-2]["version"] == version  # cat changed the log, not the board
    assert logged[0]["version"] < logged[1]["version"] < logged[2]["version"]


def test_a_batch_logs_every_submission_of_it(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    batch = [Submitted(board, f"u{i}", i + 1) for i in range(20)]
    assert all(not isinstance(outcome, Exception) for outcome in commit_submissions(engine, cache, batch))
    assert sorted(e["userId"] for e in entries(redis_conn, board)) == sorted(f"u{i}" for i in range(20))


def test_a_change_to_a_board_redis_lost_is_logged_once_after_the_rebuild(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    submit(engine, cache, board, "ann", 5)
    redis_conn.delete(board.keys.version, board.keys.top, board.keys.members)  # as after a restart
    submit(engine, cache, board, "ann", 6)
    assert [(e["score"], e["previous"]) for e in entries(redis_conn, board)] == [(5, None), (11, 5)]
    assert cache.entries(board) == [("ann", 11)]


def test_a_board_built_from_another_sql_board_before_starts_its_own_log(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    """As when two checkouts share one Redis: the log of the other's board is not this one's."""
    board = make_board(3)
    submit(engine, cache, board, "ann", 5)
    redis_conn.set(board.keys.origin, "another-database")
    submit(engine, cache, board, "bob", 1)  # the board is rebuilt from this SQL, its log starts over
    assert [(e["userId"], e["score"]) for e in entries(redis_conn, board)] == [("bob", 1)]
    assert cache.entries(board) == [("ann", 5), ("bob", 1)]


def test_with_changes_retain_0_there_is_no_log(
    engine: Engine, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    quiet = BoardCache(redis_conn, changes_retain=0)
    submit(engine, quiet, board, "ann", 5)
    assert quiet.entries(board) == [("ann", 5)]
    assert not redis_conn.exists(board.keys.changes)


def test_the_log_keeps_about_changes_retain_entries_and_says_who_missed_some(
    engine: Engine, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    small = BoardCache(redis_conn, changes_retain=100)
    submit(engine, small, board, "first", 1)
    (first_id,) = [entry_id for entry_id, _ in redis_conn.xrange(board.keys.changes)]
    for i in range(400):
        submit(engine, small, board, f"u{i % 40}", 1)
    kept = redis_conn.xlen(board.keys.changes)
    assert 100 <= kept <= 200  # MAXLEN ~ trims whole nodes (100 entries each)
    newest = changes.newest_id(redis_conn, board)
    assert changes.missed(redis_conn, board, first_id)
    assert not changes.missed(redis_conn, board, newest)
    assert not changes.missed(redis_conn, board, "0-0")
    page = changes.read_after(redis_conn, board, "0-0", 50)
    assert len(page) == 50
    assert changes.read_after(redis_conn, board, page[-1].id, 1)[0].position > page[-1].position
    # Redis restarted without persistence: the log starts again, and an old id says so.
    redis_conn.delete(board.keys.changes)
    assert changes.missed(redis_conn, board, newest)
    submit(engine, small, board, "again", 1)
    assert changes.missed(redis_conn, board, newest)


def test_a_change_that_overtakes_the_one_before_it_waits_for_it_so_the_log_keeps_commit_order(
    cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    """As when two processes commit one user's changes a moment apart and the second reaches Redis first."""
    board = make_board(3)
    now_us = int(time.time() * 1_000_000)
    first = Standing("ann", 10, T0, version=now_us, previous=None, rank=1)
    second = Standing("ann", 30, T0, version=now_us + 5, previous=10, rank=1, previous_version=now_us)
    third = Standing("ann", 60, T0, version=now_us + 9, previous=30, rank=1, previous_version=now_us + 5)
    cache.apply(board, [], mode="replace")
    assert cache.apply(board, [third], mode="write").status == "written"  # on the board at once
    assert cache.apply(board, [second], mode="write").status == "unchanged"
    assert entries(redis_conn, board) == []  # both wait for the first
    cache.apply(board, [first], mode="write")
    assert [(e["score"], e["previous"]) for e in entries(redis_conn, board)] == [(10, None), (30, 10), (60, 30)]
    assert cache.entries(board) == [("ann", 60)]
    assert not redis_conn.exists(board.keys.held)


def test_a_change_whose_predecessor_never_comes_is_logged_after_the_hold(
    cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    now_us = int(time.time() * 1_000_000)
    cache.apply(board, [], mode="replace")
    orphan = Standing("ann", 30, T0, version=now_us + 5, previous=10, rank=1, previous_version=now_us)
    cache.apply(board, [orphan], mode="write")
    assert entries(redis_conn, board) == []
    time.sleep(2.1)  # HOLD_MS: its predecessor's Redis update failed, say
    cache.apply(board, [Standing("bob", 5, T0, version=now_us + 7, rank=2)], mode="write")
    assert [e["userId"] for e in entries(redis_conn, board)] == ["ann", "bob"]


def test_the_consumer_group_reader_hands_on_each_entry_once_and_resumes_where_the_group_stopped(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], redis_conn: redis.Redis
) -> None:
    board = make_board(3)
    for i in range(30):
        submit(engine, cache, board, f"u{i}", 1)
    lines: list[str] = []

    def until(count: int) -> Callable[[], bool]:
        return lambda: len(lines) < count

    changes.follow(redis_conn, board, "g", "c1", lines.append, batch=7, block_ms=100, keep_going=until(14))
    submit(engine, cache, board, "late", 1)
    changes.follow(redis_conn, board, "g", "c1", lines.append, batch=7, block_ms=100, keep_going=until(31))
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == [entry_id for entry_id, _ in redis_conn.xrange(board.keys.changes)]
    assert json.loads(lines[-1])["userId"] == "late"
    assert redis_conn.xpending(board.keys.changes, "g")["pending"] == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE board = :b"), {"b": board.id}).scalar() == 31
