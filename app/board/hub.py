"""BoardHub: one Redis Pub/Sub connection per worker, for every board, fanned out to every viewer.

The hub keeps, per board that this worker serves (a `BoardFeed`), only the
latest board, encoded once per version as an SSE frame (also framed as an
HTTP chunk) and as a JSON snapshot. A viewer holds nothing but the version
it last got, so its memory is constant whatever the update rate, and a slow
viewer skips straight to the newest board. A board is subscribed to when
its first viewer or snapshot comes, and dropped after IDLE_SECONDS with
neither: a board nobody here watches costs the worker nothing, one watched
costs it one frame. Each board coalesces and fans out on its own, so a burst
on one board delays no viewer of another.

Fan-out writes the frame straight to every viewer's socket, without blocking
(`os.write` on the non-blocking socket gevent gave gunicorn): one system call
per viewer and no greenlet switch, which is what lets one worker carry ten
thousand viewers. Only a viewer whose socket is full is handed to its own
greenlet, which finishes the write (blocking just itself, up to the write
timeout) and then catches up with the newest board. Heartbeats go out the
same way. Streams with no socket of their own to write to (not under
gunicorn: tests, other servers) wait on their board's "changed" event instead.

On a Redis Cluster the boards are spread over its shards, each board's
channel in its keys' slot, and the messages come by sharded Pub/Sub: the
hub keeps one subscription per shard primary it needs (a `Line`), each
carrying only the boards of its shard. A line whose primary fails asks the
cluster where its boards live now (a replica's promotion) and moves them
there; every board resubscribed re-reads its latest board, so a viewer
misses nothing that the new primary holds.

The change log's live feed (`/changes`) rides on the same subscription: a
`ChangeFeed` per board hears on the board's log channel that entries were
added, reads them once for all its viewers here and keeps the newest
CHANGES_KEPT. A viewer further behind than that reads its own way forward
from Redis a page at a time, so no viewer makes the worker hold more.

Needs gevent (the listener is a greenlet); never imports Flask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import redis
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from redis.cluster import RedisCluster

from app.leaderboard import Board, changes
from app.leaderboard.cache import REDIS_ERRORS
from app.leaderboard.changes import Change
from app.metrics import FRAMES_SENT, HUB_RECONNECTS, PUBLISH_TO_SEND_SECONDS, STREAMS_ENDED, VIEWERS

log = logging.getLogger(__name__)

# How long the listener may hear nothing (no message, no confirmation) before
# it asks Redis with a PING, and how long without any answer before it
# reconnects.
PING_INTERVAL = 5.0
DEAD_AFTER = 3 * PING_INTERVAL
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0
# A connection that lived this long was healthy: the next failure starts the backoff over.
HEALTHY_AFTER = 10.0
# A board with no viewer and no snapshot asked for this long is dropped (unsubscribed).
IDLE_SECONDS = 60.0

# How long a viewer waits for another's read of the board before going on without it.
LOAD_WAIT_SECONDS = 5.0
# Boards read from Redis at once (a thousand viewers of a thousand boards arriving
# together, or resubscribing after a reconnect): a few connections, not one each.
READS_AT_ONCE = 8

HEARTBEAT = b": ping\n\n"

# Sharded Pub/Sub's messages, as the plain ones they stand for.
SHARDED_KINDS = {"smessage": "message", "ssubscribe": "subscribe"}

# BOARD_TRANSPORT=streams: how long one XREAD waits for news (it then asks again:
# which also proves the connection alive). Below the Redis socket timeout.
FOLLOW_BLOCK_SECONDS = 1.0

# Entries of a board's change log a worker keeps for its viewers; one further
# behind reads from Redis, CHANGES_PAGE at a time.
CHANGES_KEPT = 1000
CHANGES_PAGE = 200


def http_chunk(data: bytes) -> bytes:
    """`data` framed as one chunk of a chunked HTTP/1.1 body, exactly as gunicorn frames what it writes."""
    return b"%X\r\n%s\r\n" % (len(data), data)


HEARTBEAT_CHUNK = http_chunk(HEARTBEAT)


class ClientGone(gevent.GreenletExit):  # type: ignore[misc]
    """The viewer closed or reset its connection (a GreenletExit: gunicorn ends the request quietly)."""


@dataclass(frozen=True)
class Frame:
    """One board version, encoded once for every viewer."""

    version: int
    sse: bytes  # "id: <version>\ndata: {...}\n\n"
    chunk: bytes  # the same, as an HTTP/1.1 chunk
    snapshot: bytes  # the GET /leaderboard body
    published_at: float  # Redis time of the PUBLISH, seconds

    @classmethod
    def from_message(cls, raw: str | bytes) -> Frame:
        """Build a frame from a message published on a board's channel (see APPLY_SCRIPT).

        `ts` is carried over as the message wrote it (six decimals), not as a float would print it.
        """
        message = json.loads(raw, parse_float=str)
        version = int(message["version"])
        ts = str(message["ts"])
        top = [[str(user), str(score)] for user, score in message["top"]]
        names = {str(user): str(name) for user, name in (message.get("names") or {}).items()}
        named = ',"names":' + json.dumps(names, separators=(",", ":")) if names else ""
        # A board with resets: the period shown, and when it ends (app.leaderboard.seasons).
        if "period" in message:
            period = {"period": str(message["period"]), "periodEnds": str(message["periodEnds"])}
            named += "," + json.dumps(period, separators=(",", ":"))[1:-1]
        data = (
            '{"type":"update","top":'
            + json.dumps(top, separators=(",", ":"))
            + named
            + f',"version":{version},"ts":{ts}}}'
        )
        entries = [{"rank": i, "userId": user, "score": int(score)} for i, (user, score) in enumerate(top, 1)]
        snapshot = '{"version":' + str(version) + ',"top":' + json.dumps(entries, separators=(",", ":")) + named + "}\n"
        sse = f"id: {version}\ndata: {data}\n\n".encode()
        return cls(
            version=version,
            sse=sse,
            chunk=http_chunk(sse),
            snapshot=snapshot.encode(),
            published_at=float(ts),
        )


class BoardFeed:
    """One board as this worker serves it: its latest frame and its viewers here."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.channel = board.channel
        self.latest: Frame | None = None
        self.direct: set[DirectViewer] = set()
        self.viewers = 0
        self.used_at = time.monotonic()
        self.ended = False  # the board was deleted: every stream of it ends
        self.changed = Event()
        self.last_fan_out = 0.0
        self.fan_out_scheduled = False
        self.loading: Event | None = None  # set while one greenlet reads the board for everyone
        self.stream_id = "0-0"  # BOARD_TRANSPORT=streams: the board's last update entry seen here

    def wait_for_change(self, timeout: float) -> bool:
        """Block this viewer until the board changes, the stream must end, or `timeout`."""
        return bool(self.changed.wait(timeout))

    def wake(self) -> None:
        # Swap before set: a viewer that wakes and waits again waits on the new event.
        changed, self.changed = self.changed, Event()
        changed.set()


