"""The zero-setup path `make run` takes: SQLite, migrated by `flask db upgrade`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from sqlalchemy import create_engine, text

from app import create_increment_app
from app.leaderboard import BoardKeys
from config.settings import Settings
from tests.conftest import auth
from tests.servers import ROOT, GunicornServer, flask_db_upgrade


@pytest.fixture
def sqlite_env(tmp_path: Path, base_env: dict[str, str], redis_conn: redis.Redis) -> Iterator[dict[str, str]]:
    board = base_env["LEADERBOARD_ID"] + "sqlite"
    env = {**base_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'leaderboard.db'}", "LEADERBOARD_ID": board}
    redis_conn.delete(*BoardKeys.for_board(board).as_list())
    flask_db_upgrade(env)
    yield env
    redis_conn.delete(*BoardKeys.for_board(board).as_list())


@pytest.fixture
def sqlite_app(sqlite_env: dict[str, str]) -> Iterator[Flask]:
    app = create_increment_app(Settings.from_env(sqlite_env))
    yield app
    app.extensions["redis"].close()


def post(app: Flask, user: str, score: int, key: str | None = None) -> dict[str, object]:
    headers = auth(user) | ({"Idempotency-Key": key} if key else {})
    response = app.test_client().post("/score", json={"score": score}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def test_make_run_defaults_to_a_sqlite_file_in_instance() -> None:
    app = create_increment_app(Settings.from_env({}))
    with app.app_context():
        from app.extensions import db

        assert db.engine.url.database == str(ROOT / "instance" / "leaderboard.db")
        db.engine.dispose()
    app.extensions["redis"].close()


def test_flask_db_upgrade_creates_the_schema(sqlite_env: dict[str, str]) -> None:
    engine = create_engine(sqlite_env["DATABASE_URL"])
    with engine.connect() as conn:
        tables = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
        indexes = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    engine.dispose()
    assert {"scores", "idempotency_keys", "alembic_version"} <= tables
    assert "ix_scores_rank" in indexes


def test_scores_ranks_ties_and_retries_on_sqlite(sqlite_app: Flask, redis_conn: redis.Redis) -> None:
    assert post(sqlite_app, "bob", 10) == {"status": "ok", "userId": "bob", "score": 10, "rank": 1, "improved": True}
    assert post(sqlite_app, "amy", 10)["rank"] == 2  # bob reached 10 first
    assert post(sqlite_app, "amy", 5, key="k1")["score"] == 15
    assert post(sqlite_app, "amy", 5, key="k1")["score"] == 15  # replayed
    assert post(sqlite_app, "carl", 1)["rank"] == 3
    keys = BoardKeys.for_board(sqlite_app.extensions["boards"].default_id)
    members = [m.split(":", 1)[1] for m in redis_conn.zrange(keys.top, 0, -1)]
    assert members == ["amy", "bob", "carl"]


def test_concurrent_submissions_on_sqlite_lose_nothing(sqlite_app: Flask, sqlite_env: dict[str, str]) -> None:
    def submit(user: str) -> None:
        for _ in range(20):
            post(sqlite_app, user, 3)

    threads = [threading.Thread(target=submit, args=(f"u{i % 4}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine = create_engine(sqlite_env["DATABASE_URL"])
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT user_id, total FROM scores")).all())
    engine.dispose()
    assert totals == {f"u{i}": 120 for i in range(4)}


@pytest.mark.e2e
def test_both_services_run_on_sqlite_under_gunicorn(sqlite_env: dict[str, str]) -> None:
    increment = GunicornServer("wsgi_increment", sqlite_env, workers=2).start()
    board = GunicornServer("wsgi_board", sqlite_env, workers=1).start()
    try:
        for user in ("amy", "bob", "amy"):
            response = requests.post(f"{increment.url}/score", json={"score": 2}, headers=auth(user), timeout=10)
            assert response.status_code == 200
        assert response.json() == {"status": "ok", "userId": "amy", "score": 4, "rank": 1, "improved": True}
        assert requests.get(f"{board.url}/readyz", timeout=10).status_code == 200
    finally:
        assert increment.stop() == 0
        assert board.stop() == 0


def test_a_board_with_resets_counts_each_period_apart_on_sqlite(sqlite_app: Flask, redis_conn: redis.Redis) -> None:
    """The period check and the period's rows work on SQLite's clock and text timestamps too."""
    admin = auth("ops", role="admin")
    client = sqlite_app.test_client()
    created = client.put("/admin/boards/sqlite-daily", json={"reset": "daily", "topN": 3}, headers=admin)
    assert created.status_code == 201, created.get_json()
    period = created.get_json()["period"]
    try:
        for user, score in [("ann", 5), ("bo", 7), ("ann", 1)]:
            answer = client.post("/boards/sqlite-daily/score", json={"score": score}, headers=auth(user))
            assert answer.status_code == 200, answer.get_json()
            assert answer.get_json()["period"] == period
        latest = redis_conn.get(BoardKeys.for_board("sqlite-daily").latest)
        assert latest is not None
        assert '"top":[["bo","7"],["ann","6"]]' in latest
        assert f'"period":"{period}"' in latest
        with sqlite_app.app_context():
            from app.extensions import db

            rows = db.session.execute(text("SELECT period, user_id, total FROM scores ORDER BY user_id")).all()
            db.session.remove()
        assert [tuple(row) for row in rows] == [(period, "ann", 6), (period, "bo", 7)]
    finally:
        redis_conn.delete(*BoardKeys.for_board("sqlite-daily").as_list())
