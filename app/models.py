"""SQL tables: the source of truth. No Redis and no request in here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import db

USER_ID_MAX_LENGTH = 128
IDEMPOTENCY_KEY_MAX_LENGTH = 255
BOARD_ID_MAX_LENGTH = 64
BOARD_TITLE_MAX_LENGTH = 120
NAME_MAX_LENGTH = 64
PERIOD_ID_MAX_LENGTH = 32

# Byte-wise comparison on PostgreSQL (collation "C"), as SQLite and Redis
# compare, so the userId tie-break is the same everywhere.
UserId = String(USER_ID_MAX_LENGTH).with_variant(String(USER_ID_MAX_LENGTH, collation="C"), "postgresql")
RankKey = Text().with_variant(Text(collation="C"), "postgresql")


class BoardRow(db.Model):  # type: ignore[name-defined,misc]
    """A board of the deployment and its rules (app.leaderboard.boards.Board is its value)."""

    __tablename__ = "boards"

    id: Mapped[str] = mapped_column(String(BOARD_ID_MAX_LENGTH), primary_key=True)
    # Random, set at creation: tells this board's Redis state from a deleted
    # namesake's or another database's.
    uid: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(BOARD_TITLE_MAX_LENGTH))
    top_n: Mapped[int] = mapped_column(Integer)
    sort_order: Mapped[str] = mapped_column(String(4))  # "desc" or "asc"
    operator: Mapped[str] = mapped_column(String(4))  # "incr", "best" or "set"
    score_min: Mapped[int] = mapped_column(BigInteger)
    score_max: Mapped[int] = mapped_column(BigInteger)
    reset: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime())
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class Score(db.Model):  # type: ignore[name-defined,misc]
    """One user's value on one board: a running total, a best or a latest, by the board's operator."""

    __tablename__ = "scores"

    board: Mapped[str] = mapped_column(String(BOARD_ID_MAX_LENGTH), ForeignKey("boards.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    # The period the value counts in (app.leaderboard.seasons); "" on a board without resets.
    period: Mapped[str] = mapped_column(String(PERIOD_ID_MAX_LENGTH), primary_key=True, server_default="")
    total: Mapped[int] = mapped_column(BigInteger)
    # When the user reached `total` (UTC, set by the database clock); the
    # first to reach a value ranks ahead of later ones.
    reached_at: Mapped[datetime] = mapped_column(DateTime())
    # Grows with every change, and past the clock in µs: a row made again
    # after a delete is newer than any version of the one deleted.
    version: Mapped[int] = mapped_column(BigInteger)
    # The value and version this row's last change replaced (None: it was the
    # first), read from the locked row by that change's own upsert: exactly
    # what the change log says it changed, whatever ran concurrently.
    previous_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When the row's period ends (UTC; None on a board without resets): the
    # upsert checks it once it holds the row's lock, so a write that waited
    # past the end changes nothing (app.leaderboard.records).
    period_end: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # The board's order (lower is better), copied to the row for rank_key.
    ascending: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The ranking order as one string, computed by the database (a generated
    # column, see migrations/versions/0002): 16 digits of the value's distance
    # from the best end, 16 digits of reached_at in µs since the epoch, ':',
    # user_id. Ascending rank_key is the better value first, then first to
    # reach it, then user id.
    rank_key: Mapped[str] = mapped_column(RankKey, FetchedValue())

    __table_args__ = (
        # A board's period in rank order: the top N, and counting the rows
        # ahead of anyone, are ranges of this index.
        Index("ix_scores_rank", "board", "period", "rank_key"),
    )


class RankDelta(db.Model):  # type: ignore[name-defined,misc]
    """A change to the rank order since the last compaction (+1 a key appears, -1 it goes).

    Written by a trigger on `scores`, in the same transaction as the score;
    folded into `rank_buckets` by app.ranks.compact_rank_index.
    """

    __tablename__ = "rank_deltas"

    id: Mapped[int] = mapped_column(Integer().with_variant(BigInteger, "postgresql"), primary_key=True)
    board: Mapped[str] = mapped_column(String(BOARD_ID_MAX_LENGTH))
    period: Mapped[str] = mapped_column(String(PERIOD_ID_MAX_LENGTH), server_default="")
    rank_key: Mapped[str] = mapped_column(RankKey)
    delta: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (Index("ix_rank_deltas_board_rank_key", "board", "period", "rank_key", "delta"),)


class RankBucket(db.Model):  # type: ignore[name-defined,misc]
    """A bucket boundary of the rank index: how many users ranked before `start_key` at the last compaction."""

    __tablename__ = "rank_buckets"

    board: Mapped[str] = mapped_column(String(BOARD_ID_MAX_LENGTH), primary_key=True)
    period: Mapped[str] = mapped_column(String(PERIOD_ID_MAX_LENGTH), primary_key=True, server_default="")
    start_key: Mapped[str] = mapped_column(RankKey, primary_key=True)
    users_before: Mapped[int] = mapped_column(BigInteger)

    # The bucket a rank falls in (pages, windows): one step back from a count, ties by key.
    __table_args__ = (Index("ix_rank_buckets_board_users_before", "board", "period", "users_before", "start_key"),)


class UserName(db.Model):  # type: ignore[name-defined,misc]
    """A user's display name, from the `name` claim of their latest token that had one."""

    __tablename__ = "user_names"

    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    updated_at: Mapped[datetime] = mapped_column(DateTime())


class IdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    """A submission made with an `Idempotency-Key`, kept so a retry replays it."""

    __tablename__ = "idempotency_keys"

    # The board, or "" for a submission to several boards (POST /scores).
    board: Mapped[str] = mapped_column(String(BOARD_ID_MAX_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(UserId, primary_key=True)
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    # What identifies the first request's body: its score, or for several
    # boards a 63-bit digest of its (board, score) pairs.
    fingerprint: Mapped[int] = mapped_column(BigInteger)
    # The answer the first request got, stored in the transaction that added
    # the score; null only inside that transaction.
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(), index=True)
