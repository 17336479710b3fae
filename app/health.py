"""`/healthz` (the process answers), `/readyz` (its database and Redis answer) and `/openapi.json`.

Both services register this blueprint.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import error_response
from app.extensions import db, redis_client, sentinel_primary
from app.metrics import render
from config.redis_url import SENTINEL

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
    checks = {"database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError:
        db.session.rollback()
        checks["database"] = "unavailable"
    failing = []
    if checks["database"] != "ok":
        failing.append("database")
    sentinel = current_app.extensions["settings"].redis.mode == SENTINEL
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
    if failing:
        return error_response(503, "not_ready", f"Unavailable: {', '.join(failing)}.", {"Retry-After": "1"})
    return jsonify({"status": "ready", **checks})
