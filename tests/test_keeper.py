"""BoardKeeper.reconcile: Redis converges to SQL without anyone writing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.keeper import BoardKeeper
from app.leaderboard import Board, BoardCache, Standing, submit_score, top_standings


@pytest.fixture
def cache(redis_conn: redis.Redis, board_name: str, base_env: dict[str, str]) -> BoardCache:
    return BoardCache(redis_conn, Board(board_name, top_n=3, channel=base_env["REDIS_CHANNEL"], max_increment=10**6))


@pytest.fixture
def keeper(engine: Engine, cache: BoardCache) -> BoardKeeper:
    return BoardKeeper(engine, cache)


@pytest.fixture
def sql_top(engine: Engine, cache: BoardCache) -> Callable[[], list[tuple[str, int]]]:
    def read() -> list[tuple[str, int]]:
        with Session(engine) as session:
            return [(s.user_id, s.total) for s in top_standings(session, cache.board)]

    return read


def seed(engine: Engine, cache: BoardCache) -> None:
    for user, score in [("a", 30), ("b", 20), ("c", 10), ("d", 5)]:
        submit_score(engine, cache, user, score)


def sql_only_write(engine: Engine, board: str, user: str, total: int) -> None:
    """A write that committed while Redis was unreachable: in SQL, never applied to Redis."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE scores SET total = :t, reached_at = :r WHERE board = :b AND user_id = :u"),
            {"t": total, "r": datetime(2026, 11, 1), "b": board, "u": user},
        )


def test_a_consistent_board_is_left_alone(engine: Engine, cache: BoardCache, keeper: BoardKeeper) -> None:
    seed(engine, cache)
    version = cache.redis.get(cache.keys.version)
    assert [keeper.reconcile() for _ in range(3)] == ["ok", "ok", "ok"]
    assert cache.redis.get(cache.keys.version) == version
    assert keeper.rebuilds == 0


def test_a_board_missing_from_redis_is_rebuilt_at_once(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, sql_top: Callable[[], list[tuple[str, int]]]
) -> None:
    seed(engine, cache)
    cache.redis.delete(*cache.keys.as_list())  # FLUSHALL, eviction or a restart without persistence
    assert keeper.reconcile() == "rebuilt"
    assert cache.entries() == sql_top() == [("a", 30), ("b", 20), ("c", 10)]


def test_a_lost_redis_update_is_repaired_on_the_next_check(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, sql_top: Callable[[], list[tuple[str, int]]]
) -> None:
    seed(engine, cache)
    sql_only_write(engine, cache.board.name, "d", 25)
    assert keeper.reconcile() == "watching"  # could be a write on its way to Redis
    assert keeper.reconcile() == "rebuilt"  # still wrong a second later: it was lost
    assert cache.entries() == sql_top() == [("a", 30), ("d", 25), ("b", 20)]


def test_a_write_still_on_its_way_is_not_mistaken_for_a_lost_one(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper
) -> None:
    seed(engine, cache)
    sql_only_write(engine, cache.board.name, "d", 25)
    assert keeper.reconcile() == "watching"
    with Session(engine) as session:  # its Redis update lands before the next check
        row = session.execute(text("SELECT total, reached_at FROM scores WHERE user_id = 'd'")).one()
    cache.apply([Standing("d", row.total, row.reached_at)], mode="merge")
    assert keeper.reconcile() == "ok"
    assert keeper.rebuilds == 0


def test_redis_ahead_of_sql_is_rebuilt_too(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, sql_top: Callable[[], list[tuple[str, int]]]
) -> None:
    """An operator lowered a total in SQL (the truth); Redis still shows the old one."""
    seed(engine, cache)
    sql_only_write(engine, cache.board.name, "a", 1)
    assert [keeper.reconcile(), keeper.reconcile()] == ["watching", "rebuilt"]
    assert cache.entries() == sql_top() == [("b", 20), ("c", 10), ("d", 5)]
