"""Fixtures: a private PostgreSQL database, a private Redis board, apps and tokens.

Each run creates its own database (dropped at the end) and uses its own board
name and Pub/Sub channel in Redis, so it never touches data it did not create
and two runs on one machine do not collide.

TEST_ADMIN_DATABASE_URL  a PostgreSQL URL allowed to CREATE DATABASE
                         (default postgresql://postgres@127.0.0.1:5432/postgres)
TEST_REDIS_URL           the Redis to use (default redis://127.0.0.1:6379/9)
TEST_BOARD_TRANSPORT     BOARD_TRANSPORT for every app and server (default pubsub; test_e2e_streams.py
                         runs streams either way)
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import psycopg2
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from flask_migrate import upgrade
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from app import create_board_app, create_increment_app
from app.leaderboard import Board, BoardCache, BoardDefaults, BoardKeys, BoardRegistry
from config.settings import Settings, normalize_database_url

ADMIN_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
JWT_SECRET = "test-secret-" + "k" * 60
RUN_ID = f"{os.getpid()}{secrets.token_hex(3)}"


def make_token(sub: Any = "alice", *, secret: str = JWT_SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    """A token as another issuer would mint it (PyJWT directly, not our code)."""
    now = datetime.now(UTC)
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + timedelta(hours=1)}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(payload, secret, algorithm=algorithm)


def auth(user: str = "alice", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, **claims)}"}


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated, dropped afterwards."""
    with created_database(f"lb_test_{RUN_ID}") as url:
        yield url


