"""Boards with resets under gunicorn with gevent, two instances of each service, in real time.

A cron board that resets every 10 seconds (`* * * * * */10`, seconds last) is
watched across its boundaries with nobody submitting, and written to by
hundreds of submissions racing a boundary.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import channel_for
from app.leaderboard.seasons import period_at
from tests.conftest import auth
from tests.servers import GunicornServer
from tests.sse_client import Swarm

pytestmark = pytest.mark.e2e

ADMIN = auth("ops", role="admin")
EVERY_10_SECONDS = "* * * * * */10"
made = itertools.count()


@pytest.fixture(scope="module")
def instances(base_env: dict[str, str], migrated: None) -> Iterator[dict[str, list[GunicornServer]]]:
    """Two increment and two board instances on the same PostgreSQL and Redis."""
    env = {**base_env, "RATE_LIMIT_PER_USER": "off"}
    servers = {
        "increment": [GunicornServer("wsgi_increment", env, workers=1) for _ in range(2)],
        "board": [GunicornServer("wsgi_board", env, workers=2) for _ in range(2)],
    }
    started: list[GunicornServer] = []
    try:
        for server in itertools.chain(*servers.values()):
            started.append(server.start())
        yield servers
    finally:
        for server in started:
            server.stop()


def new_board(instances: dict[str, list[GunicornServer]], board_name: str, **settings: Any) -> str:
    board_id = f"{board_name}-season{next(made)}"
    url = f"{instances['increment'][0].url}/admin/boards/{board_id}"
    response = requests.put(url, json=settings, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return board_id


def now() -> datetime:
    """Now, naive UTC: the database runs on this machine's clock here."""
    return datetime.now(UTC).replace(tzinfo=None)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - now()).total_seconds()))


def period_of(frame: Any) -> str:
    return frame.json["period"]  # type: ignore[no-any-return]


