"""Making Redis equal to SQL: a board's top N from SQL, a rebuild, and where the two disagree."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.leaderboard.boards import Board
from app.leaderboard.cache import ApplyResult, BoardCache, Removal
from app.leaderboard.standings import Standing
from app.metrics import REBUILDS
from app.models import Score, UserName

# The one ranking order: the better value first, then whoever reached it
# first, then userId ascending (byte-wise). In SQL it is the order of
# `scores.rank_key`, a column the database computes (see app.models.Score);
# the Redis side encodes the same order in its members (see APPLY_SCRIPT).
RANK_ORDER = (Score.rank_key.asc(),)


def top_standings(session: Session, board: Board, limit: int | None = None) -> list[Standing]:
    """The board's top N (or `limit`) from SQL, in the board's period, in RANK_ORDER, with the users' display names."""
    rows = session.execute(
        select(Score.user_id, Score.total, Score.reached_at, Score.version, Score.rank_key, UserName.name)
        .outerjoin(UserName, UserName.user_id == Score.user_id)
        .where(Score.board == board.id, Score.period == board.period_id)
        .order_by(*RANK_ORDER)
        .limit(board.top_n if limit is None else limit)
    )
    return [
        Standing(
            user_id=r.user_id,
            total=r.total,
            reached_at=r.reached_at,
            version=r.version,
            name=r.name,
            rank_key=r.rank_key,
        )
        for r in rows
    ]


def rebuild_board(
    session: Session,
    cache: BoardCache,
    board: Board,
    *,
    reason: str = "manual",
    updated: Standing | None = None,
    removals: Sequence[Removal] = (),
) -> ApplyResult:
    """Make the cached board equal to the SQL top N, and publish it.

    Replace with one read of SQL, then merge a second read: a write whose
    script ran before the replace had committed before the second read, so
    the merge restores it; later writes apply their own script after ours.
    `updated`, when a write triggered the rebuild, is named in the message.
    `removals` are users just deleted from SQL: their late writes stay out.
    `reason` labels the rebuild in the metrics (missing, period, drift, failover, manual, removal); a
    "missing" board (or a new "period") that another process rebuilt meanwhile is not replaced again.
    """
    REBUILDS.labels(reason).inc()
    # A missing board, or one of a period just begun, may have been rebuilt by
    # another process meanwhile: then only the merge.
    replace = "rebuild" if reason in ("missing", "period") else "replace"
    cache.apply(board, top_standings(session, board), mode=replace, updated=updated, removals=removals)
    result = cache.apply(board, top_standings(session, board), mode="merge", updated=updated)
    session.rollback()  # end the read transaction; nothing was written
    return result


Drift = set[tuple[str, int | None, int | None]]


def board_drift(session: Session, cache: BoardCache, board: Board) -> Drift | None:
    """Where the cached board disagrees with SQL's top N: (user, SQL value, cached value).

    None when Redis has no board at all (or one built from another origin).
    Redis is read before SQL, so a write that reached Redis is always
    visible to the SQL read: a difference is a write still on its way to
    Redis, or one whose update Redis never got, or a user Redis has that SQL
    no longer ranks there.
    """
    if not cache.is_built(board):
        return None
    cached = dict(cache.entries(board))
    in_sql = {s.user_id: s.total for s in top_standings(session, board)}
    session.rollback()  # end the read transaction
    users = set(cached) | set(in_sql)
    return {(user, in_sql.get(user), cached.get(user)) for user in users if in_sql.get(user) != cached.get(user)}
