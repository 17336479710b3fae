"""The View Board Service's blueprint and the worker's BoardHub."""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS

from app.board.hub import BoardHub
from app.extensions import db, init_hub_redis
from app.leaderboard import Board, BoardCache, BoardNotFound, BoardRegistry
from app.leaderboard.rebuild import rebuild_board
from config.settings import Settings


def init_board(app: Flask, settings: Settings, registry: BoardRegistry, cache: BoardCache) -> None:
    """Give the app its BoardHub (started on first use) and the board settings."""
    from app.board.views import bp

    def load_latest(board: Board) -> str | None:
        raw = cache.latest_raw(board)
        if raw is None:
            # Never built, or lost with a Redis restart: rebuild from SQL first,
            # if the board is still there (a deleted one must not come back).
            registry.forget(board.id)
            current = registry.find(board.id)
            if current is None:
                raise BoardNotFound(board.id)
            with app.app_context():
                try:
                    rebuild_board(db.session(), cache, current, reason="missing")
                finally:
                    db.session.remove()
            raw = cache.latest_raw(board)
        return raw

    app.extensions["board_hub"] = BoardHub(
        init_hub_redis(app.extensions, settings.redis, settings.redis_timeout_seconds),
        load_latest,
        max_viewers=settings.sse_max_viewers,
        max_viewers_per_ip=settings.sse_max_viewers_per_ip,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
        coalesce_seconds=settings.sse_coalesce_ms / 1000,
        keep=registry.defaults.default_board(),
        on_deleted=registry.forget,
        transport=settings.board_transport,
        commands=cache.redis,
    )
    # EventSource cannot send headers, so with BOARD_REQUIRE_AUTH the token
    # may also come in a cookie.
    app.config["JWT_TOKEN_LOCATION"] = ["headers", "cookies"]
    if settings.board_cors_origins:
        any_origin = settings.board_cors_origins == ("*",)
        CORS(
            app,
            resources={r"/(events|changes|leaderboard.*|boards.*)": {}},
            origins="*" if any_origin else list(settings.board_cors_origins),
            supports_credentials=not any_origin,
            expose_headers=["ETag"],
        )
    app.register_blueprint(bp)