class ChangeFeed:
    """One board's change log as this worker serves it: its newest entries, for its viewers here."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.channel = board.keys.changed
        self.entries: deque[Change] = deque()
        # Every entry after this position is in `entries` (None: not read yet).
        self.complete_after: tuple[int, int] | None = None
        self.newest = "0-0"
        self.viewers = 0
        self.used_at = time.monotonic()
        self.ended = False
        self.changed = Event()
        self.reading = False
        self.read_again = False

    def after(self, position: tuple[int, int]) -> list[Change] | None:
        """The entries after `position` this worker holds; None when it holds no such entries
        back to `position` (the viewer reads those from Redis)."""
        if self.complete_after is None or position < self.complete_after:
            return None
        newer = []
        for change in reversed(self.entries):  # a viewer is near the newest: only what it lacks is looked at
            if change.position <= position:
                break
            newer.append(change)
        newer.reverse()
        return newer

    def add(self, found: list[Change]) -> None:
        newest = changes.parse_id(self.newest) or (0, 0)
        for change in found:
            if change.position <= newest:  # two reads overlapped
                continue
            newest = change.position
            if len(self.entries) >= CHANGES_KEPT:
                self.complete_after = self.entries.popleft().position
            self.entries.append(change)
            self.newest = change.id

    def restart(self, newest: str) -> None:
        """Hold nothing, and everything after `newest` from now on."""
        self.entries.clear()
        self.newest = newest
        self.complete_after = changes.parse_id(newest)

    def wait_for_change(self, timeout: float) -> bool:
        return bool(self.changed.wait(timeout))

    def wake(self) -> None:
        changed, self.changed = self.changed, Event()
        changed.set()


Feed = BoardFeed | ChangeFeed


class Line:
    """One subscription: to the one Redis, or on a cluster to one shard's primary, and the channels it carries."""

    def __init__(self, name: str, client: redis.Redis, *, sharded: bool) -> None:
        self.name = name  # "redis", or the primary's host:port
        self.client = client  # for this line's connection alone (on a cluster: the node's)
        self.sharded = sharded  # SSUBSCRIBE rather than SUBSCRIBE
        self.channels: set[str] = set()
        self.pubsub: Any = None  # while connected
        self.connected = False
        self.greenlet: gevent.Greenlet[Any] | None = None
        self.retired = False  # its node is no primary any more and carries nothing: its greenlet ends

    def send(self, command: str, *channels: str) -> None:
        """(Un)subscribe on the live connection, if there is one (sharded: a command per channel, as
        one SSUBSCRIBE takes channels of one slot only)."""
        if self.pubsub is None or not channels:
            return
        if not self.sharded:
            getattr(self.pubsub, command)(*channels)
            return
        for channel in channels:
            getattr(self.pubsub, "s" + command)(channel)


