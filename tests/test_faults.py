"""Faults, for real: Redis and PostgreSQL of the tests' own, stopped and started under load.

The services run under gunicorn with gevent, as deployed, against a private
redis-server and a private PostgreSQL cluster, so the machine's shared
servers are never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from config.settings import normalize_database_url
from tests.conftest import auth, wait_until
from tests.load import Load
from tests.private_servers import PrivatePostgres, PrivateRedis
from tests.servers import GunicornServer, flask_db_upgrade
from tests.sse_client import Swarm

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    redis: PrivateRedis
    postgres: PrivatePostgres
    increment: GunicornServer
    board: GunicornServer
    engine: Engine
    board_name: str

    def sql_top(self, n: int = 10) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT user_id, total FROM scores WHERE board = :b ORDER BY rank_key LIMIT :n"),
                {"b": self.board_name, "n": n},
            ).all()
        return [(user, total) for user, total in rows]

    def redis_top(self) -> list[tuple[str, int]]:
        client = self.redis.client()
        try:
            rows = client.zrange(BoardKeys.for_board(self.board_name).top, 0, -1, withscores=True)
        finally:
            client.close()
        return [(member.split(":", 1)[1], -int(score)) for member, score in rows]

    def redis_version(self) -> int:
        client = self.redis.client()
        try:
            return int(client.get(BoardKeys.for_board(self.board_name).version) or 0)
        finally:
            client.close()

    def converged(self) -> bool:
        try:
            return self.redis_top() == self.sql_top()
        except Exception:
            return False

    def post(
        self, user: str, score: int, key: str | None = None, timeout: float = 10, board: str | None = None
    ) -> requests.Response:
        headers = auth(user) | ({"Idempotency-Key": key} if key else {})
        path = f"/boards/{board}/score" if board else "/score"
        return requests.post(f"{self.increment.url}{path}", json={"score": score}, headers=headers, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]) -> Iterator[Stack]:
    redis_server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    postgres = PrivatePostgres().init()
    env = {
        **base_env,
        "DATABASE_URL": postgres.url,
        "REDIS_URL": redis_server.url,
        "REDIS_TIMEOUT_SECONDS": "0.5",
        "DB_TIMEOUT_SECONDS": "2",
        "SSE_HEARTBEAT_SECONDS": "0.5",
        "SSE_RETRY_MS": "500",
    }
    flask_db_upgrade(env)
    increment = GunicornServer("wsgi_increment", env, workers=2).start()
    board = GunicornServer("wsgi_board", env, workers=1).start()
    engine = create_engine(normalize_database_url(postgres.url), pool_pre_ping=True)
    try:
        yield Stack(redis_server, postgres, increment, board, engine, env["LEADERBOARD_ID"])
    finally:
        increment.stop()
        board.stop()
        engine.dispose()
        redis_server.stop()
        postgres.destroy()


@pytest.fixture(autouse=True)
def servers_up(request: pytest.FixtureRequest) -> None:
    """Each test starts with both servers answering (a failed test may have left one down)."""
    if "stack" not in request.fixturenames:
        return
    stack: Stack = request.getfixturevalue("stack")
    if stack.redis.process is None or stack.redis.process.poll() is not None:
        stack.redis.start()
    if not (stack.postgres.data / "postmaster.pid").exists():
        stack.postgres.start()


def test_a_flushed_redis_is_rebuilt_from_sql_within_5_seconds_without_any_write(stack: Stack) -> None:
    for user, score in [("amy", 30), ("bob", 20), ("cid", 10)]:
        assert stack.post(user, score).status_code == 200
    viewers = Swarm.connect(f"{stack.board.url}/events", 10)
    assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=10)
    before = stack.redis_version()
    stack.redis.client().flushall()
    flushed = time.monotonic()
    assert wait_until(stack.converged, timeout=5), "Redis did not converge to SQL within 5 s"
    assert time.monotonic() - flushed < 5
    version = stack.redis_version()
    assert version > before
    assert viewers.wait_until(lambda: all(v.last_version == version for v in viewers.viewers), timeout=5)
    assert viewers.viewers[0].frames[-1].json["top"][:3] == [["amy", "30"], ["bob", "20"], ["cid", "10"]]
    viewers.close()


def test_scores_accepted_while_redis_is_unreachable_reach_the_board_when_it_answers_again(stack: Stack) -> None:
    assert stack.post("dan", 5).status_code == 200
    viewers = Swarm.connect(f"{stack.board.url}/events", 10)
    assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=10)
    stack.redis.pause()  # unreachable, data kept: a network partition
    try:
        started = time.monotonic()
        answers = [stack.post("dan", 1000), stack.post("eve", 2000)]
        assert [a.status_code for a in answers] == [200, 200]
        assert answers[1].json() == {"status": "ok", "userId": "eve", "score": 2000, "rank": 1, "improved": True}
        assert time.monotonic() - started < 5
        viewers.pump(1)
        assert not [v for v in viewers.viewers if v.closed]
    finally:
        stack.redis.resume()
    resumed = time.monotonic()
    assert wait_until(stack.converged, timeout=5), "Redis did not catch up with SQL within 5 s"
    assert time.monotonic() - resumed < 5
    assert stack.redis_top()[:2] == [("eve", 2000), ("dan", 1005)]
    version = stack.redis_version()
    assert viewers.wait_until(lambda: all(v.last_version == version for v in viewers.viewers), timeout=5)
    viewers.close()


def test_postgres_down_answers_503_quickly_changes_nothing_and_recovers_by_itself(stack: Stack) -> None:
    assert stack.post("fay", 7).status_code == 200
    top_before, version_before = stack.redis_top(), stack.redis_version()
    stack.postgres.stop()
    try:
        for _ in range(3):
            started = time.monotonic()
            answer = stack.post("fay", 1)
            assert time.monotonic() - started < 3, "a request hung past DB_TIMEOUT_SECONDS"
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "database_unavailable"
            assert answer.headers["Retry-After"] == "1"
        ready = requests.get(f"{stack.increment.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert "database" in ready.json()["error"]["message"]
        assert (stack.redis_top(), stack.redis_version()) == (top_before, version_before)
    finally:
        stack.postgres.start()
    assert wait_until(lambda: stack.post("fay", 1).status_code == 200, timeout=10), "no recovery without a restart"
    assert dict(stack.sql_top())["fay"] == 8


def test_a_postgres_restart_between_requests_costs_no_request(stack: Stack) -> None:
    """Pooled connections are pinged before use, so none that the restart killed is handed out."""
    with ThreadPoolExecutor(max_workers=40) as pool:  # fill both workers' pools
        assert all(status == 200 for status in pool.map(lambda i: stack.post(f"pool{i}", 1).status_code, range(200)))
    stack.postgres.stop()
    stack.postgres.start()
    statuses = [stack.post("gil", 1).status_code for _ in range(30)]
    assert statuses == [200] * 30, statuses
    assert dict(stack.sql_top(100))["gil"] == 30


def test_nothing_accepted_is_lost_or_counted_twice_when_redis_then_postgres_go_down_under_load(stack: Stack) -> None:
    users = [f"load{i:02d}" for i in range(30)]
    load = Load(stack, users)
    viewers = Swarm.connect(f"{stack.board.url}/events", 20)
    assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=10)
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(8)]
    for thread in writers:
        thread.start()

    def run_for(seconds: float) -> None:
        viewers.pump(seconds)

    run_for(2)
    stack.redis.stop()  # Redis crashes ...
    run_for(2)
    stack.redis.start()  # ... and comes back empty
    run_for(2)
    stack.postgres.stop()  # PostgreSQL crashes ...
    run_for(2)
    stack.postgres.start()  # ... and comes back
    run_for(3)
    load.stop.set()
    for thread in writers:
        thread.join(timeout=60)

    # Any submission still unacknowledged is retried now: its replay says whether it counted.
    for submission in load.submissions:
        load.submit_until_acked(submission, deadline=time.monotonic() + 30)
    assert all(s.acked for s in load.submissions)
    assert load.statuses.get(503, 0) + load.statuses.get("ConnectionError", 0) > 0, "the faults were not felt"

    expected: dict[str, int] = {}
    for submission in load.submissions:
        expected[submission.user] = expected.get(submission.user, 0) + submission.score
    with stack.engine.connect() as conn:
        totals = dict(
            conn.execute(text("SELECT user_id, total FROM scores WHERE user_id LIKE 'load%'")).all()  # type: ignore[arg-type]
        )
        keys = conn.execute(text("SELECT count(*) FROM idempotency_keys WHERE user_id LIKE 'load%'")).scalar_one()
    assert totals == expected, "a score was lost or counted twice"
    assert keys == len(load.submissions)

    assert wait_until(stack.converged, timeout=5), "the Redis top N is not the SQL top N"
    final = stack.redis_version()
    assert viewers.wait_until(lambda: all(v.last_version == final for v in viewers.viewers), timeout=10)
    sql_top = [[user, str(total)] for user, total in stack.sql_top()]
    for viewer in viewers.viewers:
        assert viewer.frames[-1].json["top"] == sql_top
        assert viewer.versions == sorted(set(viewer.versions))
    print(f"\n{len(load.submissions)} submissions, answers: {load.statuses}")
    viewers.close()


def test_without_keys_every_acknowledged_score_is_kept_when_redis_then_postgres_go_down_under_load(
    stack: Stack,
) -> None:
    """Group commit's path: many writers without keys, so submissions are recorded in batches."""
    batched_before = stack.increment.metric("leaderboard_write_batch_size_sum")
    batches_before = stack.increment.metric("leaderboard_write_batch_size_count")
    users = [f"bulk{i:02d}" for i in range(40)]
    load = Load(stack, users, keyed=False)
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(16)]
    for thread in writers:
        thread.start()
    time.sleep(2)
    stack.redis.stop()
    time.sleep(2)
    stack.redis.start()
    time.sleep(2)
    stack.postgres.stop()
    time.sleep(2)
    stack.postgres.start()
    time.sleep(3)
    load.stop.set()
    for thread in writers:
        thread.join(timeout=60)
    assert load.statuses.get(503, 0) + load.statuses.get("ConnectionError", 0) > 0, "the faults were not felt"

    with stack.engine.connect() as conn:
        totals = dict(
            conn.execute(text("SELECT user_id, total FROM scores WHERE user_id LIKE 'bulk%'")).all()  # type: ignore[arg-type]
        )
    for user in users:
        mine = [s for s in load.submissions if s.user == user]
        acked = [s for s in mine if s.acked]
        kept, sent = sum(s.score for s in acked), sum(s.score for s in mine)
        # Every 200 is in SQL; a failed one may have committed just before its connection broke.
        assert kept <= totals.get(user, 0) <= sent, user
        answered = [s.total for s in acked]
        assert len(set(answered)) == len(answered), f"{user}: two answers with one total"
        assert max(answered, default=0) <= totals.get(user, 0)

    assert wait_until(stack.converged, timeout=10), "the Redis top N is not the SQL top N"
    # Writes were recorded together (a batch of more than one), not one by one.
    batched = stack.increment.metric("leaderboard_write_batch_size_sum") - batched_before
    batches = stack.increment.metric("leaderboard_write_batch_size_count") - batches_before
    assert batched > batches > 0
    print(f"\n{len(load.submissions)} submissions in {batches:.0f} batches, answers: {load.statuses}")
