"""The write path: record a submission in SQL (the point of acceptance), then update the cached board.

The answer (the user's value and rank, both from SQL) is decided at the
commit. Redis is updated after it; if that fails the score stays recorded
and the cache is brought back in line later (app.keeper). Never imports Flask.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import cast

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from app.batching import GroupCommit
from app.leaderboard import records
from app.leaderboard.boards import Board, utc_now
from app.leaderboard.cache import REDIS_ERRORS, BoardCache
from app.leaderboard.errors import BoardNotFound, IdempotencyKeyReused, TotalLimitExceeded
from app.leaderboard.names import store_names
from app.leaderboard.rebuild import rebuild_board, top_standings
from app.leaderboard.records import Recorded, Submitted
from app.leaderboard.seasons import database_now, period_at
from app.leaderboard.standings import Standing, Submission
from app.metrics import WRITE_BATCH_SIZE

log = logging.getLogger(__name__)

# Most submissions one statement and one script call carry together. Far above
# what a worker holds at once behind a sane load balancer; it only bounds the
# statement and the Lua script.
MAX_BATCH = 256
# A batch normally takes a few milliseconds, tens on a saturated worker; one
# running this long is waiting on something (a row lock): let others go by.
STALLED_AFTER_SECONDS = 0.2
# Board entries one script call may encode into messages (its cost in Redis
# grows with batch x N: about 1 ms per message on a board of 1,000). Keeps
# each call of a big batch to a few milliseconds, so Redis never stalls its
# other clients for long.
SCRIPT_ENTRIES_PER_CALL = 4096

MAX_BOARDS_AT_ONCE = 20


def submit_score(
    engine: Engine,
    cache: BoardCache,
    submitted: Submitted,
    idempotency_key: str | None = None,
    *,
    together: GroupCommit[Submitted, Submission] | None = None,
) -> Submission:
    """Change the user's value on the board by its rules, in SQL, then update the cached board.

    With an `idempotency_key` the answer is stored in the same transaction,
    so a repeat within 24 h gets exactly that answer and changes nothing. On
    PostgreSQL a submission without a key is recorded with the others in
    hand, through `together` (see `group_commit`) when given.
    Raises TotalLimitExceeded, IdempotencyKeyReused or BoardNotFound, changing nothing.
    """
    if submitted.name:
        store_names(engine, {submitted.user_id: submitted.name})
    if idempotency_key is None and engine.dialect.name == "postgresql":
        if together is not None:
            return together.submit(submitted)
        (committed,) = commit_submissions(engine, cache, [submitted])
        if isinstance(committed, Exception):
            raise committed
        return committed
    board, user_id = submitted.board, submitted.user_id
    try:
        outcome = _record(
            engine,
            [submitted],
            key=idempotency_key,
            scope=board.id,
            fingerprint=submitted.value,
            answer=lambda recorded: _submission(submitted, recorded[0]).as_json(),
        )
    except BoardNotFound:
        moved = in_current_periods(engine, [submitted])
        if moved is None:
            raise
        return submit_score(engine, cache, moved[0], idempotency_key)
    if outcome is None:  # the key's record was pruned between claim and read: claim again
        return submit_score(engine, cache, submitted, idempotency_key)
    if isinstance(outcome, records.Replayed):
        if outcome.fingerprint != submitted.value:
            raise IdempotencyKeyReused
        return Submission.from_json(outcome.answer, replayed=True)
    (recorded,) = outcome
    if recorded.changed:
        publish(engine, cache, [(board, recorded.standing(user_id, submitted.name))])
    return _submission(submitted, recorded)


def submit_scores(
    engine: Engine, cache: BoardCache, submitted: Sequence[Submitted], idempotency_key: str | None = None
) -> tuple[list[Submission], bool]:
    """One user's scores on several boards (at most MAX_BOARDS_AT_ONCE), all recorded or none.

    One transaction in SQL; then each board's cache is updated. With an
    `idempotency_key` (per user, for this route) a repeat gets the first
    answer. Returns one Submission per board, in the order given, and whether
    it was a replay. Raises as `submit_score` does; then nothing was recorded.
    """
    user_id = submitted[0].user_id
    names = {one.user_id: one.name for one in submitted if one.name}
    if names:
        store_names(engine, names)

    def answer(recorded: list[Recorded]) -> dict[str, object]:
        return scores_answer(
            user_id, [(one.board, _submission(one, r)) for one, r in zip(submitted, recorded, strict=True)]
        )

    try:
        outcome = _record(
            engine, submitted, key=idempotency_key, scope="", fingerprint=fingerprint(submitted), answer=answer
        )
    except BoardNotFound:
        moved = in_current_periods(engine, submitted)
        if moved is None:
            raise
        return submit_scores(engine, cache, moved, idempotency_key)
    if outcome is None:
        return submit_scores(engine, cache, submitted, idempotency_key)
    if isinstance(outcome, records.Replayed):
        if outcome.fingerprint != fingerprint(submitted):
            raise IdempotencyKeyReused
        stored = outcome.answer["scores"]
        return [Submission.from_json({"userId": user_id, **stored[one.board.id]}) for one in submitted], True
    publish(
        engine,
        cache,
        [(one.board, r.standing(user_id, one.name)) for one, r in zip(submitted, outcome, strict=True) if r.changed],
    )
    return [_submission(one, r) for one, r in zip(submitted, outcome, strict=True)], False


def scores_answer(user_id: str, answers: Sequence[tuple[Board, Submission]]) -> dict[str, object]:
    """What POST /scores answers: one entry per board."""
    return {
        "status": "ok",
        "userId": user_id,
        "scores": {
            board.id: {"score": one.total, "rank": one.rank, "improved": one.improved}
            | ({} if one.period is None else {"period": one.period})
            for board, one in answers
        },
    }


def fingerprint(submitted: Sequence[Submitted]) -> int:
    """A 63-bit digest of a request's (board, score) pairs, in any order: a retry's must equal the first's."""
    canonical = ";".join(f"{one.board.id}={one.value}" for one in sorted(submitted, key=lambda one: one.board.id))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") >> 1


