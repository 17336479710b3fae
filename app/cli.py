"""`flask` commands for operators and scripts: tokens, boards, moderation, rebuilds and upkeep.

flask --app wsgi_increment token alice --expires 1h [--admin] [--name "Alice"]
flask --app wsgi_increment boards create laps --order asc --operator best
flask --app wsgi_increment remove-user cheater --board laps
flask --app wsgi_board rebuild [--board laps]
flask --app wsgi_board changes follow --group achievements [--board laps]
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy.orm import Session

from app.auth import is_valid_user_id, mint_token
from app.extensions import connect_redis, db
from app.leaderboard import Board, BoardCache, BoardRegistry, InvalidBoard, changes
from app.leaderboard.boards import utc_now
from app.leaderboard.errors import BoardImmutable, BoardNotFound, BoardProtected
from app.leaderboard.moderation import delete_board, erase_user, remove_entry
from app.leaderboard.ranks import compact_rank_index
from app.leaderboard.rebuild import rebuild_board
from app.leaderboard.records import prune_idempotency_keys
from app.leaderboard.rules import OPERATORS, ORDERS
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
    app.cli.add_command(boards_group)
    app.cli.add_command(remove_user_command)
    app.cli.add_command(changes_group)


def _registry() -> BoardRegistry:
    registry: BoardRegistry = current_app.extensions["boards"]
    return registry


def _cache() -> BoardCache:
    cache: BoardCache = current_app.extensions["board_cache"]
    return cache


def _board(board_id: str | None) -> Board:
    try:
        return _registry().named(board_id)
    except BoardNotFound:
        raise click.ClickException(f"there is no board {board_id!r}") from None


@click.command("token")
@with_appcontext
@click.argument("user_id")
@click.option(
    "--expires", default="1h", show_default=True, help="Lifetime: 30s, 15m, 1h, 7d; JWT_MAX_LIFETIME at most."
)
@click.option("--admin", is_flag=True, help="With the admin role (ADMIN_CLAIM = ADMIN_ROLE).")
@click.option("--name", default=None, help="A display name for the boards (the JWT_NAME_CLAIM claim).")
def token_command(user_id: str, expires: str, admin: bool, name: str | None) -> None:
    """Print a signed access token for USER_ID (HS256 with JWT_SECRET_KEY)."""
    if current_app.config["JWT_ALGORITHM"] != "HS256":
        raise click.ClickException("tokens for RS256 are issued by your identity provider, not by this command")
    try:
        click.echo(mint_token(user_id, _lifetime(expires), admin=admin, name=name))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("rebuild")
@with_appcontext
@click.option("--board", "board_id", default=None, help="The board (default: the default board).")
def rebuild_command(board_id: str | None) -> None:
    """Rebuild a board's Redis cache from SQL and publish it."""
    board = _board(board_id)
    result = rebuild_board(db.session(), _cache(), board)
    click.echo(f"rebuilt board {board.id!r}: {len(_cache().entries(board))} entries, version {result.version}")


@click.command("compact-ranks")
@with_appcontext
@click.option("--board", "board_id", default=None, help="The board (default: the default board).")
def compact_ranks_command(board_id: str | None) -> None:
    """Fold pending rank changes into the rank index now (the services also do it by themselves)."""
    board = _board(board_id)
    result = compact_rank_index(db.engine, board.id)
    if result is None:
        click.echo("another process is compacting the rank index right now")
    else:
        click.echo(f"rank index of {board.id!r}: folded {result.folded} changes into {result.buckets} buckets")


@click.command("prune-idempotency-keys")
@with_appcontext
def prune_command() -> None:
    """Delete Idempotency-Keys older than the 24 h replay window."""
    click.echo(f"deleted {prune_idempotency_keys(db.session(), utc_now())} expired idempotency keys")


boards_group = AppGroup("boards", help="Create, change, delete and list boards.")


def _settings_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--title", default=None, help="Heading for people (up to 120 characters)."),
            click.option("--top-n", type=int, default=None, help="Size of the live board, 1 to 1000."),
            click.option("--order", type=click.Choice(ORDERS), default=None, help="desc: higher is better."),
            click.option("--operator", type=click.Choice(OPERATORS), default=None, help="incr, best or set."),
            click.option("--score-min", type=int, default=None, help="Least score one submission may send."),
            click.option("--score-max", type=int, default=None, help="Largest score one submission may send."),
            click.option("--reset", default=None, help="none (resets come with seasons)."),
            click.option("--timezone", default=None, help="IANA time zone of the resets, like UTC."),
        ]
    ):
        command = option(command)
    return command


