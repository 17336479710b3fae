"""The Redis side of every board: a derived cache of its top N, kept by one Lua script.

The comparison with the last entry, the write, the trim, the version bump
and the publish happen in `APPLY_SCRIPT` as one atomic step. Nothing here is
the truth: SQL is, and app.leaderboard.rebuild makes Redis equal to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException

from app.leaderboard.boards import Board
from app.leaderboard.rules import may_worsen, redis_direction
from app.leaderboard.standings import Standing
from app.metrics import REDIS_SCRIPT_SECONDS

# How long Redis remembers the version of a user who left a board (removed,
# or pushed off by their own worse `set`): far longer than a submission can
# take from its commit to its script, so a late, older write of that user is
# refused rather than put back.
GONE_TTL_SECONDS = 60
# How long a deleted board's `updates` stream keeps the news of its deletion.
DELETED_NEWS_SECONDS = 60
# What a Redis that fails raises: redis-py's errors, and its cluster client's own
# (no node serves a slot, none answers), which are not RedisErrors.
REDIS_ERRORS: tuple[type[redis.RedisError], type[RedisClusterException]] = (redis.RedisError, RedisClusterException)
# Entries each board's change log keeps by default (CHANGES_RETAIN).
CHANGES_RETAIN = 10_000
# Longest a change waits in Redis for the user's change before it (committed
# first, by another process) to be logged: far longer than the few
# milliseconds between a commit and its script, short enough that a change
# whose predecessor's update failed is still logged soon.
HOLD_MS = 2000

# APPLY_SCRIPT: merge standings into a board's top-N sorted set, atomically.
#
# KEYS[1] top      sorted set; score = direction x value, member = "<reached µs, 17 digits>:<userId>",
#                  so Redis's own order (score ascending, then member bytes) is
#                  exactly the board's, and ZRANGE 0 N-1 is the board.
# KEYS[2] members  hash userId -> "<row version>|<member>", for the users on the board
# KEYS[3] version  board version; absent means "never built": rebuild from SQL
# KEYS[4] latest   the last published message, so a new viewer needs one GET
# KEYS[5] names    hash userId -> display name, for the users on the board
# KEYS[6] gone     hash userId -> the least row version still welcome, for users who left
#                  lately (expires GONE_TTL_SECONDS after the last change)
# KEYS[7] origin   what this cache was built from: the SQL board's uid, and on a board with
#                  resets "@" and the start of its period in µs (app.leaderboard.boards.Board.origin)
# KEYS[8] changes  the change log, a stream: one entry per submission written ("write" mode)
# KEYS[9] logged   hash userId -> row version of the user's change logged last
# KEYS[10] held    hash "<userId>:<row version awaited>" -> a change waiting for the one before it
# KEYS[11] held_since  sorted set of those, by when they began to wait (ms)
# KEYS[12] updates the last published message again, as a stream of one entry (for hubs
#                  that follow streams instead of Pub/Sub: they resume from the last id seen)
# ARGV[1] N        board size
# ARGV[2] channel  Pub/Sub channel for the update messages
# ARGV[3] mode     "write": each standing is a submission, applied and published
#                  on its own, in the order given, and appended to the change log;
#                  refused ("uninitialized") when the board was never built or was
#                  built from another origin; "short" when a user on the board fell
#                  to its last place (the caller then fills it: only SQL knows who is below).
#                  "merge": any number of standings, one message; "fill": a merge
#                  of SQL's top N after "short", always published; "replace":
#                  empty the set first, then as merge; "rebuild": a replace, unless the
#                  board is there (built from this origin) by now
# ARGV[4] direction  1: lower is better; -1: higher is better
# ARGV[5] origin   the board's origin ("" when not known: not checked). A call for an
#                  earlier period of the board than the cache holds changes nothing: "ended"
# ARGV[6] board    the board id the message names ("" for the default board: the seed's message)
# ARGV[7] user     merge and replace: userId the message names as updatedUser ("" for none)
# ARGV[8] value    merge and replace: that user's new value, the message's newScore ("" for none)
# ARGV[9] remember "1" when a user's newer value may be worse (set): who leaves is noted in `gone`
# ARGV[10] retain  entries the change log keeps (about: MAXLEN ~); 0: no log
# ARGV[11] log board  the board id the change log's entries name
# ARGV[12] log channel  where the id of the log's newest entry is published after a write
# ARGV[13] period  what messages add on a board with resets: ',"period":"<id>","periodEnds":"<time>"' ("" for none)
# ARGV[14] G       removals that follow: G pairs of userId, least version still welcome
# ARGV[15 + 2G..]  standings, eight each: userId, value, member, row version, name ("" for none),
#                  and for the log: the value before ("" for none), SQL's rank ("" past N)
#                  and the row version the change replaced ("" for none)
#
# A standing of a user already on the board is admitted when its row version
# is newer; of another user, when the board has fewer than N entries or it
# ranks ahead of the last entry. So a late, stale write is a no-op, whatever
# the operator. On a change: trim to N, set version = max(version + 1, now in
# µs) (monotonic even across a flushed Redis), store and PUBLISH the message
# (SPUBLISH on a cluster: sharded Pub/Sub, so a shard carries only its own
# boards' messages; each board's channel shares its keys' hash tag).
# In write mode every standing is also appended to the change log, admitted or
# not (each is a change SQL accepted), with the board version it left; then the
# newest entry's id is published once on the log's channel. A user's changes go
# into the log in commit order: one whose predecessor (the row version it
# replaced) is not logged yet, because another process's call for it is still
# on its way, waits in `held` until that one comes, or HOLD_MS at most.
#
# Returns {status, last version or false}; status is written, unchanged, short, uninitialized or ended.
_APPLY_SCRIPT = (
    """
