"""The SQL of a submission: change the user's value by the board's rules, rank it, keep the Idempotency-Key record.

This is the hot path, so it is written as fixed SQL, once per database and
rule, run on the pooled DBAPI connection (SQLAlchemy's pool still checks
connections out, pings and recycles them). Building and compiling the same
statements with SQLAlchemy's expression language cost more CPU than
everything else a request does (BENCHMARKS.md, "before").

On PostgreSQL, submissions without an Idempotency-Key are recorded many at a
time, on any number of boards (app.leaderboard.writes groups the concurrent
ones): one statement per rule in autocommit upserts them and counts the rows
ahead of each, in one round trip and one commit. With a key, on SQLite, and
for several boards at once (POST /scores), the claim, the upserts, the counts
and the stored answer are one transaction.

Every statement joins `boards` on the board's uid: a submission made with a
stale copy of a deleted (or deleted and created again) board changes
nothing, and the row's `ascending` is the board's order as SQL has it. On a
board with resets it also checks, by the database's clock, that the period
the submission names is current: the period a value counts in is decided
by the statement that writes it (one that finds another period current
records nothing, and the caller tries again in that one).

The ranking order is `scores.rank_key` (see app.models.Score); the rank here
counts at most N rows ahead, so it costs the same on any board size.
Never imports Flask.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.leaderboard.boards import Board
from app.leaderboard.rules import value_after, would_change
from app.leaderboard.standings import Standing
from app.models import IdempotencyKey
from app.sql import adapt, as_sqlalchemy_error, dbapi_connection, execute, one_statement

IDEMPOTENCY_TTL = timedelta(hours=24)

# One submission, in a transaction. A submission that would not change the
# value (see app.leaderboard.rules.value_after) returns no row: its row is
# then read as it is.
#
# An update checks the row's period again once it holds the row's lock ({open}):
# a write that waited for a concurrent one past the period's end changes
# nothing there, and is tried again in the period current then. Its time is
# {reached}: the clock, read again after that check, kept inside the period.
_UPSERT = """
    INSERT INTO scores (board, period, user_id, total, reached_at, version, ascending, period_end)
    SELECT :board, :period, :user_id, :value, clock.stamped_at, {now_us}, boards.sort_order = 'asc', :period_end
    FROM (SELECT {now} AS stamped_at) AS clock, boards
    WHERE boards.id = :board AND boards.uid = :uid
        AND (:period_start IS NULL OR (clock.stamped_at >= :period_start AND clock.stamped_at < :period_end))
    ON CONFLICT (board, period, user_id) DO UPDATE
    SET total = {total}, reached_at = {reached}, version = {greatest}(scores.version + 1, {now_us}),
        previous_total = scores.total, previous_version = scores.version
    WHERE {changes} AND {open}
    RETURNING total, reached_at, rank_key, version, previous_total, previous_version
"""

_CURRENT = """
    SELECT scores.total, scores.reached_at, scores.rank_key, scores.version
    FROM scores JOIN boards ON boards.id = scores.board AND boards.uid = :uid
    WHERE scores.board = :board AND scores.user_id = :user_id AND scores.period = :period
      AND (:period_start IS NULL OR ({now} >= :period_start AND {now} < :period_end))
"""

_AHEAD = """
    SELECT count(*) FROM (
        SELECT 1 FROM scores WHERE board = :board AND period = :period AND rank_key < :rank_key
        ORDER BY board, period, rank_key LIMIT :top_n
    ) AS ahead
