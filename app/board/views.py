"""The View Board Service: every board's live stream, snapshot, rankings, user ranks and page.

The default board's routes are Part 1's (`/events`, `/leaderboard`, ...);
every board, the default one included, also has them under `/boards/<boardId>/`.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any

import greenlet
from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for
from flask_jwt_extended import verify_jwt_in_request
from gevent import monkey
from sqlalchemy.exc import SQLAlchemyError

from app.auth import is_valid_user_id, require_admin
from app.board.hub import BoardHub, Frame
from app.board.sse import StreamOptions, come_back_later, parse_last_event_id, stream_board, stream_changes
from app.errors import InvalidQuery, ServiceUnavailable, UserNotFound
from app.extensions import db
from app.leaderboard import Board, BoardNotFound, BoardRegistry, Standing, ranks
from app.leaderboard.cache import REDIS_ERRORS
from app.leaderboard.ranks import PAGE_LIMIT_MAX, Entry, Ranking
from app.leaderboard.rebuild import top_standings
from app.leaderboard.seasons import periods_before

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
PAGE_RECENT_MAX = 10
DEFAULT_LIMIT = 10
MAX_OFFSET = 10**9


def board_hub() -> BoardHub:
    hub: BoardHub = current_app.extensions["board_hub"]
    if monkey.is_module_patched("socket"):  # the listener is a greenlet: only where gevent runs
        hub.start()
    return hub


def find_board(board_id: str | None) -> Board:
    """The board a route names (none: the default board), or BoardNotFound (404)."""
    registry: BoardRegistry = current_app.extensions["boards"]
    return registry.named(board_id)


@bp.before_request
def require_token_when_configured() -> None:
    # The page and its files are public: only the boards' data needs the token.
    public = (None, "board.page", "board.static", "board.stats")
    if current_app.extensions["settings"].board_require_auth and request.endpoint not in public:
        verify_jwt_in_request()


@bp.get("/")
@bp.get("/boards/<board_id>/")
def page(board_id: str | None = None) -> Response:
    """The embeddable live board: `?n=` rows (at most its top N), `?title=` heading, `?theme=light|dark`,
    `?recent=` the latest changes, 1 to 10 (from the change log; none by default)."""
    settings = current_app.extensions["settings"]
    board = find_board(board_id)
    rows = request.args.get("n", type=int)
    title = request.args.get("title", "").strip()[:PAGE_TITLE_MAX_LENGTH] or _page_title(board)
    theme = request.args.get("theme", "")
    recent = request.args.get("recent", type=int) or 0
    route: dict[str, Any] = {} if board_id is None else {"board_id": board.id}
    html = render_template(
        "board/page.html",
        title=title,  # autoescaped by Jinja: a title is only ever text
        rows=min(rows, board.top_n) if rows and rows > 0 else board.top_n,
        theme=theme if theme in PAGE_THEMES else "auto",
        events_url=url_for("board.events", **route),
        snapshot_url=url_for("board.leaderboard", **route),
        recent=min(recent, PAGE_RECENT_MAX) if recent > 0 and settings.changes_retain else 0,
        changes_url=url_for("board.changes", **route),
        operator=board.operator,
    )
    csp = (
        "default-src 'self'; base-uri 'none'; form-action 'none'; object-src 'none'; "
        f"frame-ancestors {settings.board_frame_ancestors}"
    )
    # No X-Frame-Options: it cannot name the parent origins, and frame-ancestors replaces it.
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return Response(html, mimetype="text/html", headers=headers)


def _page_title(board: Board) -> str:
    # The default board's id is an operator's setting, not a heading; its title, once set, is.
    return "Leaderboard" if board.is_default and board.title == board.id else board.title


@bp.get("/boards")
def boards() -> Response:
    """Every board's settings and current period (null without resets)."""
    registry: BoardRegistry = current_app.extensions["boards"]
    return jsonify({"boards": [{"period": None, "periodEnds": None, **board.as_json()} for board in registry.all()]})


