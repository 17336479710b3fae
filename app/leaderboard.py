"""The leaderboard domain: submit a score, rank a user, snapshot and rebuild a board.

SQL is the source of truth. Redis holds a derived cache of each board's top N,
kept by one Lua script (`APPLY_SCRIPT`) so that the comparison with the
smallest score, the write, the trim, the version bump and the publish happen
as one atomic step. Everything here takes its clients as arguments and never
imports Flask, so the views, the CLI and the tests share it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from app import submissions
from app.batching import GroupCommit
from app.metrics import REBUILDS, REDIS_SCRIPT_SECONDS, WRITE_BATCH_SIZE
from app.models import IdempotencyKey, Score
from config.settings import MAX_SAFE_TOTAL

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)


def utc_now() -> datetime:
    """Naive UTC, as the database columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


# Width of the zero-padded microsecond timestamp that starts a Redis member.
REACHED_WIDTH = 17

# The one ranking order: score descending, then whoever reached that score
# first, then userId ascending (byte-wise). In SQL it is the order of
# `scores.rank_key`, a column the database computes (see app.models.Score);
# the Redis side encodes the same order in its members (see APPLY_SCRIPT).
RANK_ORDER = (Score.rank_key.asc(),)


class TotalLimitExceeded(Exception):
    """The increment would take the user's total past the board's maximum."""


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key came back with a different request body."""


@dataclass(frozen=True)
class Board:
    """One leaderboard: its name, its size and where its updates are published."""

    name: str
    top_n: int
    channel: str
    max_increment: int
    max_total: int = MAX_SAFE_TOTAL

    @property
    def keys(self) -> BoardKeys:
        return BoardKeys.for_board(self.name)


@dataclass(frozen=True)
class BoardKeys:
    """Redis key names of a board. One hash tag, so they share a cluster slot."""

    top: str
    members: str
    version: str
    latest: str

    @classmethod
    def for_board(cls, name: str) -> BoardKeys:
        prefix = f"lb:{{{name}}}"
        return cls(
            top=f"{prefix}:top",
            members=f"{prefix}:members",
            version=f"{prefix}:version",
            latest=f"{prefix}:latest",
        )

    def as_list(self) -> list[str]:
        return [self.top, self.members, self.version, self.latest]


@dataclass(frozen=True)
class Standing:
    """A user's total and when they reached it, as stored in SQL."""

    user_id: str
    total: int
    reached_at: datetime
    rank_key: str | None = None  # set when read from SQL

    @property
    def reached_us(self) -> int:
        return (self.reached_at - EPOCH) // timedelta(microseconds=1)

    @property
    def member(self) -> str:
        """The sorted-set member: byte order of members is the tie order."""
        return f"{self.reached_us:0{REACHED_WIDTH}d}:{self.user_id}"


@dataclass(frozen=True)
class Submission:
    """What `POST /score` answers."""

    user_id: str
    total: int
    rank: int | None
    replayed: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"status": "ok", "userId": self.user_id, "score": self.total, "rank": self.rank}


@dataclass(frozen=True)
class ApplyResult:
    """What APPLY_SCRIPT did (`written`, `unchanged` or `uninitialized`) and the board version."""

    status: str
    version: int | None


