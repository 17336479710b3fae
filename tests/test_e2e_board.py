"""The View Board Service under gunicorn with gevent workers, as deployed."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app.leaderboard import BoardKeys
from tests.conftest import auth, make_token, wait_until
from tests.private_servers import PrivateRedis
from tests.servers import GunicornServer, rss_kb
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_increment", base_env, workers=2).start()
    yield server
    server.stop()


@pytest.fixture
def start_board(base_env: dict[str, str], migrated: None) -> Iterator[Callable[..., GunicornServer]]:
    """Start a board service with settings overrides; stopped after the test."""
    servers: list[GunicornServer] = []

    def start(workers: int = 1, **overrides: str) -> GunicornServer:
        server = GunicornServer("wsgi_board", {**base_env, **overrides}, workers=workers).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def board(start_board: Callable[..., GunicornServer], engine: Any) -> GunicornServer:
    return start_board()


def post_score(increment: GunicornServer, user: str, score: int) -> dict[str, Any]:
    response = requests.post(f"{increment.url}/score", json={"score": score}, headers=auth(user), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def board_version(client: redis.Redis, board_name: str) -> int:
    return int(client.get(BoardKeys.for_board(board_name).version) or 0)


def stats(server: GunicornServer, **params: str) -> dict[str, Any]:
    """A worker's /stats, as an operator asks for them (an admin token)."""
    response = requests.get(f"{server.url}/stats", params=params, headers=auth("ops", role="admin"), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- the stream --------------------------------------------------------------


def test_a_new_viewer_gets_headers_a_retry_hint_and_the_board_at_once(
    board: GunicornServer, increment: GunicornServer
) -> None:
    post_score(increment, "alice", 30)
    post_score(increment, "bob", 20)
    swarm = Swarm([Viewer(f"{board.url}/events")])
    viewer = swarm.viewers[0]
    assert swarm.wait_until(lambda: len(viewer.frames) >= 1, timeout=5)
    assert viewer.status == 200
    assert viewer.response_headers["content-type"].startswith("text/event-stream")
    assert viewer.response_headers["cache-control"] == "no-cache"
    assert viewer.response_headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in viewer.response_headers
    assert viewer.events[0].retry == 2000
    frame = viewer.frames[0]
    assert frame.json["type"] == "update"
    assert frame.json["top"] == [["alice", "30"], ["bob", "20"]]
    assert int(frame.id) == frame.json["version"]
    assert isinstance(frame.json["ts"], float)
    swarm.close()


def test_a_post_reaches_200_viewers_and_a_burst_ends_everyone_at_the_final_version(
    board: GunicornServer, increment: GunicornServer, redis_conn: redis.Redis, board_name: str
) -> None:
    post_score(increment, "seed", 1)
    swarm = Swarm.connect(f"{board.url}/events", 200)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=15)

    post_score(increment, "first", 500)
    target = board_version(redis_conn, board_name)
    assert swarm.wait_until(lambda: all(v.last_version == target for v in swarm.viewers), timeout=10)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: post_score(increment, f"burst{i % 30}", 1 + i), range(100)))
    final = board_version(redis_conn, board_name)
    assert swarm.wait_until(lambda: all(v.last_version == final for v in swarm.viewers), timeout=15)
    for viewer in swarm.viewers:
        assert viewer.versions == sorted(set(viewer.versions)), "a version went backwards or repeated"
    final_top = swarm.viewers[0].frames[-1].json["top"]
    assert all(v.frames[-1].json["top"] == final_top for v in swarm.viewers)
    assert stats(board)["viewers"] == 200
    swarm.close()


def test_last_event_id_skips_a_board_the_viewer_already_has(
    board: GunicornServer, increment: GunicornServer, redis_conn: redis.Redis, board_name: str
) -> None:
    post_score(increment, "alice", 5)
    current = board_version(redis_conn, board_name)
    up_to_date = Viewer(f"{board.url}/events", {"Last-Event-ID": str(current)})
    behind = Viewer(f"{board.url}/events", {"Last-Event-ID": str(current - 1)})
    garbage = Viewer(f"{board.url}/events", {"Last-Event-ID": "not-a-number"})
    swarm = Swarm([up_to_date, behind, garbage])
    assert swarm.wait_until(lambda: bool(behind.frames and garbage.frames), timeout=5)
    swarm.pump(0.5)
    assert behind.versions == [current]
    assert garbage.versions == [current]
    assert up_to_date.frames == []
    assert up_to_date.events[0].retry == 2000
    post_score(increment, "alice", 1)
    assert swarm.wait_until(lambda: bool(up_to_date.frames), timeout=5)
    assert up_to_date.versions == [board_version(redis_conn, board_name)]
    swarm.close()


