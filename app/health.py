"""`/healthz` (the process answers), `/readyz` (its database and Redis answer) and `/openapi.json`.

Both services register this blueprint.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import error_response
from app.extensions import cluster_primaries, db, redis_client, sentinel_primary
from app.leaderboard.cache import REDIS_ERRORS
from app.metrics import render
from config.redis_url import CLUSTER, SENTINEL

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus exposition of every worker of this service."""
    body, content_type = render(current_app.extensions["settings"].prometheus_multiproc_dir)
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(current_app.extensions["openapi"])


@bp.get("/readyz")
def readyz() -> Response:
    checks: dict[str, Any] = {"database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError:
        db.session.rollback()
        checks["database"] = "unavailable"
    failing = []
    if checks["database"] != "ok":
        failing.append("database")
    mode = current_app.extensions["settings"].redis.mode
    if mode == CLUSTER:
        down = _cluster_nodes_down(checks)
        if down is None:
            checks["redis"] = "unavailable"
            failing.append("redis (no node of the cluster answers)")
        elif down:
            checks["redis"] = "unavailable"
            failing.append(f"redis (the cluster's primary at {', '.join(down)})")
        return _ready(checks, failing)
    sentinel = mode == SENTINEL
    try:
        server = sentinel_primary(redis_client()) if sentinel else ""
    except redis.RedisError:
        checks["redis"] = "unavailable"
        failing.append("redis (no sentinel names a primary that answers)")
    else:
        try:
            redis_client().ping()
        except redis.RedisError:
            checks["redis"] = "unavailable"
            failing.append(f"redis (the primary at {server})" if server else "redis")
        if sentinel:
            checks["redisPrimary"] = server
    return _ready(checks, failing)


def _ready(checks: dict[str, Any], failing: list[str]) -> Response:
    if failing:
        return error_response(503, "not_ready", f"Unavailable: {', '.join(failing)}.", {"Retry-After": "1"})
    return jsonify({"status": "ready", **checks})


def _cluster_nodes_down(checks: dict[str, Any]) -> list[str] | None:
    """Ping each primary of the cluster as its client knows them; the ones that do not answer
    (None: no node answers at all). `checks` gains `redisPrimaries`: each primary's host:port."""
    down: list[str] = []
    for refresh in (False, True):  # a primary away: ask the cluster once whom a replica's promotion put there
        try:
            primaries = cluster_primaries(redis_client(), refresh=refresh)
        except REDIS_ERRORS:
            return None
        checks["redisPrimaries"] = [name for name, _ in primaries]
        down = [name for name, node in primaries if not _answers(node)]
        if not down:
            break
    return down


def _answers(node: redis.Redis) -> bool:
    try:
        return bool(node.ping())
    except REDIS_ERRORS:
        return False