# APPLY_SCRIPT: merge standings into a board's top-N sorted set, atomically.
#
# KEYS[1] top      sorted set; score = -total, member = "<reached µs, 17 digits>:<userId>",
#                  so Redis's own order (score ascending, then member bytes) is
#                  exactly RANK_ORDER, and ZRANGE 0 N-1 is the board.
# KEYS[2] members  hash userId -> current member, to find a user's old entry
# KEYS[3] version  board version; absent means "never built": rebuild from SQL
# KEYS[4] latest   the last published message, so a new viewer needs one GET
# ARGV[1] N        board size
# ARGV[2] channel  Pub/Sub channel for the update messages
# ARGV[3] mode     "write": each standing is a submission, applied and published
#                  on its own, in the order given; refused when the board was
#                  never built. "merge": any number of standings, one message;
#                  "replace": empty the set first, then as merge
# ARGV[4] user     merge and replace: userId the message names as updatedUser ("" for none)
# ARGV[5] total    merge and replace: that user's new total, the message's newScore ("" for none)
# ARGV[6..]        triples: userId, total, member
#
# A standing is admitted when the user is already on the board with a smaller
# total, or the board has fewer than N entries, or it ranks ahead of the last
# entry. A total never replaces a larger one, so a late, stale write is a no-op.
# On a change: trim to N, set version = max(version + 1, now in µs) (monotonic
# even across a flushed Redis), store and PUBLISH the message.
#
# Returns {status, last version or false}.
APPLY_SCRIPT = """
local top, members, version_key, latest_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n, channel, mode = tonumber(ARGV[1]), ARGV[2], ARGV[3]

local function user_of(member)
  return string.sub(member, string.find(member, ':', 1, true) + 1)
end

local function admit(user, score, member)
  local old = redis.call('HGET', members, user)
  local old_score = old and redis.call('ZSCORE', top, old)
  local admitted
  if old_score then
    admitted = score < tonumber(old_score)
  elseif redis.call('ZCARD', top) < n then
    admitted = true
  else
    local last = redis.call('ZRANGE', top, -1, -1, 'WITHSCORES')
    local last_score = tonumber(last[2])
    admitted = score < last_score or (score == last_score and member < last[1])
  end
  if admitted then
    if old then redis.call('ZREM', top, old) end
    redis.call('ZADD', top, score, member)
    redis.call('HSET', members, user, member)
  end
  return admitted
end

local function trim()
  local overflow = redis.call('ZRANGE', top, n, -1)
  for _, member in ipairs(overflow) do
    redis.call('HDEL', members, user_of(member))
  end
  if #overflow > 0 then
    redis.call('ZREMRANGEBYRANK', top, n, -1)
  end
end

local function publish(updated, updated_total)
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local version = math.max((tonumber(redis.call('GET', version_key)) or 0) + 1, now_us)
  local version_text = string.format('%d', version)
  redis.call('SET', version_key, version_text)

  local rows = redis.call('ZRANGE', top, 0, -1, 'WITHSCORES')
  local entries = {}
  for i = 1, #rows, 2 do
    local total = string.format('%d', -tonumber(rows[i + 1]))
    entries[#entries + 1] = '[' .. cjson.encode(user_of(rows[i])) .. ',"' .. total .. '"]'
  end
  local updated_json, new_score = 'null', 'null'
  if updated ~= '' then
    updated_json, new_score = cjson.encode(updated), updated_total
  end
  local message = '{"type":"update","updatedUser":' .. updated_json
    .. ',"newScore":' .. new_score
    .. ',"top":[' .. table.concat(entries, ',') .. ']'
    .. ',"version":' .. version_text
    .. ',"ts":' .. now[1] .. '.' .. string.format('%06d', tonumber(now[2])) .. '}'
  redis.call('SET', latest_key, message)
  redis.call('PUBLISH', channel, message)
  return version_text
end

if mode == 'write' then
  if redis.call('EXISTS', version_key) == 0 then
    return {'uninitialized', false}
  end
  local version = false
  for i = 6, #ARGV, 3 do
    if admit(ARGV[i], -tonumber(ARGV[i + 1]), ARGV[i + 2]) then
      trim()
      version = publish(ARGV[i], ARGV[i + 1])
    end
  end
  if version then
    return {'written', version}
  end
  return {'unchanged', redis.call('GET', version_key) or false}
end

if mode == 'replace' then
  redis.call('DEL', top, members)
end
local changed = false
for i = 6, #ARGV, 3 do
  changed = admit(ARGV[i], -tonumber(ARGV[i + 1]), ARGV[i + 2]) or changed
end
trim()
if not changed and mode ~= 'replace' then
  return {'unchanged', redis.call('GET', version_key) or false}
end
return {'written', publish(ARGV[4], ARGV[5])}
"""


class BoardCache:
    """The Redis side of one board: its keys, its script and its channel."""

    def __init__(self, client: redis.Redis, board: Board) -> None:
        self.redis = client
        self.board = board
        self.keys = board.keys
        self._apply = client.register_script(APPLY_SCRIPT)

    def apply(self, standings: Sequence[Standing], *, mode: str, updated: Standing | None = None) -> ApplyResult:
        """Run APPLY_SCRIPT; see its header for the modes.

        `updated` is the user a merge's or a replace's message names; in a
        write, each standing's message names its own user.
        """
        args: list[str | int] = [
            self.board.top_n,
            self.board.channel,
            mode,
            updated.user_id if updated else "",
            updated.total if updated else "",
        ]
        for standing in standings:
            args += [standing.user_id, standing.total, standing.member]
        with REDIS_SCRIPT_SECONDS.labels(mode).time():
            status, version = self._apply(keys=self.keys.as_list(), args=args)
        return ApplyResult(status=status, version=int(version) if version else None)

    def is_built(self) -> bool:
        """Whether Redis holds this board (the version key exists) or must rebuild it from SQL."""
        return bool(self.redis.exists(self.keys.version))

    def rank(self, user_id: str) -> int | None:
        """The user's 1-based rank on the cached board, or None when not on it."""
        member = cast(str | None, self.redis.hget(self.keys.members, user_id))
        if member is None:
            return None
        rank = cast(int | None, self.redis.zrank(self.keys.top, member))
        return None if rank is None else rank + 1

    def entries(self) -> list[tuple[str, int]]:
        """The cached board in rank order, as (userId, total) pairs."""
        rows = cast(list[tuple[str, float]], self.redis.zrange(self.keys.top, 0, -1, withscores=True))
        return [(member.split(":", 1)[1], -int(score)) for member, score in rows]

    def latest_raw(self) -> str | None:
        """The last message published for the board, as published; None if never built."""
        return cast(str | None, self.redis.get(self.keys.latest))

    def latest_message(self) -> dict[str, Any] | None:
        """The last message published for the board, parsed."""
        raw = self.latest_raw()
        return None if raw is None else cast(dict[str, Any], json.loads(raw))