def test_heartbeats_keep_an_idle_stream_open(start_board: Callable[..., GunicornServer], engine: Any) -> None:
    board = start_board(SSE_HEARTBEAT_SECONDS="0.3")
    swarm = Swarm([Viewer(f"{board.url}/events")])
    viewer = swarm.viewers[0]
    assert swarm.wait_until(lambda: viewer.comments.count("ping") >= 3, timeout=5)
    assert not viewer.closed
    swarm.close()


def test_an_idle_board_keeps_its_subscription_and_heartbeats_come_every_15_seconds(
    start_board: Callable[..., GunicornServer], increment: GunicornServer, engine: Any
) -> None:
    """Nothing published for nearly three times the hub's dead-connection limit: the subscription
    holds (its PINGs are answered and heard), heartbeats keep the default pace, and the next score
    reaches the viewer at once."""
    from app.board.hub import DEAD_AFTER

    board = start_board()
    post_score(increment, "idle", 1)
    swarm = Swarm([Viewer(f"{board.url}/events")])
    viewer = swarm.viewers[0]
    assert swarm.wait_until(lambda: viewer.frames != [], timeout=5)
    pings: list[float] = []
    deadline = time.monotonic() + 2.7 * DEAD_AFTER
    while time.monotonic() < deadline:
        seen = len(viewer.comments)
        swarm.pump(0.05)
        pings += [time.monotonic()] * (len(viewer.comments) - seen)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert len(pings) >= 2
    assert all(13.5 <= gap <= 15.5 for gap in gaps), gaps
    assert stats(board)["reconnects"] == 0
    assert "lost Redis" not in board.log()
    started = time.monotonic()
    post_score(increment, "idle", 1)
    assert swarm.wait_until(lambda: len(viewer.frames) == 2, timeout=5)
    assert time.monotonic() - started < 0.5
    swarm.close()


def test_frames_are_coalesced_but_the_latest_always_arrives(
    start_board: Callable[..., GunicornServer], increment: GunicornServer, redis_conn: redis.Redis, board_name: str
) -> None:
    board = start_board(SSE_COALESCE_MS="1000")
    post_score(increment, "alice", 1)
    swarm = Swarm([Viewer(f"{board.url}/events")])
    viewer = swarm.viewers[0]
    assert swarm.wait_until(lambda: bool(viewer.frames), timeout=5)
    started = time.monotonic()
    for i in range(20):
        post_score(increment, "alice", i + 1)
    final = board_version(redis_conn, board_name)
    assert swarm.wait_until(lambda: viewer.last_version == final, timeout=5)
    # At most one frame a second: the burst took well under 3 s, so at most 3 more frames.
    assert len(viewer.frames) <= 1 + 1 + int(time.monotonic() - started)
    swarm.close()


# -- slow, stuck and departing viewers ---------------------------------------


def test_a_viewer_that_stops_reading_is_dropped_without_delaying_others(
    start_board: Callable[..., GunicornServer],
    redis_conn: redis.Redis,
    board_name: str,
    base_env: dict[str, str],
) -> None:
    # A default board of its own, so no other running service holds another TOP_N for it.
    big = {
        "LEADERBOARD_ID": f"{board_name}-big",
        "REDIS_CHANNEL": f"leaderboard:updated:{board_name}-big",
        "TOP_N": "1000",
    }
    board = start_board(SSE_WRITE_TIMEOUT_SECONDS="1", SSE_COALESCE_MS="0", **big)
    increment = GunicornServer("wsgi_increment", {**base_env, **big}, workers=2).start()
    try:
        _a_stuck_viewer_delays_no_one(board, increment, redis_conn, big["LEADERBOARD_ID"])
    finally:
        increment.stop()


