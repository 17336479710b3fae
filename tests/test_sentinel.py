"""Redis Sentinel, for real: a primary, its replica and three sentinels of the test's own.

Both services run under gunicorn with gevent with REDIS_URL=redis+sentinel://...;
the primary is killed (SIGKILL) under write load, after its replica was cut
off from it, so the replica that the sentinels promote lacks the last writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys
from app.ratelimit import key_prefix
from config.settings import normalize_database_url
from tests.conftest import auth, wait_until
from tests.load import Load
from tests.private_servers import PrivatePostgres, PrivateSentinels
from tests.servers import GunicornServer, flask_db_upgrade
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e

ADMIN = auth("ops", role="admin")
# Besides the default board: more than the keeper compares with SQL in one round by turns
# (app.keeper.SWEEP_PER_ROUND), so only its failover check gets them all right within 5 s.
BOARDS = [f"arena{i:02d}" for i in range(20)]


@dataclass
class SentinelStack:
    sentinels: PrivateSentinels
    postgres: PrivatePostgres
    increment: GunicornServer
    board: GunicornServer
    engine: Engine
    default_board: str

    def post(
        self, user: str, score: int, key: str | None = None, timeout: float = 10, board: str | None = None
    ) -> requests.Response:
        headers = auth(user) | ({"Idempotency-Key": key} if key else {})
        path = f"/boards/{board}/score" if board else "/score"
        return requests.post(f"{self.increment.url}{path}", json={"score": score}, headers=headers, timeout=timeout)

    def primary(self) -> redis.Redis:
        port = self.sentinels.primary_port()
        assert port is not None, "no sentinel answers"
        return redis.Redis(port=port, decode_responses=True)

    def board_id(self, board: str | None) -> str:
        return board or self.default_board

    def sql_top(self, board: str | None) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT user_id, total FROM scores WHERE board = :b ORDER BY rank_key LIMIT 10"),
                {"b": self.board_id(board)},
            ).all()
        return [(user, total) for user, total in rows]

    def redis_top(self, client: redis.Redis, board: str | None) -> list[tuple[str, int]]:
        rows = client.zrange(BoardKeys.for_board(self.board_id(board)).top, 0, -1, withscores=True)
        return [(member.split(":", 1)[1], -int(score)) for member, score in rows]

    def versions(self, client: redis.Redis) -> dict[str | None, int]:
        boards: list[str | None] = [None, *BOARDS]
        found = client.mget([BoardKeys.for_board(self.board_id(board)).version for board in boards])
        return {board: int(version or 0) for board, version in zip(boards, found, strict=True)}

    def converged(self) -> bool:
        try:
            client = self.primary()
            try:
                return all(self.redis_top(client, board) == self.sql_top(board) for board in [None, *BOARDS])
            finally:
                client.close()
        except (redis.RedisError, AssertionError):
            return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]) -> Iterator[SentinelStack]:
    sentinels = PrivateSentinels(tmp_path_factory.mktemp("sentinel")).start()
    postgres = PrivatePostgres().init()
    env = {
        **base_env,
        "DATABASE_URL": postgres.url,
        "REDIS_URL": sentinels.url,
        "REDIS_TIMEOUT_SECONDS": "0.5",
        "DB_TIMEOUT_SECONDS": "2",
        "SSE_HEARTBEAT_SECONDS": "0.5",
    }
    flask_db_upgrade(env)
    increment = GunicornServer("wsgi_increment", env, workers=2).start()
    board = GunicornServer("wsgi_board", env, workers=1).start()
    engine = create_engine(normalize_database_url(postgres.url), pool_pre_ping=True)
    try:
        yield SentinelStack(sentinels, postgres, increment, board, engine, env["LEADERBOARD_ID"])
    finally:
        increment.stop()
        board.stop()
        engine.dispose()
        sentinels.stop()
        postgres.destroy()


def test_both_services_find_the_primary_through_the_sentinels(stack: SentinelStack) -> None:
    primary = f"127.0.0.1:{stack.sentinels.primary.port}"
    for service in (stack.increment, stack.board):
        ready = requests.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "database": "ok", "redis": "ok", "redisPrimary": primary}
    assert stack.post("first", 5).json()["score"] == 5
    assert wait_until(
        lambda: (
            requests.get(f"{stack.board.url}/leaderboard", timeout=5).json()["top"][:1]
            == [{"rank": 1, "userId": "first", "score": 5}]
        )
    )
    primary_client = stack.primary()
    names = {client["name"].rsplit("-", 1)[0] for client in primary_client.client_list()}
    assert {"increment", "board", "board-hub"} <= names, names
    # The rate limit counts on the same primary.
    assert list(primary_client.scan_iter(match=f"*{key_prefix(stack.default_board)}*first*"))
    primary_client.close()


def test_a_killed_primary_loses_no_write_and_both_services_follow_the_promoted_replica(
    stack: SentinelStack,
) -> None:
    for board in BOARDS:
        response = requests.put(
            f"{stack.increment.url}/admin/boards/{board}", json={"topN": 10}, headers=ADMIN, timeout=10
        )
        assert response.status_code in (200, 201), response.text
    users = [f"load{i:02d}" for i in range(30)]
    load = Load(stack, users, boards=[None, *BOARDS])
    viewers = Swarm()
    watching: list[tuple[Viewer, str | None]] = []
    for board in [None, *BOARDS]:
        path = f"/boards/{board}/events" if board else "/events"
        watching += [(viewers.add(Viewer(f"{stack.board.url}{path}")), board) for _ in range(4)]
    assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=10)
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(8)]
    for thread in writers:
        thread.start()
    viewers.pump(2)

    # Cut the replica off (it cannot authenticate to come back), so what follows reaches only the primary.
    old = stack.sentinels.primary.client()
    replica = stack.sentinels.replica.client()
    replica.config_set("masterauth", "not-the-password")
    old.client_kill_filter(_type="replica")
    viewers.pump(0.5)
    # Then only the default board is written: the others' processes see no failed update
    # (which would have them compared with SQL every round), only a Redis that changed.
    load.boards = [None]
    viewers.pump(0.3)
    written = stack.versions(old)
    stack.sentinels.primary.stop()  # SIGKILL
    killed_at = time.monotonic()
    held = stack.versions(replica)
    behind = [board for board in written if held[board] < written[board]]
    assert len(behind) > 10, "the replica had (nearly) every write: little to rebuild"

    def says_primary_down() -> bool:
        ready = requests.get(f"{stack.increment.url}/readyz", timeout=5)
        return ready.status_code == 503 and f"the primary at 127.0.0.1:{old_port}" in ready.json()["error"]["message"]

    old_port = stack.sentinels.primary.port
    assert viewers.wait_until(says_primary_down, timeout=2), "/readyz did not name the primary that is down"
    new_primary = stack.sentinels.replica.port
    assert viewers.wait_until(lambda: stack.sentinels.primary_port() == new_primary, timeout=20), "no failover"
    promoted_at = time.monotonic()

    def both_on_new_primary() -> bool:
        for service in (stack.increment, stack.board):
            ready = requests.get(f"{service.url}/readyz", timeout=5)
            if ready.status_code != 200 or ready.json()["redisPrimary"] != f"127.0.0.1:{new_primary}":
                return False
        names = {client["name"].rsplit("-", 1)[0] for client in replica.client_list()}
        return {"increment", "board", "board-hub"} <= names

    assert viewers.wait_until(both_on_new_primary, timeout=5), "a service is not on the new primary 5 s after promotion"
    on_new_primary = time.monotonic() - promoted_at
    viewers.pump(1)
    load.stop.set()
    for thread in writers:
        thread.join(timeout=60)
    in_time = promoted_at + 5 - time.monotonic()
    assert viewers.wait_until(stack.converged, timeout=max(0, in_time)), "boards not SQL's top N 5 s after promotion"
    converged_after = time.monotonic() - promoted_at

    # Anything unacknowledged is retried now: its replay says whether it counted.
    for submission in load.submissions:
        load.submit_until_acked(submission, deadline=time.monotonic() + 30)
    assert all(s.acked for s in load.submissions)
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT board, user_id, total FROM scores WHERE user_id LIKE 'load%'")).all()
        keys = conn.execute(text("SELECT count(*) FROM idempotency_keys WHERE user_id LIKE 'load%'")).scalar_one()
    totals = {(None if board == stack.default_board else board, user): total for board, user, total in rows}
    assert totals == load.expected_totals(), "a score was lost or counted twice"
    assert keys == len(load.submissions)

    client = stack.primary()
    final = stack.versions(client)
    assert viewers.wait_until(lambda: all(v.last_version == final[board] for v, board in watching), timeout=10)
    for viewer, board in watching:
        assert not viewer.closed, "a viewer was disconnected"
        assert viewer.frames[-1].json["top"] == [[user, str(total)] for user, total in stack.sql_top(board)]
        assert viewer.versions == sorted(set(viewer.versions))
    client.close()
    old.close()
    replica.close()
    print(
        f"\n{len(load.submissions)} submissions, answers: {load.statuses}; promoted "
        f"{promoted_at - killed_at:.1f} s after the kill, both services on it {on_new_primary:.1f} s later; "
        f"{len(behind)} boards behind on it, all equal to SQL {converged_after:.1f} s after the promotion"
    )
    viewers.close()