# -- SQL ---------------------------------------------------------------------


def top_standings(session: Session, board: Board) -> list[Standing]:
    """The board's top N from SQL, in RANK_ORDER."""
    rows = session.execute(
        select(Score.user_id, Score.total, Score.reached_at, Score.rank_key)
        .where(Score.board == board.name)
        .order_by(*RANK_ORDER)
        .limit(board.top_n)
    )
    return [Standing(user_id=r.user_id, total=r.total, reached_at=r.reached_at, rank_key=r.rank_key) for r in rows]


# -- The write path ----------------------------------------------------------


Submitted = tuple[str, int]  # (userId, increment)

# Most submissions one statement and one script call carry together. Far above
# what a worker holds at once behind a sane load balancer; it only bounds the
# statement and the Lua script.
MAX_BATCH = 256
# A batch normally takes a few milliseconds, tens on a saturated worker; one
# running this long is waiting on something (a row lock): let others go by.
STALLED_AFTER_SECONDS = 0.2


def submit_score(
    engine: Engine,
    cache: BoardCache,
    user_id: str,
    increment: int,
    idempotency_key: str | None = None,
    *,
    together: GroupCommit[Submitted, Submission] | None = None,
) -> Submission:
    """Add `increment` to the user's total in SQL, then update the cached board.

    The SQL commit is the point of acceptance: the answer (new total and rank,
    both from SQL) is decided there, and with an `idempotency_key` it is
    stored in the same transaction, so a repeat within 24 h gets exactly that
    answer and adds nothing. Redis is updated after the commit; if that fails
    the score stays recorded and the cache is rebuilt later (app.keeper).
    On PostgreSQL a submission without a key is recorded with the others in
    hand, through `together` (see `group_commit`) when given.
    Raises TotalLimitExceeded or IdempotencyKeyReused, changing nothing.
    """
    board = cache.board
    if increment > board.max_total:
        raise TotalLimitExceeded
    if idempotency_key is None and engine.dialect.name == "postgresql":
        if together is not None:
            return together.submit((user_id, increment))
        (committed,) = commit_submissions(engine, cache, [(user_id, increment)])
        if isinstance(committed, Exception):
            raise committed
        return committed
    try:
        outcome = submissions.record(
            engine,
            board=board.name,
            user_id=user_id,
            increment=increment,
            max_total=board.max_total,
            top_n=board.top_n,
            key=idempotency_key,
            answer=lambda recorded: Submission(user_id, recorded.total, recorded.rank).as_json(),
            now=utc_now(),
        )
    except submissions.TotalTooLarge:
        raise TotalLimitExceeded from None
    if outcome is None:  # the key's record was pruned between claim and read: claim again
        return submit_score(engine, cache, user_id, increment, idempotency_key)
    if isinstance(outcome, submissions.Replayed):
        if outcome.increment != increment:
            raise IdempotencyKeyReused
        answer = outcome.answer
        return Submission(user_id=answer["userId"], total=answer["score"], rank=answer["rank"], replayed=True)
    standing = Standing(user_id, outcome.total, outcome.reached_at, outcome.rank_key)
    publish_standings(engine, cache, [standing])
    return Submission(user_id=user_id, total=outcome.total, rank=outcome.rank)


def group_commit(engine: Engine, cache: BoardCache) -> GroupCommit[Submitted, Submission]:
    """Concurrent submissions without a key, recorded and published together (app.batching).

    One statement, one commit and one script call for as many as arrive
    while the batches before run: under load, a fraction of the database's
    and Redis's work per submission (BENCHMARKS.md). Every submission still
    gets its own answer, rank and message. Two batches run at once (one in
    SQL while the other is in Redis); more only when those are stuck (a row
    lock, say), up to one per pooled connection, so a stuck batch holds up
    no one else for long.
    """
    return GroupCommit(
        lambda batch: commit_submissions(engine, cache, batch),
        key=lambda submitted: submitted[0],
        max_size=MAX_BATCH,
        concurrency=2,
        stalled_after=STALLED_AFTER_SECONDS,
        most=engine.pool.size() if isinstance(engine.pool, QueuePool) else 2,
    )


