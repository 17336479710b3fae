"""One viewer's Server-Sent Events stream.

`stream_board` is a plain generator over plain arguments: it holds no request
context and no database connection while it runs, and it always leaves the
hub in `finally`, however the stream ends (client gone, write timeout, drain).

A viewer that closes its connection is noticed at once, not at the next
write: while the stream runs, the socket is watched for readability (an SSE
client sends nothing after its request, so readable means gone), and the
stream's greenlet is ended with ClientGone.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gevent

from app.board.hub import HEARTBEAT, BoardFeed, BoardHub, ChangeFeed, ClientGone, DirectViewer, Feed
from app.leaderboard import changes
from app.leaderboard.cache import REDIS_ERRORS
from app.leaderboard.changes import Change
from app.metrics import STREAMS_ENDED


@dataclass(frozen=True)
class StreamOptions:
    """The per-stream knobs, from settings."""

    retry_ms: int
    heartbeat_seconds: float
    coalesce_seconds: float


def retry_hint(ms: int) -> bytes:
    return f"retry: {ms}\n\n".encode()


def come_back_later(options: StreamOptions) -> bytes:
    """A retry hint that spreads reconnects over a few seconds (cap reached, or draining)."""
    return retry_hint(options.retry_ms + random.randint(1000, 5000))


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


class ViewerDropped(gevent.GreenletExit):  # type: ignore[misc]
    """The viewer's socket took no data for the write timeout (a GreenletExit: gunicorn closes quietly)."""


@contextmanager
def ended_when_client_leaves(client: socket.socket | None) -> Iterator[None]:
    """End the current greenlet with ClientGone as soon as `client` becomes readable."""
    if client is None:  # not under gunicorn: nothing to watch
        yield
        return
    viewer = gevent.getcurrent()
    watcher = gevent.get_hub().loop.io(client.fileno(), 1)  # 1: readable

    def client_left() -> None:
        watcher.stop()
        if isinstance(viewer, gevent.Greenlet):
            viewer.kill(ClientGone, block=False)
        else:
            gevent.get_hub().loop.run_callback(viewer.throw, ClientGone)

    watcher.start(client_left)
    try:
        yield
    finally:
        watcher.stop()
        watcher.close()


def stream_board(
    hub: BoardHub,
    feed: BoardFeed,
    options: StreamOptions,
    last_event_id: int | None,
    client: socket.socket | None = None,
    client_ip: str = "",
    chunked: bool = True,
) -> Iterator[bytes]:
    """The frames one viewer of one board receives, newest board first, until it goes away.

    Sends the current board at once (unless `last_event_id` is already the
    current version), then every newer board, at most one frame per
    `coalesce_seconds`, with a heartbeat comment whenever nothing else was
    sent for `heartbeat_seconds`. Versions only go up. Ends with a retry hint
    when the worker drains or the board is deleted.
    """
    if client is None:
        frames = _frames(hub, feed, options, last_event_id)
    else:
        frames = _written_by_the_hub(hub, feed, options, last_event_id, client, chunked)
    yield from _counted(hub, feed, options, frames, client, client_ip)


def _counted(
    hub: BoardHub,
    feed: Feed,
    options: StreamOptions,
    frames: Generator[bytes, None, None],
    client: socket.socket | None,
    client_ip: str,
) -> Iterator[bytes]:
    """`frames` for one viewer counted in (or sent away over a cap), and out again however it ends."""
    if not hub.join(feed, client_ip):
        frames.close()
        yield come_back_later(options)
        return
    ended = "dropped"  # unless we learn otherwise: the server closed us after a failed write
    try:
        with ended_when_client_leaves(client):
            yield from frames
        ended = "draining"
    except ClientGone:
        ended = "client_gone"
        raise
    finally:
        hub.leave(feed, client_ip)
        STREAMS_ENDED.labels(ended).inc()


def _written_by_the_hub(
    hub: BoardHub,
    feed: BoardFeed,
    options: StreamOptions,
    last_event_id: int | None,
    client: socket.socket,
    chunked: bool,
) -> Generator[bytes, None, None]:
    """Under gunicorn: the first frame goes out through gunicorn (with the headers), the rest from the hub.

    This greenlet then only wakes when the hub hands it a write a full socket
    did not take, or to end the stream.
    """
    current = feed.latest
    first, sent = retry_hint(options.retry_ms), 0
    if current is not None:
        sent = current.version
        if last_event_id != current.version:
            first += current.sse
    yield first  # gunicorn has written the headers and this when the generator resumes
    viewer = DirectViewer(feed, client.fileno(), chunked, sent)
    hub.attach(viewer)
    try:
        while not hub.must_end(feed):
            viewer.wake.wait()
            viewer.wake.clear()
            _finish_pending_writes(feed, viewer, client, hub)
    finally:
        hub.detach(viewer)
    yield come_back_later(options)


