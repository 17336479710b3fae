"""The write path's SQL (app.submissions) as PostgreSQL plans it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from app.submissions import Statements
from config.settings import Settings

BOARD = "plan-check"


@pytest.fixture
def busy_board(engine: Engine) -> Iterator[str]:
    """3,000 users, each updated twice: as many dead index entries as live ones, never analyzed."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version)"
                " SELECT :board, 'user' || i, i, now(), 1 FROM generate_series(1, 3000) AS i"
            ),
            {"board": BOARD},
        )
        for _ in range(2):
            conn.execute(text("UPDATE scores SET total = total + 1 WHERE board = :board"), {"board": BOARD})
    try:
        yield BOARD
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM scores WHERE board = :board"), {"board": BOARD})
            conn.execute(text("DELETE FROM rank_deltas WHERE board = :board"), {"board": BOARD})


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


def test_the_rank_count_walks_the_rank_index_and_stops_at_n(
    engine: Engine, service_engine: Engine, busy_board: str
) -> None:
    """A bitmap scan would read every entry ahead of the user, dead ones too, before the LIMIT."""
    statements = Statements.for_engine(service_engine)
    params = {
        "board": busy_board,
        "user_id": "user1",
        "increment": 1,
        "user_ids": ["user1", "user2"],
        "increments": [1, 1],
        "max_total": 2**53 - 1,
        "top_n": 10,
    }
    with engine.connect() as conn:
        params["rank_key"] = conn.execute(
            text("SELECT max(rank_key) FROM scores WHERE board = :board"), {"board": busy_board}
        ).scalar_one()
    assert statements.upsert_many_and_ahead is not None
    for sql in (statements.upsert_many_and_ahead, statements.ahead):
        shown = plan(service_engine, sql, params)
        assert "ix_scores_rank" in shown, shown
        assert "Bitmap" not in shown, shown
