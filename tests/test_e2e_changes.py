"""The change log under gunicorn with gevent, as deployed: every accepted change once, the live
feed with Last-Event-ID replay and gaps, and the consumer group reader surviving SIGKILL."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from tests.conftest import auth, wait_until
from tests.servers import GunicornServer, rss_kb, service_env
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
ADMIN = auth("ops", role="admin")
made = itertools.count()


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_increment", {**base_env, "CHANGES_RETAIN": "3000"}, workers=2).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def board(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_board", {**base_env, "SSE_HEARTBEAT_SECONDS": "1"}, workers=1).start()
    yield server
    server.stop()


@pytest.fixture
def new_board(increment: GunicornServer, board_name: str) -> Any:
    def create(**settings: Any) -> str:
        board_id = f"{board_name}-c{next(made)}"
        response = requests.put(f"{increment.url}/admin/boards/{board_id}", json=settings, headers=ADMIN, timeout=10)
        assert response.status_code == 201, response.text
        return board_id

    return create


def logged(client: redis.Redis, board_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = client.xrange(BoardKeys.for_board(board_id).changes)
    return [(entry_id, json.loads(fields["data"])) for entry_id, fields in rows]


def post_all(increment: GunicornServer, jobs: list[tuple[str, str, int]], threads: int = 64) -> list[dict[str, Any]]:
    tokens = {user: auth(user) for _, user, _ in jobs}

    def post(job: tuple[str, str, int]) -> dict[str, Any]:
        board_id, user, score = job
        response = requests.post(
            f"{increment.url}/boards/{board_id}/score", json={"score": score}, headers=tokens[user], timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(post, jobs))


def test_2000_concurrent_submissions_over_3_boards_each_change_logged_once_in_order_as_sql_has_it(
    increment: GunicornServer, new_board: Any, engine: Engine, redis_conn: redis.Redis
) -> None:
    boards = {
        new_board(topN=10): "incr",
        new_board(topN=5, operator="best", order="asc"): "best",
        new_board(topN=10, operator="set"): "set",
    }
    rng = random.Random(5)
    jobs = [(b, f"u{rng.randrange(25):02d}", rng.randint(1, 10_000)) for b in boards for _ in range(667)]
    rng.shuffle(jobs)
    answers = post_all(increment, jobs)

    for board_id, operator in boards.items():
        entries = logged(redis_conn, board_id)
        ids = [entry_id for entry_id, _ in entries]
        assert len(ids) == len(set(ids))
        mine = [(job, answer) for job, answer in zip(jobs, answers, strict=True) if job[0] == board_id]
        improved = [answer for _, answer in mine if answer["improved"]]
        # Exactly the accepted changes: one entry each.
        assert len(entries) == len(improved), operator
        per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, entry in entries:
            assert entry["type"] == "score"
            assert entry["board"] == board_id
            per_user[entry["userId"]].append(entry)
        with engine.connect() as conn:
            totals = dict(
                conn.execute(text("SELECT user_id, total FROM scores WHERE board = :b"), {"b": board_id}).all()
            )
        assert set(per_user) == set(totals)
        answered = defaultdict(list)
        for (_, user, _), answer in mine:
            if answer["improved"]:
                answered[user].append(answer["score"])
        for user, changes in per_user.items():
            # In commit order: each entry starts from the one before, and the last is SQL's value.
            assert changes[0]["previous"] is None, (operator, user)
            for before, after in itertools.pairwise(changes):
                assert after["previous"] == before["score"], (operator, user)
            assert changes[-1]["score"] == totals[user], (operator, user)
            assert sorted(change["score"] for change in changes) == sorted(answered[user])
            if operator == "best":  # lower is better: each change an improvement
                assert all(b["score"] < a["score"] for a, b in itertools.pairwise(changes))
        # The board version each entry carries only goes up (a fill from SQL may come after the last).
        versions = [entry["version"] for _, entry in entries]
        assert versions == sorted(versions)
        assert 0 < versions[-1] <= int(redis_conn.get(BoardKeys.for_board(board_id).version) or 0)


def test_a_feed_viewer_away_for_10_s_resumes_with_last_event_id_and_gets_exactly_what_it_missed(
    increment: GunicornServer, board: GunicornServer, new_board: Any, redis_conn: redis.Redis
) -> None:
    board_id = new_board()
    url = f"{board.url}/boards/{board_id}/changes"
    viewer = Viewer(url)
    swarm = Swarm([viewer])
    assert swarm.wait_until(lambda: viewer.status == 200 and bool(viewer.comments or viewer.events), timeout=10)
    post_all(increment, [(board_id, "early", 5)])
    assert swarm.wait_until(lambda: len(viewer.frames) == 1, timeout=10)
    first = viewer.frames[0]
    assert (first.json["userId"], first.json["score"], first.json["previous"]) == ("early", 5, None)
    viewer.close()

    started = time.monotonic()
    rng = random.Random(9)
    jobs = [(board_id, f"p{i % 50:02d}", rng.randint(1, 100)) for i in range(500)]
    post_all(increment, jobs, threads=16)
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))

    back = Viewer(url, headers={"Last-Event-ID": str(first.id)})
    swarm = Swarm([back])
    assert swarm.wait_until(lambda: len(back.frames) >= 500, timeout=20)
    swarm.pump(0.5)
    expected = logged(redis_conn, board_id)[1:]
    assert len(expected) == 500
    assert [(f.id, f.json) for f in back.frames] == [(entry_id, entry) for entry_id, entry in expected]
    assert back.frames[0].json.get("type") == "score"
    # And on, live.
    post_all(increment, [(board_id, "late", 7)])
    assert swarm.wait_until(lambda: len(back.frames) == 501, timeout=10)
    assert back.frames[-1].json["userId"] == "late"
    back.close()


def test_a_viewer_whose_entry_is_no_longer_kept_gets_a_gap_then_the_oldest_kept(
    increment: GunicornServer, board: GunicornServer, new_board: Any, redis_conn: redis.Redis
) -> None:
    board_id = new_board()
    post_all(increment, [(board_id, "first", 1)])
    ((first_id, _),) = logged(redis_conn, board_id)
    # CHANGES_RETAIN is 3000 on this service: 3,500 more push the first one out.
    post_all(increment, [(board_id, f"q{i % 100:02d}", 1) for i in range(3500)])
    kept = logged(redis_conn, board_id)
    assert kept[0][0] != first_id
    assert len(kept) < 3501
    viewer = Viewer(f"{board.url}/boards/{board_id}/changes", headers={"Last-Event-ID": first_id})
    swarm = Swarm([viewer])
    assert swarm.wait_until(lambda: len(viewer.frames) >= 1 + len(kept), timeout=20)
    assert viewer.frames[0].json == {"type": "gap"}
    assert viewer.frames[0].id is None
    assert [f.id for f in viewer.frames[1:]] == [entry_id for entry_id, _ in kept]
    viewer.close()


def test_the_feed_of_an_unknown_board_is_a_404_and_the_default_boards_is_at_changes(
    increment: GunicornServer, board: GunicornServer, board_name: str, redis_conn: redis.Redis
) -> None:
    response = requests.get(f"{board.url}/boards/nope/changes", timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "board_not_found"
    viewer = Viewer(f"{board.url}/changes")
    swarm = Swarm([viewer])
    assert swarm.wait_until(lambda: viewer.status == 200, timeout=10)
    assert viewer.response_headers["content-type"].startswith("text/event-stream")
    assert viewer.response_headers["x-accel-buffering"] == "no"
    swarm.pump(0.3)
    response = requests.post(f"{increment.url}/score", json={"score": 3}, headers=auth("dflt"), timeout=10)
    assert response.status_code == 200
    assert swarm.wait_until(lambda: len(viewer.frames) == 1, timeout=10)
    assert (viewer.frames[0].json["board"], viewer.frames[0].json["userId"]) == (board_name, "dflt")
    # Heartbeats go on while nothing changes (SSE_HEARTBEAT_SECONDS=1 here).
    comments = len(viewer.comments)
    swarm.pump(2.5)
    assert len(viewer.comments) >= comments + 2
    viewer.close()


# -- the consumer group reader ------------------------------------------------


def follow(env: dict[str, str], board_id: str, group: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "flask", "--app", "wsgi_board", "changes", "follow"]
    command += ["--board", board_id, "--group", group, "--consumer", "reader-1", *extra]
    return subprocess.Popen(
        command, cwd=ROOT, env=service_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_consumer_group_reader_killed_mid_batch_and_started_again_loses_nothing(
    increment: GunicornServer, new_board: Any, base_env: dict[str, str], redis_conn: redis.Redis
) -> None:
    board_id = new_board()
    post_all(increment, [(board_id, f"r{i % 30:02d}", 1) for i in range(600)], threads=16)
    everything = [entry_id for entry_id, _ in logged(redis_conn, board_id)]
    assert len(everything) == 600

    reader = follow(base_env, board_id, "audit", "--batch", "50")
    assert reader.stdout is not None
    seen = [json.loads(reader.stdout.readline())["id"] for _ in range(120)]
    os.kill(reader.pid, signal.SIGKILL)  # mid-batch: some handed on, not yet acknowledged
    reader.wait(timeout=10)
    # Lines it printed (and may have acknowledged) after the 120th are still in the pipe: they were seen too.
    seen += [json.loads(line)["id"] for line in reader.stdout.read().splitlines()]
    reader.stdout.close()
    assert reader.stderr is not None
    reader.stderr.close()
    group = next(g for g in redis_conn.xinfo_groups(BoardKeys.for_board(board_id).changes) if g["name"] == "audit")
    unacknowledged = int(group["pending"])

    post_all(increment, [(board_id, "after", 1)])
    everything.append(logged(redis_conn, board_id)[-1][0])
    again = follow(base_env, board_id, "audit", "--stop-when-idle", "2")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    rest = [json.loads(line)["id"] for line in out.splitlines()]

    assert set(seen) | set(rest) == set(everything)  # nothing lost
    twice = set(seen) & set(rest)
    assert len(twice) <= unacknowledged  # at most what was handed on and not acknowledged
    assert rest == sorted(rest, key=lambda i: tuple(map(int, i.split("-"))))
    lines = [json.loads(line) for line in out.splitlines()]
    assert all(line["type"] == "score" and line["board"] == board_id for line in lines)
    assert wait_until(
        lambda: (
            next(g for g in redis_conn.xinfo_groups(BoardKeys.for_board(board_id).changes) if g["name"] == "audit")[
                "pending"
            ]
            == 0
        )
    )


# -- caps, drain and slow readers, as for /events -----------------------------


def test_over_the_cap_a_feed_viewer_is_told_to_come_back_and_sigterm_ends_every_feed_with_a_hint(
    base_env: dict[str, str], migrated: None
) -> None:
    board = GunicornServer("wsgi_board", {**base_env, "SSE_MAX_VIEWERS": "3"}, workers=1).start()
    try:
        admitted = Swarm(
            [Viewer(f"{board.url}/events"), Viewer(f"{board.url}/changes"), Viewer(f"{board.url}/changes")]
        )
        assert admitted.wait_until(lambda: all(v.status == 200 and v.events for v in admitted.viewers), timeout=10)
        extra = Viewer(f"{board.url}/changes")
        refused = Swarm([extra])
        assert refused.wait_until(lambda: bool(extra.events), timeout=5)
        refused.pump(0.2)
        assert [event.retry is not None and event.retry > 2000 for event in extra.events] == [True]
        extra.close()
        assert board.process is not None
        board.process.send_signal(signal.SIGTERM)
        assert admitted.wait_until(lambda: not admitted.open, timeout=15)
        for viewer in admitted.viewers:
            assert viewer.events[-1].retry is not None, "a stream ended without a retry hint"
        admitted.close()
    finally:
        board.stop()


def test_a_feed_reader_that_stops_reading_is_dropped_and_the_worker_holds_no_backlog(
    base_env: dict[str, str], migrated: None, new_board: Any, increment: GunicornServer, redis_conn: redis.Redis
) -> None:
    board_id = new_board()
    board = GunicornServer("wsgi_board", {**base_env, "SSE_WRITE_TIMEOUT_SECONDS": "1"}, workers=1).start()
    try:
        post_all(increment, [(board_id, "seed", 1)])
        # Some 9 MB of entries already in the log (arranged directly, as a long day of changes would).
        key = BoardKeys.for_board(board_id).changes
        entry = json.dumps({"type": "score", "board": board_id, "userId": "x" * 250, "score": 1})
        for _ in range(30):
            pipe = redis_conn.pipeline(transaction=False)
            for _ in range(1000):
                pipe.xadd(key, {"data": entry})
            pipe.execute()
        url = f"{board.url}/boards/{board_id}/changes"
        live = Viewer(url)
        readers = Swarm([live])
        assert readers.wait_until(lambda: live.status == 200, timeout=10)
        worker = requests.get(f"{board.url}/stats", headers=ADMIN, timeout=10).json()["pid"]
        rss_before = rss_kb(worker)
        stuck = Viewer(url, headers={"Last-Event-ID": "0-1"}, receive_buffer=4096)  # replay all, never read
        time.sleep(0.5)
        for i in range(5):  # live changes keep reaching the reading viewer meanwhile
            post_all(increment, [(board_id, f"live{i}", 1)])
            assert readers.wait_until(lambda n=i: len(live.frames) == n + 1, timeout=2)
            time.sleep(0.5)
        assert wait_until(lambda: board.metric("leaderboard_streams_ended_total", '{reason="dropped"}') == 1, 10)
        stuck.sock.setblocking(True)
        stuck.sock.settimeout(10)
        received = 0
        while chunk := stuck.sock.recv(1 << 20):
            received += len(chunk)
        assert received < 8_000_000  # the server closed it long before the replay's end
        assert rss_kb(worker) - rss_before < 30_000, "the worker's memory grew with the stuck reader"
        assert requests.get(f"{board.url}/stats", headers=ADMIN, timeout=10).json()["viewers"] == 1
        stuck.close()
        readers.close()
    finally:
        board.stop()