local PUBLISH = '%(publish)s'
local top, members, version_key, latest_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local names, gone, origin_key = KEYS[5], KEYS[6], KEYS[7]
local n, channel, mode = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local direction, origin, label = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local changes = KEYS[8]
local logged_key, held, held_since, updates = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local remember_gone = ARGV[9] == '1'
local retain, log_board, log_channel = tonumber(ARGV[10]), ARGV[11], ARGV[12]
local period_json = ARGV[13]
local first = 15 + 2 * tonumber(ARGV[14])
local STRIDE = 8
local HOLD_MS = """
    + str(HOLD_MS)
    + """
local GONE_TTL = """
    + str(GONE_TTL_SECONDS)
    + """

-- An origin's board uid, and its period's start (nil without resets).
local function origin_parts(of)
  local uid, start = string.match(of, '^([^@]*)@(%d+)$')
  if uid then
    return uid, tonumber(start)
  end
  return of, nil
end

-- Whether the cache holds a later period of this same board than the caller's: then the
-- caller's period has ended here, and nothing of it comes back.
local function later_period_held()
  if origin == '' then
    return false
  end
  local built_from = redis.call('GET', origin_key)
  if not built_from or built_from == origin then
    return false
  end
  local built_uid, built_start = origin_parts(built_from)
  local uid, start = origin_parts(origin)
  return built_uid == uid and built_start ~= nil and start ~= nil and built_start > start
end

local function user_of(member)
  return string.sub(member, string.find(member, ':', 1, true) + 1)
end

local function split_entry(entry)
  local bar = string.find(entry, '|', 1, true)
  return string.sub(entry, 1, bar - 1), string.sub(entry, bar + 1)
end

local function note_gone(user, version)
  local floor = redis.call('HGET', gone, user)
  if not floor or tonumber(version) > tonumber(floor) then
    redis.call('HSET', gone, user, version)
  end
  redis.call('EXPIRE', gone, GONE_TTL)
end

local function take_off(user)
  local entry = redis.call('HGET', members, user)
  if not entry then
    return false
  end
  local _, member = split_entry(entry)
  redis.call('ZREM', top, member)
  redis.call('HDEL', members, user)
  redis.call('HDEL', names, user)
  return true
end