def _a_stuck_viewer_delays_no_one(
    board: GunicornServer, increment: GunicornServer, redis_conn: redis.Redis, board_name: str
) -> None:
    # Big frames: 300 users with 100-character ids, about 35 KB a frame.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: post_score(increment, f"{i:03d}" + "x" * 97, 1), range(300)))
    stuck = Viewer(f"{board.url}/events", receive_buffer=4096)
    readers = Swarm.connect(f"{board.url}/events", 20)
    assert readers.wait_until(lambda: all(v.frames for v in readers.viewers), timeout=10)
    worker = stats(board)["pid"]
    rss_before = rss_kb(worker)

    # 200 changes, about 7 MB per viewer: far more than the stuck viewer's socket buffers hold.
    deadline_misses = 0
    for i in range(200):
        started = time.monotonic()
        post_score(increment, f"{i % 300:03d}" + "x" * 97, 1000 + i)
        final = board_version(redis_conn, board_name)
        if not readers.wait_until(lambda f=final: all(v.last_version == f for v in readers.viewers), timeout=2):
            deadline_misses += 1
        if time.monotonic() - started > 2:
            deadline_misses += 1
    assert deadline_misses == 0, "reading viewers waited behind the stuck one"

    # The stuck viewer was dropped: the server closed its end.
    stuck.sock.setblocking(True)
    stuck.sock.settimeout(10)
    received = 0
    while chunk := stuck.sock.recv(1 << 20):
        received += len(chunk)
    assert received < 7_000_000
    assert stats(board)["viewers"] == 20
    assert board.metric("leaderboard_streams_ended_total", '{reason="dropped"}') == 1
    assert board.metric("leaderboard_viewers") == 20
    assert rss_kb(worker) - rss_before < 30_000, "the worker's memory grew with the stuck viewer"
    readers.close()
    stuck.close()


def test_1000_connect_disconnect_cycles_leak_nothing(
    board: GunicornServer, increment: GunicornServer, redis_conn: redis.Redis
) -> None:
    post_score(increment, "alice", 1)
    warm = Swarm.connect(f"{board.url}/events", 5)
    assert warm.wait_until(lambda: all(v.frames for v in warm.viewers), timeout=5)
    warm.close()
    time.sleep(1.5)  # the keeper's first round (RECONCILE_EVERY_SECONDS) has opened its connection too
    before = stats(board, greenlets="1")
    worker = before["pid"]
    fds_before = len(os.listdir(f"/proc/{worker}/fd"))
    redis_before = _redis_clients(redis_conn, worker)

    for batch in range(20):
        swarm = Swarm.connect(f"{board.url}/events", 50)
        assert swarm.wait_until(lambda s=swarm: all(v.frames for v in s.viewers), timeout=10), f"batch {batch}"
        swarm.close()

    assert wait_until(lambda: stats(board)["viewers"] == 0, timeout=10)
    after = stats(board, greenlets="1")
    assert after["streams"] - before["streams"] == 1000
    assert after["greenlets"] <= before["greenlets"] + 2
    assert wait_until(lambda: len(os.listdir(f"/proc/{worker}/fd")) <= fds_before + 2, timeout=10)
    assert _redis_clients(redis_conn, worker) == redis_before


def _redis_clients(client: redis.Redis, pid: int) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").endswith(f"-{pid}"))


def test_one_pubsub_connection_per_worker_whatever_the_viewers(
    start_board: Callable[..., GunicornServer], base_env: dict[str, str], redis_conn: redis.Redis, engine: Any
) -> None:
    board = start_board(workers=2, BOARD_TRANSPORT="pubsub")  # streams: test_e2e_streams.py
    channel = base_env["REDIS_CHANNEL"]
    swarm = Swarm.connect(f"{board.url}/events", 300)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=15)
    # Both workers got viewers, and each holds exactly one subscription.
    pids = {stats(board)["pid"] for _ in range(20)}
    assert wait_until(lambda: redis_conn.pubsub_numsub(channel) == [(channel, 2)], timeout=10)
    for pid in pids:
        subscribed = [c for c in redis_conn.client_list() if c.get("name", "").endswith(f"-{pid}") and c["sub"] != "0"]
        assert [c["name"] for c in subscribed] == [f"board-hub-{pid}"]
    swarm.close()
    assert redis_conn.pubsub_numsub(channel) == [(channel, 2)]


