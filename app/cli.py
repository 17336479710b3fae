"""`flask` commands for operators and scripts: token, rebuild, prune-idempotency-keys.

flask --app wsgi_increment token alice --expires 1h
flask --app wsgi_board rebuild
"""

from __future__ import annotations

from datetime import timedelta

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.auth import mint_token
from app.extensions import db
from app.leaderboard import BoardCache, prune_idempotency_keys, rebuild_board
from app.ranks import compact_rank_index
from config.settings import parse_duration


def _lifetime(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--expires'") from None


def register(app: Flask) -> None:
    app.cli.add_command(token_command)
    app.cli.add_command(rebuild_command)
    app.cli.add_command(prune_command)
    app.cli.add_command(compact_ranks_command)


@click.command("token")
@with_appcontext
@click.argument("user_id")
@click.option(
    "--expires", default="1h", show_default=True, help="Lifetime: 30s, 15m, 1h, 7d; JWT_MAX_LIFETIME at most."
)
def token_command(user_id: str, expires: str) -> None:
    """Print a signed access token for USER_ID (HS256 with JWT_SECRET_KEY)."""
    if current_app.config["JWT_ALGORITHM"] != "HS256":
        raise click.ClickException("tokens for RS256 are issued by your identity provider, not by this command")
    try:
        click.echo(mint_token(user_id, _lifetime(expires)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("rebuild")
@with_appcontext
def rebuild_command() -> None:
    """Rebuild the board's Redis cache from SQL and publish it."""
    cache: BoardCache = current_app.extensions["leaderboard"]
    result = rebuild_board(db.session(), cache)
    click.echo(f"rebuilt board {cache.board.name!r}: {len(cache.entries())} entries, version {result.version}")


@click.command("compact-ranks")
@with_appcontext
def compact_ranks_command() -> None:
    """Fold pending rank changes into the rank index now (the services also do it by themselves)."""
    board = current_app.extensions["leaderboard"].board.name
    result = compact_rank_index(db.engine, board)
    if result is None:
        click.echo("another process is compacting the rank index right now")
    else:
        click.echo(f"rank index of {board!r}: folded {result.folded} changes into {result.buckets} buckets")


@click.command("prune-idempotency-keys")
@with_appcontext
def prune_command() -> None:
    """Delete Idempotency-Keys older than the 24 h replay window."""
    click.echo(f"deleted {prune_idempotency_keys(db.session())} expired idempotency keys")
