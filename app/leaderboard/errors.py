"""What the domain refuses, as exceptions; app.errors answers each in the JSON envelope."""

from __future__ import annotations


class BoardNotFound(Exception):
    """No board has this id (or it was deleted meanwhile); nothing was changed."""

    def __init__(self, board_id: str) -> None:
        super().__init__(f"No board {board_id!r}.")
        self.board_id = board_id


class InvalidBoard(Exception):
    """A board's settings that cannot be: the message says which and why."""


class BoardImmutable(Exception):
    """A rule (order, operator, reset, timezone) of a board that already has scores, or of the default board."""


class BoardProtected(Exception):
    """The default board cannot be deleted."""


class TotalLimitExceeded(Exception):
    """The increment would take the user's total past the largest exact value (2^53 - 1)."""


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request body."""