"""

# A user's own row is found by its key (board, user_id, period), which the
# planner takes over the rank index (board, period, rank_key) once `scores`
# has statistics; give_scores_statistics makes sure it soon has.
#
# Both counts walk ix_scores_rank in order and stop after N entries. A bitmap
# scan would read every entry ahead of the user first, dead ones included:
# thousands per write on a busy board (docs/write-path-profile.md). The
# ORDER BY asks for the walk; the connections' `enable_bitmapscan=off`
# (config.settings) keeps PostgreSQL from sorting a bitmap scan instead when
# its statistics are stale. Both run prepared, on a generic plan: planned for
# the literal id of a board the statistics have not seen (one made since the
# last ANALYZE), the count expected one row, and sorted the board's rows found
# by the key instead of walking the rank index: the whole board, every write.

# PostgreSQL only (SQLite has no INSERT in a WITH): many submissions of one
# rule, on any boards, in one statement, in autocommit, so one round trip and
# one commit (one WAL flush) for all of them. The rows are locked in (board,
# user) order, so two batches with users in common cannot deadlock. Every
# read (the unchanged rows, the counts) sees the snapshot from before the
# statement: each count is the user's rank had the batch been applied from
# the lowest new value to the highest (rows ahead of the user's new value are
# counted as they were, rows behind it stay behind), which is the order the
# Redis script is given. The user's own old row is not counted (after a
# worse `set` it would rank ahead of the new value). A submission to a board
# that is not (or no longer) there returns no row.
#
# The period is checked for the whole batch first, then again for each row
# as it is written, by the clock that stamps it, and for an update once the
# row's lock is held (as in _UPSERT): a row whose period ended meanwhile
# is not written, and returns without `upserted` (see record_many).
_UPSERT_MANY_AND_AHEAD = """
    WITH submitted AS (
        SELECT submitted.board, submitted.period, submitted.period_end, submitted.user_id, submitted.value,
               submitted.top_n, boards.sort_order = 'asc' AS ascending
        FROM unnest(CAST(:boards AS text[]), CAST(:uids AS text[]), CAST(:periods AS text[]),
                    CAST(:period_starts AS timestamp[]), CAST(:period_ends AS timestamp[]),
                    CAST(:user_ids AS text[]), CAST(:submitted_values AS bigint[]), CAST(:top_ns AS integer[]))
             AS submitted (board, uid, period, period_start, period_end, user_id, value, top_n)
        JOIN boards ON boards.id = submitted.board AND boards.uid = submitted.uid
            AND (submitted.period_start IS NULL
                 OR ({now} >= submitted.period_start AND {now} < submitted.period_end))
    ), upserted AS (
        INSERT INTO scores (board, period, user_id, total, reached_at, version, ascending, period_end)
        SELECT board, period, user_id, value, stamped_at, {now_us}, ascending, period_end
        FROM (SELECT *, {now} AS stamped_at
              FROM (SELECT * FROM submitted ORDER BY board, period, user_id) AS sorted) AS stamped
        WHERE period_end IS NULL OR stamped_at < period_end
        ON CONFLICT (board, period, user_id) DO UPDATE
        SET total = {total}, reached_at = {reached}, version = {greatest}(scores.version + 1, {now_us}),
            previous_total = scores.total, previous_version = scores.version
        WHERE {changes} AND {open}
        RETURNING board, user_id, total, reached_at, rank_key, version, previous_total, previous_version
    )
    SELECT submitted.board, submitted.user_id,
           coalesce(upserted.total, old.total), coalesce(upserted.reached_at, old.reached_at),
           coalesce(upserted.rank_key, old.rank_key), coalesce(upserted.version, old.version),
           upserted.user_id IS NOT NULL,
           upserted.previous_total, upserted.previous_version,
           (SELECT count(*) FROM (
                SELECT 1 FROM scores AS ahead
                WHERE ahead.board = submitted.board AND ahead.period = submitted.period
                  AND ahead.rank_key < coalesce(upserted.rank_key, old.rank_key)
                  AND ahead.rank_key IS DISTINCT FROM old.rank_key
                ORDER BY ahead.board, ahead.period, ahead.rank_key LIMIT submitted.top_n
           ) AS ahead)
    FROM submitted
    LEFT JOIN upserted ON upserted.board = submitted.board AND upserted.user_id = submitted.user_id
    LEFT JOIN scores AS old
        ON old.board = submitted.board AND old.user_id = submitted.user_id AND old.period = submitted.period
"""

# A key past its 24 h window is taken over as if new. On PostgreSQL a
# concurrent claim of the same key waits here for the first transaction to
# end, so exactly one of them goes on to change the score.
_CLAIM_KEY = """
    INSERT INTO idempotency_keys (board, user_id, key, fingerprint, response, created_at)
    VALUES (:scope, :user_id, :key, :fingerprint, NULL, :now)
    ON CONFLICT (board, user_id, key) DO UPDATE
    SET fingerprint = excluded.fingerprint, response = NULL, created_at = excluded.created_at
    WHERE idempotency_keys.created_at < :cutoff
    RETURNING key
"""

_READ_KEY = (
    "SELECT fingerprint, response FROM idempotency_keys WHERE board = :scope AND user_id = :user_id AND key = :key"
)

_STORE_ANSWER = """
    UPDATE idempotency_keys SET response = :response WHERE board = :scope AND user_id = :user_id AND key = :key