def _record(
    engine: Engine, submitted: Sequence[Submitted], **options: object
) -> list[Recorded] | records.Replayed | None:
    try:
        return records.record(engine, submitted, now=utc_now(), **options)  # type: ignore[arg-type]
    except records.TotalTooLarge:
        raise TotalLimitExceeded from None
    except records.BoardMissing as missing:
        raise BoardNotFound(str(missing)) from None


def _submission(submitted: Submitted, recorded: Recorded) -> Submission:
    return Submission(
        user_id=submitted.user_id,
        total=recorded.total,
        rank=recorded.rank,
        improved=recorded.changed,
        period=submitted.board.period.id if submitted.board.period else None,
    )


def in_current_periods(
    engine: Engine, submitted: Sequence[Submitted], now: datetime | None = None
) -> list[Submitted] | None:
    """After a submission found its board missing: the submissions aimed at the periods current
    now by the database's clock, when a board with resets has moved on to (or not yet reached)
    another period; None when none has (then the board is gone)."""
    now = now or database_now(engine)
    moved, changed = [], False
    for one in submitted:
        period = one.board.period
        if period is not None and not period.start <= now < period.end:
            one = replace(one, board=one.board.at(period_at(one.board.reset, one.board.timezone, now)))
            changed = True
        moved.append(one)
    return moved if changed else None


def group_commit(engine: Engine, cache: BoardCache) -> GroupCommit[Submitted, Submission]:
    """Concurrent submissions without a key, on any boards, recorded and published together (app.batching).

    One statement per rule, one commit and one Redis round trip for as many
    as arrive while the batches before run: under load, a fraction of the
    database's and Redis's work per submission (BENCHMARKS.md). Every
    submission still gets its own answer, rank and message. Two batches run
    at once (one in SQL while the other is in Redis); more only when those
    are stuck (a row lock, say), up to one per pooled connection, so a stuck
    batch holds up no one else for long.
    """
    return GroupCommit(
        lambda batch: commit_submissions(engine, cache, batch),
        key=lambda submitted: (submitted.board.id, submitted.user_id),
        max_size=MAX_BATCH,
        concurrency=2,
        stalled_after=STALLED_AFTER_SECONDS,
        most=engine.pool.size() if isinstance(engine.pool, QueuePool) else 2,
    )


