"""Redis Cluster, for real: three primaries and their replicas of the test's own.

Two increment and two board instances run under gunicorn with gevent with
REDIS_URL=redis+cluster://...; 200 boards are spread over the three shards by
their hash tags, written to and watched on both board instances. Then one
primary is killed (SIGKILL) under write load and its replica promoted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import requests
from redis.cluster import ClusterNode, RedisCluster
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from app.leaderboard import BoardKeys, channel_for
from app.ratelimit import key_prefix
from config.settings import normalize_database_url
from tests.conftest import auth, wait_until
from tests.load import Load
from tests.private_servers import PrivateCluster, PrivatePostgres
from tests.servers import GunicornServer, flask_db_upgrade
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e

ADMIN = auth("ops", role="admin")
BOARDS = [f"shard{i:03d}" for i in range(200)]
TOP_N = 10


@dataclass
class ClusterStack:
    cluster: PrivateCluster
    postgres: PrivatePostgres
    increments: list[GunicornServer]
    boards: list[GunicornServer]
    engine: Engine
    default_board: str

    def post(
        self, user: str, score: int, key: str | None = None, timeout: float = 10, board: str | None = None
    ) -> requests.Response:
        headers = auth(user) | ({"Idempotency-Key": key} if key else {})
        path = f"/boards/{board}/score" if board else "/score"
        service = random.choice(self.increments)
        return requests.post(f"{service.url}{path}", json={"score": score}, headers=headers, timeout=timeout)

    def client(self) -> RedisCluster:
        seeds = [ClusterNode("127.0.0.1", port) for port in self.cluster.ports]
        return RedisCluster(startup_nodes=seeds, decode_responses=True)

    def board_id(self, board: str | None) -> str:
        return board or self.default_board

    def channel(self, board: str | None) -> str:
        return channel_for(self.board_id(board))

    def sql_top(self, board: str | None) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT user_id, total FROM scores WHERE board = :b ORDER BY rank_key LIMIT :n"),
                {"b": self.board_id(board), "n": TOP_N},
            ).all()
        return [(user, total) for user, total in rows]

    def sql_tops(self) -> dict[str | None, list[tuple[str, int]]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT board, user_id, total FROM (SELECT board, user_id, total, row_number() "
                    "OVER (PARTITION BY board ORDER BY rank_key) AS place FROM scores) ranked "
                    "WHERE place <= :n ORDER BY board, place"
                ),
                {"n": TOP_N},
            ).all()
        tops: dict[str | None, list[tuple[str, int]]] = {board: [] for board in [None, *BOARDS]}
        for board, user, total in rows:
            tops.setdefault(None if board == self.default_board else board, []).append((user, total))
        return tops

    def redis_tops(self, client: RedisCluster) -> dict[str | None, list[tuple[str, int]]]:
        pipe = client.pipeline(transaction=False)
        for board in [None, *BOARDS]:
            pipe.zrange(BoardKeys.for_board(self.board_id(board)).top, 0, -1, withscores=True)
        replies = pipe.execute()
        return {
            board: [(member.split(":", 1)[1], -int(score)) for member, score in rows]
            for board, rows in zip([None, *BOARDS], replies, strict=True)
        }

    def versions(self, client: RedisCluster) -> dict[str | None, int]:
        pipe = client.pipeline(transaction=False)
        for board in [None, *BOARDS]:
            pipe.get(BoardKeys.for_board(self.board_id(board)).version)
        found = pipe.execute()
        return {board: int(version or 0) for board, version in zip([None, *BOARDS], found, strict=True)}

    def converged(self) -> bool:
        try:
            client = self.client()
            try:
                return self.redis_tops(client) == self.sql_tops()
            finally:
                client.close()
        except (redis.RedisError, redis.exceptions.RedisClusterException):
            return False

    def slot_owners(self) -> dict[int, int]:
        """Slot -> the port of the primary that serves it now."""
        client = self.cluster.client(self.cluster.primaries()[0])
        owners = {}
        for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(primary[1])
        client.close()
        return owners


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, base_env: dict[str, str]) -> Iterator[ClusterStack]:
    cluster = PrivateCluster(tmp_path_factory.mktemp("cluster")).start()
    postgres = PrivatePostgres().init()
    env = {
        **base_env,
        "DATABASE_URL": postgres.url,
        "REDIS_URL": cluster.url,
        "BOARD_TRANSPORT": "pubsub",
        "REDIS_TIMEOUT_SECONDS": "0.5",
        "DB_TIMEOUT_SECONDS": "2",
        "SSE_HEARTBEAT_SECONDS": "0.5",
    }
    flask_db_upgrade(env)
    increments = [GunicornServer("wsgi_increment", env, workers=1).start() for _ in range(2)]
    boards = [GunicornServer("wsgi_board", env, workers=1).start() for _ in range(2)]
    engine = create_engine(normalize_database_url(postgres.url), pool_pre_ping=True)
    try:
        yield ClusterStack(cluster, postgres, increments, boards, engine, env["LEADERBOARD_ID"])
    finally:
        for service in [*increments, *boards]:
            service.stop()
        engine.dispose()
        cluster.stop()
        postgres.destroy()


def test_every_service_is_ready_on_the_cluster_and_names_its_primaries(stack: ClusterStack) -> None:
    primaries = [f"127.0.0.1:{port}" for port in stack.cluster.primaries()]
    for service in [*stack.increments, *stack.boards]:
        ready = requests.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert sorted(ready.json()["redisPrimaries"]) == primaries
    assert stack.post("first", 5).json()["score"] == 5
    for service in stack.boards:
        assert wait_until(
            lambda service=service: (
                requests.get(f"{service.url}/leaderboard", timeout=5).json()["top"][:1]
                == [{"rank": 1, "userId": "first", "score": 5}]
            )
        )
    client = stack.client()
    # The rate limit counts on the cluster, in the slot of the deployment's hash tag.
    assert list(client.scan_iter(match=f"*{key_prefix(stack.default_board)}*first*", target_nodes=client.PRIMARIES))
    client.close()


def test_200_boards_on_three_shards_each_shard_carrying_only_its_own_boards(stack: ClusterStack) -> None:
    for board in BOARDS:
        response = requests.put(
            f"{stack.increments[0].url}/admin/boards/{board}", json={"topN": TOP_N}, headers=ADMIN, timeout=10
        )
        assert response.status_code in (200, 201), response.text
    owners = stack.slot_owners()
    client = stack.client()
    shard_of = {board: owners[client.keyslot(stack.channel(board))] for board in [None, *BOARDS]}
    assert len(set(shard_of.values())) == 3, "the boards are not spread over the three shards"

    viewers = Swarm()
    watching: list[tuple[Viewer, str | None]] = []
    for service in stack.boards:
        for board in [None, *BOARDS]:
            path = f"/boards/{board}/events" if board else "/events"
            watching.append((viewers.add(Viewer(f"{service.url}{path}")), board))
    assert viewers.wait_until(lambda: all(v.frames for v, _ in watching), timeout=30), "a viewer got no first frame"
    # The change log's live feed rides on the same sharded subscriptions.
    logged = BOARDS[1]
    change_viewers = [viewers.add(Viewer(f"{service.url}/boards/{logged}/changes")) for service in stack.boards]
    viewers.pump(1)

    load = Load(stack, [f"user{i:02d}" for i in range(15)], keyed=False, boards=[None, *BOARDS])
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(8)]
    for thread in writers:
        thread.start()
    viewers.pump(4)
    load.stop.set()
    for thread in writers:
        thread.join(timeout=60)
    assert load.statuses.get(200) == len(load.submissions), load.statuses
    assert len({s.board for s in load.submissions}) > 150, "most boards were written"

    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT board, user_id, total FROM scores WHERE user_id LIKE 'user%'")).all()
    totals = {(None if board == stack.default_board else board, user): total for board, user, total in rows}
    assert totals == load.expected_totals()
    assert wait_until(stack.converged, timeout=10), "a board's Redis top N is not SQL's"
    final = stack.versions(client)
    assert viewers.wait_until(lambda: all(v.last_version == final[board] for v, board in watching), timeout=15)
    tops = stack.sql_tops()
    for viewer, board in watching:
        assert not viewer.closed
        assert viewer.frames[-1].json["top"] == [[user, str(total)] for user, total in tops[board]]
    submitted = sorted((s.user, s.score) for s in load.submissions if s.board == logged)
    assert submitted, "the logged board got no write"
    for viewer in change_viewers:
        assert viewers.wait_until(lambda viewer=viewer: len(viewer.frames) == len(submitted), timeout=10)
        changes = [frame.json for frame in viewer.frames]
        assert {change["board"] for change in changes} == {logged}
        assert (
            sorted((change["userId"], change["score"] - (change["previous"] or 0)) for change in changes) == submitted
        )

    # Each shard's Pub/Sub carries only its own boards: every board's channel (and the logged board's
    # change-log channel) is subscribed on the primary of its slot, by both board instances, and on no
    # other shard; nothing is published unsharded.
    channels_of = {board: [stack.channel(board)] for board in shard_of}
    channels_of[logged].append(BoardKeys.for_board(logged).changed)
    per_shard: dict[str, int] = {}
    for port in stack.cluster.primaries():
        node = stack.cluster.client(port)
        mine = sorted(channel for board, owner in shard_of.items() if owner == port for channel in channels_of[board])
        per_shard[f"127.0.0.1:{port}"] = len(mine)
        assert sorted(node.execute_command("PUBSUB", "SHARDCHANNELS")) == mine
        assert node.execute_command("PUBSUB", "CHANNELS") == []
        counts = node.execute_command("PUBSUB", "SHARDNUMSUB", *mine)
        assert dict(zip(counts[::2], counts[1::2], strict=True)) == dict.fromkeys(mine, 2)
        # One subscription per board instance on this shard, whatever its boards and viewers.
        hubs = [c for c in node.client_list() if c["name"].startswith("board-hub") and int(c.get("ssub", 0))]
        assert len(hubs) == 2, hubs
        assert sorted(int(c["ssub"]) for c in hubs) == [len(mine), len(mine)]
        node.close()
    for service in stack.boards:
        worker = requests.get(f"{service.url}/stats", headers=ADMIN, timeout=10).json()
        assert (worker["connected"], worker["subscriptions"]) == (True, per_shard)
    client.close()
    viewers.close()
    print(
        f"\n{len(load.submissions)} submissions over {len({s.board for s in load.submissions})} boards; "
        f"boards per shard: {sorted(list(shard_of.values()).count(port) for port in set(shard_of.values()))}"
    )


def test_a_killed_primary_loses_no_write_and_its_boards_converge_on_the_promoted_replica(
    stack: ClusterStack,
) -> None:
    owners = stack.slot_owners()
    client = stack.client()
    shard_of = {board: owners[client.keyslot(stack.channel(board))] for board in [None, *BOARDS]}
    client.close()
    victim = shard_of[None]  # the default board's shard
    on_victim = [board for board, owner in shard_of.items() if owner == victim]

    viewers = Swarm()
    watching: list[tuple[Viewer, str | None]] = []
    for service in stack.boards:
        for board in [None, *BOARDS[:60]]:
            path = f"/boards/{board}/events" if board else "/events"
            watching.append((viewers.add(Viewer(f"{service.url}{path}")), board))
    assert viewers.wait_until(lambda: all(v.frames for v, _ in watching), timeout=30)

    load = Load(stack, [f"load{i:02d}" for i in range(20)], boards=[None, *BOARDS])
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(8)]
    for thread in writers:
        thread.start()
    viewers.pump(2)

    # Cut the victim's replica off (it cannot authenticate to come back), so what follows on that
    # shard reaches only the primary; then no board of that shard is written, so no process sees
    # an update fail there (which would have the board compared with SQL every round), only
    # primaries that changed.
    old = stack.cluster.client(victim)
    replica_port = int(old.info("replication")["slave0"]["port"])
    replica = stack.cluster.client(replica_port)
    replica.execute_command("READONLY")
    replica.config_set("masterauth", "not-the-password")
    old.client_kill_filter(_type="replica")
    viewers.pump(0.5)
    load.boards = [board for board in BOARDS if shard_of[board] != victim]
    viewers.pump(0.3)
    written = {board: int(old.get(BoardKeys.for_board(stack.board_id(board)).version) or 0) for board in on_victim}
    before = set(stack.cluster.primaries())
    stack.cluster.kill(victim)  # SIGKILL
    killed_at = time.monotonic()
    held = {board: int(replica.get(BoardKeys.for_board(stack.board_id(board)).version) or 0) for board in on_victim}
    behind = [board for board in on_victim if held[board] < written[board]]
    assert len(behind) > 10, "the replica had (nearly) every write: little to rebuild"
    old.close()
    replica.close()

    def says_node_down() -> bool:
        ready = requests.get(f"{stack.increments[0].url}/readyz", timeout=5)
        return ready.status_code == 503 and f"127.0.0.1:{victim}" in ready.json()["error"]["message"]

    assert viewers.wait_until(says_node_down, timeout=3), "/readyz did not name the primary that is down"
    assert viewers.wait_until(lambda: len(set(stack.cluster.primaries()) - before) == 1, timeout=20), "no failover"
    promoted_at = time.monotonic()
    (promoted,) = set(stack.cluster.primaries()) - before
    assert promoted == replica_port

    def all_ready() -> bool:
        for service in [*stack.increments, *stack.boards]:
            ready = requests.get(f"{service.url}/readyz", timeout=5)
            if ready.status_code != 200 or f"127.0.0.1:{promoted}" not in ready.json()["redisPrimaries"]:
                return False
        return True

    assert viewers.wait_until(all_ready, timeout=5), "a service is not on the promoted replica 5 s after promotion"
    on_promoted = time.monotonic() - promoted_at
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

    client = stack.client()
    final = stack.versions(client)
    client.close()
    assert viewers.wait_until(lambda: all(v.last_version == final[board] for v, board in watching), timeout=10)
    tops = stack.sql_tops()
    for viewer, board in watching:
        assert not viewer.closed, "a viewer was disconnected"
        assert viewer.frames[-1].json["top"] == [[user, str(total)] for user, total in tops[board]]
        assert viewer.versions == sorted(set(viewer.versions))
    node = stack.cluster.client(promoted)
    hubs = [c for c in node.client_list() if c["name"].startswith("board-hub") and int(c.get("ssub", 0))]
    assert len(hubs) == 2, "each board instance subscribes on the promoted primary"
    node.close()
    viewers.close()
    print(
        f"\n{len(load.submissions)} submissions, answers: {load.statuses}; {len(on_victim)} boards on the killed "
        f"primary, {len(behind)} of them behind on its replica; promoted {promoted_at - killed_at:.1f} s "
        f"after the kill, every service on it {on_promoted:.1f} s later; all boards equal to SQL "
        f"{converged_after:.1f} s after the promotion"
    )


def test_a_hot_boards_slot_moved_to_another_shard_takes_its_viewers_along(stack: ClusterStack) -> None:
    hot = BOARDS[0]
    owners = stack.slot_owners()
    client = stack.client()
    slot = client.keyslot(stack.channel(hot))
    client.close()
    source_port = owners[slot]
    target_port = next(port for port in stack.cluster.primaries() if port != source_port)
    source, target = stack.cluster.client(source_port), stack.cluster.client(target_port)

    viewers = Swarm()
    watching = [viewers.add(Viewer(f"{service.url}/boards/{hot}/events")) for service in stack.boards for _ in range(3)]
    assert viewers.wait_until(lambda: all(v.frames for v in watching), timeout=10)
    load = Load(stack, [f"hot{i:02d}" for i in range(20)], boards=[hot])
    writers = [threading.Thread(target=load.writer, args=(seed,)) for seed in range(6)]
    for thread in writers:
        thread.start()
    viewers.pump(1)

    # What `redis-cli --cluster reshard` does, for the one slot: keys migrated, then the slot's owner set.
    source_id, target_id = source.execute_command("CLUSTER", "MYID"), target.execute_command("CLUSTER", "MYID")
    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.migrate("127.0.0.1", target_port, keys, 0, 5000)
    for port in stack.cluster.primaries():
        node = stack.cluster.client(port)
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        node.close()
    moved_at = time.monotonic()
    viewers.pump(1.5)
    load.stop.set()
    for thread in writers:
        thread.join(timeout=60)
    for submission in load.submissions:
        load.submit_until_acked(submission, deadline=time.monotonic() + 30)
    assert all(s.acked for s in load.submissions)

    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT board, user_id, total FROM scores WHERE user_id LIKE 'hot%'")).all()
    assert {(board, user): total for board, user, total in rows} == load.expected_totals()
    assert viewers.wait_until(stack.converged, timeout=10), "the moved board is not SQL's top N"
    version = int(target.get(BoardKeys.for_board(hot).version) or 0)
    assert viewers.wait_until(lambda: all(v.last_version == version for v in watching), timeout=10)
    caught_up = time.monotonic() - moved_at
    for viewer in watching:
        assert not viewer.closed
        assert viewer.frames[-1].json["top"] == [[user, str(total)] for user, total in stack.sql_top(hot)]
    # Each board instance subscribes to the hot board's channel on its new shard, on the old one no more.
    assert target.execute_command("PUBSUB", "SHARDNUMSUB", stack.channel(hot))[1] == 2
    assert source.execute_command("PUBSUB", "SHARDNUMSUB", stack.channel(hot))[1] == 0
    source.close()
    target.close()
    viewers.close()
    print(
        f"\n{len(load.submissions)} submissions to {hot}, answers: {load.statuses}; its slot moved from "
        f"{source_port} to {target_port}; every viewer at the final board {caught_up:.1f} s after the move"
    )
