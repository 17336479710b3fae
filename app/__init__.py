"""The two application factories: the Increment Service and the View Board Service.

Each builds the same base (settings, logging, database, Redis, JWT, errors,
health, CLI) in `_build_app` and then registers only its own blueprint.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from gevent import monkey
from sqlalchemy import event
from werkzeug.middleware.proxy_fix import ProxyFix

from app import auth, cli, errors, health
from app.extensions import db, init_redis, migrate, use_sqlite_wal
from app.keeper import BoardKeeper
from app.leaderboard import BoardCache, BoardDefaults, BoardRegistry, channel_for
from app.leaderboard.writes import group_commit
from app.openapi import openapi_document
from app.ratelimit import UserRateLimit, key_prefix
from app.request_id import RequestIdFilter, init_request_id
from app.sql import check_when_handed_out
from config.logs import configure_logging
from config.redis_url import CLUSTER
from config.settings import INSTANCE_DIR, PROJECT_ROOT, Settings

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def create_increment_app(settings: Settings | None = None) -> Flask:
    """The Increment Service: `POST /score`, the other boards' scores, and the admin routes."""
    from app.admin.views import bp as admin_bp
    from app.scoring.views import bp as scoring_bp

    app = _build_app("increment", settings)
    with app.app_context():
        app.extensions["group_commit"] = group_commit(db.engine, app.extensions["board_cache"])
    configured: Settings = app.extensions["settings"]
    if configured.rate_limit_per_user:
        app.extensions["rate_limit"] = UserRateLimit(
            app.extensions["redis"],
            configured.rate_limit_per_user,
            key_prefix(configured.leaderboard_id),
            cluster_url=configured.redis.url if configured.redis.mode == CLUSTER else "",
        )
    app.register_blueprint(scoring_bp)
    app.register_blueprint(admin_bp)
    return app


def create_board_app(settings: Settings | None = None) -> Flask:
    """The View Board Service: the live boards, snapshots, ranks and the board page."""
    from app.board import init_board

    app = _build_app("board", settings)
    init_board(app, app.extensions["settings"], app.extensions["boards"], app.extensions["board_cache"])
    return app


def _build_app(name: str, settings: Settings | None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(name, instance_path=str(INSTANCE_DIR))
    if settings.trusted_proxies:
        # Behind that many proxies, the client address is theirs to report (X-Forwarded-For).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    app.config.from_mapping(settings.flask_config())
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep documented field order
    app.extensions["settings"] = settings
    app.extensions["openapi"] = openapi_document(name, settings)
    configure_logging(settings.log_level, RequestIdFilter())
    if settings.is_sqlite:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    db.init_app(app)
    with app.app_context():
        if settings.is_sqlite:
            event.listen(db.engine, "connect", use_sqlite_wal)
        check_when_handed_out(db.engine)
    migrate.init_app(app, db, directory=str(MIGRATIONS_DIR))
    auth.init_auth(app)
    client = init_redis(app.extensions, settings.redis, settings.redis_timeout_seconds, name)
    defaults = BoardDefaults(
        default_id=settings.leaderboard_id,
        # On a cluster, the default board's channel shares its keys' hash tag (SPUBLISH from its script).
        default_channel=channel_for(settings.leaderboard_id)
        if settings.redis.mode == CLUSTER
        else settings.redis_channel,
        top_n=settings.top_n,
        max_increment=settings.score_max_increment,
    )
    with app.app_context():
        registry = BoardRegistry(db.engine, defaults)
    cache = BoardCache(client, changes_retain=settings.changes_retain)
    app.extensions["boards"] = registry
    app.extensions["board_cache"] = cache
    _keep_boards(app, registry, cache)

    errors.register_error_handlers(app)
    init_request_id(app)
    app.register_blueprint(health.bp)
    cli.register(app)
    return app


def _keep_boards(app: Flask, registry: BoardRegistry, cache: BoardCache) -> None:
    """Reconcile Redis with SQL and compact the rank index in the background (app.keeper).

    Started with the first request, in the worker (gunicorn forks first), and
    only under gevent: in a plain process nothing would ever run the greenlet.
    """
    with app.app_context():
        keeper = BoardKeeper(db.engine, cache, registry)
    app.extensions["board_keeper"] = keeper

    @app.before_request
    def start_background_work() -> None:
        if monkey.is_module_patched("socket"):
            keeper.start()