def commit_submissions(engine: Engine, cache: BoardCache, batch: Sequence[Submitted]) -> list[Submission | Exception]:
    """PostgreSQL: record a batch of submissions (no (board, user) twice), then publish them.

    Each gets its Submission, or TotalLimitExceeded, BoardNotFound, or the
    error that stopped it. A submission the database refused (a value, a
    lock or statement timeout, a deadlock: an error with an SQLSTATE on a
    live connection), or that never reached it (a value the driver cannot
    send), makes each of its statement's submissions try again on its own,
    so the one at fault fails alone. Raises when the database is
    unreachable, and then nothing was recorded.
    """
    WRITE_BATCH_SIZE.observe(len(batch))
    outcomes = records.record_many(engine, batch)
    answers: list[Submission | Exception] = []
    changes: list[tuple[Board, Standing]] = []
    now: datetime | None = None
    for submitted, outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, Recorded):
            answers.append(_submission(submitted, outcome))
            if outcome.changed:
                changes.append((submitted.board, outcome.standing(submitted.user_id, submitted.name)))
        elif isinstance(outcome, records.TotalTooLarge):
            answers.append(TotalLimitExceeded())
        elif isinstance(outcome, records.BoardMissing):
            # On a board with resets, it may have named a period that is no longer (or not yet) current.
            now = now or (database_now(engine) if submitted.board.period else None)
            moved = in_current_periods(engine, [submitted], now) if now else None
            if moved is None:
                answers.append(BoardNotFound(submitted.board.id))
            else:
                answers.append(_committed_alone(engine, cache, moved[0]))
        elif len(batch) > 1 and _worth_alone(outcome):
            answers.append(_committed_alone(engine, cache, submitted))
        else:
            answers.append(outcome)
    publish(engine, cache, changes)
    return answers


def _worth_alone(error: BaseException) -> bool:
    """Whether a submission whose statement failed was surely not recorded, and may be tried alone."""
    if isinstance(error, records.NotRecorded):
        return True
    if isinstance(error, DBAPIError):
        return not error.connection_invalidated and getattr(error.orig, "pgcode", None) is not None
    return isinstance(error, Exception)


def _committed_alone(engine: Engine, cache: BoardCache, submitted: Submitted) -> Submission | Exception:
    try:
        (outcome,) = commit_submissions(engine, cache, [submitted])
    except Exception as error:  # this one's own error, for its own caller
        return error
    return outcome


def publish(engine: Engine, cache: BoardCache, changes: Sequence[tuple[Board, Standing]]) -> bool:
    """Apply committed standings to their cached boards, each with its message; False if that failed.

    Per board, from the lowest new value up: the order in which a batch's
    ranks hold. A board Redis has never seen (or lost, or built from another
    origin) is rebuilt from SQL instead. A failure is logged, not raised:
    SQL already holds the scores, and the keeper brings Redis back in line
    (`cache.stale_boards` tells it where to look).
    """
    if not changes:
        return True
    per_board: dict[str, list[Standing]] = defaultdict(list)
    boards: dict[str, Board] = {}
    for board, standing in changes:
        per_board[board.id].append(standing)
        boards[board.id] = board
    calls: list[tuple[Board, Sequence[Standing]]] = []
    for board_id, standings in per_board.items():
        board = boards[board_id]
        standings.sort(key=lambda standing: cast(str, standing.rank_key), reverse=True)
        per_call = max(1, SCRIPT_ENTRIES_PER_CALL // board.top_n)
        calls += [(board, standings[start : start + per_call]) for start in range(0, len(standings), per_call)]
    try:
        results = cache.write_each(calls)
        done: set[str] = set()
        for (called, sent), result in zip(calls, results, strict=True):
            if called.id in done:  # rebuilt or filled from SQL: that read every commit of the batch
                continue
            if result.status == "uninitialized":
                with Session(engine) as session:
                    rebuild_board(session, cache, called, reason="missing", updated=per_board[called.id][-1])
                done.add(called.id)
                # The rebuilt board holds these already (SQL has them): written again,
                # they change nothing on it, and go into the change log.
                cache.write_each([(board, sent) for board, sent in calls if board.id == called.id])
            elif result.status == "short":
                with Session(engine) as session:
                    cache.apply(called, top_standings(session, called), mode="fill", updated=sent[-1])
                done.add(called.id)
        return True
    except (*REDIS_ERRORS, SQLAlchemyError) as exc:
        log.warning("boards %s not updated in Redis after commit: %s", ", ".join(boards), exc)
        cache.stale_boards.update(boards)
        return False
