"""BoardHub: one Redis Pub/Sub subscription per worker, fanned out to every viewer.

The hub keeps only the latest board, already encoded as an SSE frame and as
a JSON snapshot, and wakes every waiting viewer when it changes. A viewer
holds nothing but the version it last sent, so its memory is constant
whatever the update rate, each frame is encoded once per update rather than
once per viewer, and a slow viewer skips straight to the newest board.

Needs gevent (the listener is a greenlet); never imports Flask.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import redis
from gevent.event import Event

from app.metrics import FRAMES_SENT, HUB_RECONNECTS, STREAMS_ENDED, VIEWERS

log = logging.getLogger(__name__)

# How often the listener checks its connection when no message arrives, and
# how long without any answer (message or pong) before it reconnects.
PING_INTERVAL = 5.0
DEAD_AFTER = 3 * PING_INTERVAL
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class Frame:
    """One board version, encoded once for every viewer."""

    version: int
    sse: bytes  # "id: <version>\ndata: {...}\n\n"
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
        return cls(
            version=version,
            sse=f"id: {version}\ndata: {data}\n\n".encode(),
            snapshot=snapshot.encode(),
            published_at=float(message["ts"]),
        )


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
    ) -> None:
        """`load_latest` returns the current board message (rebuilding it if needed)."""
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

    # -- the subscription --------------------------------------------------

    def start(self) -> None:
        """Start the listener greenlet (once per process)."""
        if self._listener is None or self._listener.dead:
            self._stopping = False
            self._listener = gevent.spawn(self._listen_forever)

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            self._listener.kill(block=True, timeout=5)

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
