"""The SQL of POST /score: add to a total, rank it, keep the Idempotency-Key record.

This is the hot path, so it is written as fixed SQL, once per database, run
on the pooled DBAPI connection (SQLAlchemy's pool still checks connections
out, pings and recycles them). Building and compiling the same statements
with SQLAlchemy's expression language cost more CPU than everything else a
request does (BENCHMARKS.md, "before"). On PostgreSQL, submissions without
an Idempotency-Key are recorded many at a time (app.leaderboard groups the
concurrent ones): one statement in autocommit upserts them and counts the
rows ahead of each, in one round trip and one commit. With a key, or on
SQLite, the claim, the upsert, the count and the stored answer are one
transaction.

The ranking order is `scores.rank_key` (see app.models.Score); the rank here
counts at most N rows ahead, so it costs the same on any board size.
Never imports Flask.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from app.sql import adapt, dbapi_connection, one_statement

IDEMPOTENCY_TTL = timedelta(hours=24)

_UPSERT = """
    INSERT INTO scores (board, user_id, total, reached_at, version)
    VALUES (:board, :user_id, :increment, {now}, 1)
    ON CONFLICT (board, user_id) DO UPDATE
    SET total = scores.total + excluded.total, reached_at = {now}, version = scores.version + 1
    WHERE scores.total + excluded.total <= :max_total
    RETURNING total, reached_at, rank_key
"""

_AHEAD = """
    SELECT count(*) FROM (
        SELECT 1 FROM scores WHERE board = :board AND rank_key < :rank_key ORDER BY board, rank_key LIMIT :top_n
    ) AS ahead
"""

# Both counts walk ix_scores_rank in order and stop after N entries. A bitmap
# scan would read every entry ahead of the user first, dead ones included:
# thousands per write on a busy board (docs/write-path-profile.md). The
# ORDER BY asks for the walk; the connections' `enable_bitmapscan=off`
# (config.settings) keeps PostgreSQL from sorting a bitmap scan instead when
# its statistics are stale.

# PostgreSQL only (SQLite has no INSERT in a WITH): many users' submissions
# in one statement, in autocommit, so one round trip and one commit (one WAL
# flush) for all of them. The rows are locked in user order, so two batches
# with users in common cannot deadlock. Each count reads the snapshot from
# before the statement: it is the user's rank had the batch been applied from
# the lowest new total to the highest (rows ahead of the user's new total are
# counted as they were, rows behind it stay behind), which is the order the
# Redis script is given. The user's own old row has a smaller total, so it
# sorts after the new key and is never counted as ahead. A user whose total
# would pass :max_total returns no row.
_UPSERT_MANY_AND_AHEAD = """
    WITH upserted AS (
        INSERT INTO scores (board, user_id, total, reached_at, version)
        SELECT :board, submitted.user_id, submitted.increment, {now}, 1
        FROM unnest(CAST(:user_ids AS text[]), CAST(:increments AS bigint[])) AS submitted (user_id, increment)
        ORDER BY submitted.user_id
        ON CONFLICT (board, user_id) DO UPDATE
        SET total = scores.total + excluded.total, reached_at = {now}, version = scores.version + 1
        WHERE scores.total + excluded.total <= :max_total
        RETURNING user_id, total, reached_at, rank_key
    )
    SELECT user_id, total, reached_at, rank_key, (
        SELECT count(*) FROM (
            SELECT 1 FROM scores WHERE board = :board AND rank_key < upserted.rank_key
            ORDER BY board, rank_key LIMIT :top_n
        ) AS ahead
    )
    FROM upserted
"""

# A key past its 24 h window is taken over as if new. On PostgreSQL a
# concurrent claim of the same key waits here for the first transaction to
# end, so exactly one of them goes on to add the score.
_CLAIM_KEY = """
    INSERT INTO idempotency_keys (board, user_id, key, increment, response, created_at)
    VALUES (:board, :user_id, :key, :increment, NULL, :now)
    ON CONFLICT (board, user_id, key) DO UPDATE
    SET increment = excluded.increment, response = NULL, created_at = excluded.created_at
    WHERE idempotency_keys.created_at < :cutoff
    RETURNING key
"""

_READ_KEY = (
    "SELECT increment, response FROM idempotency_keys WHERE board = :board AND user_id = :user_id AND key = :key"
)

_STORE_ANSWER = """
    UPDATE idempotency_keys SET response = :response WHERE board = :board AND user_id = :user_id AND key = :key
