"""The write path's SQL (app.leaderboard.records) as PostgreSQL plans it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from app.keeper import BoardKeeper
from app.leaderboard import Board, BoardCache, BoardRegistry, records
from app.leaderboard.boards import utc_now
from app.leaderboard.rules import OPERATORS
from app.sql import WITHOUT_SEQSCANS, _prepared_call
from config.settings import Settings


@pytest.fixture
def busy_board(engine: Engine, registry: BoardRegistry, board_name: str) -> Iterator[Board]:
    """3,000 users, each updated twice: as many dead index entries as live ones, never analyzed."""
    board, _ = registry.put(f"{board_name}-plan", {})
    make_busy(engine, board.id)
    return board


@pytest.fixture
def service_engine(make_settings: Callable[..., Settings], engine: Engine) -> Iterator[Engine]:
    """An engine configured as the services configure theirs (connection options included)."""
    settings = make_settings()
    service = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
    yield service
    service.dispose()


@pytest.fixture
def new_tables(engine: Engine, make_settings: Callable[..., Settings], board_name: str) -> Iterator[Engine]:
    """A service's engine on `boards` and `scores` as new: empty, never analyzed, in a schema of
    their own (with this run's default board, and the indexes' names)."""
    schema = f"new_{board_name}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
        for table in ("boards", "scores"):
            conn.execute(text(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"))
        conn.execute(text(f"ALTER INDEX {schema}.scores_pkey RENAME TO pk_scores"))
        conn.execute(text(f"ALTER INDEX {schema}.scores_board_period_rank_key_idx RENAME TO ix_scores_rank"))
        copy = f"INSERT INTO {schema}.boards SELECT * FROM public.boards WHERE id = :id"  # noqa: S608 - ours
        conn.execute(text(copy), {"id": board_name})
    settings = make_settings(PGOPTIONS=f"-c search_path={schema}")
    service = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
    yield service
    service.dispose()
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def fill(engine: Engine, board: str, users: int, first: int = 1) -> None:
    """Users `user<first>` onwards on `board`."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version)"
                " SELECT :board, 'user' || i, i, now(), 1 FROM generate_series(:first, :first + :users - 1) AS i"
            ),
            {"board": board, "users": users, "first": first},
        )


def make_busy(engine: Engine, board: str) -> None:
    """3,000 users on `board`, each updated twice."""
    fill(engine, board, 3000)
    with engine.begin() as conn:
        for _ in range(2):
            conn.execute(text("UPDATE scores SET total = total + 1 WHERE board = :board"), {"board": board})


def analyze_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables"
                    " WHERE schemaname = current_schema() AND relname = 'scores'"
                )
            ).scalar_one()
        )


def test_a_new_table_is_given_statistics_once_it_holds_a_few_rows(new_tables: Engine, board_name: str) -> None:
    assert not records.give_scores_statistics(new_tables)
    fill(new_tables, board_name, records.STATISTICS_AT_ROWS - 1)
    assert not records.give_scores_statistics(new_tables)
    assert analyze_count(new_tables) == 0
    fill(new_tables, board_name, 1, first=records.STATISTICS_AT_ROWS)
    assert records.give_scores_statistics(new_tables)
    assert analyze_count(new_tables) == 1
    assert records.give_scores_statistics(new_tables)  # it has them: nothing more to do
    assert analyze_count(new_tables) == 1


def test_the_keeper_gives_a_new_table_statistics_once(
    new_tables: Engine, cache: BoardCache, registry: BoardRegistry, board_name: str
) -> None:
    keeper = BoardKeeper(new_tables, cache, registry)
    keeper.give_scores_statistics_if_new()
    fill(new_tables, board_name, records.STATISTICS_AT_ROWS)
    keeper.give_scores_statistics_if_new()
    assert analyze_count(new_tables) == 1
    with new_tables.begin() as conn:  # were it to look again, it would find no statistics, and analyze
        conn.execute(text("DELETE FROM pg_statistic WHERE starelid = 'scores'::regclass"))
    keeper.give_scores_statistics_if_new()
    assert analyze_count(new_tables) == 1