@contextmanager
def created_database(name: str) -> Iterator[str]:
    """An empty PostgreSQL database `name` (its URL), dropped afterwards."""
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cur:
        # A natural-language collation, as production databases usually have,
        # so that the byte-wise user-id order is really put to the test.
        cur.execute(
            f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def board_name() -> str:
    return f"test{RUN_ID}"


@pytest.fixture(scope="session")
def base_env(database_url: str, board_name: str) -> dict[str, str]:
    """The environment every app and server of this run is configured with."""
    return {
        "APP_ENV": "testing",
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "JWT_SECRET_KEY": JWT_SECRET,
        "LEADERBOARD_ID": board_name,
        "REDIS_CHANNEL": f"leaderboard:updated:{board_name}",
        "TOP_N": "10",
        "LOG_LEVEL": "WARNING",
        # High enough for the load tests; test_limits.py checks the real thing.
        "RATE_LIMIT_PER_USER": "1000/second",
        # Every test viewer comes from 127.0.0.1; the per-IP cap has its own tests.
        "SSE_MAX_VIEWERS_PER_IP": "100000",
        "BOARD_TRANSPORT": os.environ.get("TEST_BOARD_TRANSPORT", "pubsub"),
    }


@pytest.fixture(scope="session")
def make_settings(base_env: dict[str, str]) -> Callable[..., Settings]:
    def build(**overrides: str) -> Settings:
        return Settings.from_env({**base_env, **overrides})

    return build


@pytest.fixture(scope="session")
def migrated(make_settings: Callable[..., Settings]) -> None:
    """Apply the migrations to the run's database once, as `flask db upgrade` does."""
    app = create_increment_app(make_settings())
    with app.app_context():
        upgrade()


@pytest.fixture(scope="session")
def engine(database_url: str, migrated: None) -> Iterator[Engine]:
    """A direct connection to the test database, for arranging and checking rows."""
    engine = create_engine(normalize_database_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_conn() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest, board_name: str) -> None:
    """Every test starts with an empty board, in SQL and in Redis."""
    if "engine" in request.fixturenames:
        _wipe(request.getfixturevalue("engine"), request.getfixturevalue("redis_conn"), board_name)


def _wipe(engine: Engine, client: redis.Redis, board: str) -> None:
    """Every table emptied but the default board's row (each app keeps its uid), and every Redis
    key of this run's boards (all named `<board>...`)."""
    with engine.begin() as conn:
        for table in ("scores", "idempotency_keys", "rank_deltas", "rank_buckets", "user_names"):
            conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed names
        conn.execute(text("DELETE FROM boards WHERE id <> :board"), {"board": board})
        conn.execute(text("UPDATE boards SET title = id WHERE id = :board"), {"board": board})
        # The default board exists before any app has run, as it does for rows arranged by hand.
        conn.execute(
            text(
                "INSERT INTO boards (id, uid, title, top_n, sort_order, operator, score_min, score_max, reset,"
                " timezone, created_at, updated_at) VALUES (:board, :uid, :board, 10, 'desc', 'incr', 1, 1000000,"
                " 'none', 'UTC', now(), now()) ON CONFLICT (id) DO NOTHING"
            ),
            {"board": board, "uid": secrets.token_hex(16)},
        )
    stale = list(client.scan_iter(match=f"lb:{{{board}*", count=1000))
    if stale:
        client.delete(*stale)


@pytest.fixture
def make_app(make_settings: Callable[..., Settings], engine: Engine) -> Iterator[Callable[..., Flask]]:
    """Build an app (`service="increment"` or `"board"`) with settings overrides; disposed afterwards."""
    apps: list[Flask] = []

    def build(service: str = "increment", **overrides: str) -> Flask:
        factory = create_increment_app if service == "increment" else create_board_app
        app = factory(make_settings(**overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        with app.app_context():
            from app.extensions import db

            db.engine.dispose()
        app.extensions["redis"].close()
        if "hub_redis" in app.extensions:
            app.extensions["hub_redis"].close()


@pytest.fixture
def registry(engine: Engine, board_name: str, base_env: dict[str, str]) -> BoardRegistry:
    """The boards of this run's database, as the apps see them (the default board is `board_name`)."""
    defaults = BoardDefaults(
        default_id=board_name, default_channel=base_env["REDIS_CHANNEL"], top_n=10, max_increment=1_000_000
    )
    return BoardRegistry(engine, defaults)


@pytest.fixture
def cache(redis_conn: redis.Redis) -> BoardCache:
    return BoardCache(redis_conn)


@pytest.fixture
def make_board(registry: BoardRegistry, board_name: str) -> Callable[..., Board]:
    """Create a board of this run (`<board_name>-<n>`) with the given settings (top_n=3 unless said)."""
    made = itertools.count()

    def build(top_n: int = 3, **settings: Any) -> Board:
        board, _ = registry.put(f"{board_name}-{next(made)}", {"top_n": top_n, **settings})
        return board

    return build


def default_board(app: Flask) -> Board:
    """The app's default board, as its registry has it."""
    registry: BoardRegistry = app.extensions["boards"]
    return registry.get(registry.default_id)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def board_state(engine: Engine, redis_conn: redis.Redis, board_name: str) -> Callable[[], dict[str, Any]]:
    """Everything a submission can change: SQL rows and the board's Redis keys."""
    keys = BoardKeys.for_board(board_name)

    def capture() -> dict[str, Any]:
        with engine.connect() as conn:
            scores = conn.execute(text("SELECT * FROM scores ORDER BY board, user_id")).all()
            idem = conn.execute(text("SELECT * FROM idempotency_keys ORDER BY board, user_id, key")).all()
        return {
            "scores": [tuple(r) for r in scores],
            "idempotency_keys": [tuple(r) for r in idem],
            "top": redis_conn.zrange(keys.top, 0, -1, withscores=True),
            "members": redis_conn.hgetall(keys.members),
            "version": redis_conn.get(keys.version),
            "latest": redis_conn.get(keys.latest),
            "names": redis_conn.hgetall(keys.names),
        }

    return capture


class ChannelListener:
    """Collects the messages published on one channel while a test runs."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        self.messages: list[dict[str, Any]] = []

    def drain(self, timeout: float = 0.3) -> list[dict[str, Any]]:
        """Everything published so far (waits `timeout` for late arrivals)."""
        import json

        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None:
                self.messages.append(json.loads(message["data"]))
        return self.messages

    def close(self) -> None:
        self._pubsub.close()


@pytest.fixture
def channel(redis_conn: redis.Redis, base_env: dict[str, str]) -> Iterator[ChannelListener]:
    listener = ChannelListener(redis_conn, base_env["REDIS_CHANNEL"])
    yield listener
    listener.close()