"""


@dataclass(frozen=True)
class Statements:
    upsert: str
    ahead: str
    upsert_many_and_ahead: str | None
    claim_key: str
    read_key: str
    store_answer: str

    @classmethod
    def for_engine(cls, engine: Engine) -> Statements:
        postgres = engine.dialect.name == "postgresql"
        return cls(
            upsert=adapt(engine, _UPSERT),
            ahead=adapt(engine, _AHEAD),
            upsert_many_and_ahead=adapt(engine, _UPSERT_MANY_AND_AHEAD) if postgres else None,
            claim_key=adapt(engine, _CLAIM_KEY),
            read_key=adapt(engine, _READ_KEY),
            store_answer=adapt(engine, _STORE_ANSWER),
        )


_STATEMENTS: dict[str, Statements] = {}


def statements(engine: Engine) -> Statements:
    """The statements for this engine's database, built once per database."""
    dialect = engine.dialect.name
    if dialect not in _STATEMENTS:
        _STATEMENTS[dialect] = Statements.for_engine(engine)
    return _STATEMENTS[dialect]


@dataclass(frozen=True)
class Recorded:
    """A submission SQL accepted: the new total, when it was reached, its key, and the rank (None past N)."""

    total: int
    reached_at: datetime
    rank_key: str
    rank: int | None


@dataclass(frozen=True)
class Replayed:
    """A repeat of an Idempotency-Key: the first request's increment and answer."""

    increment: int
    answer: dict[str, Any]


class TotalTooLarge(Exception):
    """The increment would take the total past the maximum; nothing was changed."""


def record(
    engine: Engine,
    *,
    board: str,
    user_id: str,
    increment: int,
    max_total: int,
    top_n: int,
    key: str | None = None,
    answer: Any = None,
    now: datetime,
) -> Recorded | Replayed | None:
    """Add `increment` to the user's total, in a transaction; with `key`, at most once per 24 h.

    `answer(recorded)` builds the response to store with the key, in the same
    transaction. Returns None when the key's record vanished between the
    claim and the read (pruned): the caller may simply try again. Database
    errors are raised as SQLAlchemy's (the app answers them with a 503).
    """
    params = {"board": board, "user_id": user_id, "increment": increment, "max_total": max_total, "top_n": top_n}
    with dbapi_connection(engine) as connection:
        return _in_a_transaction(engine, connection, params, key, answer, now)


def record_many(
    engine: Engine, *, board: str, submitted: Sequence[tuple[str, int]], max_total: int, top_n: int
) -> list[Recorded | None]:
    """PostgreSQL: add each (user, increment) to its total, all in one statement; no user twice.

    Answers in the order given; None for a user whose total would pass
    `max_total` (that user's total is left as it was). Database errors are
    raised as SQLAlchemy's, and then nothing was recorded.
    """
    sql = statements(engine)
    assert sql.upsert_many_and_ahead is not None, "record_many runs on PostgreSQL only"
    params = {
        "board": board,
        "user_ids": [user_id for user_id, _ in submitted],
        "increments": [increment for _, increment in submitted],
        "max_total": max_total,
        "top_n": top_n,
    }
    with one_statement(engine) as cursor:
        cursor.execute(sql.upsert_many_and_ahead, params)
        rows = cursor.fetchall()
    recorded = {row[0]: _recorded(row[1], row[2], row[3], row[4], top_n) for row in rows}
    return [recorded.get(user_id) for user_id, _ in submitted]


def _in_a_transaction(
    engine: Engine, connection: Any, params: dict[str, Any], key: str | None, answer: Any, now: datetime
) -> Recorded | Replayed | None:
    sql = statements(engine)
    board, user_id = params["board"], params["user_id"]
    cursor = connection.cursor()
    try:
        if key is not None:
            stamps: dict[str, Any] = {"now": now, "cutoff": now - IDEMPOTENCY_TTL}
            if engine.dialect.name == "sqlite":  # stored as text: compare text with text
                stamps = {name: value.isoformat(sep=" ", timespec="microseconds") for name, value in stamps.items()}
            cursor.execute(sql.claim_key, params | {"key": key} | stamps)
            if cursor.fetchone() is None:
                cursor.execute(sql.read_key, {"board": board, "user_id": user_id, "key": key})
                found = cursor.fetchone()
                connection.rollback()
                if found is None:
                    return None
                stored = found[1] if isinstance(found[1], dict) else json.loads(found[1])
                return Replayed(increment=found[0], answer=stored)
        cursor.execute(sql.upsert, params)
        row = cursor.fetchone()
        if row is None:
            raise TotalTooLarge
        cursor.execute(sql.ahead, {"board": board, "rank_key": row[2], "top_n": params["top_n"]})
        recorded = _recorded(row[0], row[1], row[2], cursor.fetchone()[0], params["top_n"])
        if key is not None:
            response = json.dumps(answer(recorded))
            cursor.execute(sql.store_answer, {"board": board, "user_id": user_id, "key": key, "response": response})
        connection.commit()
        return recorded
    except BaseException:
        with contextlib.suppress(Exception):  # the connection may be the thing that broke
            connection.rollback()
        raise


def _recorded(total: int, reached_at: Any, rank_key: str, ahead: int, top_n: int) -> Recorded:
    if isinstance(reached_at, str):  # SQLite hands back the stored text
        reached_at = datetime.fromisoformat(reached_at)
    return Recorded(total=total, reached_at=reached_at, rank_key=rank_key, rank=ahead + 1 if ahead < top_n else None)
