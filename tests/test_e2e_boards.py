"""Many boards under gunicorn with gevent, as deployed: rules, viewers, admin and moderation, rankings."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import text
from sqlalchemy.engine import Engine

from app.board.hub import READS_AT_ONCE
from app.leaderboard import BoardKeys
from tests.conftest import auth, make_token, wait_until
from tests.servers import GunicornServer
from tests.sse_client import Swarm, Viewer

pytestmark = pytest.mark.e2e

ADMIN = auth("ops", role="admin")
made = itertools.count()


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_increment", base_env, workers=2).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def board(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    """One worker: /stats and every viewer meet the same hub."""
    server = GunicornServer("wsgi_board", base_env, workers=1).start()
    yield server
    server.stop()


@pytest.fixture
def new_board(increment: GunicornServer, board_name: str, engine: Engine) -> Any:
    def create(**settings: Any) -> str:
        board_id = f"{board_name}-e{next(made)}"
        response = requests.put(f"{increment.url}/admin/boards/{board_id}", json=settings, headers=ADMIN, timeout=10)
        assert response.status_code == 201, response.text
        return board_id

    return create


def submit(increment: GunicornServer, board_id: str, user: str, score: int, **claims: Any) -> dict[str, Any]:
    response = requests.post(
        f"{increment.url}/boards/{board_id}/score", json={"score": score}, headers=auth(user, **claims), timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def sql_top(engine: Engine, board_id: str, n: int) -> list[list[str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT user_id, total FROM scores WHERE board = :b ORDER BY rank_key LIMIT :n"),
            {"b": board_id, "n": n},
        ).all()
    return [[user, str(total)] for user, total in rows]


def redis_latest(client: redis.Redis, board_id: str) -> dict[str, Any]:
    return json.loads(client.get(BoardKeys.for_board(board_id).latest) or "{}")  # type: ignore[no-any-return]


def stats(board: GunicornServer, **params: str) -> dict[str, Any]:
    response = requests.get(f"{board.url}/stats", params=params, headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def last_top(viewer: Viewer) -> list[list[str]]:
    return viewer.frames[-1].json["top"] if viewer.frames else []  # type: ignore[no-any-return]


# -- rules, under load --------------------------------------------------------


def test_500_concurrent_submissions_on_each_of_3_boards_end_equal_in_sql_redis_and_every_viewer(
    increment: GunicornServer, board: GunicornServer, new_board: Any, engine: Engine, redis_conn: redis.Redis
) -> None:
    boards = {
        "total": new_board(topN=10),
        "laps": new_board(topN=10, operator="best", order="asc"),
        "latest": new_board(topN=10, operator="set"),
    }
    swarms = {name: Swarm.connect(f"{board.url}/boards/{board_id}/events", 20) for name, board_id in boards.items()}
    for swarm in swarms.values():
        assert swarm.wait_until(lambda s=swarm: all(v.frames for v in s.viewers), timeout=10)
    rng = random.Random(11)
    jobs = [(name, f"player{rng.randrange(20):02d}", rng.randint(1, 1000)) for name in boards for _ in range(500)]
    rng.shuffle(jobs)
    tokens = {f"player{i:02d}": auth(f"player{i:02d}") for i in range(20)}

    def post(job: tuple[str, str, int]) -> int:
        name, user, score = job
        url = f"{increment.url}/boards/{boards[name]}/score"
        return requests.post(url, json={"score": score}, headers=tokens[user], timeout=30).status_code

    with ThreadPoolExecutor(max_workers=64) as pool:
        assert set(pool.map(post, jobs)) == {200}

    totals: dict[str, int] = {}
    bests: dict[str, int] = {}
    for name, user, score in jobs:
        if name == "total":
            totals[user] = totals.get(user, 0) + score
        elif name == "laps":
            bests[user] = min(bests.get(user, score), score)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT board, user_id, total FROM scores")).all()
    assert {u: t for b, u, t in rows if b == boards["total"]} == totals
    assert {u: t for b, u, t in rows if b == boards["laps"]} == bests
    sent = {(u, s) for name, u, s in jobs if name == "latest"}
    assert all((u, t) in sent for b, u, t in rows if b == boards["latest"])
    for name, board_id in boards.items():
        expected = sql_top(engine, board_id, 10)
        assert redis_latest(redis_conn, board_id)["top"] == expected, name
        swarm = swarms[name]
        assert swarm.wait_until(lambda s=swarm, e=expected: all(last_top(v) == e for v in s.viewers), timeout=10), name
        swarm.close()


# -- viewers of many boards -------------------------------------------------


def test_a_viewer_of_one_board_gets_none_of_anothers_frames_and_a_burst_there_does_not_slow_it(
    increment: GunicornServer, board: GunicornServer, new_board: Any
) -> None:
    quiet, busy = new_board(topN=5), new_board(topN=5)
    submit(increment, quiet, "calm", 1)
    quiet_viewers = Swarm.connect(f"{board.url}/boards/{quiet}/events", 20)
    busy_viewers = Swarm.connect(f"{board.url}/boards/{busy}/events", 20)
    assert quiet_viewers.wait_until(lambda: all(v.frames for v in quiet_viewers.viewers), timeout=10)
    with ThreadPoolExecutor(max_workers=16) as pool:
        burst = pool.map(lambda i: submit(increment, busy, f"b{i % 50}", 1 + i), range(400))
        time.sleep(0.3)
        started = time.monotonic()
        submit(increment, quiet, "calm", 1)  # in the middle of the burst
        assert quiet_viewers.wait_until(lambda: all(last_top(v) == [["calm", "2"]] for v in quiet_viewers.viewers), 5)
        reached = time.monotonic() - started
        list(burst)
    assert reached < 1.0, f"the quiet board's change took {reached:.2f} s during the burst"
    assert busy_viewers.wait_until(lambda: all(len(v.frames) > 1 for v in busy_viewers.viewers), timeout=10)
    for viewer in quiet_viewers.viewers:  # the board they watch, and nothing else
        assert len(viewer.frames) == 2
        assert all(user == "calm" for frame in viewer.frames for user, _ in frame.json["top"])
    quiet_viewers.close()
    busy_viewers.close()


def test_1000_boards_created_written_and_watched_leave_nothing_behind(
    increment: GunicornServer, board: GunicornServer, board_name: str, redis_conn: redis.Redis
) -> None:
    ids = [f"{board_name}-k{i:04d}" for i in range(1000)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        created = pool.map(
            lambda b: requests.put(f"{increment.url}/admin/boards/{b}", json={"topN": 3}, headers=ADMIN, timeout=30),
            ids,
        )
        assert {r.status_code for r in created} == {201}
        # Written: every board gets a score, twenty boards per POST /scores.
        groups = [ids[i : i + 20] for i in range(0, 1000, 20)]
        answers = pool.map(
            lambda g: requests.post(
                f"{increment.url}/scores", json={"scores": dict.fromkeys(g, 5)}, headers=auth("wide"), timeout=30
            ),
            groups,
        )
        assert {r.status_code for r in answers} == {200}
    listed = requests.get(f"{board.url}/boards", timeout=30).json()["boards"]
    assert set(ids) <= {b["id"] for b in listed}

    worker = stats(board)["pid"]
    requests.get(f"{board.url}/leaderboard", timeout=10)  # the default board, already served
    before = stats(board, greenlets="1")
    connections = sum(1 for c in redis_conn.client_list() if c.get("name", "").endswith(f"-{worker}"))
    # Watched: a viewer on every board, all at once, each getting its own board.
    swarm = Swarm(Viewer(f"{board.url}/boards/{b}/events") for b in ids)
    assert swarm.wait_until(lambda: all(v.frames for v in swarm.viewers), timeout=60)
    for viewer, board_id in zip(swarm.viewers, ids, strict=True):
        assert viewer.frames[-1].json["top"] == [["wide", "5"]], board_id
    during = stats(board)
    assert (during["viewers"], during["boards"]) == (1000, before["boards"] + 1000)
    # One Redis subscription for all of them.
    assert sum(1 for c in redis_conn.client_list() if c.get("name") == f"board-hub-{worker}") == 1
    swarm.close()
    assert wait_until(lambda: stats(board)["viewers"] == 0, timeout=20)
    # Reads of the boards still under way when the viewers left finish by themselves.
    assert wait_until(lambda: stats(board, greenlets="1")["greenlets"] <= before["greenlets"] + 5, timeout=20)
    # The pool keeps the few connections the boards were read with (READS_AT_ONCE at most), not one per board.
    assert (
        sum(1 for c in redis_conn.client_list() if c.get("name", "").endswith(f"-{worker}"))
        <= connections + READS_AT_ONCE
    )


# -- admin and moderation ---------------------------------------------------


ADMIN_ROUTES = [
    ("PUT", "/admin/boards/x", {"topN": 3}),
    ("GET", "/admin/boards", None),
    ("DELETE", "/admin/boards/x", None),
    ("DELETE", "/admin/boards/x/users/u", None),
    ("DELETE", "/admin/users/u", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_other_tokens_with_403_and_forged_ones_with_401(
    increment: GunicornServer, method: str, path: str, body: Any
) -> None:
    url = increment.url + path
    player = requests.request(method, url, json=body, headers=auth("player", role="player"), timeout=10)
    assert (player.status_code, player.json()["error"]["code"]) == (403, "forbidden")
    listed = requests.request(method, url, json=body, headers=auth("mod", role=["player", "moderator"]), timeout=10)
    assert listed.status_code == 403
    forged = make_token("ops", secret="not-the-secret-" + "x" * 40, role="admin")
    faked = requests.request(method, url, json=body, headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert (faked.status_code, faked.json()["error"]["code"]) == (401, "invalid_token")
    assert requests.request(method, url, json=body, timeout=10).status_code == 401


def test_a_removed_cheater_leaves_the_board_at_once_and_the_next_user_moves_up(
    increment: GunicornServer, board: GunicornServer, new_board: Any, engine: Engine
) -> None:
    board_id = new_board(topN=3)
    for user, score in [("cheater", 10**6), ("ann", 300), ("ben", 200), ("cai", 100)]:
        submit(increment, board_id, user, score)
    viewers = Swarm.connect(f"{board.url}/boards/{board_id}/events", 10)
    assert viewers.wait_until(lambda: all(last_top(v) and last_top(v)[0][0] == "cheater" for v in viewers.viewers), 5)
    started = time.monotonic()
    removed = requests.delete(f"{increment.url}/admin/boards/{board_id}/users/cheater", headers=ADMIN, timeout=10)
    assert removed.json() == {"status": "removed", "board": board_id, "userId": "cheater"}
    expected = [["ann", "300"], ["ben", "200"], ["cai", "100"]]
    assert viewers.wait_until(lambda: all(last_top(v) == expected for v in viewers.viewers), timeout=1.0)
    assert time.monotonic() - started < 1.0
    snapshot = requests.get(f"{board.url}/boards/{board_id}/leaderboard", timeout=10).json()
    assert [entry["userId"] for entry in snapshot["top"]] == ["ann", "ben", "cai"]
    assert requests.get(f"{board.url}/boards/{board_id}/users/ann", timeout=10).json()["rank"] == 1
    gone = requests.get(f"{board.url}/boards/{board_id}/users/cheater", timeout=10)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "user_not_found")
    again = requests.delete(f"{increment.url}/admin/boards/{board_id}/users/cheater", headers=ADMIN, timeout=10)
    assert again.status_code == 404
    # Back with a new score, the cheater starts from nothing.
    assert submit(increment, board_id, "cheater", 5)["score"] == 5
    viewers.close()


def test_an_erased_user_is_gone_from_every_board_with_their_name_and_keys(
    increment: GunicornServer, new_board: Any, engine: Engine, redis_conn: redis.Redis, board_name: str
) -> None:
    boards = [new_board(topN=3), new_board(topN=3, operator="best")]
    for board_id in boards:
        submit(increment, board_id, "gdpr", 50, name="Gina")
        submit(increment, board_id, "stays", 10)
    requests.post(
        f"{increment.url}/score", json={"score": 1}, headers=auth("gdpr") | {"Idempotency-Key": "k1"}, timeout=10
    )
    requests.post(
        f"{increment.url}/scores",
        json={"scores": {boards[0]: 2}},
        headers=auth("gdpr") | {"Idempotency-Key": "k2"},
        timeout=10,
    )
    erased = requests.delete(f"{increment.url}/admin/users/gdpr", headers=ADMIN, timeout=10).json()
    assert erased["status"] == "erased"
    assert sorted(erased["boards"]) == sorted([*boards, board_name])
    assert (erased["idempotencyKeys"], erased["name"]) == (2, True)
    assert erased["changes"] == 4  # one on each board, one more from POST /scores, one on the default
    for board_id in [*boards, board_name]:
        logged = [json.loads(f["data"]) for _, f in redis_conn.xrange(BoardKeys.for_board(board_id).changes)]
        assert "gdpr" not in {entry["userId"] for entry in logged}
        assert "stays" in {entry["userId"] for entry in logged} or board_id == board_name
    with engine.connect() as conn:
        for table in ("scores", "idempotency_keys", "user_names"):
            count = conn.execute(text(f"SELECT count(*) FROM {table} WHERE user_id = 'gdpr'")).scalar()  # noqa: S608
            assert count == 0, table
    for board_id in [*boards, board_name]:
        latest = redis_latest(redis_conn, board_id)
        assert "gdpr" not in {user for user, _ in latest["top"]}
        assert "gdpr" not in latest.get("names", {})
    # The key is free again: a retry after an erasure counts anew.
    retried = requests.post(
        f"{increment.url}/score", json={"score": 1}, headers=auth("gdpr") | {"Idempotency-Key": "k1"}, timeout=10
    )
    assert (retried.status_code, retried.json()["score"]) == (200, 1)


def test_a_deleted_boards_viewers_are_told_to_go_and_then_get_404(
    increment: GunicornServer, board: GunicornServer, new_board: Any
) -> None:
    board_id = new_board()
    submit(increment, board_id, "x", 1)
    viewers = Swarm.connect(f"{board.url}/boards/{board_id}/events", 5)
    assert viewers.wait_until(lambda: all(v.frames for v in viewers.viewers), timeout=5)
    deleted = requests.delete(f"{increment.url}/admin/boards/{board_id}", headers=ADMIN, timeout=10)
    assert deleted.json() == {"status": "deleted", "board": board_id}
    # A retry hint after the board, then the end of the answer.
    assert viewers.wait_until(lambda: all(v.events[-1].retry is not None for v in viewers.viewers), timeout=5)
    viewers.close()
    assert wait_until(
        lambda: requests.get(f"{board.url}/boards/{board_id}/events", timeout=5).status_code == 404, timeout=3
    )
    refused = requests.post(
        f"{increment.url}/boards/{board_id}/score", json={"score": 1}, headers=auth("x"), timeout=10
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "board_not_found")
    assert board_id not in {b["id"] for b in requests.get(f"{board.url}/boards", timeout=10).json()["boards"]}
    default = requests.delete(
        f"{increment.url}/admin/boards/{increment.env['LEADERBOARD_ID']}", headers=ADMIN, timeout=10
    )
    assert (default.status_code, default.json()["error"]["code"]) == (409, "board_protected")


def test_rules_are_fixed_once_a_board_has_scores(increment: GunicornServer, new_board: Any) -> None:
    board_id = new_board(topN=5)
    url = f"{increment.url}/admin/boards/{board_id}"
    assert requests.put(url, json={"order": "asc", "operator": "best"}, headers=ADMIN, timeout=10).status_code == 200
    submit(increment, board_id, "a", 3)
    for change in ({"order": "desc"}, {"operator": "set"}, {"timezone": "Europe/Berlin"}):
        refused = requests.put(url, json=change, headers=ADMIN, timeout=10)
        assert (refused.status_code, refused.json()["error"]["code"]) == (409, "board_immutable"), change
    changed = requests.put(url, json={"title": "Laps", "topN": 8, "scoreMax": 99}, headers=ADMIN, timeout=10).json()
    assert (changed["title"], changed["topN"], changed["scoreMax"], changed["order"]) == ("Laps", 8, 99, "asc")


# -- rankings and names over HTTP --------------------------------------------


def test_rankings_over_http_pages_around_and_friends(
    increment: GunicornServer, board: GunicornServer, new_board: Any
) -> None:
    board_id = new_board(topN=3)
    scores = {f"u{i:02d}": 100 - i for i in range(30)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: submit(increment, board_id, *item), scores.items()))
    base = f"{board.url}/boards/{board_id}/leaderboard"
    page = requests.get(base, params={"offset": 5, "limit": 3}, timeout=10).json()
    assert page == {
        "count": 30,
        "entries": [{"rank": r, "userId": f"u{r - 1:02d}", "score": 101 - r} for r in (6, 7, 8)],
    }
    assert requests.get(base, params={"offset": 40}, timeout=10).json() == {"count": 30, "entries": []}
    top = requests.get(base, params={"around": "u00", "limit": 5}, timeout=10).json()
    assert [e["rank"] for e in top["entries"]] == [1, 2, 3, 4, 5]
    bottom = requests.get(base, params={"around": "u29", "limit": 5}, timeout=10).json()
    assert [e["rank"] for e in bottom["entries"]] == [26, 27, 28, 29, 30]
    middle = requests.get(base, params={"around": "u14", "limit": 5}, timeout=10).json()
    assert [e["userId"] for e in middle["entries"]] == ["u12", "u13", "u14", "u15", "u16"]
    friends = requests.get(base, params={"users": "u20,nobody,u03,u20"}, timeout=10).json()
    assert friends == {
        "entries": [{"rank": 4, "userId": "u03", "score": 97}, {"rank": 21, "userId": "u20", "score": 80}]
    }
    for params, status, code in [
        ({"around": "nobody"}, 404, "user_not_found"),
        ({"offset": 1, "around": "u01"}, 400, "invalid_query"),
        ({"offset": -1}, 400, "invalid_query"),
        ({"offset": "1e3"}, 400, "invalid_query"),
        ({"offset": 0, "limit": 101}, 400, "invalid_query"),
        ({"offset": 0, "limit": 0}, 400, "invalid_query"),
        ({"limit": 5}, 400, "invalid_query"),
        ({"users": ",".join(f"x{i}" for i in range(101))}, 400, "invalid_query"),
        ({"users": ","}, 400, "invalid_query"),
    ]:
        answer = requests.get(base, params=params, timeout=10)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), params
    missing = requests.get(f"{board.url}/boards/no-such-board/leaderboard", params={"offset": 0}, timeout=10)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "board_not_found")


def test_display_names_reach_frames_snapshots_and_rankings(
    increment: GunicornServer, board: GunicornServer, new_board: Any
) -> None:
    board_id = new_board(topN=3)
    viewer = Swarm.connect(f"{board.url}/boards/{board_id}/events", 1)
    submit(increment, board_id, "u1", 5, name="  Ada <Lovelace>  ")
    submit(increment, board_id, "u2", 3, name="\u200bbad\u0007name")  # not a name: not stored
    # Both submissions reached the viewer (maybe in one frame: frames coalesce).
    assert viewer.wait_until(
        lambda: bool(viewer.viewers[0].frames) and len(viewer.viewers[0].frames[-1].json["top"]) == 2, timeout=5
    )
    frame = viewer.viewers[0].frames[-1].json
    assert frame["names"] == {"u1": "Ada <Lovelace>"}
    assert frame["top"] == [["u1", "5"], ["u2", "3"]]
    snapshot = requests.get(f"{board.url}/boards/{board_id}/leaderboard", timeout=10).json()
    assert snapshot["names"] == {"u1": "Ada <Lovelace>"}
    ranked = requests.get(f"{board.url}/boards/{board_id}/leaderboard", params={"offset": 0}, timeout=10).json()
    assert ranked["names"] == {"u1": "Ada <Lovelace>"}
    viewer.close()


# -- POST /scores and bad input ----------------------------------------------


def test_several_boards_at_once_are_all_recorded_or_none(
    increment: GunicornServer, new_board: Any, engine: Engine
) -> None:
    small, laps = new_board(topN=3, scoreMax=100), new_board(topN=3, operator="best", order="asc")
    url = f"{increment.url}/scores"
    done = requests.post(url, json={"scores": {small: 40, laps: 61_000}}, headers=auth("rae"), timeout=10)
    assert done.json() == {
        "status": "ok",
        "userId": "rae",
        "scores": {
            small: {"score": 40, "rank": 1, "improved": True},
            laps: {"score": 61_000, "rank": 1, "improved": True},
        },
    }

    def state() -> list[Any]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT board, user_id, total FROM scores ORDER BY 1, 2"))]

    before = state()
    for body, status, code in [
        ({"scores": {small: 101, laps: 1}}, 422, "invalid_score"),  # one board's bound: nothing recorded
        ({"scores": {small: 1, "no-such-board": 1}}, 404, "board_not_found"),
        ({"scores": {small: 1, "bad id!": 1}}, 404, "board_not_found"),
        ({"scores": {}}, 422, "invalid_body"),
        ({"scores": {f"b{i}": 1 for i in range(21)}}, 422, "invalid_body"),
        ({"scores": [small]}, 422, "invalid_body"),
        ({"scores": {small: 1}, "extra": 1}, 422, "invalid_body"),
        ({"scores": {small: 1.0}}, 422, "invalid_score"),
        ({"scores": {small: True}}, 422, "invalid_score"),
    ]:
        answer = requests.post(url, json=body, headers=auth("rae"), timeout=10)
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), body
    assert state() == before
    key = {"Idempotency-Key": "multi-1"}
    first = requests.post(url, json={"scores": {small: 1, laps: 60_000}}, headers=auth("rae") | key, timeout=10)
    again = requests.post(url, json={"scores": {laps: 60_000, small: 1}}, headers=auth("rae") | key, timeout=10)
    assert first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = requests.post(url, json={"scores": {small: 2}}, headers=auth("rae") | key, timeout=10)
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_conflict")


def test_bad_input_on_the_new_routes_gets_the_envelope_and_changes_nothing(
    increment: GunicornServer, board: GunicornServer, new_board: Any
) -> None:
    board_id = new_board(topN=3, scoreMin=10, scoreMax=20)
    daily = new_board(reset="daily", timezone="Europe/Berlin")
    ranked = f"{board.url}/boards/{daily}/leaderboard"
    cases = [
        ("POST", f"{increment.url}/boards/{board_id}/score", {"score": 9}, auth("p"), 422, "invalid_score"),
        ("POST", f"{increment.url}/boards/{board_id}/score", {"score": 21}, auth("p"), 422, "invalid_score"),
        ("POST", f"{increment.url}/boards/nope/score", {"score": 1}, auth("p"), 404, "board_not_found"),
        ("POST", f"{increment.url}/boards/{'x' * 65}/score", {"score": 1}, auth("p"), 404, "board_not_found"),
        ("PUT", f"{increment.url}/admin/boards/bad%20id", {}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"topN": 0}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"topN": "5"}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"scoreMin": 30}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"reset": "hourly"}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"reset": "61 * * * *"}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"reset": 7}, ADMIN, 422, "invalid_board"),
        ("GET", f"{board.url}/boards/{board_id}/leaderboard?period=2026-12-01", None, {}, 400, "invalid_query"),
        ("GET", f"{ranked}?period=2026-W49", None, {}, 400, "invalid_query"),
        ("GET", f"{ranked}?period=2026-02-30", None, {}, 400, "invalid_query"),
        ("GET", f"{ranked}?period=2999-01-01", None, {}, 404, "period_not_found"),
        ("GET", f"{ranked}?period=2999-01-01&offset=0", None, {}, 404, "period_not_found"),
        ("GET", f"{board.url}/boards/{daily}/users/x?period=yesterday", None, {}, 400, "invalid_query"),
        ("GET", f"{board.url}/boards/{daily}/periods?limit=0", None, {}, 400, "invalid_query"),
        ("GET", f"{board.url}/boards/{daily}/periods?before=2026-13-01", None, {}, 400, "invalid_query"),
        ("GET", f"{board.url}/boards/nope/periods", None, {}, 404, "board_not_found"),
        ("DELETE", f"{increment.url}/admin/boards/{daily}/users/x?period=x", None, ADMIN, 400, "invalid_query"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"timezone": "Mars/Olympus"}, ADMIN, 422, "invalid_board"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", {"color": "red"}, ADMIN, 422, "invalid_body"),
        ("PUT", f"{increment.url}/admin/boards/{board_id}", [1], ADMIN, 422, "invalid_body"),
        ("DELETE", f"{increment.url}/admin/boards/nope", None, ADMIN, 404, "board_not_found"),
        ("GET", f"{board.url}/boards/nope/events", None, {}, 404, "board_not_found"),
        ("GET", f"{board.url}/boards/nope/", None, {}, 404, "board_not_found"),
        ("GET", f"{board.url}/boards/nope/users/x", None, {}, 404, "board_not_found"),
        ("GET", f"{board.url}/stats", None, {}, 401, "missing_token"),
        ("GET", f"{board.url}/stats", None, auth("p"), 403, "forbidden"),
    ]
    for method, url, body, headers, status, code in cases:
        answer = requests.request(method, url, json=body, headers=headers, timeout=10)
        assert answer.headers["Content-Type"].startswith("application/json"), url
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), (method, url, body)
    malformed = requests.post(
        f"{increment.url}/boards/{board_id}/score",
        data=b"{",
        headers=auth("p") | {"Content-Type": "application/json"},
        timeout=10,
    )
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (400, "malformed_json")
    board_now = requests.get(f"{increment.url}/admin/boards", headers=ADMIN, timeout=10).json()["boards"]
    assert next(b for b in board_now if b["id"] == board_id)["topN"] == 3
