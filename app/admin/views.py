"""Boards and moderation: create, change, list and delete boards; remove an entry; erase a user.

Every route needs a token with the admin role (app.auth.require_admin):
401 without a valid token, 403 with another.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.orm import Session

from app.admin.schemas import parse_board_settings
from app.auth import is_valid_user_id, require_admin
from app.errors import UserNotFound
from app.extensions import db
from app.leaderboard import BoardCache, BoardRegistry
from app.leaderboard.moderation import delete_board, erase_user, remove_entry
from app.leaderboard.rebuild import rebuild_board
from app.scoring.schemas import check_content_type, parse_json, read_body

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def admins_only() -> None:
    require_admin()


def _registry() -> BoardRegistry:
    boards: BoardRegistry = current_app.extensions["boards"]
    return boards


def _cache() -> BoardCache:
    cache: BoardCache = current_app.extensions["board_cache"]
    return cache


@bp.put("/boards/<board_id>")
def put_board(board_id: str) -> Response:
    """Create the board (201) or change its settings (200); the live board follows at once."""
    check_content_type(request.mimetype, request.mimetype_params.get("charset"))
    body = read_body(request, current_app.extensions["settings"].max_content_length)
    changes = parse_board_settings(parse_json(body) if body.strip() else {})
    before = _registry().find(board_id)
    board, created = _registry().put(board_id, changes)
    if before is None or before.top_n != board.top_n:
        # A new board shows (empty) at once; a new size applies at once.
        with Session(db.engine) as session:
            rebuild_board(session, _cache(), board, reason="manual")
    response = jsonify(board.as_json())
    response.status_code = 201 if created else 200
    return response


@bp.get("/boards")
def list_boards() -> Response:
    return jsonify({"boards": [board.as_json() for board in _registry().all()]})


@bp.delete("/boards/<board_id>")
def remove_board(board_id: str) -> Response:
    """Delete a board, its scores and its Redis keys; its viewers are told to go."""
    board = delete_board(_registry(), _cache(), _registry().named(board_id).id)
    return jsonify({"status": "deleted", "board": board.id})


@bp.delete("/boards/<board_id>/users/<path:user_id>")
def remove_user_from_board(board_id: str, user_id: str) -> Response:
    """Remove one user's entry from one board (a cheater): the next user moves up at once.
    On a board with resets, from the current period, or the one `?period=` names."""
    board = _registry().named(board_id).as_of(request.args.get("period"))
    if not is_valid_user_id(user_id) or not remove_entry(db.engine, _cache(), board, user_id):
        raise UserNotFound(f"User {user_id!r} has no score on board {board.id!r}.")
    return jsonify({"status": "removed", "board": board.id, "userId": user_id})


@bp.delete("/users/<path:user_id>")
def erase(user_id: str) -> Response:
    """Erase a user from every board, with their display name and idempotency records."""
    if not is_valid_user_id(user_id):
        raise UserNotFound(f"User {user_id!r} has no data here.")
    erased = erase_user(db.engine, _cache(), _registry(), user_id)
    return jsonify({"status": "erased", **erased.as_json()})
