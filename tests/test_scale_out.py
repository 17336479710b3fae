"""Several instances of each service on one Redis and one PostgreSQL, as an operator scales out.

Two increment masters and two board masters (separate gunicorn processes on
their own ports, two workers each), writes spread over both increment
instances, viewers on both board instances. Also: the metrics move, and every
log line is JSON carrying the request id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from tests.conftest import auth, wait_until
from tests.servers import GunicornServer
from tests.sse_client import Swarm

pytestmark = pytest.mark.e2e

LOGGED = ["--access-logfile", "-"]


@pytest.fixture
def fleet(base_env: dict[str, str], engine: Engine) -> Iterator[dict[str, list[GunicornServer]]]:
    servers = {
        "increment": [GunicornServer("wsgi_increment", base_env, workers=2, extra_args=LOGGED) for _ in range(2)],
        # Pub/Sub, whose subscriptions the test counts (test_e2e_streams.py: streams).
        "board": [
            GunicornServer("wsgi_board", {**base_env, "BOARD_TRANSPORT": "pubsub"}, workers=2, extra_args=LOGGED)
            for _ in range(2)
        ],
    }
    for group in servers.values():
        for server in group:
            server.start()
    yield servers
    for group in servers.values():
        for server in group:
            server.stop()


def test_two_of_each_service_serve_one_board(
    fleet: dict[str, list[GunicornServer]],
    engine: Engine,
    redis_conn: redis.Redis,
    board_name: str,
    base_env: dict[str, str],
) -> None:
    increments, boards = fleet["increment"], fleet["board"]
    viewers = [Swarm.connect(f"{board.url}/events", 50) for board in boards]
    for swarm in viewers:
        assert swarm.wait_until(lambda s=swarm: all(v.frames for v in s.viewers), timeout=15)
    before = {
        name: sum(s.metric(name, '{outcome="ok"}') for s in increments) for name in ["leaderboard_submissions_total"]
    }

    def submit(i: int) -> dict[str, Any]:
        server = increments[i % 2]
        headers = auth(f"fleet{i % 25:02d}") | {"X-Request-ID": f"scale-out-{i}"}
        answer = requests.post(f"{server.url}/score", json={"score": 1 + i % 97}, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Request-ID"] == f"scale-out-{i}"
        return answer.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(submit, range(300)))

    final = int(redis_conn.get(BoardKeys.for_board(board_name).version) or 0)
    for swarm in viewers:
        assert swarm.wait_until(lambda s=swarm: all(v.last_version == final for v in s.viewers), timeout=15)
    with engine.connect() as conn:
        sql_top = [
            [user, str(total)]
            for user, total in conn.execute(text("SELECT user_id, total FROM scores ORDER BY rank_key LIMIT 10"))
        ]
    for swarm in viewers:
        for viewer in swarm.viewers:
            assert viewer.frames[-1].json["top"] == sql_top
            assert viewer.versions == sorted(set(viewer.versions))
    # Each board worker holds exactly one subscription: 2 instances x 2 workers.
    channel = base_env["REDIS_CHANNEL"]
    assert redis_conn.pubsub_numsub(channel) == [(channel, 4)]

    # The metrics moved, on both instances of each service.
    accepted = [s.metric("leaderboard_submissions_total", '{outcome="ok"}') for s in increments]
    assert sum(accepted) - before["leaderboard_submissions_total"] == 300
    assert all(count >= 100 for count in accepted)
    assert all(s.metric("leaderboard_write_seconds_count") >= 100 for s in increments)
    # Submissions recorded together: every one counted in a batch, a script call per batch.
    assert all(s.metric("leaderboard_write_batch_size_sum") >= 100 for s in increments)
    assert all(s.metric("leaderboard_redis_script_seconds_count", '{mode="write"}') >= 1 for s in increments)
    for board in boards:
        assert board.metric("leaderboard_viewers") == 50
        # Each worker hands its count of frames written to the metric on its tick (about every second).
        assert wait_until(lambda b=board: b.metric("leaderboard_frames_sent_total") >= 50)
        assert board.metric("leaderboard_publish_to_send_seconds_count") >= 1
        assert "leaderboard_hub_reconnects_total" in requests.get(f"{board.url}/metrics", timeout=10).text
    for swarm in viewers:
        swarm.close()
    for board in boards:
        assert wait_until(lambda b=board: b.metric("leaderboard_streams_ended_total", '{reason="client_gone"}') == 50)

    # Every log line of every instance is JSON; access lines carry the request id.
    for server in increments:
        server.stop()
        lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
        access = [line for line in lines if line["logger"] == "gunicorn.access" and line["path"] == "/score"]
        assert len(access) >= 100
        assert all(line["request_id"].startswith("scale-out-") for line in access)
