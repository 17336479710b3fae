"""The Increment Service under gunicorn with gevent workers, as deployed."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from tests.conftest import auth
from tests.servers import GunicornServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_increment", base_env, workers=2).start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def board(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_board", base_env, workers=1).start()
    yield server
    assert server.stop() == 0, server.log()


def redis_top(client: redis.Redis, board_name: str) -> list[tuple[str, int]]:
    rows = client.zrange(BoardKeys.for_board(board_name).top, 0, -1, withscores=True)
    return [(member.split(":", 1)[1], -int(score)) for member, score in rows]


def sql_top(engine: Engine, limit: int) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT user_id, total FROM scores ORDER BY total DESC, reached_at, user_id LIMIT :n"), {"n": limit}
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_both_services_answer_health_and_readiness(increment: GunicornServer, board: GunicornServer) -> None:
    for server in (increment, board):
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok"}


def test_500_concurrent_posts_for_20_users_end_exact_in_sql_and_redis(
    increment: GunicornServer, engine: Engine, redis_conn: redis.Redis, board_name: str
) -> None:
    rng = random.Random()
    users = [f"player{i:02d}" for i in range(20)]
    jobs = [(rng.choice(users), rng.randint(1, 1000)) for _ in range(500)]
    tokens = {user: auth(user) for user in users}
    local = threading.local()

    def submit(job: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        user, score = job
        response = local.session.post(f"{increment.url}/score", json={"score": score}, headers=tokens[user], timeout=30)
        return user, response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(submit, jobs))

    assert [status for _, status, _ in results] == [200] * 500
    expected: dict[str, int] = defaultdict(int)
    for user, score in jobs:
        expected[user] += score
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_id, total FROM scores")).all()
    assert {user: total for user, total in rows} == expected
    # Each answer carried a distinct running total: no two requests saw the same row state.
    for user in expected:
        totals = [body["score"] for u, _, body in results if u == user]
        assert len(set(totals)) == len(totals)
        assert max(totals) == expected[user]
    assert redis_top(redis_conn, board_name) == sql_top(engine, 10)


def test_concurrent_retries_over_http_count_once(increment: GunicornServer, engine: Engine) -> None:
    headers = {**auth("retry-user"), "Idempotency-Key": "payment-42"}

    def submit(_: int) -> tuple[int, dict[str, Any], str | None]:
        response = requests.post(f"{increment.url}/score", json={"score": 9}, headers=headers, timeout=30)
        return response.status_code, response.json(), response.headers.get("Idempotent-Replayed")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(submit, range(20)))
    assert {(status, json.dumps(body)) for status, body, _ in results} == {
        (200, json.dumps({"status": "ok", "userId": "retry-user", "score": 9, "rank": 1, "improved": True}))
    }
    assert sum(1 for *_, replayed in results if replayed is None) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM scores WHERE user_id = 'retry-user'")).scalar_one() == 9


def _chunked_post(url: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/score")
    for name, value in {**headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}.items():
        conn.putheader(name, value)
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before reading everything
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


def test_chunked_bodies_are_read_and_limited(increment: GunicornServer, engine: Engine) -> None:
    status, body = _chunked_post(increment.url, [b'{"sco', b're": 4', b"2}"], auth("chunky"))
    assert (status, body["score"]) == (200, 42)
    status, body = _chunked_post(increment.url, [b'{"score": 1' + b"0" * 1000] * 8 + [b"}"], auth("chunky"))
    assert status == 413
    assert body["error"]["code"] == "body_too_large"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM scores WHERE user_id = 'chunky'")).scalar_one() == 42


def test_a_slow_query_does_not_stall_the_worker(base_env: dict[str, str], engine: Engine, migrated: None) -> None:
    """psycopg2 waits cooperatively: with one worker, a request blocked on a row lock
    in PostgreSQL does not hold up another user's request."""
    server = GunicornServer("wsgi_increment", base_env, workers=1).start()
    try:
        requests.post(f"{server.url}/score", json={"score": 1}, headers=auth("locked"), timeout=10)
        blocked: dict[str, Any] = {}
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT * FROM scores WHERE user_id = 'locked' FOR UPDATE"))

            def blocked_post() -> None:
                blocked["response"] = requests.post(
                    f"{server.url}/score", json={"score": 1}, headers=auth("locked"), timeout=30
                )

            thread = threading.Thread(target=blocked_post)
            thread.start()
            time.sleep(0.5)
            started = time.monotonic()
            free = requests.post(f"{server.url}/score", json={"score": 1}, headers=auth("free"), timeout=10)
            elapsed = time.monotonic() - started
            assert free.status_code == 200
            assert elapsed < 2.0, f"the free request waited {elapsed:.2f}s behind the locked one"
            assert "response" not in blocked  # still waiting on the lock
        thread.join(10)
        assert blocked["response"].json()["score"] == 2
    finally:
        server.stop()
