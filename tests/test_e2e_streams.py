"""BOARD_TRANSPORT=streams under gunicorn with gevent: board workers follow the boards' streams
(XREAD BLOCK from the last entry seen) on one connection each, and resume where they were."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from tests.conftest import auth
from tests.private_servers import PrivateRedis
from tests.servers import GunicornServer
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e

ADMIN = auth("ops", role="admin")
made = itertools.count()


@pytest.fixture
def start(base_env: dict[str, str], migrated: None) -> Iterator[Callable[..., GunicornServer]]:
    servers: list[GunicornServer] = []

    def launch(module: str, workers: int = 1, **overrides: str) -> GunicornServer:
        env = {**base_env, "BOARD_TRANSPORT": "streams", **overrides}
        servers.append(GunicornServer(module, env, workers=workers).start())
        return servers[-1]

    yield launch
    for server in servers:
        server.stop()


def create_board(increment: GunicornServer, board_name: str) -> str:
    board_id = f"{board_name}-s{next(made)}"
    response = requests.put(f"{increment.url}/admin/boards/{board_id}", json={"topN": 5}, headers=ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return board_id


def post(increment: GunicornServer, board_id: str, user: str, score: int) -> None:
    response = requests.post(
        f"{increment.url}/boards/{board_id}/score", json={"score": score}, headers=auth(user), timeout=30
    )
    assert response.status_code == 200, response.text


def version(client: redis.Redis, board_id: str) -> int:
    return int(client.get(BoardKeys.for_board(board_id).version) or 0)


def stats(board: GunicornServer) -> dict[str, Any]:
    response = requests.get(f"{board.url}/stats", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def hub_connections(client: redis.Redis, pid: int) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("name") == f"board-hub-{pid}"]


def test_one_connection_per_worker_follows_every_board_whatever_the_viewers(
    start: Callable[..., GunicornServer], board_name: str, redis_conn: redis.Redis
) -> None:
    increment = start("wsgi_increment")
    board = start("wsgi_board", workers=2)
    ids = [create_board(increment, board_name) for _ in range(5)]
    for board_id in ids:
        post(increment, board_id, "seed", 1)
    owners = [b for b in ids for _ in range(60)]
    swarm = Swarm(Viewer(f"{board.url}/boards/{b}/events") for b in owners)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=20)
    # Either worker may take a new connection; asked often enough, both answer.
    pids: set[int] = set()
    deadline = time.monotonic() + 15
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(stats(board)["pid"])
    assert len(pids) == 2
    for pid in pids:
        (connection,) = hub_connections(redis_conn, pid)
        assert connection["cmd"] == "xread"
        assert connection["sub"] == "0"  # no Pub/Sub
    for board_id in ids:
        post(increment, board_id, "next", 2)
    finals = {b: version(redis_conn, b) for b in ids}
    assert swarm.wait_until(
        lambda: all(v.last_version == finals[b] for v, b in zip(swarm.viewers, owners, strict=True)), timeout=10
    )
    for viewer, board_id in zip(swarm.viewers, owners, strict=True):
        assert viewer.frames[-1].json["top"] == [["next", "2"], ["seed", "1"]], board_id
    swarm.close()


def test_a_killed_connection_during_a_burst_misses_no_update_and_reads_no_board_again(
    start: Callable[..., GunicornServer], board_name: str, redis_conn: redis.Redis
) -> None:
    increment = start("wsgi_increment", workers=2)
    board = start("wsgi_board")
    ids = [create_board(increment, board_name) for _ in range(3)]
    for board_id in ids:
        post(increment, board_id, "seed", 1)
    owners = [b for b in ids for _ in range(30)]
    swarm = Swarm(Viewer(f"{board.url}/boards/{b}/events") for b in owners)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=20)
    before = stats(board)
    pid = before["pid"]
    killed = threading.Event()

    def kill_twice() -> None:
        for _ in range(2):
            time.sleep(0.4)
            for connection in hub_connections(redis_conn, pid):
                redis_conn.client_kill_filter(_id=connection["id"])
        killed.set()

    killer = threading.Thread(target=kill_twice)
    killer.start()
    jobs = [(ids[i % 3], f"b{i % 40:02d}", 1 + i % 7) for i in range(600)]
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(lambda job: post(increment, *job), jobs):
            swarm.pump(0)
    killer.join()
    assert killed.is_set()
    finals = {b: version(redis_conn, b) for b in ids}
    assert swarm.wait_until(
        lambda: all(v.last_version == finals[b] for v, b in zip(swarm.viewers, owners, strict=True)),
        timeout=max(5.0, deadline - time.monotonic()),
    )
    after = stats(board)
    assert after["reconnects"] >= before["reconnects"] + 2
    assert after["reads"] == before["reads"]  # resumed from the streams: no board read again
    assert after["viewers"] == 90
    for viewer in swarm.viewers:
        assert viewer.versions == sorted(set(viewer.versions))
    swarm.close()


def test_redis_restarted_empty_the_board_is_rebuilt_from_sql_and_the_log_says_gap(
    start: Callable[..., GunicornServer], board_name: str, engine: Engine, tmp_path: Path
) -> None:
    private = PrivateRedis(tmp_path).start()
    try:
        settings = {"REDIS_URL": private.url, "REDIS_TIMEOUT_SECONDS": "0.5", "SSE_HEARTBEAT_SECONDS": "0.5"}
        increment = start("wsgi_increment", **settings)
        board = start("wsgi_board", **settings)
        board_id = create_board(increment, board_name)
        for user, score in [("amy", 30), ("bob", 20)]:
            post(increment, board_id, user, score)
        client = private.client()
        (last_id,) = [entry_id for entry_id, _ in client.xrange(BoardKeys.for_board(board_id).changes)][-1:]
        client.close()
        viewers = Swarm(Viewer(f"{board.url}/boards/{board_id}/events") for _ in range(10))
        assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=10)

        private.stop()
        private.start()  # empty: no persistence
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        post(increment, board_id, "cid", 10)  # the first write after: the board is rebuilt from SQL
        client = private.client()
        assert viewers.wait_until(
            lambda: all(
                v.frames[-1].json["top"] == [["amy", "30"], ["bob", "20"], ["cid", "10"]] for v in viewers.viewers
            ),
            timeout=10,
        )
        assert viewers.viewers[0].last_version == version(client, board_id)
        back = Viewer(f"{board.url}/boards/{board_id}/changes", headers={"Last-Event-ID": last_id})
        feed = Swarm([back])
        assert feed.wait_until(lambda: len(back.frames) >= 2, timeout=10)
        assert back.frames[0].json == {"type": "gap"}
        assert json.loads(back.frames[1].data or "{}")["userId"] == "cid"
        client.close()
        viewers.close()
        feed.close()
    finally:
        private.stop()
