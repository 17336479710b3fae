"""The change log: every accepted change of a user's value, per board, in a Redis Stream.

APPLY_SCRIPT appends the entries (app.leaderboard.cache), in the same atomic
step that updates the board, so the log and the board never disagree. Each
entry is one field, `data`, holding the JSON the feed sends as it is:
`{"type": "score", "board", "userId", "score", "previous", "rank", "version", "ts"}`.
The stream keeps about CHANGES_RETAIN entries (XADD MAXLEN ~).

This module reads it: pages after an entry id, whether a reader missed
entries that are gone, and a consumer group reader for downstream systems
(at least once: an entry is acknowledged only after it was handed on).
Never imports Flask.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, cast

import redis

from app.leaderboard.boards import Board

# What a reader gets first when entries it had not seen are no longer kept.
GAP = '{"type":"gap"}'

_ENTRY_ID = re.compile(r"\A(\d{1,20})-(\d{1,20})\Z")


def parse_id(text: str | None) -> tuple[int, int] | None:
    """A stream entry id (`<ms>-<seq>`) as a comparable pair, or None when `text` is not one."""
    found = _ENTRY_ID.match(text.strip()) if text else None
    return (int(found[1]), int(found[2])) if found else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Change:
    """One entry of a board's change log: its stream id and its JSON."""

    id: str
    data: str

    @cached_property
    def position(self) -> tuple[int, int]:
        """The id as a comparable pair, parsed once."""
        found = parse_id(self.id)
        assert found is not None
        return found


def entries_of(rows: Any) -> list[Change]:
    """Stream rows as XRANGE and XREAD answer them: [(id, {field: value})] parsed, or the
    raw [id, [field, value, ...]] of a connection read directly."""
    return _changes(
        (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields)
        for entry_id, fields in rows or ()
    )


def _changes(rows: Any) -> list[Change]:
    """Stream rows ([(id, {field: value})]) as changes; entries deleted meanwhile (no fields) are left out."""
    found = []
    for entry_id, fields in rows or ():
        if fields:
            data = fields.get(b"data", fields.get("data"))
            found.append(Change(_text(entry_id), _text(data)))
    return found


def read_after(client: redis.Redis, board: Board, after: str, count: int) -> list[Change]:
    """Up to `count` entries after entry `after` ("0-0": from the oldest kept), oldest first."""
    return _changes(client.xrange(board.keys.changes, min=f"({after}", count=count))


def newest_id(client: redis.Redis, board: Board) -> str:
    """The id of the board's newest entry; "0-0" when the log is empty."""
    rows = cast(list[Any], client.xrevrange(board.keys.changes, count=1))
    return _text(rows[0][0]) if rows else "0-0"


def missed(client: redis.Redis, board: Board, after: str) -> bool:
    """Whether entry `after` is older than what the log keeps (trimmed away, or lost with a
    Redis that restarted without persistence): the reader may have missed entries."""
    position = parse_id(after)
    if position is None or position == (0, 0):
        return False
    oldest = cast(list[Any], client.xrange(board.keys.changes, count=1))
    if not oldest:
        return True  # no log (any more): whatever came after `after` is gone
    return position < (parse_id(_text(oldest[0][0])) or (0, 0))


# What one erasure reads of a board's log at a time.
_ERASE_PAGE = 1000


def forget_user(client: redis.Redis, board: Board, user_id: str) -> int:
    """Delete the user's entries from the board's change log (an erasure); returns how many.

    Reads the whole log, a page at a time: at most CHANGES_RETAIN entries.
    """
    key, after, gone = board.keys.changes, "0-0", 0
    while True:
        page = read_after(client, board, after, _ERASE_PAGE)
        theirs = [change.id for change in page if json.loads(change.data).get("userId") == user_id]
        if theirs:
            gone += int(client.xdel(key, *theirs))
        if len(page) < _ERASE_PAGE:
            break
        after = page[-1].id
    client.hdel(board.keys.logged, user_id)
    waiting = [field for field in client.hkeys(board.keys.held) if _text(field).rsplit(":", 1)[0] == user_id]
    if waiting:
        client.hdel(board.keys.held, *waiting)
        client.zrem(board.keys.held_since, *waiting)
    return gone


# -- a consumer group reader --------------------------------------------------


def line_of(change: Change) -> str:
    """What the reader prints for an entry: its JSON with the entry id first."""
    return '{"id":"' + change.id + '",' + change.data[1:]


def ensure_group(client: redis.Redis, board: Board, group: str) -> bool:
    """Create the consumer group (reading from the oldest kept entry on); False when it was there."""
    try:
        client.xgroup_create(board.keys.changes, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


def follow(
    client: redis.Redis,
    board: Board,
    group: str,
    consumer: str,
    hand_on: Callable[[str], None],
    *,
    batch: int = 100,
    block_ms: int = 2000,
    claim_idle_ms: int = 30_000,
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Hand each entry of the board's log to `hand_on` (a line of JSON), then acknowledge it.

    At least once: first this consumer's own entries left unacknowledged (a
    crash between the two), then other consumers' that waited `claim_idle_ms`
    (XAUTOCLAIM), then new ones (XREADGROUP ... >), until `keep_going()` is
    false. An entry that was trimmed before it was handed on comes as
    `{"id": ..., "type": "gap"}`. Returns how many entries it handed on.
    """
    ensure_group(client, board, group)
    key = board.keys.changes
    handed = 0

    def take(rows: Any) -> int:
        done = 0
        for entry_id, fields in rows or ():
            entry_id = _text(entry_id)
            if fields:
                hand_on(line_of(_changes([(entry_id, fields)])[0]))
            else:
                hand_on('{"id":"' + entry_id + '","type":"gap"}')
            client.xack(key, group, entry_id)
            done += 1
        return done

    # Our own pending entries: delivered to us before, never acknowledged.
    while keep_going():
        reply = cast(list[Any], client.xreadgroup(group, consumer, {key: "0"}, count=batch))
        mine = reply[0][1] if reply else []
        if not mine:
            break
        handed += take(mine)
    next_claim = 0.0
    while keep_going():
        now = time.monotonic()
        if now >= next_claim:
            start = "0-0"
            while True:
                claimed: Any = client.xautoclaim(key, group, consumer, claim_idle_ms, start_id=start, count=batch)
                start, rows = _text(claimed[0]), claimed[1]
                handed += take(rows)
                if start == "0-0" or not keep_going():
                    break
            next_claim = now + claim_idle_ms / 1000
        fresh: Any = client.xreadgroup(group, consumer, {key: ">"}, count=batch, block=block_ms)
        if fresh:
            handed += take(fresh[0][1])
    return handed