-- Returns whether the standing was admitted, and whether the board may now
-- miss someone: a user already on a full board fell to its last place, and
-- a user below the board (whom Redis does not hold) may rank ahead of them.
local function admit(user, value, member, version, name)
  local floor = redis.call('HGET', gone, user)
  if floor and tonumber(version) < tonumber(floor) then
    return false, false
  end
  local score = direction * tonumber(value)
  local entry = redis.call('HGET', members, user)
  local old_version, old_member = nil, nil
  if entry then
    old_version, old_member = split_entry(entry)
  end
  local admitted
  if old_version then
    admitted = tonumber(version) > tonumber(old_version)
  elseif redis.call('ZCARD', top) < n then
    admitted = true
  else
    local last = redis.call('ZRANGE', top, -1, -1, 'WITHSCORES')
    local last_score = tonumber(last[2])
    admitted = score < last_score or (score == last_score and member < last[1])
  end
  local short = false
  if admitted then
    local old_score = old_member and tonumber(redis.call('ZSCORE', top, old_member))
    if old_member then
      redis.call('ZREM', top, old_member)
    end
    redis.call('ZADD', top, score, member)
    redis.call('HSET', members, user, version .. '|' .. member)
    if name ~= '' then
      redis.call('HSET', names, user, name)
    end
    short = old_score ~= nil and score > old_score and redis.call('ZCARD', top) >= n
      and redis.call('ZREVRANK', top, member) == 0
  elseif remember_gone and not old_version then
    note_gone(user, version)
  end
  return admitted, short
end

local function trim()
  local overflow = redis.call('ZRANGE', top, n, -1)
  if #overflow == 0 then
    return
  end
  for _, member in ipairs(overflow) do
    local user = user_of(member)
    if remember_gone then
      local entry = redis.call('HGET', members, user)
      if entry then
        note_gone(user, (split_entry(entry)))
      end
    end
    redis.call('HDEL', members, user)
    redis.call('HDEL', names, user)
  end
  redis.call('ZREMRANGEBYRANK', top, n, -1)
end

local function ts_of(now)
  return now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
end

-- The change log's clock: read once per call (a call's changes are one instant to it).
local log_now = nil
local function log_time()
  log_now = log_now or redis.call('TIME')
  return log_now
end

local function now_ms()
  local now = log_time()
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

-- Appends one accepted change to the log; returns its entry id.
local function append(user, value, previous, rank, row_version)
  if previous == '' then previous = 'null' end
  if rank == '' then rank = 'null' end
  local version = redis.call('GET', version_key) or '0'
  local entry = '{"type":"score","board":' .. cjson.encode(log_board)
    .. ',"userId":' .. cjson.encode(user) .. ',"score":' .. value .. ',"previous":' .. previous
    .. ',"rank":' .. rank .. ',"version":' .. version .. ',"ts":' .. ts_of(log_time()) .. '}'
  local id = redis.call('XADD', changes, 'MAXLEN', '~', retain, '*', 'data', entry)
  redis.call('HSET', logged_key, user, row_version)
  return id
end

-- Logs the changes that waited for the user's change `row_version`, in order; returns the last id.
local function release_after(user, row_version)
  local id = false
  local waiting_key = user .. ':' .. row_version
  local waiting = redis.call('HGET', held, waiting_key)
  while waiting do
    redis.call('HDEL', held, waiting_key)
    redis.call('ZREM', held_since, waiting_key)
    local change = cjson.decode(waiting)
    id = append(user, change[1], change[2], change[3], change[4])
    waiting_key = user .. ':' .. change[4]
    waiting = redis.call('HGET', held, waiting_key)
  end
  return id
end

-- Logs a change now, or holds it while the change before it is not logged yet; returns the last id logged.
-- A change whose predecessor is unknown here (never logged, or forgotten) waits only
-- when that predecessor is recent: row versions are at least the commit time in µs.
local function log_change(user, value, previous, rank, row_version, previous_version)
  local last = redis.call('HGET', logged_key, user)
  local ready = previous_version == ''
  if not ready and last then
    ready = tonumber(last) >= tonumber(previous_version)
  elseif not ready then
    ready = now_ms() * 1000 - tonumber(previous_version) > HOLD_MS * 1000
  end
  if ready then
    local id = append(user, value, previous, rank, row_version)
    return release_after(user, row_version) or id
  end
  local waiting_key = user .. ':' .. previous_version
  redis.call('HSET', held, waiting_key, cjson.encode({value, previous, rank, row_version}))
  redis.call('ZADD', held_since, now_ms(), waiting_key)
  return false
end

