"""BoardKeeper: Redis converges to SQL without anyone writing, on every board."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.keeper import BoardKeeper
from app.leaderboard import Board, BoardCache, BoardRegistry, Standing, Submitted
from app.leaderboard.rebuild import top_standings
from app.leaderboard.writes import submit_score


@pytest.fixture
def keeper(engine: Engine, cache: BoardCache, registry: BoardRegistry) -> BoardKeeper:
    return BoardKeeper(engine, cache, registry)


@pytest.fixture
def board(make_board: Callable[..., Board]) -> Board:
    return make_board(3)


def sql_top(engine: Engine, board: Board) -> list[tuple[str, int]]:
    with Session(engine) as session:
        return [(s.user_id, s.total) for s in top_standings(session, board)]


def seed(engine: Engine, cache: BoardCache, board: Board) -> None:
    for user, score in [("a", 30), ("b", 20), ("c", 10), ("d", 5)]:
        submit_score(engine, cache, Submitted(board, user, score))


def sql_only_write(engine: Engine, board: Board, user: str, total: int) -> None:
    """A write that committed while Redis was unreachable: in SQL, never applied to Redis."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE scores SET total = :t, reached_at = :r, version = version + 1 WHERE board = :b AND user_id = :u"
            ),
            {"t": total, "r": datetime(2026, 11, 1), "b": board.id, "u": user},
        )


def test_a_consistent_board_is_left_alone(engine: Engine, cache: BoardCache, keeper: BoardKeeper, board: Board) -> None:
    seed(engine, cache, board)
    version = cache.redis.get(board.keys.version)
    assert [keeper.check(board) for _ in range(3)] == ["ok", "ok", "ok"]
    assert keeper.rebuilds == 0
    assert keeper.reconcile()[board.id] == "ok"
    assert cache.redis.get(board.keys.version) == version


def test_every_board_missing_from_redis_is_rebuilt_in_one_round(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, make_board: Callable[..., Board]
) -> None:
    boards = [make_board(3) for _ in range(30)]
    for board in boards:
        seed(engine, cache, board)
    expected = {board.id: sql_top(engine, board) for board in boards}
    for board in boards:
        cache.redis.delete(*board.keys.as_list())  # FLUSHALL, eviction or a restart without persistence
    done = keeper.reconcile()
    assert all(done[board.id] == "rebuilt" for board in boards)
    assert {board.id: cache.entries(board) for board in boards} == expected


def test_a_lost_redis_update_is_repaired_on_the_next_check(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, board: Board
) -> None:
    seed(engine, cache, board)
    sql_only_write(engine, board, "d", 25)
    assert keeper.check(board) == "watching"  # could be a write on its way to Redis
    assert keeper.check(board) == "rebuilt"  # still wrong a second later: it was lost
    assert cache.entries(board) == sql_top(engine, board) == [("a", 30), ("d", 25), ("b", 20)]


def test_a_board_whose_update_failed_here_is_checked_first(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, make_board: Callable[..., Board]
) -> None:
    """With many boards only a few are compared with SQL per round: those this process failed to update come first."""
    boards = [make_board(3) for _ in range(40)]
    for board in boards:
        seed(engine, cache, board)
    lost = boards[-1]
    sql_only_write(engine, lost, "d", 25)
    cache.stale_boards.add(lost.id)
    assert [keeper.reconcile()[lost.id] for _ in range(2)] == ["watching", "rebuilt"]
    assert lost.id not in cache.stale_boards
    assert cache.entries(lost) == sql_top(engine, lost)


def test_a_write_still_on_its_way_is_not_mistaken_for_a_lost_one(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, board: Board
) -> None:
    seed(engine, cache, board)
    sql_only_write(engine, board, "d", 25)
    assert keeper.check(board) == "watching"
    with Session(engine) as session:  # its Redis update lands before the next check
        row = session.execute(
            text("SELECT total, reached_at, version FROM scores WHERE board = :b AND user_id = 'd'"), {"b": board.id}
        ).one()
    cache.apply(board, [Standing("d", row.total, row.reached_at, row.version)], mode="merge")
    assert keeper.check(board) == "ok"
    assert keeper.rebuilds == 0


def test_redis_ahead_of_sql_is_rebuilt_too(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, board: Board
) -> None:
    """An operator lowered a total in SQL (the truth); Redis still shows the old one."""
    seed(engine, cache, board)
    sql_only_write(engine, board, "a", 1)
    assert [keeper.check(board), keeper.check(board)] == ["watching", "rebuilt"]
    assert cache.entries(board) == sql_top(engine, board) == [("b", 20), ("c", 10), ("d", 5)]


def test_a_user_redis_still_shows_but_sql_no_longer_has_is_taken_off(
    engine: Engine, cache: BoardCache, keeper: BoardKeeper, board: Board
) -> None:
    seed(engine, cache, board)
    with engine.begin() as conn:  # deleted behind the service's back
        conn.execute(text("DELETE FROM scores WHERE board = :b AND user_id = 'a'"), {"b": board.id})
    assert [keeper.check(board), keeper.check(board)] == ["watching", "rebuilt"]
    assert cache.entries(board) == [("b", 20), ("c", 10), ("d", 5)]
