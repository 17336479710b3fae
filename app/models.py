"""SQL tables: the source of truth. No Redis and no request in here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, FetchedValue, Index, Integer, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db

USER_ID_MAX_LENGTH = 128
IDEMPOTENCY_KEY_MAX_LENGTH = 255

# Byte-wise comparison on PostgreSQL (collation "C"), as SQLite and Redis
# compare, so the userId tie-break is the same everywhere.
UserId = String(USER_ID_MAX_LENGTH).with_variant(String(USER_ID_MAX_LENGTH, collation="C"), "postgresql")
RankKey = Text().with_variant(Text(collation="C"), "postgresql")


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
    # The ranking order as one string, computed by the database (a generated
    # column, see migrations/versions/0001): 16 digits of 2^53 - 1 - total,
    # 16 digits of reached_at in µs since the epoch, ':', user_id. Ascending
    # rank_key is score descending, then first to reach it, then user id.
    rank_key: Mapped[str] = mapped_column(RankKey, FetchedValue())

    __table_args__ = (
        # The board in rank order: the top N, and counting the rows ahead of
        # anyone, are ranges of this index.
        Index("ix_scores_rank", "board", "rank_key"),
    )


class RankDelta(db.Model):  # type: ignore[name-defined,misc]
    """A change to the rank order since the last compaction (+1 a key appears, -1 it goes).

    Written by a trigger on `scores`, in the same transaction as the score;
    folded into `rank_buckets` by app.ranks.compact_rank_index.
    """

    __tablename__ = "rank_deltas"

    id: Mapped[int] = mapped_column(Integer().with_variant(BigInteger, "postgresql"), primary_key=True)
    board: Mapped[str] = mapped_column(String(64))
    rank_key: Mapped[str] = mapped_column(RankKey)
    delta: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (Index("ix_rank_deltas_board_rank_key", "board", "rank_key", "delta"),)


class RankBucket(db.Model):  # type: ignore[name-defined,misc]
    """A bucket boundary of the rank index: how many users ranked before `start_key` at the last compaction."""

    __tablename__ = "rank_buckets"

    board: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_key: Mapped[str] = mapped_column(RankKey, primary_key=True)
    users_before: Mapped[int] = mapped_column(BigInteger)


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
