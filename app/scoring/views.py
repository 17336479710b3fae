"""The Increment Service's submissions: `POST /score`, `POST /boards/<boardId>/score`, `POST /scores`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_jwt_extended import jwt_required

from app.auth import current_display_name, current_user_id
from app.errors import RateLimited
from app.extensions import db
from app.leaderboard import Board, BoardNotFound, BoardRegistry, Submitted
from app.leaderboard.writes import MAX_BOARDS_AT_ONCE, scores_answer, submit_score, submit_scores
from app.metrics import SUBMISSIONS, WRITE_SECONDS
from app.scoring.schemas import (
    check_content_type,
    checked_score,
    parse_idempotency_key,
    parse_json,
    parse_score,
    parse_scores,
    read_body,
)

bp = Blueprint("scoring", __name__)

SUBMITTING = ("scoring.post_score", "scoring.post_scores")


@bp.before_request
def start_timer() -> None:
    g.started = time.perf_counter()


@bp.after_request
def record_submission(response: Response) -> Response:
    """Every answer of a submission, by outcome, and how long it took."""
    if request.endpoint in SUBMITTING and "started" in g:
        if response.status_code == 200:
            outcome = "replayed" if response.headers.get("Idempotent-Replayed") else "ok"
        else:
            outcome = (response.get_json(silent=True) or {}).get("error", {}).get("code", str(response.status_code))
        SUBMISSIONS.labels(outcome).inc()
        WRITE_SECONDS.observe(time.perf_counter() - g.started)
    return response


def per_user(view: Callable[..., Response]) -> Callable[..., Response]:
    """RATE_LIMIT_PER_USER: one budget per user for every route that submits (app.ratelimit).

    Goes under @jwt_required, so only a good token spends its user's budget."""

    @functools.wraps(view)
    def limited(*args: Any, **kwargs: Any) -> Response:
        rate_limit = current_app.extensions.get("rate_limit")
        if rate_limit is not None:
            full = rate_limit.check(current_user_id())
            if full is not None:
                raise RateLimited(str(full[0]), full[1])
        return view(*args, **kwargs)

    return limited


def registry() -> BoardRegistry:
    boards: BoardRegistry = current_app.extensions["boards"]
    return boards


def find_board(board_id: str | None) -> Board:
    """The board a route names (none: the default board), or BoardNotFound."""
    return registry().named(board_id)


def _document() -> object:
    check_content_type(request.mimetype, request.mimetype_params.get("charset"))
    return parse_json(read_body(request, current_app.extensions["settings"].max_content_length))


@bp.post("/score")
@bp.post("/boards/<board_id>/score")
@jwt_required()
@per_user
def post_score(board_id: str | None = None) -> Response:
    """Submit the body's score to a board: the user's value after it, their rank, whether it changed."""
    board = find_board(board_id)
    key = parse_idempotency_key(request.headers)
    value = parse_score(_document(), board.score_min, board.score_max)
    submitted = Submitted(board, current_user_id(), value, current_display_name())
    try:
        submission = submit_score(
            db.engine,
            current_app.extensions["board_cache"],
            submitted,
            key,
            together=current_app.extensions["group_commit"],
        )
    except BoardNotFound:
        registry().forget(board.id)  # deleted meanwhile: the next request looks again
        raise
    response = jsonify(submission.as_json())
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.post("/scores")
@jwt_required()
@per_user
def post_scores() -> Response:
    """Submit scores to several boards at once: all recorded, or none; one answer per board."""
    key = parse_idempotency_key(request.headers)
    scores = parse_scores(_document(), MAX_BOARDS_AT_ONCE)
    user_id, name = current_user_id(), current_display_name()
    submitted = []
    for board_id, score in scores.items():
        board = find_board(board_id)
        value = checked_score(score, board.score_min, board.score_max, where=f"scores[{board_id!r}]")
        submitted.append(Submitted(board, user_id, value, name))
    try:
        answers, replayed = submit_scores(db.engine, current_app.extensions["board_cache"], submitted, key)
    except BoardNotFound as missing:
        registry().forget(missing.board_id)
        raise
    response = jsonify(
        scores_answer(user_id, [(one.board, answer) for one, answer in zip(submitted, answers, strict=True)])
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
