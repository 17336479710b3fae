"""SQL tables: the source of truth. No Redis and no request in here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db

USER_ID_MAX_LENGTH = 128
IDEMPOTENCY_KEY_MAX_LENGTH = 255

# Byte-wise comparison on PostgreSQL (collation "C"), as SQLite and Redis
# compare, so the userId tie-break is the same everywhere.
UserId = String(USER_ID_MAX_LENGTH).with_variant(String(USER_ID_MAX_LENGTH, collation="C"), "postgresql")


class Score(db.Model):  # type: ignore[name-defined,misc]
    """One user's running total on one board."""

    __tablename__ = "scores"

    board: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    total: Mapped[int] = mapped_column(BigInteger)
    # When the user reached `total` (UTC, set by the database clock); the
    # first to reach a total ranks ahead of later ones.
    reached_at: Mapped[datetime] = mapped_column(DateTime())
    # +1 on every change, so a reader can tell which of two rows is newer.
    version: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # Serves the ranking order, so the top N and any user's rank
        # (a count of the rows ahead) are index range scans.
        Index("ix_scores_rank", "board", total.desc(), "reached_at", "user_id"),
    )


class IdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    """A submission made with an `Idempotency-Key`, kept so a retry replays it."""

    __tablename__ = "idempotency_keys"

    board: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    increment: Mapped[int] = mapped_column(BigInteger)
    # The answer the first request got, stored in the transaction that added
    # the score; null only inside that transaction.
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(), index=True)
