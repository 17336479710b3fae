"""Boards with resets under gunicorn with gevent, two instances of each service, in real time.

A cron board that resets every 10 seconds (`* * * * * */10`, seconds last) is
watched across its boundaries with nobody submitting, and written to by
hundreds of submissions racing a boundary.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

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
    board_id = f"{board_name}-s{next(made)}"
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


def test_submissions_racing_a_boundary_each_count_in_exactly_the_period_they_were_written_in(
    instances: dict[str, list[GunicornServer]], board_name: str, engine: Engine
) -> None:
    """Hundreds of +1s in the last and first 200 ms of a period, over both increment instances:
    each counts in one period, the one its answer names and its write time falls in; the ended
    period reads the same a minute later, while the new one goes on taking scores."""
    board_id = new_board(instances, board_name, reset=EVERY_10_SECONDS, topN=10)
    current = period_at(EVERY_10_SECONDS, "UTC", now())
    assert current is not None
    if (current.end - now()).total_seconds() < 2:  # room to aim at the next boundary
        current = period_at(EVERY_10_SECONDS, "UTC", current.end)
        assert current is not None
    boundary = current.end
    users = [f"racer{i:02d}" for i in range(40)]
    tokens = {user: auth(user) for user in users}
    answers: list[tuple[str, str]] = []
    lock = threading.Lock()
    sleep_until(boundary - timedelta(milliseconds=200))

    def post(index: int) -> None:
        user = users[index % len(users)]
        increment = instances["increment"][index % 2]
        response = requests.post(
            f"{increment.url}/boards/{board_id}/score", json={"score": 1}, headers=tokens[user], timeout=30
        )
        assert response.status_code == 200, response.text
        with lock:
            answers.append((user, response.json()["period"]))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = []
        index = 0
        while time.monotonic() - started < 0.4:  # 200 ms either side of the boundary
            futures += [pool.submit(post, index + i) for i in range(8)]
            index += 8
            time.sleep(0.004)
        for future in futures:
            future.result()
    old, new = current.id, period_at(EVERY_10_SECONDS, "UTC", boundary)
    assert new is not None
    counted = Counter(period for _, period in answers)
    assert set(counted) == {old, new.id}, counted
    assert counted[old] >= 50, counted  # the race was a race
    assert counted[new.id] >= 50, counted

    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT period, user_id, total, reached_at FROM scores WHERE board = :b"), {"b": board_id}
        ).all()
    in_sql = {(period, user): total for period, user, total, _ in rows}
    answered = Counter((period, user) for user, period in answers)
    assert in_sql == dict(answered), "a submission counted in another period than it answered"
    for period, _, _, reached_at in rows:  # each row's last write is inside its period, by the database's clock
        found = period_at(EVERY_10_SECONDS, "UTC", reached_at)
        assert found is not None
        assert found.id == period

    board = instances["board"][0]
    ended_url = f"{board.url}/boards/{board_id}/leaderboard"

    def ended() -> tuple[Any, Any]:
        top = requests.get(ended_url, params={"period": old}, timeout=10).json()
        page = requests.get(ended_url, params={"period": old, "offset": 0, "limit": 100}, timeout=10).json()
        return top, page

    first = ended()
    assert first[1]["count"] == len({user for (period, user) in in_sql if period == old})
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