# -- cap, drain, auth, CORS --------------------------------------------------


def test_over_the_cap_a_viewer_is_told_to_come_back(start_board: Callable[..., GunicornServer], engine: Any) -> None:
    board = start_board(SSE_MAX_VIEWERS="3")
    admitted = Swarm.connect(f"{board.url}/events", 3)
    assert admitted.wait_until(lambda: all(v.frames for v in admitted.viewers), timeout=5)
    extra = Swarm([Viewer(f"{board.url}/events")])
    viewer = extra.viewers[0]
    # The answer is complete at once (gunicorn may keep the connection for its keep-alive).
    assert extra.wait_until(lambda: bool(viewer.events), timeout=2)
    extra.pump(0.2)
    assert viewer.status == 200
    assert len(viewer.events) == 1
    assert viewer.events[0].retry is not None
    assert viewer.events[0].retry > 2000
    assert stats(board)["refused"] == 1
    extra.close()
    admitted.close()


def test_one_address_over_its_stream_cap_is_told_to_come_back(
    start_board: Callable[..., GunicornServer], engine: Any
) -> None:
    board = start_board(SSE_MAX_VIEWERS_PER_IP="2")
    admitted = Swarm.connect(f"{board.url}/events", 2)
    assert admitted.wait_until(lambda: all(v.frames for v in admitted.viewers), timeout=5)
    extra = Swarm([Viewer(f"{board.url}/events")])
    assert extra.wait_until(lambda: bool(extra.viewers[0].events), timeout=2)
    extra.pump(0.2)
    assert [e.retry is not None for e in extra.viewers[0].events] == [True]
    extra.close()
    admitted.viewers[0].close()
    assert wait_until(lambda: stats(board)["viewers"] == 1, timeout=5)
    again = Swarm([Viewer(f"{board.url}/events")])
    assert again.wait_until(lambda: bool(again.viewers[0].frames), timeout=5)
    admitted.close()
    again.close()


def test_sigterm_with_200_viewers_drains_fast_and_every_viewer_gets_a_retry_hint(
    start_board: Callable[..., GunicornServer], engine: Any
) -> None:
    board = start_board()
    swarm = Swarm.connect(f"{board.url}/events", 200)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=15)
    assert board.process is not None
    started = time.monotonic()
    board.process.send_signal(signal.SIGTERM)
    assert swarm.wait_until(lambda: not swarm.open, timeout=15)
    board.process.wait(timeout=20)
    elapsed = time.monotonic() - started
    assert elapsed < 6, f"took {elapsed:.1f}s; graceful_timeout is 20s"
    assert board.process.returncode == 0
    for viewer in swarm.viewers:
        assert viewer.events[-1].retry is not None, "the stream ended without a retry hint"
    swarm.close()