def read_response(connection: socket.socket) -> tuple[int, Any]:
    """One HTTP/1.1 response with a Content-Length: its status and its JSON body."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        received = connection.recv(65536)
        assert received, f"the connection closed without an answer: {raw!r}"
        raw += received
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        received = connection.recv(65536)
        assert received, "the connection closed in the body"
        body += received
    return int(lines[0].split()[1]), json.loads(body)


def test_every_viewer_on_both_instances_gets_the_new_period_within_2s_with_one_switch_per_boundary(
    instances: dict[str, list[GunicornServer]], board_name: str, redis_conn: redis.Redis
) -> None:
    board_id = new_board(instances, board_name, reset=EVERY_10_SECONDS, topN=5)
    pubsub = redis_conn.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel_for(board_id))
    swarm = Swarm(
        viewer
        for board in instances["board"]
        for viewer in Swarm.connect(f"{board.url}/boards/{board_id}/events", 15).viewers
    )
    try:
        assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=10)
        lags = []
        for boundary in range(3):
            current = period_at(EVERY_10_SECONDS, "UTC", now())
            assert current is not None
            if (current.end - now()).total_seconds() > 1.5:  # someone scores in it; then nobody does
                increment = instances["increment"][boundary % 2]
                response = requests.post(
                    f"{increment.url}/boards/{board_id}/score",
                    json={"score": boundary + 1},
                    headers=auth(f"p{boundary}"),
                    timeout=10,
                )
                assert response.status_code == 200, response.text
                assert response.json()["period"] == current.id
            sleep_until(current.end)
            following = period_at(EVERY_10_SECONDS, "UTC", current.end)
            assert following is not None
            assert swarm.wait_until(
                lambda p=following.id: all(v.frames and period_of(v.frames[-1]) == p for v in swarm.viewers),
                timeout=4,
            ), f"not every viewer at {following.id}"
            lags.append((now() - current.end).total_seconds())
            for viewer in swarm.viewers:
                last = viewer.frames[-1].json
                assert last["top"] == []
                assert last["periodEnds"] == following.ends_iso("UTC")
        assert max(lags) <= 2.0, lags
        assert all(not v.closed for v in swarm.viewers)  # nobody reconnected
        for viewer in swarm.viewers:  # no frame of an earlier period after one of a later one
            periods = [period_of(frame) for frame in viewer.frames]
            assert periods == sorted(periods), periods
            versions = viewer.versions
            assert versions == sorted(versions)
    finally:
        swarm.close()
    messages = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5:  # everything buffered since the subscription
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            messages.append(json.loads(message["data"]))
            quiet_since = time.monotonic()
    pubsub.close()
    switches = Counter(m["period"] for m in messages if m["updatedUser"] is None)
    # Exactly one switch per boundary, from 4 processes' keepers (and no other publish of the empty board).
    assert len(switches) == 3, switches
    assert set(switches.values()) == {1}, switches


@pytest.mark.timeout(240)  # a minute of it is the minute after the reset
def test_submissions_racing_a_boundary_each_count_in_exactly_the_period_they_were_written_in(
    instances: dict[str, list[GunicornServer]], board_name: str, engine: Engine
) -> None:
    """Hundreds of +1s in the last and first 100 ms of a period, over both increment instances:
    each counts in one period, the one its answer names and its write time falls in; the ended
    period reads the same a minute later, while the new one goes on taking scores."""
    board_id = new_board(instances, board_name, reset=EVERY_10_SECONDS, topN=10)
    current = period_at(EVERY_10_SECONDS, "UTC", now())
    assert current is not None
    if (current.end - now()).total_seconds() < 2:  # room to aim at the next boundary
        current = period_at(EVERY_10_SECONDS, "UTC", current.end)
        assert current is not None
    boundary = current.end
    viewer = Swarm.connect(f"{instances['board'][1].url}/boards/{board_id}/events", 1)
    try:
        race(instances, board_id, engine, viewer, current, boundary)
    finally:
        viewer.close()


def race(
    instances: dict[str, list[GunicornServer]],
    board_id: str,
    engine: Engine,
    viewer: Swarm,
    current: Any,
    boundary: datetime,
) -> None:
    users = [f"racer{i:02d}" for i in range(40)]
    tokens = {user: auth(user) for user in users}
    answers: list[tuple[str, str]] = []
    timed: list[tuple[datetime, str]] = []  # sent, period
    assert viewer.wait_until(lambda: bool(viewer.viewers[0].frames), timeout=10)
    # Raw keep-alive connections, opened beforehand, with each request's bytes ready: a wave
    # is 150 sendall calls, a few milliseconds, so "the last 100 ms" is not the client's pace.
    # Three waves: 60 well before the boundary (the old period surely gets some), then 150 in
    # its last 100 ms and 150 in the first 100 ms of the next.
    waves = [(boundary - timedelta(milliseconds=300), 60)]
    waves += [(boundary - timedelta(milliseconds=80), 150), (boundary + timedelta(milliseconds=2), 150)]
    total = sum(size for _, size in waves)
    sleep_until(waves[0][0] - timedelta(milliseconds=600))  # connected just before (idle ones get closed)
    connections, requests_bytes = [], []
    try:
        for index in range(total):
            url = urlsplit(instances["increment"][index % 2].url)
            connections.append(socket.create_connection((url.hostname, url.port), timeout=30))
            body = b'{"score": 1}'
            head = (
                f"POST /boards/{board_id}/score HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: {tokens[users[index % len(users)]]['Authorization']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            requests_bytes.append(head.encode() + body)
        sent: list[datetime] = []
        for at, size in waves:
            sleep_until(at)
            for index in range(len(sent), len(sent) + size):
                sent.append(now())
                connections[index].sendall(requests_bytes[index])
        for index, connection in enumerate(connections):
            status, answer = read_response(connection)
            assert status == 200, answer
            answers.append((users[index % len(users)], answer["period"]))
            timed.append((sent[index], answer["period"]))
    finally:
        for connection in connections:
            connection.close()
    old, new = current.id, period_at(EVERY_10_SECONDS, "UTC", boundary)
    assert new is not None
    counted = Counter(period for _, period in answers)
    assert set(counted) == {old, new.id}, counted
    tenth = timedelta(milliseconds=100)
    last_100ms = sum(1 for at, _ in timed if boundary - tenth <= at < boundary)
    first_100ms = sum(1 for at, _ in timed if boundary <= at < boundary + tenth)
    print(f"racing: {counted}; sent in the last 100 ms {last_100ms}, in the first 100 ms {first_100ms}")
    assert last_100ms >= 100, last_100ms
    assert first_100ms >= 100, first_100ms
    # Sent after the boundary: written after it.
    assert all(period == new.id for at, period in timed if at >= boundary)

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT period, user_id, total, reached_at FROM scores WHERE board = :b"), {"b": board_id}
        ).all()
    in_sql = {(period, user): total for period, user, total, _ in rows}
    answered = Counter((period, user) for user, period in answers)
    assert in_sql == dict(answered), "a submission counted in another period than it answered"
    # Each row's last write is inside its period, by the database's clock: also a write that
    # waited on its row's lock (a concurrent batch held the same user) across the boundary.
    for period, _, _, reached_at in rows:
        found = period_at(EVERY_10_SECONDS, "UTC", reached_at)
        assert found is not None
        assert found.id == period, f"a row of {period} was written at {reached_at}"

    board = instances["board"][0]
    ended_url = f"{board.url}/boards/{board_id}/leaderboard"

    def ended() -> tuple[Any, Any]:
        top = requests.get(ended_url, params={"period": old}, timeout=10).json()
        page = requests.get(ended_url, params={"period": old, "offset": 0, "limit": 100}, timeout=10).json()
        return top, page

    first = ended()
    print(f"racing: ended read at {now()}", flush=True)
    assert first[1]["count"] == len({user for (period, user) in in_sql if period == old})
    # The live board showed the old period up to the switch: never more than it ended with. (Writes
    # committed in its last milliseconds whose Redis update came after the switch are in SQL only.)
    viewer.pump(1.0)
    live = [frame.json for frame in viewer.viewers[0].frames]
    assert [frame["period"] for frame in live] == sorted(frame["period"] for frame in live)
    assert live[-1]["period"] == new.id
    for frame in live:
        if frame["period"] == old:
            assert all(int(score) <= in_sql[old, user] for user, score in frame["top"]), frame
    with engine.connect() as conn:
        final_order = (
            conn.execute(
                text("SELECT user_id FROM scores WHERE board = :b AND period = :p ORDER BY rank_key"),
                {"b": board_id, "p": old},
            )
            .scalars()
            .all()
        )
    for user in final_order[::7]:  # a user's rank, and the window around them, in the ended period
        rank = final_order.index(user) + 1
        mine = requests.get(f"{board.url}/boards/{board_id}/users/{user}", params={"period": old}, timeout=10)
        assert mine.json()["rank"] == rank
        window = requests.get(ended_url, params={"period": old, "around": user, "limit": 5}, timeout=10).json()
        start = max(0, min(rank - 1 - 2, len(final_order) - 5))
        assert [e["userId"] for e in window["entries"]] == final_order[start : start + 5]
    late = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a minute of scores after the reset, none in the ended period
        increment = instances["increment"][late % 2]
        response = requests.post(
            f"{increment.url}/boards/{board_id}/score", json={"score": 1}, headers=tokens[users[late % 40]], timeout=30
        )
        assert response.status_code == 200, response.text
        assert response.json()["period"] != old
        late += 1
        time.sleep(0.25)
    print(f"racing: {late} scores in the minute after, at {now()}", flush=True)
    assert ended() == first
    periods = requests.get(f"{board.url}/boards/{board_id}/periods", params={"limit": 100}, timeout=10).json()
    listed = [one["id"] for one in periods["periods"]]
    assert listed == sorted(listed, reverse=True)
    assert old in listed
    assert new.id in listed
    assert periods["periods"][0]["current"]
    assert not any(one["current"] for one in periods["periods"][1:])
    by_id = {one["id"]: one for one in periods["periods"]}
    assert by_id[old]["top"] == first[0]["top"][:3]
