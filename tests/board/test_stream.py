"""BoardHub and one viewer's stream, in process (the e2e tests run them under gunicorn)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gevent
import pytest

from app.board.hub import BoardHub, Frame
from app.board.sse import HEARTBEAT, StreamOptions, parse_last_event_id, stream_board


def message(version: int, top: list[list[str]] | None = None) -> str:
    return json.dumps(
        {"type": "update", "updatedUser": "a", "newScore": 1, "top": top or [["a", "1"]], "version": version, "ts": 1.5}
    )


class Board:
    """What load_latest reads: the message a test last stored."""

    def __init__(self, latest: str | None) -> None:
        self.latest = latest

    def load(self) -> str | None:
        return self.latest


def make_hub(latest: str | None = None, max_viewers: int = 100) -> BoardHub:
    return BoardHub(None, "unused", Board(latest).load, max_viewers=max_viewers)  # type: ignore[arg-type]


FAST = StreamOptions(retry_ms=1500, heartbeat_seconds=0.05, coalesce_seconds=0)


def take(stream: Iterator[bytes], count: int) -> list[bytes]:
    return [next(stream) for _ in range(count)]


def test_a_frame_is_encoded_once_as_sse_and_as_a_snapshot() -> None:
    frame = Frame.from_message(message(42, [["bob", "1500"], ["amy", "1400"]]))
    assert frame.version == 42
    event_id, data, blank, end = frame.sse.decode().split("\n")
    assert (event_id, blank, end) == ("id: 42", "", "")
    assert json.loads(data.removeprefix("data: ")) == {
        "type": "update",
        "top": [["bob", "1500"], ["amy", "1400"]],
        "version": 42,
        "ts": 1.5,
    }
    assert json.loads(frame.snapshot) == {
        "version": 42,
        "top": [{"rank": 1, "userId": "bob", "score": 1500}, {"rank": 2, "userId": "amy", "score": 1400}],
    }


def test_the_hub_never_takes_an_older_board() -> None:
    hub = make_hub(message(5))
    assert hub.current() is not None
    assert not hub.offer(Frame.from_message(message(4)))
    assert not hub.offer(Frame.from_message(message(5)))
    assert hub.offer(Frame.from_message(message(6)))
    assert hub.latest is not None
    assert hub.latest.version == 6


def test_a_stream_starts_with_retry_then_the_board_then_heartbeats() -> None:
    hub = make_hub(message(7))
    hub.current()
    stream = stream_board(hub, FAST, last_event_id=None)
    assert take(stream, 2) == [b"retry: 1500\n\n", hub.latest.sse]  # type: ignore[union-attr]
    assert take(stream, 2) == [HEARTBEAT, HEARTBEAT]
    assert hub.viewers == 1
    stream.close()
    assert hub.viewers == 0


@pytest.mark.parametrize(("last_event_id", "gets_snapshot"), [(7, False), (6, True), (8, True), (None, True)])
def test_last_event_id_equal_to_the_current_version_skips_the_snapshot(
    last_event_id: int | None, gets_snapshot: bool
) -> None:
    hub = make_hub(message(7))
    hub.current()
    stream = stream_board(hub, FAST, last_event_id)
    first = take(stream, 2)
    assert (first[1] != HEARTBEAT) is gets_snapshot
    stream.close()


def test_a_viewer_gets_only_newer_boards_and_the_latest_wins() -> None:
    hub = make_hub(message(1))
    hub.current()
    stream = stream_board(hub, StreamOptions(retry_ms=1000, heartbeat_seconds=5, coalesce_seconds=0), None)
    take(stream, 2)
    for version in (2, 3, 4):  # a burst while the viewer was busy elsewhere
        hub.offer(Frame.from_message(message(version)))
    assert next(stream) == hub.latest.sse  # type: ignore[union-attr]  # straight to 4
    waiter = gevent.spawn(next, stream)
    gevent.sleep(0.01)
    hub.offer(Frame.from_message(message(9)))
    assert waiter.get(timeout=1) == Frame.from_message(message(9)).sse
    stream.close()


def test_coalescing_spaces_frames_but_delivers_the_last() -> None:
    hub = make_hub(message(1))
    hub.current()
    stream = stream_board(hub, StreamOptions(retry_ms=1000, heartbeat_seconds=5, coalesce_seconds=0.2), None)
    take(stream, 2)
    hub.offer(Frame.from_message(message(2)))
    started = gevent.get_hub().loop.now()
    waiter = gevent.spawn(next, stream)
    gevent.sleep(0.05)
    hub.offer(Frame.from_message(message(3)))
    assert waiter.get(timeout=2) == Frame.from_message(message(3)).sse
    assert gevent.get_hub().loop.now() - started >= 0.15
    stream.close()


def test_over_the_cap_and_while_draining_a_viewer_is_sent_away_with_a_retry_hint() -> None:
    hub = make_hub(message(1), max_viewers=1)
    hub.current()
    first = stream_board(hub, FAST, None)
    take(first, 2)
    refused = list(stream_board(hub, FAST, None))
    assert len(refused) == 1
    assert refused[0].startswith(b"retry: ")
    assert int(refused[0].split()[1]) > FAST.retry_ms
    waiter = gevent.spawn(list, first)
    gevent.sleep(0.01)
    hub.drain()
    rest = waiter.get(timeout=1)
    assert rest[-1].startswith(b"retry: ")
    assert hub.viewers == 0
    assert next(stream_board(hub, FAST, None)).startswith(b"retry: ")
    assert hub.stats["refused"] == 2


@pytest.mark.parametrize(
    ("header", "parsed"), [("42", 42), (" 42 ", 42), ("", None), ("x", None), ("-1", None), (None, None)]
)
def test_last_event_id_parsing(header: str | None, parsed: int | None) -> None:
    assert parse_last_event_id(header) == parsed


def test_one_address_may_hold_only_so_many_streams() -> None:
    hub = BoardHub(None, "unused", Board(message(1)).load, max_viewers=10, max_viewers_per_ip=2)  # type: ignore[arg-type]
    hub.current()
    first, second = (
        stream_board(hub, FAST, None, client_ip="10.0.0.1"),
        stream_board(hub, FAST, None, client_ip="10.0.0.1"),
    )
    take(first, 2)
    take(second, 2)
    assert next(stream_board(hub, FAST, None, client_ip="10.0.0.1")).startswith(b"retry: ")  # refused
    neighbour = stream_board(hub, FAST, None, client_ip="10.0.0.2")
    assert take(neighbour, 2)[1] == hub.latest.sse  # type: ignore[union-attr]
    first.close()
    third = stream_board(hub, FAST, None, client_ip="10.0.0.1")
    assert take(third, 2)[1] == hub.latest.sse  # type: ignore[union-attr]
    for stream in (second, neighbour, third):
        stream.close()
    assert hub.viewers == 0
    assert hub._viewers_by_ip == {}
