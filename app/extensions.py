"""Unbound extensions, bound to an app by the factory with `init_app`.

The Redis client is per app, not global: it is built from the app's settings
and kept in `app.extensions["redis"]`; `redis_client()` fetches it.
"""

from __future__ import annotations

import os
import time
from typing import Any, cast

import redis
from flask import current_app
from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from config.redis_url import CLUSTER, SENTINEL, RedisTarget

# Stable constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Tokens verified in one app, at most: the oldest is forgotten first.
VERIFIED_TOKENS_KEPT = 10_000


class TokenCachingJWTManager(JWTManager):
    """flask-jwt-extended's manager, remembering each token it verified until the token's `exp`.

    Checking a token (flask-jwt-extended parses it twice, then PyJWT checks
    its signature) was a tenth of a write's CPU (docs/write-path-profile.md),
    and a client sends the same token again and again. The exact token
    string, signature and all, gets the claims of its first check while its
    `exp` is ahead; every other check (a usable `sub`, JWT_MAX_LIFETIME,
    revocation) runs on each request as before. Each app keeps its own (its
    own keys and settings).
    """

    def _decode_jwt_from_config(
        self, encoded_token: str, csrf_value: Any = None, allow_expired: bool = False
    ) -> dict[str, Any]:
        if csrf_value is not None or allow_expired:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        verified: dict[str, tuple[float, dict[str, Any]]] = current_app.extensions.setdefault("verified_tokens", {})
        found = verified.get(encoded_token)
        if found is not None:
            if time.time() < found[0]:
                return dict(found[1])
            del verified[encoded_token]  # expired: PyJWT says so, with the leeway it is given
        claims = super()._decode_jwt_from_config(encoded_token)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if len(verified) >= VERIFIED_TOKENS_KEPT:
                del verified[next(iter(verified))]
            verified[encoded_token] = (float(exp), claims)
        return dict(claims)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = TokenCachingJWTManager()


def connect_redis(
    target: RedisTarget, timeout: float, name: str, *, decode_responses: bool = True, health_check_interval: int = 30
) -> redis.Redis:
    """A client for REDIS_URL's server: one server's, the primary the sentinels name now, or a cluster's.

    Under Sentinel, every new connection asks the sentinels for the primary,
    so after a failover the client's next connection reaches the new one, and
    a connection to a demoted primary is dropped on its first READONLY answer.
    On a cluster, redis-py's cluster client sends each command to the primary
    of its key's slot (every board's keys share one, through the board's hash
    tag), learns the slots from any node that answers, and learns them again
    on a MOVED answer or a lost node, so it follows a replica's promotion;
    it answers the key commands the app uses as a `redis.Redis` does.
    Every connection is named `<name>-<pid>` (CLIENT LIST shows who holds what).
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": health_check_interval,
        "decode_responses": decode_responses,
        "client_name": f"{name}-{os.getpid()}",
    }
    if target.mode == SENTINEL:
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout}
        )
        primary = sentinels.master_for(  # type: ignore[no-untyped-call]
            target.service, db=target.db, username=target.username, password=target.password, **options
        )
        return cast(redis.Redis, primary)
    if target.mode == CLUSTER:
        del options["health_check_interval"]  # not the cluster client's: it checks on a failing command
        seeds = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]
        cluster = RedisCluster(
            startup_nodes=seeds,
            username=target.username,
            password=target.password,
            require_full_coverage=True,
            **options,
        )
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(target.url, **options)


def cluster_primaries(client: redis.Redis, *, refresh: bool = False) -> list[tuple[str, redis.Redis]]:
    """A cluster's primaries as its client knows them (`refresh`: as a node says they are now):
    (host:port, a client of that node alone)."""
    cluster = cast(RedisCluster, client)
    if refresh:
        cluster.nodes_manager.initialize()
    return [(node.name, cluster.get_redis_connection(node)) for node in cluster.get_primaries()]  # type: ignore[no-untyped-call]


def sentinel_primary(client: redis.Redis) -> str:
    """host:port of the primary the sentinels name now; redis.RedisError when none answers."""
    pool: Any = client.connection_pool
    host, port = pool.get_master_address()
    return f"{host}:{port}"


def init_redis(app_extensions: dict[str, object], target: RedisTarget, timeout: float, name: str) -> redis.Redis:
    """Create the app's Redis client; connections are opened lazily from its pool."""
    client = connect_redis(target, timeout, name)
    app_extensions["redis"] = client
    return client


def init_hub_redis(app_extensions: dict[str, object], target: RedisTarget, timeout: float) -> redis.Redis:
    """The board hub's own client, for its one Pub/Sub connection.

    Bytes, not text: redis-py turns a PONG into a message only then, and the
    hub's liveness check listens for it. No health-check PINGs of redis-py's
    own: the hub sends its own, from one greenlet, so no two ever write to the
    connection at once.
    """
    client = connect_redis(target, timeout, "board-hub", decode_responses=False, health_check_interval=0)
    app_extensions["hub_redis"] = client
    return client


def use_sqlite_wal(dbapi_connection: Any, connection_record: Any) -> None:
    """SQLite pragmas for two services on one file: readers never block the writer; foreign keys hold."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def redis_client() -> redis.Redis:
    """The current app's Redis client."""
    return cast(redis.Redis, current_app.extensions["redis"])
