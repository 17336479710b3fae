"""The View Board Service: the live stream, the snapshot, a user's rank and the board page."""

from __future__ import annotations

import contextlib
import gc
import os

import greenlet
import redis
from flask import Blueprint, Response, current_app, jsonify, render_template, request
from flask_jwt_extended import verify_jwt_in_request
from gevent import monkey
from sqlalchemy.exc import SQLAlchemyError

from app import ranks
from app.auth import is_valid_user_id
from app.board.hub import BoardHub, Frame
from app.board.sse import StreamOptions, parse_last_event_id, stream_board
from app.errors import NotFound, ServiceUnavailable
from app.extensions import db
from app.leaderboard import BoardCache

# The page's script and stylesheet are files served by us: no build step, no
# CDN, and a Content-Security-Policy that allows no inline code.
bp = Blueprint("board", __name__, static_folder="static", static_url_path="/assets", template_folder="templates")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx and similar proxies: pass each frame on at once.
    "X-Accel-Buffering": "no",
}

PAGE_TITLE_MAX_LENGTH = 120
PAGE_THEMES = ("light", "dark")


def board_hub() -> BoardHub:
    hub: BoardHub = current_app.extensions["board_hub"]
    if monkey.is_module_patched("socket"):  # the listener is a greenlet: only where gevent runs
        hub.start()
    return hub


@bp.before_request
def require_token_when_configured() -> None:
    # The page and its files are public: only the board's data needs the token.
    public = (None, "board.page", "board.static")
    if current_app.extensions["settings"].board_require_auth and request.endpoint not in public:
        verify_jwt_in_request()


@bp.get("/")
def page() -> Response:
    """The embeddable live board: `?n=` rows (at most TOP_N), `?title=` heading, `?theme=light|dark`."""
    settings = current_app.extensions["settings"]
    rows = request.args.get("n", type=int)
    title = request.args.get("title", "").strip()[:PAGE_TITLE_MAX_LENGTH] or "Leaderboard"
    theme = request.args.get("theme", "")
    html = render_template(
        "board/page.html",
        title=title,  # autoescaped by Jinja: a title is only ever text
        rows=min(rows, settings.top_n) if rows and rows > 0 else settings.top_n,
        theme=theme if theme in PAGE_THEMES else "auto",
    )
    csp = (
        "default-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'; "
        f"frame-ancestors {settings.board_frame_ancestors}"
    )
    # No X-Frame-Options: it cannot name the parent origins, and frame-ancestors replaces it.
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response(html, mimetype="text/html", headers=headers)


@bp.get("/events")
def events() -> Response:
    """The live board as Server-Sent Events."""
    if request.method == "HEAD":  # the headers only; no stream to keep open
        return Response(mimetype="text/event-stream", headers=SSE_HEADERS)
    settings = current_app.extensions["settings"]
    hub = board_hub()
    # A new viewer gets the board at once, even before the listener's first
    # read; with Redis down it streams anyway (heartbeats now, the board later).
    with contextlib.suppress(redis.RedisError, SQLAlchemyError):
        hub.current()
    # Under gunicorn the hub writes frames to the viewer's socket itself (see
    # app.board.hub); other servers get the frames through the generator.
    socket = request.environ.get("gunicorn.socket")
    if socket is not None:
        # A viewer that stops reading blocks only its own greenlet, and only
        # this long: then the write fails and the stream is dropped.
        socket.settimeout(settings.sse_write_timeout_seconds)
    # gunicorn frames an HTTP/1.1 body in chunks; the hub must frame its writes the same way.
    chunked = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
    options = StreamOptions(
        retry_ms=settings.sse_retry_ms,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        coalesce_seconds=settings.sse_coalesce_ms / 1000,
    )
    last_event_id = parse_last_event_id(request.headers.get("Last-Event-ID"))
    stream = stream_board(
        hub, options, last_event_id, client=socket, client_ip=request.remote_addr or "", chunked=chunked
    )
    response = Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.direct_passthrough = True
    return response


@bp.get("/leaderboard")
def leaderboard() -> Response:
    """The current board: version and the top N with rank, user and score."""
    frame = _current_frame()
    etag = f'"{frame.version}"'
    if request.headers.get("If-None-Match") == etag:
        return Response(status=304, headers={"ETag": etag})
    return Response(frame.snapshot, mimetype="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})


@bp.get("/leaderboard/users/<path:user_id>")
def user_rank(user_id: str) -> Response:
    """A user's total and exact rank among everyone on the board (from SQL)."""
    cache: BoardCache = current_app.extensions["leaderboard"]
    found = ranks.user_rank(db.engine, cache.board.name, user_id) if is_valid_user_id(user_id) else None
    if found is None:
        raise UserNotFound(f"No scores for user {user_id!r}.")
    total, rank = found
    return jsonify({"userId": user_id, "score": total, "rank": rank})


@bp.get("/stats")
def stats() -> Response:
    """This worker's numbers: viewers, frames, reconnects (`?greenlets=1` counts greenlets too)."""
    hub: BoardHub = current_app.extensions["board_hub"]
    body: dict[str, object] = {
        "pid": os.getpid(),
        "viewers": hub.viewers,
        "connected": hub.connected,
        "draining": hub.draining,
        "version": hub.latest.version if hub.latest else None,
        **hub.stats,
    }
    if request.args.get("greenlets") == "1":
        body["greenlets"] = count_greenlets()
    return jsonify(body)


def count_greenlets() -> int:
    """Live greenlets in this process; walks the heap, so only on request."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


class UserNotFound(NotFound):
    code = "user_not_found"


def _current_frame() -> Frame:
    frame = board_hub().current()
    if frame is None:
        raise ServiceUnavailable("The board is not available yet; try again shortly.", headers={"Retry-After": "1"})
    return frame