def _finish_pending_writes(feed: BoardFeed, viewer: DirectViewer, client: socket.socket, hub: BoardHub) -> None:
    """The slow path: write what a full socket did not take, then catch up with the newest board.

    Blocks only this greenlet, each write at most the socket's timeout
    (SSE_WRITE_TIMEOUT_SECONDS); past it the viewer is dropped.
    """
    try:
        while viewer.pending is not None:
            client.sendall(viewer.pending)
            viewer.sent, viewer.pending = viewer.pending_version, None
            viewer.last_write = time.monotonic()
            newest = feed.latest
            if newest is not None and newest.version > viewer.sent:
                viewer.pending, viewer.pending_version = viewer.bytes_of(newest), newest.version
            hub.stats["frames_sent"] += 1
    except OSError:  # timed out, reset or closed
        raise ViewerDropped from None


def _frames(
    hub: BoardHub, feed: BoardFeed, options: StreamOptions, last_event_id: int | None
) -> Generator[bytes, None, None]:
    """Not under gunicorn (no socket to write to): every newer board, yielded."""
    current = feed.latest
    sent = last_event_id if current is not None and last_event_id == current.version else 0
    yield retry_hint(options.retry_ms)
    last_sent = 0.0
    next_heartbeat = time.monotonic() + options.heartbeat_seconds
    while not hub.must_end(feed):
        frame = feed.latest
        now = time.monotonic()
        if frame is not None and frame.version > sent:
            if now < last_sent + options.coalesce_seconds:
                feed.wait_for_change(last_sent + options.coalesce_seconds - now)
                continue
            yield frame.sse
            hub.stats["frames_sent"] += 1
            sent, last_sent = frame.version, time.monotonic()
            next_heartbeat = last_sent + options.heartbeat_seconds
        elif now >= next_heartbeat:
            yield HEARTBEAT
            next_heartbeat = time.monotonic() + options.heartbeat_seconds
        else:
            feed.wait_for_change(next_heartbeat - now)
    yield come_back_later(options)


def change_frame(change: Change) -> bytes:
    return f"id: {change.id}\ndata: {change.data}\n\n".encode()


GAP_FRAME = f"data: {changes.GAP}\n\n".encode()


def stream_changes(
    hub: BoardHub,
    feed: ChangeFeed,
    options: StreamOptions,
    last_event_id: str | None,
    client: socket.socket | None = None,
    client_ip: str = "",
) -> Iterator[bytes]:
    """One viewer of a board's change log: every entry after `last_event_id` (a gap first when
    some are gone), or from now on without one; each once, in order, until the viewer goes.

    Entries come from what the hub holds for every viewer here; a viewer
    behind that reads its own way forward from Redis, a page at a time. A
    heartbeat comment goes out whenever nothing else was sent for
    `heartbeat_seconds`. Ends with a retry hint when the worker drains or the
    board is deleted.
    """
    yield from _counted(hub, feed, options, _changes(hub, feed, options, last_event_id), client, client_ip)


def _changes(
    hub: BoardHub, feed: ChangeFeed, options: StreamOptions, last_event_id: str | None
) -> Generator[bytes, None, None]:
    after = last_event_id.strip() if last_event_id and changes.parse_id(last_event_id) else None
    if after is None:
        # From now on: "now" is fixed before the stream opens, so a change made once
        # the viewer sees it open is never taken for one from before.
        with contextlib.suppress(*REDIS_ERRORS):
            after = hub.newest_change(feed)
    yield retry_hint(options.retry_ms)
    position = changes.parse_id(after) or (0, 0)
    next_heartbeat = time.monotonic() + options.heartbeat_seconds
    while not hub.must_end(feed):
        held = None if after is None else feed.after(position)
        behind, gone = held is None, False
        try:
            if after is None:  # no Last-Event-ID: from now on
                after = hub.newest_change(feed)
                position = changes.parse_id(after) or (0, 0)
                continue
            if held is None:
                held, gone = hub.changes_after(feed, after)
        except REDIS_ERRORS:  # Redis away: heartbeats meanwhile, then on from where we were
            held = []
            feed.wait_for_change(min(1.0, max(0.0, next_heartbeat - time.monotonic())))
        if gone:
            yield GAP_FRAME
            after, position = "0-0", (0, 0)  # on from the oldest entry kept
        if held:
            yield b"".join(change_frame(change) for change in held)
            hub.stats["frames_sent"] += len(held)
            after, position = held[-1].id, held[-1].position
            next_heartbeat = time.monotonic() + options.heartbeat_seconds
            if behind:
                continue
        now = time.monotonic()
        if now >= next_heartbeat:
            yield HEARTBEAT
            next_heartbeat = now + options.heartbeat_seconds
        elif not held:
            feed.wait_for_change(next_heartbeat - now)
    yield come_back_later(options)
