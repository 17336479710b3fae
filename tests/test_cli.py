"""The flask commands: token, rebuild, prune-idempotency-keys."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jwt as pyjwt
import redis
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import JWT_SECRET, auth, default_board
from tests.servers import ROOT, service_env


def test_token_mints_a_token_the_service_accepts(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["token", "alice", "--expires", "15m"])
    assert result.exit_code == 0, result.output
    token = result.output.strip()
    claims = pyjwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 14 * 60 < claims["exp"] - datetime.now(UTC).timestamp() <= 15 * 60
    response = app.test_client().post("/score", json={"score": 3}, headers={"Authorization": f"Bearer {token}"})
    assert response.get_json()["userId"] == "alice"


def test_token_command_runs_from_the_shell_as_the_readme_says(base_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi_increment", "token", "bob", "--expires", "1h"],
        cwd=ROOT,
        env=service_env(base_env),
        capture_output=True,
        text=True,
        check=True,
    )
    assert pyjwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])["sub"] == "bob"


def test_token_refuses_bad_arguments(app: Flask) -> None:
    runner = app.test_cli_runner()
    for args in (["token", "alice", "--expires", "soon"], ["token", "alice", "--expires", "0"], ["token", "a b"]):
        result = runner.invoke(args=args)
        assert result.exit_code != 0
        assert "Error" in result.output


def test_rebuild_restores_the_board_from_sql(app: Flask, redis_conn: redis.Redis) -> None:
    client = app.test_client()
    for user, score in [("a", 3), ("b", 2), ("c", 1)]:
        client.post("/score", json={"score": score}, headers=auth(user))
    cache, board = app.extensions["board_cache"], default_board(app)
    expected = cache.entries(board)
    redis_conn.flushdb()  # this run's own Redis database
    result = app.test_cli_runner().invoke(args=["rebuild"])
    assert result.exit_code == 0, result.output
    assert "3 entries" in result.output
    assert cache.entries(board) == expected == [("a", 3), ("b", 2), ("c", 1)]


def test_prune_deletes_only_expired_keys(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    client.post("/score", json={"score": 1}, headers=auth() | {"Idempotency-Key": "old"})
    client.post("/score", json={"score": 1}, headers=auth() | {"Idempotency-Key": "new"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE idempotency_keys SET created_at = created_at - interval '2 days' WHERE key = 'old'"))
    result = app.test_cli_runner().invoke(args=["prune-idempotency-keys"])
    assert "deleted 1 " in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT key FROM idempotency_keys")).scalars().all() == ["new"]


def make_token(user_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`make token USER_ID=...` as a shell script would run it (the id is one argv word)."""
    return subprocess.run(
        ["make", "--no-print-directory", "token", f"USER_ID={user_id}", "EXPIRES=15m"],
        cwd=ROOT,
        env=service_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_token_passes_the_user_id_to_the_cli_as_it_is(base_env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # Shell and make syntax alike reach the CLI as plain text: never run, never dropped.
    for user_id in (f"$(touch${{IFS}}{marker})", f"`touch${{IFS}}{marker}`", "o'brien;id", "-x", "$(USER_ID)"):
        result = make_token(user_id, base_env)
        assert result.returncode == 0, result.stderr
        assert pyjwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"])["sub"] == user_id
    assert not marker.exists()


def test_make_token_refuses_a_bad_user_id_with_the_clis_own_message(base_env: dict[str, str]) -> None:
    for user_id in ("x;echo INJECTED", "a b", "x'; echo INJECTED; '"):
        result = make_token(user_id, base_env)
        assert result.returncode != 0
        assert "INJECTED" not in result.stdout
        assert "user id must be 1 to 128 printable characters without spaces" in result.stderr
        assert "unexpected extra argument" not in result.stderr


def test_admin_and_named_tokens_open_the_admin_routes_and_name_the_user(app: Flask, board_name: str) -> None:
    runner, client = app.test_cli_runner(), app.test_client()
    admin = runner.invoke(args=["token", "ops", "--admin"]).output.strip()
    named = runner.invoke(args=["token", "ada", "--name", "Ada L."]).output.strip()
    assert client.get("/admin/boards", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    assert client.get("/admin/boards", headers={"Authorization": f"Bearer {named}"}).status_code == 403
    assert pyjwt.decode(named, JWT_SECRET, algorithms=["HS256"])["name"] == "Ada L."
    assert runner.invoke(args=["token", "ada", "--name", "\u0007"]).exit_code != 0


def test_boards_create_update_list_delete_from_the_command_line(app: Flask, board_name: str, engine: Engine) -> None:
    runner = app.test_cli_runner()
    laps = f"{board_name}-cli"
    created = runner.invoke(args=["boards", "create", laps, "--order", "asc", "--operator", "best", "--top-n", "5"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.output)["order"] == "asc"
    assert runner.invoke(args=["boards", "create", laps]).exit_code != 0  # exists
    app.test_client().post(f"/boards/{laps}/score", json={"score": 61_000}, headers=auth("u1"))
    refused = runner.invoke(args=["boards", "update", laps, "--order", "desc"])
    assert refused.exit_code != 0
    assert "can no longer change" in refused.output
    retitled = runner.invoke(args=["boards", "update", laps, "--title", "Laps"])
    assert json.loads(retitled.output)["title"] == "Laps"
    listed = [json.loads(line)["id"] for line in runner.invoke(args=["boards", "list"]).output.splitlines()]
    assert {laps, board_name} <= set(listed)
    assert runner.invoke(args=["boards", "delete", laps, "--yes"]).exit_code == 0
    assert runner.invoke(args=["boards", "delete", board_name, "--yes"]).exit_code != 0  # the default board stays
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM boards WHERE id = :b"), {"b": laps}).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM scores WHERE board = :b"), {"b": laps}).scalar() == 0


def test_remove_user_takes_one_entry_or_erases_everywhere(app: Flask, board_name: str, engine: Engine) -> None:
    runner, client = app.test_cli_runner(), app.test_client()
    other = f"{board_name}-cli2"
    runner.invoke(args=["boards", "create", other])
    for board in (board_name, other):
        client.post(f"/boards/{board}/score", json={"score": 5}, headers=auth("cheat"))
    one = runner.invoke(args=["remove-user", "cheat", "--board", other])
    assert one.exit_code == 0, one.output
    assert runner.invoke(args=["remove-user", "cheat", "--board", other]).exit_code != 0  # gone already
    everywhere = runner.invoke(args=["remove-user", "cheat"])
    assert json.loads(everywhere.output)["boards"] == [board_name]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE user_id = 'cheat'")).scalar() == 0
