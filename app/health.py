"""`/healthz` (the process answers) and `/readyz` (its database and Redis answer).

Both services register this blueprint.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import error_response
from app.extensions import db, redis_client

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = {"database": "ok", "redis": "ok"}
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except SQLAlchemyError:
        db.session.rollback()
        checks["database"] = "unavailable"
    try:
        redis_client().ping()
    except redis.RedisError:
        checks["redis"] = "unavailable"
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        return error_response(503, "not_ready", f"Unavailable: {', '.join(failing)}.", {"Retry-After": "1"})
    return jsonify({"status": "ready", **checks})
