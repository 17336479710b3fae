"""BoardHub: one Redis Pub/Sub subscription per worker, fanned out to every viewer.

The hub keeps only the latest board, encoded once per version as an SSE
frame (also framed as an HTTP chunk) and as a JSON snapshot. A viewer holds
nothing but the version it last got, so its memory is constant whatever the
update rate, and a slow viewer skips straight to the newest board.

Fan-out writes the frame straight to every viewer's socket, without blocking
(`os.write` on the non-blocking socket gevent gave gunicorn): one system call
per viewer and no greenlet switch, which is what lets one worker carry ten
thousand viewers. Only a viewer whose socket is full is handed to its own
greenlet, which finishes the write (blocking just itself, up to the write
timeout) and then catches up with the newest board. Heartbeats go out the
same way. Streams with no socket of their own to write to (not under
gunicorn: tests, other servers) wait on a shared "changed" event instead.

Needs gevent (the listener is a greenlet); never imports Flask.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import redis
from gevent.event import Event

from app.metrics import FRAMES_SENT, HUB_RECONNECTS, PUBLISH_TO_SEND_SECONDS, STREAMS_ENDED, VIEWERS

log = logging.getLogger(__name__)

# How often the listener checks its connection when no message arrives, and
# how long without any answer (message or pong) before it reconnects.
PING_INTERVAL = 5.0
DEAD_AFTER = 3 * PING_INTERVAL
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0

HEARTBEAT = b": ping\n\n"


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
        """Build a frame from a message published on the channel (see APPLY_SCRIPT)."""
        message = json.loads(raw)
        version = int(message["version"])
        top = [[str(user), str(score)] for user, score in message["top"]]
        data = json.dumps(
            {"type": "update", "top": top, "version": version, "ts": message["ts"]}, separators=(",", ":")
        )
        snapshot = json.dumps(
            {
                "version": version,
                "top": [{"rank": i, "userId": user, "score": int(score)} for i, (user, score) in enumerate(top, 1)],
            },
            separators=(",", ":"),
        )
        sse = f"id: {version}\ndata: {data}\n\n".encode()
        return cls(
            version=version,
            sse=sse,
            chunk=http_chunk(sse),
            snapshot=snapshot.encode(),
            published_at=float(message["ts"]),
        )


class DirectViewer:
    """A stream the hub writes to directly: its socket, and how far it got."""

    __slots__ = ("chunked", "fd", "greenlet", "last_write", "pending", "pending_version", "sent", "wake")

    def __init__(self, fd: int, chunked: bool, sent: int) -> None:
        self.fd = fd
        self.chunked = chunked  # HTTP/1.1: the body is chunked, so are our writes
        self.sent = sent  # the newest version written in full
        self.pending: bytes | None = None  # what a full socket did not take yet
        self.pending_version = 0
        self.last_write = time.monotonic()
        self.wake = Event()  # set when the viewer's greenlet has work: a pending write, or the drain
        self.greenlet = gevent.getcurrent()

    def bytes_of(self, frame: Frame) -> bytes:
        return frame.chunk if self.chunked else frame.sse


class BoardHub:
    """The worker's single subscription and the latest board it has seen."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        load_latest: Callable[[], str | None],
        *,
        max_viewers: int,
        max_viewers_per_ip: int | None = None,
        heartbeat_seconds: float = 15.0,
        coalesce_seconds: float = 0.0,
    ) -> None:
        """`load_latest` returns the current board message (rebuilding it if needed)."""
        self.heartbeat_seconds = heartbeat_seconds
        self.coalesce_seconds = coalesce_seconds
        self._direct: set[DirectViewer] = set()
        self._last_fan_out = 0.0
        self._fan_out_scheduled = False
        self._heartbeats: gevent.Greenlet[Any] | None = None
        self._redis = client
        self._channel = channel
        self._load_latest = load_latest
        self.max_viewers = max_viewers
        self.max_viewers_per_ip = max_viewers_per_ip or max_viewers
        self.latest: Frame | None = None
        self.viewers = 0
        self._viewers_by_ip: dict[str, int] = {}
        self.draining = False
        self.connected = False
        self.stats = {"reconnects": 0, "frames": 0, "refused": 0, "streams": 0, "frames_sent": 0}
        self._frames_sent_reported = 0
        self._changed = Event()
        self._listener: gevent.Greenlet[Any] | None = None
        self._stopping = False

    # -- the board ---------------------------------------------------------

    def offer(self, frame: Frame) -> bool:
        """Take `frame` if it is newer than the latest; wake the viewers. Versions never go back."""
        if self.latest is not None and frame.version <= self.latest.version:
            return False
        self.latest = frame
        self.stats["frames"] += 1
        self._wake()
        self._fan_out_soon()
        return True

    def current(self) -> Frame | None:
        """The latest board, loading it once if the listener has not yet."""
        if self.latest is None:
            self.refresh()
        return self.latest

    def refresh(self) -> None:
        """Re-read the board from Redis and take it if it is newer."""
        raw = self._load_latest()
        if raw is not None:
            self.offer(Frame.from_message(raw))

    def wait_for_change(self, timeout: float) -> bool:
        """Block this viewer until the board changes, the hub drains, or `timeout`."""
        return bool(self._changed.wait(timeout))

    def _wake(self) -> None:
        # Swap before set: a viewer that wakes and waits again waits on the new event.
        changed, self._changed = self._changed, Event()
        changed.set()

    # -- viewers -----------------------------------------------------------

    def join(self, ip: str = "") -> bool:
        """Count a viewer in; False when draining, at the per-worker cap or at the per-IP cap."""
        from_ip = self._viewers_by_ip.get(ip, 0)
        if self.draining or self.viewers >= self.max_viewers or from_ip >= self.max_viewers_per_ip:
            self.stats["refused"] += 1
            STREAMS_ENDED.labels("refused").inc()
            return False
        self.viewers += 1
        VIEWERS.inc()
        self._viewers_by_ip[ip] = from_ip + 1
        self.stats["streams"] += 1
        return True

    def leave(self, ip: str = "") -> None:
        self.viewers -= 1
        VIEWERS.dec()
        remaining = self._viewers_by_ip.pop(ip, 1) - 1
        if remaining:
            self._viewers_by_ip[ip] = remaining

    def drain(self) -> None:
        """Shutting down: refuse new viewers and tell every open stream to end."""
        self.draining = True
        self._wake()
        for viewer in self._direct:
            viewer.wake.set()

    # -- direct writes -----------------------------------------------------

    def attach(self, viewer: DirectViewer) -> None:
        """From now on the hub writes this viewer's frames and heartbeats."""
        self._direct.add(viewer)
        if self.latest is not None and self.latest.version > viewer.sent:
            self._write(viewer, self.latest, time.monotonic())

    def detach(self, viewer: DirectViewer) -> None:
        self._direct.discard(viewer)

    def _fan_out_soon(self) -> None:
        """Fan out now, or once the coalescing interval since the last fan-out has passed."""
        wait = self._last_fan_out + self.coalesce_seconds - time.monotonic()
        if wait <= 0:
            self._fan_out()
        elif not self._fan_out_scheduled:
            self._fan_out_scheduled = True
            gevent.spawn_later(wait, self._fan_out)

    def _fan_out(self) -> None:
        """Write the latest board to every direct viewer that does not have it yet."""
        self._fan_out_scheduled = False
        frame = self.latest
        if frame is None or not self._direct:
            return
        now = self._last_fan_out = time.monotonic()
        for viewer in list(self._direct):
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
            self._direct.discard(viewer)
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

    def _send_heartbeats(self) -> None:
        """A `: ping` to each direct viewer that would otherwise go a heartbeat interval without a write.

        Checked every third of the interval, and sent to whoever has been
        quiet for two thirds of it, so no gap exceeds the interval.
        """
        every = self.heartbeat_seconds / 3
        while True:
            gevent.sleep(every)
            now = time.monotonic()
            for viewer in list(self._direct):
                if viewer.pending is None and now - viewer.last_write >= self.heartbeat_seconds - every:
                    self._write(viewer, None, now)

    # -- the subscription --------------------------------------------------

    def start(self) -> None:
        """Start the listener and heartbeat greenlets (once per process)."""
        if self._listener is None or self._listener.dead:
            self._stopping = False
            self._listener = gevent.spawn(self._listen_forever)
        if self._heartbeats is None or self._heartbeats.dead:
            self._heartbeats = gevent.spawn(self._send_heartbeats)

    def stop(self) -> None:
        self._stopping = True
        for greenlet in (self._listener, self._heartbeats):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=5)

    def _listen_forever(self) -> None:
        delay = BACKOFF_INITIAL
        while not self._stopping:
            try:
                self._listen_once()
            except (redis.RedisError, OSError) as exc:
                self.stats["reconnects"] += 1
                HUB_RECONNECTS.inc()
                log.warning("board hub lost Redis (%s); reconnecting in %.1fs", exc.__class__.__name__, delay)
            except Exception:
                # Loading the board can fail in other ways (the database, when
                # it must be rebuilt); the listener must outlive all of them.
                self.stats["reconnects"] += 1
                HUB_RECONNECTS.inc()
                log.exception("board hub failed; restarting in %.1fs", delay)
            finally:
                self.connected = False
            # Full jitter, so the workers of a fleet do not reconnect in step.
            gevent.sleep(random.uniform(0, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    def _listen_once(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel)
            # Subscribed first, then read: nothing published in between is missed.
            self.refresh()
            self.connected = True
            last_heard = last_ping = time.monotonic()
            while not self._stopping:
                message = pubsub.get_message(timeout=1.0)
                self.report_frames_sent()
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    if message["type"] == "message":
                        self._on_message(message["data"])
                elif now - last_heard > DEAD_AFTER:
                    raise redis.ConnectionError("no answer from Redis on the subscription")
                elif now - last_ping > PING_INTERVAL:
                    pubsub.ping()
                    last_ping = now
        finally:
            pubsub.close()

    def report_frames_sent(self) -> None:
        """Hand the frames counted since the last call to the metric.

        Viewers count into a plain int (each frame to each viewer would
        otherwise be a write to the shared metrics file); this adds it up.
        """
        sent = self.stats["frames_sent"]
        if sent > self._frames_sent_reported:
            FRAMES_SENT.inc(sent - self._frames_sent_reported)
            self._frames_sent_reported = sent

    def _on_message(self, data: str | bytes) -> None:
        try:
            frame = Frame.from_message(data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed board message on %s", self._channel)
            return
        self.offer(frame)
