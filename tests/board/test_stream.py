"""BoardHub and one viewer's stream, in process (the e2e tests run them under gunicorn)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import gevent
import pytest

from app.board import hub as hub_module
from app.board.hub import BoardHub, Frame
from app.board.sse import HEARTBEAT, StreamOptions, parse_last_event_id, stream_board
from app.leaderboard import Board, channel_for

BOARD = Board(id="a", top_n=10, channel=channel_for("a"))
OTHER = Board(id="b", top_n=10, channel=channel_for("b"))


def message(version: int, top: list[list[str]] | None = None, ts: str = "1.500000", **extra: object) -> str:
    body = {"type": "update", "updatedUser": "a", "newScore": 1, "top": top or [["a", "1"]], **extra}
    # ts as APPLY_SCRIPT writes it: six decimals, trailing zeros kept.
    return json.dumps(body)[:-1] + f', "version": {version}, "ts": {ts}}}'


class Latest:
    """What load_latest reads: the message a test last stored, per board."""

    def __init__(self, **latest: str | None) -> None:
        self.latest = latest

    def load(self, board: Board) -> str | None:
        return self.latest.get(board.id)


def make_hub(latest: str | None = None, max_viewers: int = 100, **options: object) -> BoardHub:
    return BoardHub(None, Latest(a=latest, b=message(1)).load, max_viewers=max_viewers, **options)  # type: ignore[arg-type]


FAST = StreamOptions(retry_ms=1500, heartbeat_seconds=0.05, coalesce_seconds=0)


def take(stream: Iterator[bytes], count: int) -> list[bytes]:
    return [next(stream) for _ in range(count)]


def open_stream(
    hub: BoardHub, options: StreamOptions = FAST, board: Board = BOARD, **kwargs: object
) -> Iterator[bytes]:
    hub.current(board)
    return stream_board(hub, hub.feed(board), options, kwargs.pop("last_event_id", None), **kwargs)  # type: ignore[arg-type]


def test_a_frame_is_encoded_once_as_sse_and_as_a_snapshot() -> None:
    frame = Frame.from_message(message(42, [["bob", "1500"], ["amy", "1400"]], ts="1796210793.052760"))
    assert frame.version == 42
    event_id, data, blank, end = frame.sse.decode().split("\n")
    assert (event_id, blank, end) == ("id: 42", "", "")
    # The frame's ts is the message's text, trailing zero and all.
    assert data == 'data: {"type":"update","top":[["bob","1500"],["amy","1400"]],"version":42,"ts":1796210793.052760}'
    assert frame.snapshot.endswith(b"}\n")  # like every other answer
    assert json.loads(frame.snapshot) == {
        "version": 42,
        "top": [{"rank": 1, "userId": "bob", "score": 1500}, {"rank": 2, "userId": "amy", "score": 1400}],
    }


def test_names_travel_in_frames_and_snapshots_as_text() -> None:
    frame = Frame.from_message(message(3, [["u1", "10"]], names={"u1": "<img src=x onerror=alert(1)>"}))
    data = json.loads(frame.sse.decode().split("\n")[1].removeprefix("data: "))
    assert data["names"] == {"u1": "<img src=x onerror=alert(1)>"}
    assert json.loads(frame.snapshot)["names"] == {"u1": "<img src=x onerror=alert(1)>"}


def test_the_hub_never_takes_an_older_board() -> None:
    hub = make_hub(message(5))
    assert hub.current(BOARD) is not None
    feed = hub.feed(BOARD)
    assert not hub.offer(feed, Frame.from_message(message(4)))
    assert not hub.offer(feed, Frame.from_message(message(5)))
    assert hub.offer(feed, Frame.from_message(message(6)))
    assert feed.latest is not None
    assert feed.latest.version == 6


def test_a_stream_starts_with_retry_then_the_board_then_heartbeats() -> None:
    hub = make_hub(message(7))
    stream = open_stream(hub)
    assert take(stream, 2) == [b"retry: 1500\n\n", hub.feed(BOARD).latest.sse]  # type: ignore[union-attr]
    assert take(stream, 2) == [HEARTBEAT, HEARTBEAT]
    assert hub.viewers == 1
    stream.close()
    assert hub.viewers == 0


@pytest.mark.parametrize(("last_event_id", "gets_snapshot"), [(7, False), (6, True), (8, True), (None, True)])
def test_last_event_id_equal_to_the_current_version_skips_the_snapshot(
    last_event_id: int | None, gets_snapshot: bool
) -> None:
    hub = make_hub(message(7))
    stream = open_stream(hub, last_event_id=last_event_id)
    first = take(stream, 2)
    assert (first[1] != HEARTBEAT) is gets_snapshot
    stream.close()


def test_a_viewer_gets_only_newer_boards_and_the_latest_wins() -> None:
    hub = make_hub(message(1))
    stream = open_stream(hub, StreamOptions(retry_ms=1000, heartbeat_seconds=5, coalesce_seconds=0))
    take(stream, 2)
    feed = hub.feed(BOARD)
    for version in (2, 3, 4):  # a burst while the viewer was busy elsewhere
        hub.offer(feed, Frame.from_message(message(version)))
    assert next(stream) == feed.latest.sse  # type: ignore[union-attr]  # straight to 4
    waiter = gevent.spawn(next, stream)
    gevent.sleep(0.01)
    hub.offer(feed, Frame.from_message(message(9)))
    assert waiter.get(timeout=1) == Frame.from_message(message(9)).sse
    stream.close()


def test_a_viewer_of_one_board_never_gets_a_frame_of_another() -> None:
    hub = make_hub(message(1))
    options = StreamOptions(retry_ms=1000, heartbeat_seconds=0.2, coalesce_seconds=0)
    stream = open_stream(hub, options)
    take(stream, 2)
    other = hub.feed(OTHER)
    for version in range(2, 30):
        hub.offer(other, Frame.from_message(message(version, [["b", str(version)]])))
    assert next(stream) == HEARTBEAT  # board b's burst woke nobody here
    hub.offer(hub.feed(BOARD), Frame.from_message(message(2)))
    assert next(stream) == Frame.from_message(message(2)).sse
    stream.close()


def test_coalescing_spaces_frames_but_delivers_the_last() -> None:
    hub = make_hub(message(1))
    stream = open_stream(hub, StreamOptions(retry_ms=1000, heartbeat_seconds=5, coalesce_seconds=0.2))
    take(stream, 2)
    feed = hub.feed(BOARD)
    hub.offer(feed, Frame.from_message(message(2)))
    started = gevent.get_hub().loop.now()
    waiter = gevent.spawn(next, stream)
    gevent.sleep(0.05)
    hub.offer(feed, Frame.from_message(message(3)))
    assert waiter.get(timeout=2) == Frame.from_message(message(3)).sse
    assert gevent.get_hub().loop.now() - started >= 0.15
    stream.close()


def test_over_the_cap_and_while_draining_a_viewer_is_sent_away_with_a_retry_hint() -> None:
    hub = make_hub(message(1), max_viewers=1)
    first = open_stream(hub)
    take(first, 2)
    refused = list(open_stream(hub))
    assert len(refused) == 1
    assert refused[0].startswith(b"retry: ")
    assert int(refused[0].split()[1]) > FAST.retry_ms
    waiter = gevent.spawn(list, first)
    gevent.sleep(0.01)
    hub.drain()
    rest = waiter.get(timeout=1)
    assert rest[-1].startswith(b"retry: ")
    assert hub.viewers == 0
    assert next(open_stream(hub)).startswith(b"retry: ")
    assert hub.stats["refused"] == 2


def test_a_deleted_board_ends_its_streams_with_a_retry_hint_and_no_other() -> None:
    hub = make_hub(message(1))
    doomed, bystander = open_stream(hub, board=BOARD), open_stream(hub, board=OTHER)
    take(doomed, 2)
    take(bystander, 2)
    waiter = gevent.spawn(list, doomed)
    gevent.sleep(0.01)
    hub._on_message(hub.feed(BOARD), b'{"type":"deleted","board":"a"}')
    rest = waiter.get(timeout=1)
    assert rest[-1].startswith(b"retry: ")
    assert next(bystander) == HEARTBEAT  # still streaming
    assert hub.viewers == 1
    bystander.close()


def test_a_board_nobody_watches_is_dropped_after_a_while_the_default_never(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = make_hub(message(1), keep=OTHER)
    stream = open_stream(hub)
    take(stream, 2)
    monkeypatch.setattr(hub_module, "IDLE_SECONDS", 0.05)
    hub.tick(time.monotonic() + 1)
    assert hub.boards == 2  # a viewer is watching
    stream.close()
    hub.tick(time.monotonic() + 1)
    assert hub.boards == 1  # only the kept board is left
    assert hub.current(BOARD) is not None  # asked again: served again
    assert hub.boards == 2


@pytest.mark.parametrize(
    ("header", "parsed"), [("42", 42), (" 42 ", 42), ("", None), ("x", None), ("-1", None), (None, None)]
)
def test_last_event_id_parsing(header: str | None, parsed: int | None) -> None:
    assert parse_last_event_id(header) == parsed


def test_one_address_may_hold_only_so_many_streams() -> None:
    hub = make_hub(message(1), max_viewers=10, max_viewers_per_ip=2)
    first, second = (open_stream(hub, client_ip="10.0.0.1"), open_stream(hub, client_ip="10.0.0.1"))
    take(first, 2)
    take(second, 2)
    assert next(open_stream(hub, client_ip="10.0.0.1")).startswith(b"retry: ")  # refused
    neighbour = open_stream(hub, client_ip="10.0.0.2")
    assert take(neighbour, 2)[1] == hub.feed(BOARD).latest.sse  # type: ignore[union-attr]
    first.close()
    third = open_stream(hub, client_ip="10.0.0.1")
    assert take(third, 2)[1] == hub.feed(BOARD).latest.sse  # type: ignore[union-attr]
    for stream in (second, neighbour, third):
        stream.close()
    assert hub.viewers == 0
    assert hub._viewers_by_ip == {}
