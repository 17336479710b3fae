"""Moderation: delete a board, remove one user's entry (a cheater), erase a user everywhere (a GDPR request).

SQL goes first, in one transaction; then Redis is made to follow at once,
so the live board, ranks and viewers reflect it: the user leaves the cached
board and the next one moves up (a rebuild from SQL), and Redis refuses that
user's late writes still on their way (`Removal`). Never imports Flask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine, delete
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.leaderboard import changes
from app.leaderboard.boards import Board, BoardRegistry
from app.leaderboard.cache import REDIS_ERRORS, BoardCache, Removal
from app.leaderboard.names import forget_names
from app.leaderboard.rebuild import rebuild_board, top_standings
from app.models import IdempotencyKey, Score, UserName

log = logging.getLogger(__name__)


def delete_board(registry: BoardRegistry, cache: BoardCache, board_id: str) -> Board:
    """Delete a board with its scores and Redis keys; its viewers are told, and get 404 after.

    Raises BoardNotFound, or BoardProtected for the default board.
    """
    board = registry.remove(board_id)
    cache.drop(board)
    return board


def remove_entry(engine: Engine, cache: BoardCache, board: Board, user_id: str) -> bool:
    """Take one user off one board in the board's period (their score, and that board's
    idempotency records); False if absent."""
    with engine.begin() as connection:
        version = connection.execute(
            delete(Score)
            .where(Score.board == board.id, Score.period == board.period_id, Score.user_id == user_id)
            .returning(Score.version)
        ).scalar_one_or_none()
        connection.execute(
            delete(IdempotencyKey).where(IdempotencyKey.board == board.id, IdempotencyKey.user_id == user_id)
        )
    if version is None:
        return False
    _follow_in_redis(engine, cache, board, [Removal(user_id, int(version) + 1)])
    return True


@dataclass(frozen=True)
class Erased:
    """What erasing a user removed."""

    user_id: str
    boards: list[str]
    idempotency_keys: int
    name: bool
    changes: int  # entries of theirs deleted from those boards' change logs

    def as_json(self) -> dict[str, object]:
        return {
            "userId": self.user_id,
            "boards": self.boards,
            "idempotencyKeys": self.idempotency_keys,
            "name": self.name,
            "changes": self.changes,
        }


def erase_user(engine: Engine, cache: BoardCache, registry: BoardRegistry, user_id: str) -> Erased:
    """Erase the user from every board and period, with their display name and idempotency
    records, in one transaction; then from those boards' live boards and change logs."""
    with engine.begin() as connection:
        removed = connection.execute(
            delete(Score).where(Score.user_id == user_id).returning(Score.board, Score.version)
        ).all()
        keys = connection.execute(delete(IdempotencyKey).where(IdempotencyKey.user_id == user_id)).rowcount
        name = connection.execute(delete(UserName).where(UserName.user_id == user_id)).rowcount
    forget_names(engine, user_id)
    forgotten = 0
    newest: dict[str, int] = {}
    for board_id, version in removed:  # a board's periods: the newest version is the live one's
        newest[board_id] = max(newest.get(board_id, 0), int(version))
    for board_id, version in sorted(newest.items()):
        board = registry.find(board_id)
        if board is not None:
            _follow_in_redis(engine, cache, board, [Removal(user_id, version + 1)])
            forgotten += _forget_changes(cache, board, user_id)
    return Erased(
        user_id=user_id,
        boards=sorted(newest),
        idempotency_keys=keys,
        name=bool(name),
        changes=forgotten,
    )


def _forget_changes(cache: BoardCache, board: Board, user_id: str) -> int:
    try:
        return changes.forget_user(cache.redis, board, user_id)
    except REDIS_ERRORS as exc:  # SQL holds nothing of theirs any more; the log keeps these
        log.warning("board %s: the change log kept %s's entries: %s", board.id, user_id, exc)
        return 0


def _follow_in_redis(engine: Engine, cache: BoardCache, board: Board, removals: list[Removal]) -> None:
    """Take the users off the cached board and let the next ones move up; if Redis is away, the keeper will."""
    try:
        with Session(engine) as session:
            if cache.is_built(board):
                # A merge of SQL's top N after the removal: the hole fills from below.
                cache.apply(board, top_standings(session, board), mode="merge", removals=removals)
                session.rollback()
            else:
                rebuild_board(session, cache, board, reason="removal", removals=removals)
    except (*REDIS_ERRORS, SQLAlchemyError) as exc:
        log.warning("board %s not updated in Redis after a removal: %s", board.id, exc)
        cache.stale_boards.add(board.id)