@bp.get("/events")
@bp.get("/boards/<board_id>/events")
def events(board_id: str | None = None) -> Response:
    """A board, live, as Server-Sent Events."""
    board = find_board(board_id)
    if request.method == "HEAD":  # the headers only; no stream to keep open
        return Response(mimetype="text/event-stream", headers=SSE_HEADERS)
    settings = current_app.extensions["settings"]
    hub = board_hub()
    feed = hub.feed(board)
    # A new viewer gets the board at once, even before the listener's first
    # read; with Redis down it streams anyway (heartbeats now, the board later).
    with contextlib.suppress(*REDIS_ERRORS, SQLAlchemyError):
        try:
            hub.current(board)
        except BoardNotFound:  # deleted since this worker last looked
            hub.end_board(board.id)
            raise
    # Under gunicorn the hub writes frames to the viewer's socket itself (see
    # app.board.hub); other servers get the frames through the generator.
    socket = request.environ.get("gunicorn.socket")
    if socket is not None:
        # A viewer that stops reading blocks only its own greenlet, and only
        # this long: then the write fails and the stream is dropped.
        socket.settimeout(settings.sse_write_timeout_seconds)
    # gunicorn frames an HTTP/1.1 body in chunks; the hub must frame its writes the same way.
    chunked = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
    options = _stream_options()
    client_ip = request.remote_addr or ""
    if hub.full(feed, client_ip):
        # Sent away before any stream starts: one short, complete answer.
        hub.refuse()
        return Response(come_back_later(options), mimetype="text/event-stream", headers=SSE_HEADERS)
    last_event_id = parse_last_event_id(request.headers.get("Last-Event-ID"))
    stream = stream_board(hub, feed, options, last_event_id, client=socket, client_ip=client_ip, chunked=chunked)
    response = Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.direct_passthrough = True
    return response


def _stream_options() -> StreamOptions:
    settings = current_app.extensions["settings"]
    return StreamOptions(
        retry_ms=settings.sse_retry_ms,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        coalesce_seconds=settings.sse_coalesce_ms / 1000,
    )


@bp.get("/changes")
@bp.get("/boards/<board_id>/changes")
def changes(board_id: str | None = None) -> Response:
    """A board's change log, live, as Server-Sent Events: one frame per accepted change;
    `Last-Event-ID` replays every change since that entry."""
    board = find_board(board_id)
    if request.method == "HEAD":
        return Response(mimetype="text/event-stream", headers=SSE_HEADERS)
    settings = current_app.extensions["settings"]
    hub = board_hub()
    feed = hub.change_feed(board)
    socket = request.environ.get("gunicorn.socket")
    if socket is not None:
        socket.settimeout(settings.sse_write_timeout_seconds)
    options = _stream_options()
    client_ip = request.remote_addr or ""
    if hub.full(feed, client_ip):
        hub.refuse()
        return Response(come_back_later(options), mimetype="text/event-stream", headers=SSE_HEADERS)
    stream = stream_changes(
        hub, feed, options, request.headers.get("Last-Event-ID"), client=socket, client_ip=client_ip
    )
    response = Response(stream, mimetype="text/event-stream", headers=SSE_HEADERS)
    response.direct_passthrough = True
    return response


@bp.get("/leaderboard")
@bp.get("/boards/<board_id>/leaderboard")
def leaderboard(board_id: str | None = None) -> Response:
    """The current board (version and top N), or with `offset`, `around` or `users` a ranking from SQL;
    `period` asks for a past period of a board with resets (from SQL)."""
    board = find_board(board_id)
    shown = _asked_period(board)
    asked = [name for name in ("offset", "around", "users") if name in request.args]
    if len(asked) > 1:
        raise InvalidQuery("Ask for one of offset, around or users at a time.")
    if asked:
        return _ranking(shown, asked[0])
    if "limit" in request.args:
        raise InvalidQuery("limit goes with offset, around or users.")
    if shown is not board:
        return _ended_top(shown)
    frame = _current_frame(board)
    etag = f'"{frame.version}"'
    if request.headers.get("If-None-Match") == etag:
        return Response(status=304, headers={"ETag": etag})
    return Response(frame.snapshot, mimetype="application/json", headers={"ETag": etag, "Cache-Control": "no-cache"})


def _asked_period(board: Board) -> Board:
    """The board as of the period `?period=` names: the current one when none is named."""
    return board.as_of(request.args.get("period"))


def _ended_top(board: Board) -> Response:
    """A period that ended: its top N as it ended, from SQL, in the snapshot's shape (no version)."""
    return jsonify({**board.period_json(), **_top_json(top_standings(db.session(), board))})