-- Changes that waited HOLD_MS for one that never came (its update failed): logged now.
local function release_stale()
  if redis.call('ZCARD', held_since) == 0 then
    return false
  end
  local id = false
  for _, waiting_key in ipairs(redis.call('ZRANGEBYSCORE', held_since, '-inf', now_ms() - HOLD_MS)) do
    local waiting = redis.call('HGET', held, waiting_key)
    redis.call('HDEL', held, waiting_key)
    redis.call('ZREM', held_since, waiting_key)
    if waiting then
      local user = string.match(waiting_key, '^(.*):[^:]*$')
      local change = cjson.decode(waiting)
      id = append(user, change[1], change[2], change[3], change[4])
      id = release_after(user, change[4]) or id
    end
  end
  return id
end

local function publish(updated, updated_value)
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local version = math.max((tonumber(redis.call('GET', version_key)) or 0) + 1, now_us)
  local version_text = string.format('%d', version)
  redis.call('SET', version_key, version_text)

  local rows = redis.call('ZRANGE', top, 0, -1, 'WITHSCORES')
  local entries, users = {}, {}
  for i = 1, #rows, 2 do
    local user = user_of(rows[i])
    local value = string.format('%d', direction * tonumber(rows[i + 1]))
    users[#users + 1] = user
    entries[#entries + 1] = '[' .. cjson.encode(user) .. ',"' .. value .. '"]'
  end
  local named = {}
  if #users > 0 then
    local found = redis.call('HMGET', names, unpack(users))
    for i = 1, #users do
      if found[i] then
        named[#named + 1] = cjson.encode(users[i]) .. ':' .. cjson.encode(found[i])
      end
    end
  end
  local updated_json, new_score = 'null', 'null'
  if updated ~= '' then
    updated_json, new_score = cjson.encode(updated), updated_value
  end
  local message = '{"type":"update"'
  if label ~= '' then
    message = message .. ',"board":' .. cjson.encode(label)
  end
  message = message .. ',"updatedUser":' .. updated_json
    .. ',"newScore":' .. new_score
    .. ',"top":[' .. table.concat(entries, ',') .. ']'
  if #named > 0 then
    message = message .. ',"names":{' .. table.concat(named, ',') .. '}'
  end
  message = message .. period_json .. ',"version":' .. version_text
    .. ',"ts":' .. ts_of(now) .. '}'
  redis.call('SET', latest_key, message)
  redis.call(PUBLISH, channel, message)
  redis.call('XADD', updates, 'MAXLEN', 1, '*', 'data', message)
  return version_text
end

if later_period_held() then
  return {'ended', redis.call('GET', version_key) or false}
end

if mode == 'write' then
  if redis.call('EXISTS', version_key) == 0 or (origin ~= '' and redis.call('GET', origin_key) ~= origin) then
    return {'uninitialized', false}
  end
  local version, short = false, false
  local logged = retain > 0 and release_stale()
  for i = first, #ARGV, STRIDE do
    local admitted, fell = admit(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    short = short or fell
    if admitted then
      trim()
      -- Once the board may miss someone, nothing is published until the
      -- caller fills it from SQL ("fill" mode): no viewer sees a wrong board.
      if not short then
        version = publish(ARGV[i], ARGV[i + 1])
      end
    end
    if retain > 0 then
      logged = log_change(ARGV[i], ARGV[i + 1], ARGV[i + 5], ARGV[i + 6], ARGV[i + 3], ARGV[i + 7]) or logged
    end
  end
  if logged then
    redis.call(PUBLISH, log_channel, logged)
  end
  if short then
    return {'short', version}
  end
  if version then
    return {'written', version}
  end
  return {'unchanged', redis.call('GET', version_key) or false}
end

if mode == 'rebuild' then
  -- Another process rebuilt it since the caller found it missing: nothing to do
  -- (each would otherwise publish the same board again).
  if redis.call('EXISTS', version_key, latest_key) == 2
      and (origin == '' or redis.call('GET', origin_key) == origin) then
    return {'unchanged', redis.call('GET', version_key)}
  end
  mode = 'replace'
end

local changed = mode == 'fill'
for i = 15, first - 1, 2 do
  note_gone(ARGV[i], ARGV[i + 1])
  changed = take_off(ARGV[i]) or changed
end
if mode == 'replace' then
  redis.call('DEL', top, members, names)
  if origin ~= '' then
    local built_from = redis.call('GET', origin_key)
    if not built_from or origin_parts(built_from) ~= origin_parts(origin) then
      -- Built from another SQL board before (another database, or the board deleted
      -- and made again): its change log is not this board's. (A new period of the
      -- same board keeps its log.)
      redis.call('DEL', changes, logged_key, held, held_since)
    end
    redis.call('SET', origin_key, origin)
  end
end
-- The standings are SQL's top N: a second pass admits whoever the first let
-- fall behind a user who moved down.
local passes = 1
local pass = 0
while pass < passes do
  pass = pass + 1
  for i = first, #ARGV, STRIDE do
    local admitted, fell = admit(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    changed = admitted or changed
    if fell then
      passes = 2
    end
  end
  trim()
end
if not changed and mode ~= 'replace' then
  return {'unchanged', redis.call('GET', version_key) or false}
end
return {'written', publish(ARGV[7], ARGV[8])}
"""
)
APPLY_SCRIPT = _APPLY_SCRIPT.replace("%(publish)s", "PUBLISH")
SHARDED_APPLY_SCRIPT = _APPLY_SCRIPT.replace("%(publish)s", "SPUBLISH")


def _period_json(board: Board) -> str:
    """The fields a board's messages add for its period (none without resets), as JSON text."""
    fields = board.period_json()
    return "".join(f",{json.dumps(name)}:{json.dumps(value)}" for name, value in fields.items())


@dataclass(frozen=True)
class ApplyResult:
    """What APPLY_SCRIPT did (`written`, `unchanged`, `short` or `uninitialized`) and the board version."""

    status: str
    version: int | None


@dataclass(frozen=True)
class Removal:
    """A user to take off the board, and the least row version of theirs still welcome afterwards."""

    user_id: str
    welcome_from: int


class BoardCache:
    """The Redis side of every board: their keys, the one script and their channels.

    On a cluster (`client` is redis-py's cluster client) every call goes to
    the primary of its board's slot, and messages go out with SPUBLISH.
    """

    def __init__(self, client: redis.Redis, changes_retain: int = CHANGES_RETAIN) -> None:
        self.redis = client
        self.changes_retain = changes_retain
        self.sharded = isinstance(client, RedisCluster)
        self._script = SHARDED_APPLY_SCRIPT if self.sharded else APPLY_SCRIPT
        self._apply = client.register_script(self._script)
        # Boards whose update failed here after a commit: the keeper checks them against SQL.
        self.stale_boards: set[str] = set()

    def _args(
        self,
        board: Board,
        standings: Sequence[Standing],
        mode: str,
        updated: Standing | None,
        removals: Sequence[Removal],
    ) -> list[str | int]:
        args: list[str | int] = [
            board.top_n,
            board.channel,
            mode,
            redis_direction(board.ascending),
            board.origin,
            "" if board.is_default else board.id,
            updated.user_id if updated else "",
            updated.total if updated else "",
            "1" if may_worsen(board.operator) else "0",
            self.changes_retain,
            board.id,
            board.keys.changed,
            _period_json(board),
            len(removals),
        ]
        for removal in removals:
            args += [removal.user_id, removal.welcome_from]
        for one in standings:
            args += [one.user_id, one.total, one.member, one.version, one.name or ""]
            args += ["" if one.previous is None else one.previous, "" if one.rank is None else one.rank]
            args += ["" if one.previous_version is None else one.previous_version]
        return args

    def apply(
        self,
        board: Board,
        standings: Sequence[Standing],
        *,
        mode: str,
        updated: Standing | None = None,
        removals: Sequence[Removal] = (),
    ) -> ApplyResult:
        """Run APPLY_SCRIPT on one board; see its header for the modes.

        `updated` is the user a merge's or a replace's message names; in a
        write, each standing's message names its own user.
        """
        args = self._args(board, standings, mode, updated, removals)
        with REDIS_SCRIPT_SECONDS.labels(mode).time():
            status, version = self._apply(keys=board.keys.as_list(), args=args)
        return ApplyResult(status=status, version=int(version) if version else None)

    def write_each(self, calls: Sequence[tuple[Board, Sequence[Standing]]]) -> list[ApplyResult]:
        """Run APPLY_SCRIPT in write mode once per (board, standings), in order, in one round trip.

        Boards live in different hash slots, so each is its own call; a
        pipeline (not a transaction) sends them together (on a cluster, one
        per shard, each call to its board's primary).
        """
        if len(calls) == 1:
            board, standings = calls[0]
            return [self.apply(board, standings, mode="write")]
        pending = list(range(len(calls)))
        results: list[Any] = [None] * len(calls)
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for index in pending:
                board, standings = calls[index]
                args = self._args(board, standings, "write", None, ())
                keys = board.keys.as_list()
                # As a plain command: the cluster's pipeline refuses evalsha, and routes this by its keys.
                pipe.execute_command("EVALSHA", self._apply.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
            with REDIS_SCRIPT_SECONDS.labels("write").time():
                replies = pipe.execute(raise_on_error=False)
            missing = []
            for index, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(index)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[index] = reply
            if not missing:
                break
            self.redis.script_load(self._script)  # a restarted or flushed Redis: load it, run those again
            pending = missing
        return [ApplyResult(status=status, version=int(version) if version else None) for status, version in results]

    def server_identity(self) -> str:
        """Which Redis servers answer: the run id (of each primary, on a cluster), another after a
        failover or a restart."""
        if self.sharded:
            found: Any = self.redis.info("server", target_nodes=RedisCluster.PRIMARIES)
            return ",".join(sorted(str(info["run_id"]) for info in found.values()))
        return str(self.redis.info("server")["run_id"])

    def is_built(self, board: Board) -> bool:
        """Whether Redis holds this board, built from this board's SQL in its period (else rebuild it)."""
        version, origin = self.redis.mget(board.keys.version, board.keys.origin)
        return version is not None and (not board.uid or origin == board.origin)

    def built(self, boards: Sequence[Board]) -> dict[str, bool]:
        """`is_built` for many boards, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for board in boards:
            # As a plain command: the cluster's pipeline refuses mget (these two keys share a slot).
            pipe.execute_command("MGET", board.keys.version, board.keys.origin)  # type: ignore[no-untyped-call]
        replies = pipe.execute()
        return {
            board.id: version is not None and (not board.uid or origin == board.origin)
            for board, (version, origin) in zip(boards, replies, strict=True)
        }

    def rank(self, board: Board, user_id: str) -> int | None:
        """The user's 1-based rank on the cached board, or None when not on it."""
        entry = cast(str | None, self.redis.hget(board.keys.members, user_id))
        if entry is None:
            return None
        rank = cast(int | None, self.redis.zrank(board.keys.top, entry.split("|", 1)[1]))
        return None if rank is None else rank + 1

    def entries(self, board: Board) -> list[tuple[str, int]]:
        """The cached board in rank order, as (userId, value) pairs."""
        rows = cast(list[tuple[str, float]], self.redis.zrange(board.keys.top, 0, -1, withscores=True))
        direction = redis_direction(board.ascending)
        return [(member.split(":", 1)[1], int(direction * score)) for member, score in rows]

    def names(self, board: Board) -> dict[str, str]:
        """The display names the cached board shows."""
        return cast(dict[str, str], self.redis.hgetall(board.keys.names))

    def latest_raw(self, board: Board) -> str | None:
        """The last message published for the board, as published; None if never built."""
        return cast(str | None, self.redis.get(board.keys.latest))

    def latest_message(self, board: Board) -> dict[str, Any] | None:
        """The last message published for the board, parsed."""
        raw = self.latest_raw(board)
        return None if raw is None else cast(dict[str, Any], json.loads(raw))

    def drop(self, board: Board) -> None:
        """Delete the board's keys and tell its viewers it is gone (a `deleted` message on its channel)."""
        deleted = json.dumps({"type": "deleted", "board": board.id}, separators=(",", ":"))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*board.keys.as_list())
        if self.sharded:
            pipe.spublish(board.channel, deleted)
        else:
            pipe.publish(board.channel, deleted)
        # For hubs that follow streams: the news, kept a minute (the board's keys are gone).
        pipe.xadd(board.keys.updates, {"data": deleted}, maxlen=1, approximate=False)
        pipe.expire(board.keys.updates, DELETED_NEWS_SECONDS)
        pipe.execute()
