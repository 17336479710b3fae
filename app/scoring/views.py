"""The Increment Service's one resource: `POST /score`."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_jwt_extended import jwt_required

from app.auth import current_user_id
from app.extensions import db, limiter
from app.leaderboard import BoardCache, submit_score
from app.metrics import SUBMISSIONS, WRITE_SECONDS
from app.scoring.schemas import check_content_type, parse_idempotency_key, parse_json, parse_score, read_body

bp = Blueprint("scoring", __name__)


@bp.before_request
def start_timer() -> None:
    g.started = time.perf_counter()


@bp.after_request
def record_submission(response: Response) -> Response:
    """Every answer of POST /score, by outcome, and how long it took."""
    if request.endpoint == "scoring.post_score" and "started" in g:
        if response.status_code == 200:
            outcome = "replayed" if response.headers.get("Idempotent-Replayed") else "ok"
        else:
            outcome = (response.get_json(silent=True) or {}).get("error", {}).get("code", str(response.status_code))
        SUBMISSIONS.labels(outcome).inc()
        WRITE_SECONDS.observe(time.perf_counter() - g.started)
    return response


def _per_user_limit() -> str:
    return str(current_app.extensions["settings"].rate_limit_per_user)


@bp.post("/score")
@jwt_required()
# Inside jwt_required: counted per authenticated user, and only once the token is good.
@limiter.limit(_per_user_limit, key_func=current_user_id)
def post_score() -> Response:
    """Add the body's score to the caller's total; answer the new total and rank."""
    cache: BoardCache = current_app.extensions["leaderboard"]
    check_content_type(request.mimetype, request.mimetype_params.get("charset"))
    key = parse_idempotency_key(request.headers)
    body = read_body(request, current_app.extensions["settings"].max_content_length)
    increment = parse_score(parse_json(body), cache.board.max_increment)
    together = current_app.extensions["group_commit"]
    submission = submit_score(db.engine, cache, current_user_id(), increment, key, together=together)
    response = jsonify(submission.as_json())
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