"""


# The locked row's period has not ended, by the clock now.
_OPEN = "(scores.period_end IS NULL OR {now} < scores.period_end)"
# An update's time: the clock now, but never past its period's end (the check
# above read the clock a moment before). SQLite's clock is one value through a
# statement, and it has no lock to wait for.
_REACHED = {
    "postgresql": "least({now}, scores.period_end - interval '1 microsecond')",
    "sqlite": "{now}",
}

_BUILT: dict[tuple[str, str, str, bool], str] = {}


def statement_for(engine: Engine, sql: str, board: Board) -> str:
    """One of this module's statements as it runs for `board`'s rule (the benchmark's reference uses it)."""
    return _statement(engine, sql, board.operator, board.ascending)


def _statement(engine: Engine, sql: str, operator: str, ascending: bool) -> str:
    """`sql` for this database and this rule, ready for the driver."""
    return adapt(engine, _for_rule(engine.dialect.name, sql, operator, ascending))


def _for_rule(dialect: str, sql: str, operator: str, ascending: bool) -> str:
    """`sql` with this rule's value and change test, as written for app.sql.adapt; built once."""
    built_key = (dialect, sql, operator, ascending)
    if built_key not in _BUILT:
        total, changes = value_after(operator, ascending)
        sql = sql.replace("{total}", total).replace("{changes}", changes)
        _BUILT[built_key] = sql.replace("{open}", _OPEN).replace("{reached}", _REACHED[dialect])
    return _BUILT[built_key]


@dataclass(frozen=True)
class Submitted:
    """One submission: a value for a user on a board, with the name their token carries."""

    board: Board
    user_id: str
    value: int
    name: str | None = None


@dataclass(frozen=True)
class Recorded:
    """A user's value on a board after a submission SQL accepted, and the rank (None past N)."""

    total: int
    reached_at: datetime
    rank_key: str
    version: int
    rank: int | None
    changed: bool  # whether the submission changed the value
    previous: int | None = None  # the value and row version it replaced (None: the user's first)
    previous_version: int | None = None

    def standing(self, user_id: str, name: str | None = None) -> Standing:
        return Standing(
            user_id,
            self.total,
            self.reached_at,
            self.version,
            name,
            self.rank_key,
            self.previous,
            self.rank,
            self.previous_version,
        )


@dataclass(frozen=True)
class Replayed:
    """A repeat of an Idempotency-Key: the first request's fingerprint and answer."""

    fingerprint: int
    answer: dict[str, Any]


class TotalTooLarge(Exception):
    """The increment would take the total past the maximum; nothing was changed."""


class BoardMissing(Exception):
    """The board is not (or no longer) in SQL as the submission knew it; nothing was changed."""


def record(
    engine: Engine,
    submitted: Sequence[Submitted],
    *,
    key: str | None = None,
    scope: str = "",
    fingerprint: int = 0,
    answer: Callable[[list[Recorded]], dict[str, Any]] | None = None,
    now: datetime,
) -> list[Recorded] | Replayed | None:
    """Record every submission in one transaction, all or none; with `key`, at most once per 24 h.

    The key belongs to (`scope`, user): the board's id, or "" for several
    boards at once. `answer(recorded)` builds the response to store with the
    key, in the same transaction. Returns None when the key's record vanished
    between the claim and the read (pruned): the caller may simply try again.
    Raises TotalTooLarge or BoardMissing (then nothing was recorded), and
    database errors as SQLAlchemy's (the app answers them with a 503).
    """
    user_id = submitted[0].user_id
    with dbapi_connection(engine) as connection:
        cursor = connection.cursor()
        try:
            if key is not None:
                claimed = _claim(engine, cursor, scope, user_id, key, fingerprint, now)
                if not isinstance(claimed, _Claimed):
                    connection.rollback()
                    return claimed
            recorded = [_record_one(engine, cursor, one) for one in submitted]
            if key is not None and answer is not None:
                params = {"scope": scope, "user_id": user_id, "key": key, "response": json.dumps(answer(recorded))}
                cursor.execute(adapt(engine, _STORE_ANSWER), params)
            connection.commit()
            return recorded
        except BaseException:
            with contextlib.suppress(Exception):  # the connection may be the thing that broke
                connection.rollback()
            raise


class _Claimed:
    """The key is ours now: go on and record."""


CLAIMED = _Claimed()


def _claim(
    engine: Engine, cursor: Any, scope: str, user_id: str, key: str, fingerprint: int, now: datetime
) -> Replayed | _Claimed | None:
    """Claim the key: CLAIMED when it is ours now, else the first request's record (None if it vanished)."""
    stamps: dict[str, Any] = {"now": now, "cutoff": now - IDEMPOTENCY_TTL}
    if engine.dialect.name == "sqlite":  # stored as text: compare text with text
        stamps = {name: value.isoformat(sep=" ", timespec="microseconds") for name, value in stamps.items()}
    params = {"scope": scope, "user_id": user_id, "key": key, "fingerprint": fingerprint}
    cursor.execute(adapt(engine, _CLAIM_KEY), params | stamps)
    if cursor.fetchone() is not None:
        return CLAIMED
    cursor.execute(adapt(engine, _READ_KEY), {"scope": scope, "user_id": user_id, "key": key})
    found = cursor.fetchone()
    if found is None:
        return None
    stored = found[1] if isinstance(found[1], dict) else json.loads(found[1])
    return Replayed(fingerprint=found[0], answer=stored)


def _read_one(engine: Engine, cursor: Any, one: Submitted) -> Recorded | BoardMissing:
    params = {"board": one.board.id, "uid": one.board.uid, "user_id": one.user_id, **period_params(engine, one.board)}
    cursor.execute(adapt(engine, _CURRENT), params)
    row = cursor.fetchone()
    if row is None:
        return BoardMissing(one.board.id)
    ahead = {"board": one.board.id, "period": one.board.period_id, "rank_key": row[2], "top_n": one.board.top_n}
    execute(engine, cursor, _AHEAD, ahead, prepared="ahead")
    return _recorded(row[0], row[1], row[2], row[3], cursor.fetchone()[0], one.board.top_n, False)


def _record_one(engine: Engine, cursor: Any, one: Submitted) -> Recorded:
    board = one.board
    params = {"board": board.id, "uid": board.uid, "user_id": one.user_id, "value": one.value}
    params |= period_params(engine, board)
    cursor.execute(_statement(engine, _UPSERT, board.operator, board.ascending), params)
    row = cursor.fetchone()
    changed = row is not None
    if row is None:
        cursor.execute(adapt(engine, _CURRENT), params)
        row = cursor.fetchone()
        if row is None:
            raise BoardMissing(board.id)
        if board.operator == "incr":
            raise TotalTooLarge
    execute(engine, cursor, _AHEAD, params | {"rank_key": row[2], "top_n": board.top_n}, prepared="ahead")
    ahead = cursor.fetchone()[0]
    if not changed:
        return _recorded(row[0], row[1], row[2], row[3], ahead, board.top_n, changed)
    return _recorded(row[0], row[1], row[2], row[3], ahead, board.top_n, changed, row[4], row[5])


def period_params(engine: Engine, board: Board) -> dict[str, Any]:
    """The period a submission claims to count in, and its bounds: the statement checks them
    against the database's clock, and records nothing (BoardMissing) when they do not hold.
    No bounds (NULL) on a board without resets: its one period is all of time."""
    if board.period is None:
        return {"period": "", "period_start": None, "period_end": None}
    bounds: tuple[Any, Any] = (board.period.start, board.period.end)
    if engine.dialect.name == "sqlite":  # stored as text: compare text with text
        bounds = tuple(stamp.isoformat(sep=" ", timespec="microseconds") for stamp in bounds)
    return {"period": board.period_id, "period_start": bounds[0], "period_end": bounds[1]}


class NotRecorded(Exception):
    """A submission whose statement was never sent: an earlier one lost the connection."""


Outcome = Recorded | TotalTooLarge | BoardMissing | Exception


def record_many(engine: Engine, submitted: Sequence[Submitted]) -> list[Outcome]:
    """PostgreSQL: record many submissions (no (board, user) twice), one statement per rule they use.

    Answers in the order given: what was recorded, or TotalTooLarge for an
    increment past the maximum (that value is left as it was), BoardMissing,
    or the error that stopped its statement (then that statement recorded
    nothing; the others stand on their own). Raises when no connection could
    be had, and then nothing was recorded.
    """
    by_rule: dict[tuple[str, bool], list[int]] = {}
    for index, one in enumerate(submitted):
        by_rule.setdefault((one.board.operator, one.board.ascending), []).append(index)
    outcomes: list[Outcome] = [NotRecorded() for _ in submitted]
    with one_statement(engine) as cursor:
        for (operator, ascending), indexes in by_rule.items():
            group = [submitted[index] for index in indexes]
            try:
                rows = _upsert_many(engine, cursor, group, operator, ascending)
            except Exception as error:  # this statement's submissions hear of it; the next may still run
                failure = as_sqlalchemy_error(engine, error, cursor.connection)
                for index in indexes:
                    outcomes[index] = failure
                if isinstance(failure, DBAPIError) and failure.connection_invalidated:
                    break  # the rest were never sent
                continue
            for index, one in zip(indexes, group, strict=True):
                row = rows.get((one.board.id, one.user_id))
                if row is None:
                    outcomes[index] = BoardMissing(one.board.id)
                elif row[6]:
                    outcomes[index] = _recorded(
                        row[2], row[3], row[4], row[5], row[9], one.board.top_n, True, row[7], row[8]
                    )
                else:
                    outcomes[index] = _unchanged(engine, cursor, one, row)
    return outcomes


def _unchanged(engine: Engine, cursor: Any, one: Submitted, row: Any) -> Outcome:
    """A submission of a batch that changed nothing: why, and the user's row as it stands."""
    board = one.board
    period_may_have_ended = board.period is not None
    newer = row[2] is None or would_change(board.operator, board.ascending, row[2], one.value)
    if period_may_have_ended or newer:
        # Its period may have ended before its row was written (then the read
        # finds it ended: BoardMissing, and the caller tries the current one),
        # or another commit made or changed the row after this statement's
        # snapshot: read it as it is now.
        read = _read_one(engine, cursor, one)
        if board.operator == "incr" and isinstance(read, Recorded):
            return TotalTooLarge()
        return read
    if board.operator == "incr":
        return TotalTooLarge()
    return _recorded(row[2], row[3], row[4], row[5], row[9], board.top_n, False)


def _upsert_many(
    engine: Engine, cursor: Any, group: Sequence[Submitted], operator: str, ascending: bool
) -> dict[tuple[str, str], Any]:
    periods = [period_params(engine, one.board) for one in group]
    params = {
        "boards": [one.board.id for one in group],
        "uids": [one.board.uid for one in group],
        "periods": [period["period"] for period in periods],
        "period_starts": [period["period_start"] for period in periods],
        "period_ends": [period["period_end"] for period in periods],
        "user_ids": [one.user_id for one in group],
        "submitted_values": [one.value for one in group],
        "top_ns": [one.board.top_n for one in group],
    }
    # Prepared: planning this statement took as long as running it for a batch of two
    # (1.25 against 0.65 ms a batch, measured; still 0.7 ms less for 250).
    sql = _for_rule(engine.dialect.name, _UPSERT_MANY_AND_AHEAD, operator, ascending)
    execute(engine, cursor, sql, params, prepared=f"upsert_many_{operator}_{'asc' if ascending else 'desc'}")
    return {(row[0], row[1]): row for row in cursor.fetchall()}


def _recorded(
    total: int,
    reached_at: Any,
    rank_key: str,
    version: int,
    ahead: int,
    top_n: int,
    changed: bool,
    previous: int | None = None,
    previous_version: int | None = None,
) -> Recorded:
    if isinstance(reached_at, str):  # SQLite hands back the stored text
        reached_at = datetime.fromisoformat(reached_at)
    return Recorded(
        total=total,
        reached_at=reached_at,
        rank_key=rank_key,
        version=int(version),
        rank=ahead + 1 if ahead < top_n else None,
        changed=bool(changed),
        previous=None if previous is None else int(previous),
        previous_version=None if previous_version is None else int(previous_version),
    )


def prune_idempotency_keys(session: Session, now: datetime) -> int:
    """Delete keys older than the 24 h replay window; returns how many."""
    cutoff = now - IDEMPOTENCY_TTL
    result = session.execute(IdempotencyKey.__table__.delete().where(IdempotencyKey.created_at < cutoff))
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


# Statistics for a new `scores` table. The write path's statements are
# prepared once per connection and keep the plan made at their first runs;
# made on a new, empty table, with no figures to go by, that plan found each
# submitter's own row by walking the board's rank index instead of the key
# (26 against 1.6 ms for a batch of ten on 10,000 users). ANALYZE gives the
# planner figures and makes PostgreSQL plan every prepared statement on the
# table again. Autovacuum analyzes a new table within a minute of its first
# rows; with autovacuum off (as on the benchmark's machine) nothing would, so
# the keeper does, once, as soon as the table holds a few rows.
STATISTICS_AT_ROWS = 100

_STATISTICS_AND_ROWS = """
    SELECT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = current_schema() AND tablename = 'scores'),
           (SELECT count(*) FROM (SELECT 1 FROM scores LIMIT :rows) AS first_rows)
"""


def give_scores_statistics(engine: Engine) -> bool:
    """ANALYZE `scores` if it has no statistics yet and holds STATISTICS_AT_ROWS rows; whether it
    has them now (or, not being the table's owner, was refused them: PostgreSQL skips with a warning)."""
    if engine.dialect.name != "postgresql":
        return True
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        has_statistics, rows = connection.execute(text(_STATISTICS_AND_ROWS), {"rows": STATISTICS_AT_ROWS}).one()
        if has_statistics:
            return True
        if rows < STATISTICS_AT_ROWS:
            return False
        connection.execute(text("ANALYZE scores"))
    return True
