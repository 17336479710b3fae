"""The write path's SQL (app.leaderboard.records) as PostgreSQL plans it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from app.leaderboard import Board, BoardRegistry, records
from app.leaderboard.rules import OPERATORS
from app.sql import WITHOUT_SEQSCANS, _prepared_call, adapt
from config.settings import Settings


@pytest.fixture
def busy_board(engine: Engine, registry: BoardRegistry, board_name: str) -> Iterator[Board]:
    """3,000 users, each updated twice: as many dead index entries as live ones, never analyzed."""
    board, _ = registry.put(f"{board_name}-plan", {})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version)"
                " SELECT :board, 'user' || i, i, now(), 1 FROM generate_series(1, 3000) AS i"
            ),
            {"board": board.id},
        )
        for _ in range(2):
            conn.execute(text("UPDATE scores SET total = total + 1 WHERE board = :board"), {"board": board.id})
    return board


@pytest.fixture
def service_engine(make_settings: Callable[..., Settings], engine: Engine) -> Iterator[Engine]:
    """An engine configured as the services configure theirs (connection options included)."""
    settings = make_settings()
    service = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
    yield service
    service.dispose()


def plan(engine: Engine, sql: str, params: dict[str, object]) -> str:
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())
    finally:
        connection.rollback()
        connection.close()


def served_plan(engine: Engine, name: str, sql: str, params: dict[str, object]) -> str:
    """The generic plan PostgreSQL keeps for `sql` prepared as app.sql.execute prepares it."""
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        statement, args = _prepared_call(engine, connection.dbapi_connection, name, sql, params)
        cursor.execute(WITHOUT_SEQSCANS + "EXPLAIN " + statement, args)
        return "\n".join(row[0] for row in cursor.fetchall())
    finally:
        connection.rollback()
        connection.close()


@pytest.mark.parametrize("operator", OPERATORS)
def test_the_rank_count_walks_the_rank_index_and_stops_at_n(
    engine: Engine, service_engine: Engine, busy_board: Board, operator: str
) -> None:
    """A bitmap scan would read every entry ahead of the user, dead ones too, before the LIMIT."""
    params: dict[str, object] = {
        "board": busy_board.id,
        "boards": [busy_board.id] * 2,
        "uids": [busy_board.uid] * 2,
        "user_ids": ["user1", "user2"],
        "submitted_values": [1, 1],
        "top_ns": [10, 10],
        "top_n": 10,
        "period": "",
        "periods": ["", ""],
        "period_starts": [None, None],
        "period_ends": [None, None],
    }
    with engine.connect() as conn:
        params["rank_key"] = conn.execute(
            text("SELECT max(rank_key) FROM scores WHERE board = :board"), {"board": busy_board.id}
        ).scalar_one()
    many = records._statement(service_engine, records._UPSERT_MANY_AND_AHEAD, operator, False)
    for sql in (many, adapt(service_engine, records._AHEAD)):
        shown = plan(service_engine, sql, params)
        assert "ix_scores_rank" in shown, shown
        assert "Bitmap" not in shown, shown
    # The batch statement as the write path runs it: prepared, with the plan kept for any batch.
    many = records._for_rule("postgresql", records._UPSERT_MANY_AND_AHEAD, operator, False)
    shown = served_plan(service_engine, f"shown_{operator}", many, params)
    for index in ("ix_scores_rank", "pk_scores"):
        assert index in shown, shown
    for scan in ("Bitmap", "Seq Scan"):
        assert scan not in shown, shown