def test_a_statement_planned_on_an_empty_table_finds_the_row_by_its_key_once_the_table_has_statistics(
    new_tables: Engine, registry: BoardRegistry, board_name: str
) -> None:
    """The services plan each prepared statement once, at its first run: on a new deployment,
    that is on an empty table (the planner walked the rank index for the user's own row)."""
    board = registry.get(board_name)
    assert board is not None
    params: dict[str, object] = {
        "boards": [board.id] * 2,
        "uids": [board.uid] * 2,
        "user_ids": ["user1", "user2"],
        "submitted_values": [1, 1],
        "top_ns": [10, 10],
        "periods": ["", ""],
        "period_starts": [None, None],
        "period_ends": [None, None],
    }
    many = records._for_rule("postgresql", records._UPSERT_MANY_AND_AHEAD, board.operator, board.ascending)
    connection = new_tables.raw_connection()  # one connection: its plan is the one kept
    try:
        cursor = connection.cursor()
        statement, args = _prepared_call(new_tables, connection.dbapi_connection, "new_many", many, params)
        cursor.execute(WITHOUT_SEQSCANS + "EXPLAIN " + statement, args)
        connection.rollback()
        fill(new_tables, board.id, 10_000)
        assert records.give_scores_statistics(new_tables)
        cursor.execute(WITHOUT_SEQSCANS + "EXPLAIN " + statement, args)
        shown = "\n".join(row[0] for row in cursor.fetchall())
    finally:
        connection.rollback()
        connection.close()
    lookup = next(line for line in shown.splitlines() if line.endswith(" old") or " on scores old " in line)
    assert "pk_scores" in lookup, shown
    key = shown.splitlines()[shown.splitlines().index(lookup) + 1]
    assert "user_id" in key, shown
    assert "period" in key, shown


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
    # Each statement as the write path runs it: prepared, with the plan kept for any values.
    shown = served_plan(service_engine, "shown_ahead", records._AHEAD, params)
    assert "ix_scores_rank" in shown, shown
    assert "Bitmap" not in shown, shown
    many = records._for_rule("postgresql", records._UPSERT_MANY_AND_AHEAD, operator, False)
    shown = served_plan(service_engine, f"shown_{operator}", many, params)
    for index in ("ix_scores_rank", "pk_scores"):
        assert index in shown, shown
    for scan in ("Bitmap", "Seq Scan"):
        assert scan not in shown, shown


def index_reads(engine: Engine) -> dict[str, int]:
    """The index entries read from `scores`' indexes so far, by index, counting those of
    `engine`'s connection (one: the tests use it one thing at a time) once it is closed:
    a server process hands in its counts when it ends, if not before."""
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    engine.dispose()
    with engine.connect() as conn:
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}).scalar_one()
        ):
            time.sleep(0.02)
        rows = conn.execute(
            text(
                "SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes"
                " WHERE schemaname = current_schema() AND relname = 'scores'"
            )
        )
        return {name: int(read) for name, read in rows}


@pytest.mark.parametrize("path", ["record", "record_many"])
def test_a_write_to_a_board_the_statistics_have_not_seen_reads_n_entries_not_the_board(
    new_tables: Engine, registry: BoardRegistry, board_name: str, path: str
) -> None:
    """Statistics made before a board filled up (with autovacuum off, nothing makes them again)
    expect it to hold no rows: a count planned for the board's own id sorted every one of them."""
    board = registry.get(board_name)
    assert board is not None
    fill(new_tables, "another board", 150)
    with new_tables.connect() as conn:
        conn.execute(text("ANALYZE scores"))
        conn.commit()
    make_busy(new_tables, board.id)
    before = index_reads(new_tables)
    submitted = [records.Submitted(board, "user1", 1)]
    if path == "record":
        outcome = records.record(new_tables, submitted, now=utc_now())
    else:
        outcome = records.record_many(new_tables, submitted)
    assert isinstance(outcome, list)
    [recorded] = outcome
    assert isinstance(recorded, records.Recorded)
    assert (recorded.total, recorded.rank) == (4, None)
    read = {name: count - before[name] for name, count in index_reads(new_tables).items()}
    assert read["ix_scores_rank"] >= board.top_n  # the count walked it, stopping after N
    assert sum(read.values()) <= 3 * board.top_n, read