def commit_submissions(engine: Engine, cache: BoardCache, batch: Sequence[Submitted]) -> list[Submission | Exception]:
    """PostgreSQL: record a batch of submissions (no user twice) in one statement, then publish them.

    Each gets its Submission, or TotalLimitExceeded. Should the database
    refuse the statement itself (a value, a lock or statement timeout, a
    deadlock: an error with an SQLSTATE on a live connection), each is tried
    on its own, so a bad or locked submission fails alone. Raises when the
    database is unreachable, and then nothing was recorded.
    """
    board = cache.board
    WRITE_BATCH_SIZE.observe(len(batch))
    try:
        recorded = submissions.record_many(
            engine, board=board.name, submitted=batch, max_total=board.max_total, top_n=board.top_n
        )
    except DBAPIError as error:
        if len(batch) == 1 or error.connection_invalidated or getattr(error.orig, "pgcode", None) is None:
            raise
        return [_committed_alone(engine, cache, submitted) for submitted in batch]
    standings = [
        Standing(user_id, done.total, done.reached_at, done.rank_key)
        for (user_id, _), done in zip(batch, recorded, strict=True)
        if done is not None
    ]
    # From the lowest new total up: the order in which record_many's ranks hold.
    standings.sort(key=lambda standing: cast(str, standing.rank_key), reverse=True)
    publish_standings(engine, cache, standings)
    return [
        TotalLimitExceeded() if done is None else Submission(user_id, done.total, done.rank)
        for (user_id, _), done in zip(batch, recorded, strict=True)
    ]


def _committed_alone(engine: Engine, cache: BoardCache, submitted: Submitted) -> Submission | Exception:
    try:
        (outcome,) = commit_submissions(engine, cache, [submitted])
    except Exception as error:  # this one's own error, for its own caller
        return error
    return outcome


def prune_idempotency_keys(session: Session, now: datetime | None = None) -> int:
    """Delete keys older than the 24 h replay window; returns how many."""
    cutoff = (now or utc_now()) - submissions.IDEMPOTENCY_TTL
    result = session.execute(IdempotencyKey.__table__.delete().where(IdempotencyKey.created_at < cutoff))
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


# Board entries one script call may encode into messages (its cost in Redis
# grows with batch x N: about 1 ms per message on a board of 1,000). Keeps
# each call of a big batch to a few milliseconds, so Redis never stalls its
# other clients for long.
SCRIPT_ENTRIES_PER_CALL = 4096


def publish_standings(engine: Engine, cache: BoardCache, standings: Sequence[Standing]) -> bool:
    """Apply committed standings to the cached board in order, each with its message; False if that failed.

    A board Redis has never seen (or lost) is rebuilt from SQL instead. A
    failure is logged, not raised: SQL already holds the scores, and the
    keeper will bring Redis back in line.
    """
    per_call = max(1, SCRIPT_ENTRIES_PER_CALL // cache.board.top_n)
    try:
        for start in range(0, len(standings), per_call):
            result = cache.apply(standings[start : start + per_call], mode="write")
            if result.status == "uninitialized":  # the rebuild reads every committed standing
                with Session(engine) as session:
                    rebuild_board(session, cache, reason="missing", updated=standings[-1])
                break
        return True
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("board %s not updated in Redis after commit: %s", cache.board.name, exc)
        return False


def board_drift(session: Session, cache: BoardCache) -> set[tuple[str, int, int | None]] | None:
    """Where the cached board disagrees with SQL's top N: (user, SQL total, cached total).

    None when Redis has no board at all. Redis is read before SQL, so a write
    that reached Redis is always visible to the SQL read: a difference is a
    write still on its way to Redis, or one whose update Redis never got.
    """
    if not cache.is_built():
        return None
    cached = dict(cache.entries())
    drift = {(s.user_id, s.total, cached.get(s.user_id)) for s in top_standings(session, cache.board)}
    session.rollback()  # end the read transaction
    return {(user, total, seen) for user, total, seen in drift if seen != total}


def rebuild_board(
    session: Session, cache: BoardCache, *, reason: str = "manual", updated: Standing | None = None
) -> ApplyResult:
    """Make the cached board equal to the SQL top N, and publish it.

    Replace with one read of SQL, then merge a second read: a write whose
    script ran before the replace had committed before the second read, so
    the merge restores it; later writes apply their own script after ours.
    `updated`, when a write triggered the rebuild, is named in the message.
    `reason` labels the rebuild in the metrics (missing, drift, manual).
    """
    REBUILDS.labels(reason).inc()
    cache.apply(top_standings(session, cache.board), mode="replace", updated=updated)
    result = cache.apply(top_standings(session, cache.board), mode="merge", updated=updated)
    session.rollback()  # end the read transaction; nothing was written
    return result