def _top_json(standings: list[Standing]) -> dict[str, object]:
    """Standings from SQL as the snapshot lists them: ranked entries, and the names they have."""
    body: dict[str, object] = {
        "top": [{"rank": i, "userId": s.user_id, "score": s.total} for i, s in enumerate(standings, 1)]
    }
    names = {s.user_id: s.name for s in standings if s.name}
    if names:
        body["names"] = names
    return body


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidQuery(f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


def _ranking(board: Board, asked: str) -> Response:
    limit = _int_arg("limit", DEFAULT_LIMIT, 1, PAGE_LIMIT_MAX)
    if asked == "offset":
        return _ranking_json(board, ranks.page(db.engine, board, _int_arg("offset", 0, 0, MAX_OFFSET), limit))
    if asked == "around":
        user_id = request.args["around"]
        found = ranks.around(db.engine, board, user_id, limit) if is_valid_user_id(user_id) else None
        if found is None:
            raise UserNotFound(f"No score for user {user_id!r} on board {board.id!r}.")
        return _ranking_json(board, found)
    users = list(dict.fromkeys(user for user in request.args["users"].split(",") if user))
    if not 1 <= len(users) <= PAGE_LIMIT_MAX:
        raise InvalidQuery(f"users must list 1 to {PAGE_LIMIT_MAX} user ids, separated by commas.")
    if "limit" in request.args:
        raise InvalidQuery("limit does not go with users.")
    entries = ranks.ranks_of(db.engine, board, [user for user in users if is_valid_user_id(user)])
    return _ranking_json(board, Ranking(count=-1, entries=entries))


def _ranking_json(board: Board, ranking: Ranking) -> Response:
    body: dict[str, object] = {**board.period_json(), "entries": [_entry_json(entry) for entry in ranking.entries]}
    if ranking.count >= 0:
        body = {"count": ranking.count, **body}
    names = {entry.user_id: entry.name for entry in ranking.entries if entry.name}
    if names:
        body["names"] = names
    return jsonify(body)


def _entry_json(entry: Entry) -> dict[str, object]:
    return {"rank": entry.rank, "userId": entry.user_id, "score": entry.score}


@bp.get("/leaderboard/users/<path:user_id>")
@bp.get("/boards/<board_id>/users/<path:user_id>")
def user_rank(user_id: str, board_id: str | None = None) -> Response:
    """A user's value and exact rank among everyone on the board (from SQL), in its current period
    or the one `?period=` names."""
    board = _asked_period(find_board(board_id))
    valid = is_valid_user_id(user_id)
    found = ranks.user_rank(db.engine, board.id, user_id, period=board.period_id) if valid else None
    if found is None:
        raise UserNotFound(f"No scores for user {user_id!r}.")
    total, rank = found
    return jsonify({"userId": user_id, "score": total, "rank": rank, **board.period_json()})


PERIODS_DEFAULT_LIMIT = 10
PERIODS_TOP = 3


@bp.get("/boards/<board_id>/periods")
def periods(board_id: str) -> Response:
    """The board's periods, newest first: the current one, then those that ended with scores,
    each with its top 3. `limit` (1 to 100), `before=<period id>` for the ones before it."""
    board = find_board(board_id)
    limit = _int_arg("limit", PERIODS_DEFAULT_LIMIT, 1, PAGE_LIMIT_MAX)
    if board.period is None:
        return jsonify({"periods": []})
    listed = []
    before = request.args.get("before")
    if before is None:
        listed.append(board)
        before = board.period.id
    else:
        board.as_of(before)  # a period of the board's, begun
    for period in periods_before(db.engine, board.id, board.reset, board.timezone, before, limit - len(listed)):
        listed.append(board.at(period))
    return jsonify({"periods": [_period_json(one, current=one is board) for one in listed]})


def _period_json(board: Board, *, current: bool) -> dict[str, object]:
    assert board.period is not None
    standings = top_standings(db.session(), board, limit=PERIODS_TOP)
    return {**board.period.as_json(board.timezone), "current": current, **_top_json(standings)}


@bp.get("/stats")
def stats() -> Response:
    """This worker's numbers, for operators (admin token): viewers, boards, frames, reconnects.

    `?greenlets=1` counts live greenlets too: it walks the heap and holds
    the worker for a moment, which is why only an admin may ask.
    """
    require_admin()
    hub: BoardHub = current_app.extensions["board_hub"]
    default = hub.feed(find_board(None)).latest
    body: dict[str, object] = {
        "pid": os.getpid(),
        "viewers": hub.viewers,
        "boards": hub.boards,
        "connected": hub.connected,
        "subscriptions": hub.lines,
        "draining": hub.draining,
        "version": default.version if default else None,
        **hub.stats,
    }
    if request.args.get("greenlets") == "1":
        body["greenlets"] = count_greenlets()
    return jsonify(body)


def count_greenlets() -> int:
    """Live greenlets in this process; walks the heap, so only on request."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def _current_frame(board: Board) -> Frame:
    frame = board_hub().current(board)
    if frame is None:
        raise ServiceUnavailable("The board is not available yet; try again shortly.", headers={"Retry-After": "1"})
    return frame