class DirectViewer:
    """A stream the hub writes to directly: its socket, its board, and how far it got."""

    __slots__ = ("chunked", "fd", "feed", "greenlet", "last_write", "pending", "pending_version", "sent", "wake")

    def __init__(self, feed: BoardFeed, fd: int, chunked: bool, sent: int) -> None:
        self.feed = feed
        self.fd = fd
        self.chunked = chunked  # HTTP/1.1: the body is chunked, so are our writes
        self.sent = sent  # the newest version written in full
        self.pending: bytes | None = None  # what a full socket did not take yet
        self.pending_version = 0
        self.last_write = time.monotonic()
        self.wake = Event()  # set when the viewer's greenlet has work: a pending write, or the end
        self.greenlet = gevent.getcurrent()

    def bytes_of(self, frame: Frame) -> bytes:
        return frame.chunk if self.chunked else frame.sse


class BoardHub:
    """The worker's subscription (one per shard on a cluster), and the latest frame of every board it serves."""

    def __init__(
        self,
        client: redis.Redis,
        load_latest: Callable[[Board], str | bytes | None],
        *,
        max_viewers: int,
        max_viewers_per_ip: int | None = None,
        heartbeat_seconds: float = 15.0,
        coalesce_seconds: float = 0.0,
        keep: Board | None = None,
        on_deleted: Callable[[str], None] | None = None,
        transport: str = "pubsub",
        commands: redis.Redis | None = None,
    ) -> None:
        """`client` is the hub's own (bytes, no health-check pings of its own); `load_latest`
        returns a board's current message (rebuilding it if needed); `keep` is a board
        served even when idle (the default board); `on_deleted(board_id)` hears of a
        board deleted elsewhere; `transport` is how it hears of updates: "pubsub" (one
        subscription) or "streams" (one connection following the boards' update streams,
        which resumes from the last entry seen after a reconnect); `commands` is the client
        for everything else (reading change logs; the app's own), so `client` holds only the
        one connection."""
        self.transport = transport
        self.heartbeat_seconds = heartbeat_seconds
        self.coalesce_seconds = coalesce_seconds
        self.max_viewers = max_viewers
        self.max_viewers_per_ip = max_viewers_per_ip or max_viewers
        self._redis = client
        self._commands = commands or client
        self._load_latest = load_latest
        self._on_deleted = on_deleted
        self._feeds: dict[str, BoardFeed] = {}
        self._by_channel: dict[str, BoardFeed] = {}
        self._change_feeds: dict[str, ChangeFeed] = {}
        self._changes_by_channel: dict[str, ChangeFeed] = {}
        self._keep = keep.id if keep else None
        self._lock = threading.Lock()  # the feeds, the lines, and commands on the subscriptions
        self._reads = BoundedSemaphore(READS_AT_ONCE)
        self._cluster = isinstance(client, RedisCluster)
        self._lines: dict[str, Line] = {}
        self._line_of: dict[str, Line] = {}  # channel -> the line that carries it
        self._unrouted: set[str] = set()  # channels no line could take yet (the cluster's slots unknown)
        if not self._cluster:
            self._lines["redis"] = Line("redis", client, sharded=False)
        self.viewers = 0
        self._viewers_by_ip: dict[str, int] = {}
        self.draining = False
        self.stats = {"reconnects": 0, "frames": 0, "refused": 0, "streams": 0, "frames_sent": 0, "reads": 0}
        self._following_id: int | None = None  # streams: the following connection's CLIENT ID
        self._feeds_changed = Event()
        self._unblocking = False
        self._frames_sent_reported = 0
        self._ticker: gevent.Greenlet[Any] | None = None
        self._running = False
        self._stopping = False
        if keep is not None:
            self.feed(keep)

    # -- boards ------------------------------------------------------------

    def feed(self, board: Board) -> BoardFeed:
        """This worker's feed of `board`, subscribed to from now on."""
        feed = self._feeds.get(board.id)
        if feed is None or feed.ended or feed.channel != board.channel:
            with self._lock:
                feed = BoardFeed(board)
                self._feeds[board.id] = feed
                self._by_channel[board.channel] = feed
                self._command("subscribe", board.channel)
            self._follow_new_feeds()
        feed.board = board  # the freshest settings (title, size) the caller has
        feed.used_at = time.monotonic()
        return feed

    @property
    def boards(self) -> int:
        return len(self._feeds)

    def change_feed(self, board: Board) -> ChangeFeed:
        """This worker's feed of `board`'s change log, subscribed to from now on."""
        feed = self._change_feeds.get(board.id)
        if feed is None or feed.ended:
            with self._lock:
                feed = ChangeFeed(board)
                self._change_feeds[board.id] = feed
                self._changes_by_channel[feed.channel] = feed
                self._command("subscribe", feed.channel)
            if self.transport == "streams":  # no subscription to confirm it: read where it starts now
                gevent.spawn(self._catch_up, feed, restart=True)
        feed.board = board
        feed.used_at = time.monotonic()
        return feed

    def newest_change(self, feed: ChangeFeed) -> str:
        """The id of the newest entry of the feed's log, as Redis has it now."""
        with self._reads:
            return changes.newest_id(self._commands, feed.board)

    def changes_after(self, feed: ChangeFeed, after: str) -> tuple[list[Change], bool]:
        """A page of entries after `after` from Redis ("0-0": from the oldest kept), and
        whether entries after `after` are gone."""
        with self._reads:
            gone = after != "0-0" and changes.missed(self._commands, feed.board, after)
            return changes.read_after(self._commands, feed.board, "0-0" if gone else after, CHANGES_PAGE), gone

    def _catch_up(self, feed: ChangeFeed, *, restart: bool = False) -> None:
        """Read the entries the feed does not hold yet, once for all its viewers here (a greenlet).

        `restart`: first forget what it holds (after a reconnect, entries may
        have been missed): viewers behind read from Redis, and learn of a gap.
        """
        if feed.reading and not restart:
            feed.read_again = True
            return
        feed.reading = True
        try:
            if restart or feed.complete_after is None:
                feed.restart(self.newest_change(feed))
                feed.wake()
            if self.transport == "streams":
                return  # the follower reads what comes next (told in `finally`)
            while True:
                with self._reads:
                    found = changes.read_after(self._commands, feed.board, feed.newest, CHANGES_PAGE)
                feed.add(found)
                if found:
                    feed.wake()
                if len(found) < CHANGES_PAGE and not feed.read_again:
                    break
                feed.read_again = False
        except Exception as exc:  # Redis away: the next notice, or the resubscription, reads again
            log.warning("board hub could not read the change log of %s: %s", feed.board.id, exc.__class__.__name__)
        finally:
            feed.reading = False
            self._follow_new_feeds()

    def offer(self, feed: BoardFeed, frame: Frame) -> bool:
        """Take `frame` if it is newer than the board's latest; wake its viewers. Versions never go back."""
        if feed.ended or (feed.latest is not None and frame.version <= feed.latest.version):
            return False
        feed.latest = frame
        self.stats["frames"] += 1
        feed.wake()
        self._fan_out_soon(feed)
        return True

    def current(self, board: Board) -> Frame | None:
        """The board's latest frame, loading it once if the listener has not yet.

        Viewers who come together wait for one read instead of each making
        their own: a crowd arriving costs Redis one GET, not a connection each.
        """
        feed = self.feed(board)
        if feed.latest is None:
            if feed.loading is not None:
                feed.loading.wait(LOAD_WAIT_SECONDS)
            else:
                self._load(feed)
        return feed.latest

    def _load(self, feed: BoardFeed) -> None:
        """Read the board, letting others who need it now wait for this read."""
        feed.loading = loading = Event()
        try:
            self.refresh(feed)
        finally:
            feed.loading = None
            loading.set()

    def refresh(self, feed: BoardFeed) -> None:
        """Re-read the board from Redis and take it if it is newer."""
        with self._reads:
            raw = self._load_latest(feed.board)
        self.stats["reads"] += 1
        if raw is not None:
            self.offer(feed, Frame.from_message(raw))

    def end_board(self, board_id: str) -> None:
        """The board was deleted: end every stream of it here (with a retry hint) and forget it."""
        with self._lock:
            feed = self._feeds.pop(board_id, None)
            change_feed = self._change_feeds.pop(board_id, None)
            for ended in (feed, change_feed):
                if ended is not None:
                    self._by_channel.pop(ended.channel, None)
                    self._changes_by_channel.pop(ended.channel, None)
                    self._command("unsubscribe", ended.channel)
        for ended in (feed, change_feed):
            if ended is not None:
                ended.ended = True
                self._end_streams(ended)

    def _end_streams(self, feed: Feed) -> None:
        feed.wake()
        if isinstance(feed, BoardFeed):
            for viewer in list(feed.direct):
                viewer.wake.set()

    # -- viewers -----------------------------------------------------------

    def full(self, feed: Feed, ip: str = "") -> bool:
        """Whether a viewer would be sent away now: draining, the board deleted, or at a cap."""
        from_ip = self._viewers_by_ip.get(ip, 0)
        return self.draining or feed.ended or self.viewers >= self.max_viewers or from_ip >= self.max_viewers_per_ip

    def refuse(self) -> None:
        """Count a viewer sent away."""
        self.stats["refused"] += 1
        STREAMS_ENDED.labels("refused").inc()

    def join(self, feed: Feed, ip: str = "") -> bool:
        """Count a viewer in; False (and counted as refused) when `full`."""
        if self.full(feed, ip):
            self.refuse()
            return False
        from_ip = self._viewers_by_ip.get(ip, 0)
        self.viewers += 1
        feed.viewers += 1
        VIEWERS.inc()
        self._viewers_by_ip[ip] = from_ip + 1
        self.stats["streams"] += 1
        return True

    def leave(self, feed: Feed, ip: str = "") -> None:
        self.viewers -= 1
        feed.viewers -= 1
        feed.used_at = time.monotonic()
        VIEWERS.dec()
        remaining = self._viewers_by_ip.pop(ip, 1) - 1
        if remaining:
            self._viewers_by_ip[ip] = remaining

    def drain(self) -> None:
        """Shutting down: refuse new viewers and tell every open stream to end."""
        self.draining = True
        for feed in self._all_feeds():
            self._end_streams(feed)

    def _all_feeds(self) -> list[Feed]:
        return [*self._feeds.values(), *self._change_feeds.values()]

    def must_end(self, feed: Feed) -> bool:
        return self.draining or feed.ended

    # -- direct writes -----------------------------------------------------

    def attach(self, viewer: DirectViewer) -> None:
        """From now on the hub writes this viewer's frames and heartbeats."""
        feed = viewer.feed
        feed.direct.add(viewer)
        if feed.latest is not None and feed.latest.version > viewer.sent:
            self._write(viewer, feed.latest, time.monotonic())

    def detach(self, viewer: DirectViewer) -> None:
        viewer.feed.direct.discard(viewer)

    def _fan_out_soon(self, feed: BoardFeed) -> None:
        """Fan out now, or once the coalescing interval since the board's last fan-out has passed."""
        wait = feed.last_fan_out + self.coalesce_seconds - time.monotonic()
        if wait <= 0:
            self._fan_out(feed)
        elif not feed.fan_out_scheduled:
            feed.fan_out_scheduled = True
            gevent.spawn_later(wait, self._fan_out, feed)

    def _fan_out(self, feed: BoardFeed) -> None:
        """Write the board's latest frame to every direct viewer of it that does not have it yet."""
        feed.fan_out_scheduled = False
        frame = feed.latest
        if frame is None or not feed.direct:
            return
        now = feed.last_fan_out = time.monotonic()
        for viewer in list(feed.direct):
            if viewer.pending is None and viewer.sent < frame.version:
                self._write(viewer, frame, now)
        PUBLISH_TO_SEND_SECONDS.observe(max(0.0, time.time() - frame.published_at))

    def _write(self, viewer: DirectViewer, frame: Frame | None, now: float) -> None:
        """One non-blocking write of a frame (None: a heartbeat); a full socket goes to the viewer's greenlet."""
        data = viewer.bytes_of(frame) if frame is not None else (HEARTBEAT_CHUNK if viewer.chunked else HEARTBEAT)
        try:
            written = os.write(viewer.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # reset or closed: the viewer is gone
            viewer.feed.direct.discard(viewer)
            viewer.greenlet.kill(ClientGone, block=False)
            return
        viewer.last_write = now
        version = frame.version if frame is not None else viewer.sent
        if written == len(data):
            viewer.sent = version
            self.stats["frames_sent"] += frame is not None
        else:
            viewer.pending, viewer.pending_version = data[written:], version
            viewer.wake.set()

    @property
    def tick_seconds(self) -> float:
        return min(1.0, self.heartbeat_seconds / 3)

    def _tick_forever(self) -> None:
        while True:
            gevent.sleep(self.tick_seconds)
            self.tick(time.monotonic())

    def tick(self, now: float) -> None:
        """Heartbeats for quiet viewers, and idle boards dropped; the hub does this about every second.

        A `: ping` goes to each direct viewer that has had no write for a
        heartbeat interval less one tick, so no gap exceeds the interval and
        none is much shorter.
        """
        quiet = self.heartbeat_seconds - self.tick_seconds
        for feed in list(self._feeds.values()):
            for viewer in list(feed.direct):
                if viewer.pending is None and now - viewer.last_write >= quiet:
                    self._write(viewer, None, now)
            if feed.viewers == 0 and feed.board.id != self._keep and now - feed.used_at > IDLE_SECONDS:
                self._drop(feed)
            elif feed.viewers and feed.latest is None and feed.loading is None and self.connected:
                gevent.spawn(self._refresh_quietly, feed)  # an earlier read failed: its viewers still wait
        for change_feed in list(self._change_feeds.values()):
            if change_feed.viewers == 0 and now - change_feed.used_at > IDLE_SECONDS:
                self._drop_changes(change_feed)
        if self._unrouted:
            gevent.spawn(self._reroute, None)
        self.report_frames_sent()

    def _drop(self, feed: BoardFeed) -> None:
        with self._lock:
            if self._feeds.get(feed.board.id) is feed and feed.viewers == 0:
                del self._feeds[feed.board.id]
                self._by_channel.pop(feed.channel, None)
                self._command("unsubscribe", feed.channel)

    def _drop_changes(self, feed: ChangeFeed) -> None:
        with self._lock:
            if self._change_feeds.get(feed.board.id) is feed and feed.viewers == 0:
                del self._change_feeds[feed.board.id]
                self._changes_by_channel.pop(feed.channel, None)
                self._command("unsubscribe", feed.channel)

    # -- the subscription --------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether every subscription this worker needs is up (on a cluster: one per shard it serves)."""
        lines = list(self._lines.values())
        return bool(lines) and all(line.connected for line in lines)

    @property
    def lines(self) -> dict[str, int]:
        """Each subscription (on a cluster: each shard primary's host:port) and the channels it carries."""
        return {line.name: len(line.channels) for line in self._lines.values()}

    def start(self) -> None:
        """Start the listener greenlets (one per line) and the ticker (once per process)."""
        self._stopping = False
        self._running = True
        for line in list(self._lines.values()):
            self._start_line(line)
        if self._ticker is None or self._ticker.dead:
            self._ticker = gevent.spawn(self._tick_forever)

    def _start_line(self, line: Line) -> None:
        if self._running and (line.greenlet is None or line.greenlet.dead):
            line.greenlet = gevent.spawn(self._listen_forever, line)

    def stop(self) -> None:
        self._stopping = True
        self._running = False
        for greenlet in [*(line.greenlet for line in self._lines.values()), self._ticker]:
            if greenlet is not None:
                greenlet.kill(block=True, timeout=5)

    def _command(self, command: str, channel: str) -> None:
        """(Un)subscribe on the line that carries the channel; a line not connected subscribes when it connects.

        Called with the lock held: only one greenlet sends on a connection at
        a time, while its listener reads.
        """
        if command == "subscribe":
            try:
                line = self._route(channel)
            except REDIS_ERRORS as exc:  # the cluster's slots unknown just now: placed once they are
                log.info("board hub could not place %s: %s", channel, exc.__class__.__name__)
                self._unrouted.add(channel)
                return
            line.channels.add(channel)
            self._line_of[channel] = line
        else:
            self._unrouted.discard(channel)
            found = self._line_of.pop(channel, None)
            if found is None:
                return
            line = found
            line.channels.discard(channel)
        try:
            line.send(command, channel)
        except (*REDIS_ERRORS, OSError) as exc:  # its listener will notice and reconnect
            log.info("board hub could not %s %s: %s", command, channel, exc.__class__.__name__)

    def _route(self, channel: str) -> Line:
        """The line for a channel: the one, or on a cluster the line of its slot's primary (made when new)."""
        if not self._cluster:
            return self._lines["redis"]
        cluster: Any = self._redis
        node = cluster.get_node_from_key(channel)
        line = self._lines.get(node.name)
        if line is None:
            line = self._lines[node.name] = Line(node.name, cluster.get_redis_connection(node), sharded=True)
            self._start_line(line)
        return line

    def _reroute(self, failed: Line | None) -> None:
        """Cluster: learn the slots again and move each channel of `failed` (and any not placed yet) to
        the line of its slot's primary now; retire `failed` when its node is no longer a primary."""
        if not self._cluster or not self._learn_slots():
            return
        cluster: Any = self._redis
        with self._lock:
            primaries = {node.name for node in cluster.get_primaries()}
            moving = [*(failed.channels if failed is not None else ()), *self._unrouted]
            self._unrouted.clear()
            for channel in moving:
                self._place_again(channel)
            if failed is not None and failed.name not in primaries and not failed.channels:
                failed.retired = True
                self._lines.pop(failed.name, None)
                log.info("board hub: %s is no longer a primary; its boards moved", failed.name)

    def _moved(self, channel: str) -> None:
        """Cluster: a channel's slot went to another shard (resharding): subscribe where it is now."""
        self._learn_slots()  # when it cannot: the line's next failure, or the tick, places the channel
        with self._lock:
            if channel not in self._line_of:  # dropped meanwhile
                return
            self._place_again(channel)
        now_on = self._line_of.get(channel)
        log.info("board hub: %s moved to %s", channel, now_on.name if now_on else "a shard not known yet")

    def _learn_slots(self) -> bool:
        """Cluster: ask a node which primary serves each slot now; False when none answers."""
        cluster: Any = self._redis
        try:
            cluster.nodes_manager.initialize()
        except REDIS_ERRORS as exc:
            log.info("board hub could not learn the cluster's slots: %s", exc.__class__.__name__)
            return False
        return True

    def _place_again(self, channel: str) -> None:
        """Take the channel off its line and subscribe it on the line of its slot's primary now (lock held)."""
        line = self._line_of.pop(channel, None)
        if line is not None:
            line.channels.discard(channel)
        self._command("subscribe", channel)

    def _listen_forever(self, line: Line) -> None:
        delay = BACKOFF_INITIAL
        where = f" at {line.name}" if line.sharded else ""
        while not self._stopping and not line.retired:
            started = time.monotonic()
            try:
                if self.transport == "streams":
                    self._follow_once(line)
                else:
                    self._listen_once(line)
            except (*REDIS_ERRORS, OSError) as exc:
                self.stats["reconnects"] += 1
                HUB_RECONNECTS.inc()
                log.warning("board hub lost Redis%s (%s); reconnecting in %.1fs", where, exc.__class__.__name__, delay)
            except Exception:
                # Loading a board can fail in other ways (the database, when it
                # must be rebuilt); the listener must outlive all of them.
                self.stats["reconnects"] += 1
                HUB_RECONNECTS.inc()
                log.exception("board hub failed; restarting in %.1fs", delay)
            finally:
                line.connected = False
            if self._stopping:
                break
            self._reroute(line)  # a cluster's primary away: its boards may live on a promoted replica now
            if line.retired:
                break
            if time.monotonic() - started >= HEALTHY_AFTER:
                delay = BACKOFF_INITIAL
            # Full jitter, so the workers of a fleet do not reconnect in step.
            gevent.sleep(random.uniform(0, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _listen_once(self, line: Line) -> None:
        pubsub = line.client.pubsub()  # type: ignore[no-untyped-call]
        try:
            with self._lock:
                line.pubsub = pubsub
                line.send("subscribe", *line.channels)
            line.connected = True
            last_heard = last_ping = time.monotonic()
            while not self._stopping:
                message = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    self._on(message)
                elif not pubsub.subscribed:  # nothing subscribed: nothing to hear
                    last_heard = now
                elif now - last_heard > DEAD_AFTER:
                    raise redis.ConnectionError("no answer from Redis on the subscription")
                elif now - last_heard > PING_INTERVAL and now - last_ping > PING_INTERVAL:
                    with self._lock:
                        pubsub.ping()
                    last_ping = now
        finally:
            with self._lock:
                line.pubsub = None
            pubsub.close()

    # -- BOARD_TRANSPORT=streams -------------------------------------------

    def _follow_new_feeds(self) -> None:
        """Streams: have the follower's blocked read start again with the boards it must follow now."""
        if self.transport != "streams":
            return
        self._feeds_changed.set()
        following = self._following_id
        if following is not None and not self._unblocking:
            # One at a time: a thousand boards arriving together cost a few, not a connection each.
            self._unblocking = True
            gevent.spawn(self._unblock, following)

    def _unblock(self, client_id: int) -> None:
        try:
            # Failing, it is reconnecting: it reads the new boards then.
            with contextlib.suppress(redis.RedisError, OSError):
                self._commands.client_unblock(client_id)
        finally:
            self._unblocking = False

    def _follow_once(self, line: Line) -> None:
        """Follow every served board's update stream (and every change log watched here) on one
        connection, with XREAD BLOCK from the last entry seen of each: after a reconnect, on
        from there, so nothing is read again and nothing missed (the newest update is kept)."""
        pool = self._redis.connection_pool
        connection: Any = pool.get_connection("XREAD")  # its own, read directly (redis-py leaves it untyped)
        block_ms = max(100, int(FOLLOW_BLOCK_SECONDS * 1000))
        try:
            connection.send_command("CLIENT", "ID")
            self._following_id = int(connection.read_response())
            line.connected = True
            while not self._stopping:
                self._feeds_changed.clear()
                with self._lock:
                    boards = {feed.board.keys.updates: feed for feed in self._feeds.values()}
                    logs = {
                        feed.board.keys.changes: feed
                        for feed in self._change_feeds.values()
                        if feed.complete_after is not None and not feed.reading
                    }
                    following = {key: feed.stream_id for key, feed in boards.items()}
                    following |= {key: feed.newest for key, feed in logs.items()}
                if not following:
                    self._feeds_changed.wait(PING_INTERVAL)
                    continue
                if self._feeds_changed.is_set():  # a board came while the list was made (its wake-up found
                    continue  # no read to wake): make it again
                connection.send_command(
                    "XREAD", "COUNT", CHANGES_PAGE, "BLOCK", block_ms, "STREAMS", *following, *following.values()
                )
                reply = connection.read_response() or ()
                for key, rows in reply.items() if isinstance(reply, dict) else reply:
                    key = key.decode() if isinstance(key, bytes) else key
                    found = changes.entries_of(rows)
                    if key in boards and found:
                        self._on_update(boards[key], found[-1])
                    elif key in logs and found:
                        logs[key].add(found)
                        logs[key].wake()
        except BaseException:
            connection.disconnect()  # never back to the pool half read
            raise
        finally:
            self._following_id = None
            pool.release(connection)

    def _on_update(self, feed: BoardFeed, update: Change) -> None:
        feed.stream_id = update.id
        self._on_message(feed, update.data)

    def _on(self, message: dict[str, Any]) -> None:
        kind = SHARDED_KINDS.get(message["type"], message["type"])
        if message["type"] == "sunsubscribe":
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if channel in self._line_of:  # not ours: the cluster moved the channel's slot to another shard
                gevent.spawn(self._moved, channel)
            return
        if kind not in ("message", "subscribe"):
            return  # a pong or an unsubscribe: it only proves the connection alive
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        change_feed = self._changes_by_channel.get(channel)
        if change_feed is not None:
            # Subscribed (again, maybe after missing notices): start over from the newest entry.
            # A notice: read what came after what the feed holds, unless it holds that already.
            if kind == "subscribe" or self._news_for(change_feed, message["data"]):
                gevent.spawn(self._catch_up, change_feed, restart=kind == "subscribe")
            return
        feed = self._by_channel.get(channel)
        if feed is None:
            return
        if kind == "subscribe":
            # Subscribed first, then read: nothing published in between is missed.
            gevent.spawn(self._refresh_quietly, feed)
        else:
            self._on_message(feed, message["data"])

    @staticmethod
    def _news_for(feed: ChangeFeed, data: str | bytes) -> bool:
        """Whether a notice names an entry newer than the feed holds (a read overlapping it may have)."""
        notified = changes.parse_id(data.decode() if isinstance(data, bytes) else data)
        return notified is None or notified > (changes.parse_id(feed.newest) or (0, 0))

    def _refresh_quietly(self, feed: BoardFeed) -> None:
        try:
            self._load(feed)
        except Exception as exc:  # Redis or the database away: the next message, or resubscribe, will do
            log.warning("board hub could not read board %s: %s", feed.board.id, exc.__class__.__name__)

    def report_frames_sent(self) -> None:
        """Hand the frames counted since the last call to the metric.

        Viewers count into a plain int (each frame to each viewer would
        otherwise be a write to the shared metrics file); this adds it up.
        """
        sent = self.stats["frames_sent"]
        if sent > self._frames_sent_reported:
            FRAMES_SENT.inc(sent - self._frames_sent_reported)
            self._frames_sent_reported = sent

    def _on_message(self, feed: BoardFeed, data: str | bytes) -> None:
        raw = data if isinstance(data, bytes) else data.encode()
        try:
            if raw.startswith(b'{"type":"deleted"'):
                self.end_board(feed.board.id)
                if self._on_deleted is not None:
                    self._on_deleted(feed.board.id)
                return
            frame = Frame.from_message(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed board message on %s", feed.channel)
            return
        self.offer(feed, frame)