def _put(board_id: str, options: dict[str, Any], *, must_exist: bool) -> None:
    exists = _registry().find(board_id) is not None
    if must_exist and not exists:
        raise click.ClickException(f"there is no board {board_id!r}; create it first")
    if not must_exist and exists:
        raise click.ClickException(f"board {board_id!r} exists; use `boards update`")
    changes = {name: value for name, value in options.items() if value is not None}
    try:
        board, _ = _registry().put(board_id, changes)
    except (InvalidBoard, BoardImmutable) as exc:
        raise click.ClickException(str(exc)) from None
    with Session(db.engine) as session:
        rebuild_board(session, _cache(), board)
    click.echo(json.dumps(board.as_json()))


@boards_group.command("create")
@click.argument("board_id")
@_settings_options
def boards_create(board_id: str, **options: Any) -> None:
    """Create board BOARD_ID (settings left out take the defaults)."""
    _put(board_id, options, must_exist=False)


@boards_group.command("update")
@click.argument("board_id")
@_settings_options
def boards_update(board_id: str, **options: Any) -> None:
    """Change settings of board BOARD_ID (rules only while it has no scores)."""
    _put(board_id, options, must_exist=True)


@boards_group.command("delete")
@click.argument("board_id")
@click.confirmation_option(prompt="Delete the board with all its scores?")
def boards_delete(board_id: str) -> None:
    """Delete board BOARD_ID, its scores and its Redis keys."""
    try:
        delete_board(_registry(), _cache(), board_id)
    except (BoardNotFound, BoardProtected) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"deleted board {board_id!r}")


@boards_group.command("list")
def boards_list() -> None:
    """Every board's settings, one JSON line each."""
    for board in _registry().all():
        click.echo(json.dumps(board.as_json()))


@click.command("remove-user")
@with_appcontext
@click.argument("user_id")
@click.option("--board", "board_id", default=None, help="Remove only this board's entry (else: erase everywhere).")
def remove_user_command(user_id: str, board_id: str | None) -> None:
    """Remove USER_ID's entry from one board, or erase the user from every board (names and keys too)."""
    if not is_valid_user_id(user_id):
        raise click.ClickException(f"{user_id!r} is not a user id")
    if board_id is not None:
        board = _board(board_id)
        if not remove_entry(db.engine, _cache(), board, user_id):
            raise click.ClickException(f"user {user_id!r} has no score on board {board.id!r}")
        click.echo(f"removed {user_id!r} from board {board.id!r}")
        return
    click.echo(json.dumps(erase_user(db.engine, _cache(), _registry(), user_id).as_json()))


changes_group = AppGroup("changes", help="Read the boards' change log.")


@changes_group.command("follow")
@click.option("--group", required=True, help="The consumer group: readers of one group share the entries.")
@click.option("--board", "board_id", default=None, help="The board (default: the default board).")
@click.option("--consumer", default=socket.gethostname(), show_default=True, help="This reader's name in the group.")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, 10_000), help="Entries per read.")
@click.option(
    "--claim-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 86_400),
    help="Seconds an entry another reader took may wait unacknowledged before this one claims it.",
)
@click.option(
    "--stop-when-idle",
    default=None,
    type=click.FloatRange(0.1, 86_400),
    help="Stop after this many seconds with nothing new (default: follow until stopped).",
)
def changes_follow(
    group: str, board_id: str | None, consumer: str, batch: int, claim_after: float, stop_when_idle: float | None
) -> None:
    """Print each change of the board's log as a line of JSON, at least once, then acknowledge it.

    The group resumes where it stopped, whichever reader stopped it; a new
    group starts from the oldest entry kept. SIGTERM or Ctrl-C stop it
    between two entries.
    """
    board = _board(board_id)
    block_ms = 1000
    settings = current_app.extensions["settings"]
    client = connect_redis(settings.redis, block_ms / 1000 + settings.redis_timeout_seconds, "changes-follow")
    stopping = False
    last_news = time.monotonic()

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    def keep_going() -> bool:
        return not stopping and (stop_when_idle is None or time.monotonic() - last_news < stop_when_idle)

    def hand_on(line: str) -> None:
        nonlocal last_news
        print(line, flush=True)  # out before it is acknowledged: at least once
        last_news = time.monotonic()

    signal.signal(signal.SIGTERM, stop)
    try:
        changes.follow(
            client,
            board,
            group,
            consumer,
            hand_on,
            batch=batch,
            block_ms=block_ms,
            claim_idle_ms=int(claim_after * 1000),
            keep_going=keep_going,
        )
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader of our output went away
        sys.stderr.close()
    finally:
        client.close()