def test_with_auth_required_the_board_takes_a_header_or_a_cookie(
    start_board: Callable[..., GunicornServer], engine: Any
) -> None:
    board = start_board(BOARD_REQUIRE_AUTH="true")
    refused = requests.get(f"{board.url}/leaderboard", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_token"
    assert requests.get(f"{board.url}/leaderboard", headers=auth("viewer"), timeout=10).status_code == 200
    swarm = Swarm(
        [
            Viewer(f"{board.url}/events", {"Cookie": f"access_token_cookie={make_token('viewer')}"}),
            Viewer(f"{board.url}/events", auth("viewer")),
            Viewer(f"{board.url}/events"),
        ]
    )
    assert swarm.wait_until(lambda: all(v.status is not None for v in swarm.viewers), timeout=5)
    assert [v.status for v in swarm.viewers] == [200, 200, 401]
    swarm.close()


def test_cors_allows_only_the_listed_origins(start_board: Callable[..., GunicornServer], engine: Any) -> None:
    board = start_board(BOARD_CORS_ORIGINS="https://dash.example.com, https://ops.example.com")
    allowed = requests.get(f"{board.url}/leaderboard", headers={"Origin": "https://ops.example.com"}, timeout=10)
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    other = requests.get(f"{board.url}/leaderboard", headers={"Origin": "https://evil.example.com"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers


# -- snapshots and ranks -----------------------------------------------------


def test_snapshot_and_exact_ranks_outside_the_top_n(
    start_board: Callable[..., GunicornServer], base_env: dict[str, str], board_name: str, engine: Any
) -> None:
    # A default board of its own, so no other running service holds another TOP_N for it.
    three = {"LEADERBOARD_ID": f"{board_name}-three", "REDIS_CHANNEL": f"lb-three:{board_name}", "TOP_N": "3"}
    increment = GunicornServer("wsgi_increment", {**base_env, **three}, workers=1).start()
    try:
        board = start_board(**three)
        scores = {"u1": 50, "u2": 40, "u3": 30, "u4": 20, "u5": 10, "u6": 20}
        for user, score in scores.items():
            post_score(increment, user, score)
        snapshot = requests.get(f"{board.url}/leaderboard", timeout=10)
        body = snapshot.json()
        assert body["top"] == [
            {"rank": 1, "userId": "u1", "score": 50},
            {"rank": 2, "userId": "u2", "score": 40},
            {"rank": 3, "userId": "u3", "score": 30},
        ]
        assert snapshot.headers["ETag"] == f'"{body["version"]}"'
        again = requests.get(
            f"{board.url}/leaderboard", headers={"If-None-Match": snapshot.headers["ETag"]}, timeout=10
        )
        assert again.status_code == 304
        expected_ranks = {"u1": 1, "u2": 2, "u3": 3, "u4": 4, "u6": 5, "u5": 6}  # u4 reached 20 before u6
        for user, rank in expected_ranks.items():
            answer = requests.get(f"{board.url}/leaderboard/users/{user}", timeout=10)
            assert answer.json() == {"userId": user, "score": scores[user], "rank": rank}
        for unknown in ("nobody", "has space", "x" * 200):
            missing = requests.get(f"{board.url}/leaderboard/users/{unknown}", timeout=10)
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "user_not_found"
    finally:
        increment.stop()


# -- Redis really going away -------------------------------------------------


def test_viewers_stay_connected_through_a_redis_restart_and_get_the_fresh_board(
    tmp_path: Path, base_env: dict[str, str], engine: Any, migrated: None
) -> None:
    private = PrivateRedis(tmp_path).start()
    env = {**base_env, "REDIS_URL": private.url, "SSE_HEARTBEAT_SECONDS": "0.5"}
    increment = GunicornServer("wsgi_increment", env, workers=1).start()
    board = GunicornServer("wsgi_board", env, workers=1).start()
    try:
        post_score(increment, "alice", 10)
        swarm = Swarm.connect(f"{board.url}/events", 20)
        assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=10)
        before = swarm.viewers[0].last_version or 0

        private.stop()
        post_score(increment, "alice", 5)  # accepted into SQL while Redis is down
        pings = [len(v.comments) for v in swarm.viewers]
        swarm.pump(3)
        assert not [v for v in swarm.viewers if v.closed], "a viewer was disconnected during the outage"
        assert all(len(v.comments) > n for v, n in zip(swarm.viewers, pings, strict=True)), "heartbeats stopped"

        private.start()  # empty: it kept nothing
        back = time.monotonic()
        fresh = lambda: all(v.frames[-1].json["top"] == [["alice", "15"]] for v in swarm.viewers)  # noqa: E731
        assert swarm.wait_until(fresh, timeout=5), "viewers did not get the fresh board within 5 s"
        assert time.monotonic() - back < 5
        assert all(v.versions[-1] > before for v in swarm.viewers)
        assert all(v.versions == sorted(set(v.versions)) for v in swarm.viewers)
        assert board.metric("leaderboard_hub_reconnects_total") >= 1
        # Whichever service noticed first rebuilt the board from SQL.
        rebuilds = [server.metric("leaderboard_rebuilds_total", '{reason="missing"}') for server in (board, increment)]
        assert sum(rebuilds) >= 1
        swarm.close()
    finally:
        board.stop()
        increment.stop()
        private.stop()
