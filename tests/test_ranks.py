"""The rank index (app.ranks): exact ranks whatever state the buckets and deltas are in."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from app.keeper import BoardKeeper
from app.leaderboard import Board, BoardCache, BoardRegistry, ranks
from app.leaderboard.ranks import BUCKET_SIZE, COMPACT_AT_BACKLOG, Entry, compact_rank_index, exact_rank, rank_backlog
from app.sql import WITHOUT_SEQSCANS, _prepared_call
from config.settings import Settings, normalize_database_url
from tests.conftest import RUN_ID, created_database
from tests.servers import flask_db_upgrade

T0 = datetime(2026, 3, 1)


@pytest.fixture(params=["postgresql", "sqlite"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path, base_env: dict[str, str]) -> Iterator[Engine]:
    """The test database on PostgreSQL, or a fresh SQLite file migrated by `flask db upgrade`."""
    if request.param == "postgresql":
        yield request.getfixturevalue("engine")
        return
    url = f"sqlite:///{tmp_path / 'ranks.db'}"
    flask_db_upgrade({**base_env, "DATABASE_URL": url})
    engine = create_engine(url)
    yield engine
    engine.dispose()


def ensure_board(engine: Engine, board: str, ascending: bool = False) -> None:
    """The board's row, as a registered board has one (scores refer to it)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO boards (id, uid, title, top_n, sort_order, operator, score_min, score_max, reset,"
                " timezone, created_at, updated_at) VALUES (:b, 'uid', :b, 10, :order, 'set', 0, 1000000000,"
                " 'none', 'UTC', :now, :now) ON CONFLICT (id) DO NOTHING"
            ),
            {"b": board, "order": "asc" if ascending else "desc", "now": T0},
        )


def write(engine: Engine, board: str, user: str, total: int, reached: datetime, ascending: bool = False) -> None:
    """Insert or change a row as the service does (an upsert, so the triggers see an UPDATE)."""
    ensure_board(engine, board, ascending)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version, ascending)"
                " VALUES (:b, :u, :t, :r, 1, :asc) "
                "ON CONFLICT (board, period, user_id)"
                " DO UPDATE SET total = excluded.total, reached_at = excluded.reached_at"
            ),
            {"b": board, "u": user, "t": total, "r": reached, "asc": ascending},
        )


def naive_ranks(engine: Engine, board: str) -> dict[str, tuple[str, int]]:
    """Each user's rank_key and rank, by sorting every row: the definition."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT user_id, rank_key FROM scores WHERE board = :b ORDER BY total DESC, reached_at, user_id"),
            {"b": board},
        ).all()
    return {user: (key, rank) for rank, (user, key) in enumerate(rows, start=1)}


def assert_exact(engine: Engine, board: str) -> None:
    expected = naive_ranks(engine, board)
    got = {user: exact_rank(engine, board, key) for user, (key, _) in expected.items()}
    assert got == {user: rank for user, (_, rank) in expected.items()}


def random_board(engine: Engine, board: str, rng: random.Random, users: int) -> None:
    for i in range(users):
        write(
            engine,
            board,
            f"user{i:03d}",
            rng.choice([5, 10, 10, 20, 50, 1000]),
            T0 + timedelta(seconds=rng.randint(0, 5)),
        )


@pytest.mark.parametrize("ascending", [False, True], ids=["desc", "asc"])
def test_rank_key_order_is_the_ranking_order(any_engine: Engine, ascending: bool) -> None:
    board = f"order-{ascending}"
    for user, total, reached in [
        ("b", 10, T0),
        ("a", 10, T0),
        ("c", 10, T0 - timedelta(microseconds=1)),
        ("d", 11, T0),
        ("e", 0, T0),
    ]:
        write(any_engine, board, user, total, reached, ascending)
    with any_engine.connect() as conn:
        by_key = conn.execute(text("SELECT user_id FROM scores WHERE board = :b ORDER BY rank_key"), {"b": board})
        expected = ["e", "c", "a", "b", "d"] if ascending else ["d", "c", "a", "b", "e"]
        assert [row[0] for row in by_key] == expected


def test_ranks_are_exact_before_and_after_compaction_and_as_changes_pile_up(any_engine: Engine) -> None:
    board, rng = "exact", random.Random(11)
    random_board(any_engine, board, rng, 120)
    assert_exact(any_engine, board)  # no buckets yet: plain counting
    first = compact_rank_index(any_engine, board, bucket_size=7)
    assert first is not None
    assert (first.folded, first.buckets, first.recut) == (120, 18, True)
    with any_engine.connect() as conn:
        assert rank_backlog(conn, board) == 0
    assert_exact(any_engine, board)
    for _ in range(10):  # a few changes: folded into the buckets, not recut
        write(any_engine, board, f"user{rng.randrange(120):03d}", rng.choice([5, 10, 20, 50]), T0)
    assert_exact(any_engine, board)
    folded = compact_rank_index(any_engine, board, bucket_size=7)
    assert folded is not None
    assert not folded.recut
    assert folded.folded > 0
    assert_exact(any_engine, board)
    for _ in range(150):  # moves up and down, new users, through bucket boundaries
        user = f"user{rng.randrange(140):03d}"
        write(
            any_engine,
            board,
            user,
            rng.choice([1, 5, 10, 20, 50, 999, 5000]),
            T0 + timedelta(seconds=rng.randint(0, 9)),
        )
    with any_engine.begin() as conn:
        conn.execute(text("DELETE FROM scores WHERE board = :b AND user_id IN ('user001', 'user050')"), {"b": board})
    assert_exact(any_engine, board)
    compact_rank_index(any_engine, board, bucket_size=5)
    assert_exact(any_engine, board)


def test_other_boards_do_not_count(any_engine: Engine) -> None:
    for board in ("mine", "theirs"):
        random_board(any_engine, board, random.Random(3), 30)
    compact_rank_index(any_engine, "theirs", bucket_size=4)
    write(any_engine, "theirs", "intruder", 10**9, T0)
    assert_exact(any_engine, "mine")
    assert_exact(any_engine, "theirs")


def test_compaction_racing_writers_keeps_ranks_exact(engine: Engine) -> None:
    board, rng = "race", random.Random(5)
    random_board(engine, board, rng, 200)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            try:
                write(engine, board, f"user{local.randrange(250):03d}", local.randint(1, 2000), T0)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(40):
            compact_rank_index(engine, board, bucket_size=9 if round_ % 2 else 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert_exact(engine, board)


def naive_backlogs(engine: Engine) -> set[ranks.Backlog]:
    """Every period's changes counted one by one: the definition of ranks.backlogs."""
    with engine.connect() as conn:
        parts = conn.execute(text("SELECT board, period, count(*) FROM rank_deltas GROUP BY board, period")).all()
        found = set()
        for board, period, waiting in parts:
            where = {"b": board, "p": period}
            buckets = conn.execute(
                text("SELECT count(*) FROM rank_buckets WHERE board = :b AND period = :p"), where
            ).scalar_one()
            held = conn.execute(text("SELECT count(*) FROM scores WHERE board = :b AND period = :p"), where)
            bucketed = buckets > 0
            found.add(
                ranks.Backlog(
                    board,
                    period,
                    bucketed,
                    min(waiting, COMPACT_AT_BACKLOG) if bucketed else 0,
                    not bucketed and held.scalar_one() >= 2 * BUCKET_SIZE,
                )
            )
    return found


def test_backlogs_name_each_period_with_changes_and_what_it_waits_for(any_engine: Engine) -> None:
    """With buckets: the changes waiting; without: whether the board wants buckets now. A
    period of a board with resets is a part of its own."""
    for i in range(2 * BUCKET_SIZE + 30):  # bucketed, then changed
        write(any_engine, "bucketed", f"user{i}", i, T0)
    compact_rank_index(any_engine, "bucketed")
    for i in range(40):
        write(any_engine, "bucketed", f"user{i}", 10_000 + i, T0)
    for i in range(2 * BUCKET_SIZE):  # no buckets yet, and big enough for them
        write(any_engine, "grown", f"user{i}", i, T0)
    for i in range(5):  # small: its changes are never read
        write(any_engine, "small", f"user{i}", i, T0)
    for i in range(2 * BUCKET_SIZE):  # bucketed, and nothing changed since: not listed
        write(any_engine, "quiet", f"user{i}", i, T0)
    compact_rank_index(any_engine, "quiet")
    with any_engine.begin() as conn:  # a period of its own, beside the board's rows without one
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version, period)"
                " VALUES ('small', 'later', 7, :r, 1, '2026-12')"
            ),
            {"r": T0},
        )
    mine = {"bucketed", "grown", "small", "quiet"}
    got = {backlog for backlog in ranks.backlogs(any_engine) if backlog.board in mine}
    assert got == {
        ranks.Backlog("bucketed", "", bucketed=True, waiting=80, outgrown=False),
        ranks.Backlog("grown", "", bucketed=False, waiting=0, outgrown=True),
        ranks.Backlog("small", "", bucketed=False, waiting=0, outgrown=False),
        ranks.Backlog("small", "2026-12", bucketed=False, waiting=0, outgrown=False),
    }
    assert set(ranks.backlogs(any_engine)) == naive_backlogs(any_engine)  # every other test's too


def test_the_keeper_compacts_a_large_backlog(engine: Engine, redis_conn: redis.Redis, registry: BoardRegistry) -> None:
    board = "keeper"
    ensure_board(engine, board)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version) "
                "SELECT :b, 'u' || g, g % 1000, :r, 1 FROM generate_series(1, :n) g"
            ),
            {"b": board, "r": T0, "n": COMPACT_AT_BACKLOG + 10},
        )
    keeper = BoardKeeper(engine, BoardCache(redis_conn), registry)
    assert keeper.compact_rank_indexes_if_due()[board, ""] is not None
    with engine.connect() as conn:
        assert rank_backlog(conn, board) == 0
        buckets = conn.execute(text("SELECT count(*) FROM rank_buckets WHERE board = :b"), {"b": board}).scalar_one()
    assert buckets == -(-(COMPACT_AT_BACKLOG + 10) // BUCKET_SIZE)
    expected = naive_ranks(engine, board)
    sample = random.Random(1).sample(sorted(expected), 200)
    assert {u: exact_rank(engine, board, expected[u][0]) for u in sample} == {u: expected[u][1] for u in sample}


def test_the_keeper_gives_a_grown_board_buckets_and_leaves_a_small_boards_changes(
    engine: Engine, redis_conn: redis.Redis, registry: BoardRegistry
) -> None:
    """A board without buckets is compacted as soon as it holds enough users to want them,
    however few changes wait; a small one's changes wait (nothing reads them)."""
    for i in range(2 * BUCKET_SIZE):
        write(engine, "keeper-grown", f"user{i}", i, T0)
    for i in range(5):
        write(engine, "keeper-small", f"user{i}", i, T0)
    done = BoardKeeper(engine, BoardCache(redis_conn), registry).compact_rank_indexes_if_due()
    assert done["keeper-grown", ""] is not None
    assert ("keeper-small", "") not in done
    with engine.connect() as conn:
        assert rank_backlog(conn, "keeper-grown") == 0
        assert rank_backlog(conn, "keeper-small") == 5
    assert_exact(engine, "keeper-grown")


# -- pages, around a user, friends --------------------------------------------


def ranking_states(engine: Engine, board: str, rng: random.Random) -> Iterator[str]:
    """The board's rank index in each state a query can meet: no buckets, freshly cut, changes piled up."""
    random_board(engine, board, rng, 95)
    yield "no buckets"
    compact_rank_index(engine, board, bucket_size=8)
    yield "buckets"
    for _ in range(60):
        write(engine, board, f"user{rng.randrange(110):03d}", rng.choice([1, 5, 10, 20, 50, 999]), T0)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM scores WHERE board = :b AND user_id IN ('user003', 'user040')"), {"b": board})
    yield "buckets and changes since"


def expected_entries(engine: Engine, board: str) -> list[tuple[int, str, int]]:
    ranks = naive_ranks(engine, board)
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT user_id, total FROM scores WHERE board = :b"), {"b": board}).all())
    return sorted((rank, user, totals[user]) for user, (_, rank) in ranks.items())


def rows(entries: list[Entry]) -> list[tuple[int, str, int]]:
    return [(entry.rank, entry.user_id, entry.score) for entry in entries]


def test_pages_are_exact_in_every_state_of_the_index(any_engine: Engine) -> None:
    board = Board(id="pages", top_n=10, channel="unused")
    for state in ranking_states(any_engine, board.id, random.Random(21)):
        expected = expected_entries(any_engine, board.id)
        count = len(expected)
        for offset, limit in [(0, 10), (7, 1), (8, 8), (15, 30), (count - 3, 10), (count, 5), (count + 50, 100)]:
            page = ranks.page(any_engine, board, offset, limit)
            assert page.count == count, state
            assert rows(page.entries) == expected[offset : offset + limit], (state, offset, limit)


def test_around_a_user_keeps_the_window_full_at_the_top_and_the_bottom(any_engine: Engine) -> None:
    board = Board(id="around", top_n=10, channel="unused")
    for state in ranking_states(any_engine, board.id, random.Random(22)):
        expected = expected_entries(any_engine, board.id)
        by_rank = [user for _, user, _ in expected]
        top, bottom, middle = by_rank[0], by_rank[-1], by_rank[len(by_rank) // 2]
        assert rows(ranks.around(any_engine, board, top, 5).entries) == expected[:5], state
        assert rows(ranks.around(any_engine, board, by_rank[1], 5).entries) == expected[:5], state
        assert rows(ranks.around(any_engine, board, bottom, 5).entries) == expected[-5:], state
        found = ranks.around(any_engine, board, middle, 5)
        assert found is not None
        index = by_rank.index(middle)
        assert rows(found.entries) == expected[index - 2 : index + 3], state
        assert found.count == len(expected)
        assert rows(ranks.around(any_engine, board, middle, 4).entries) == expected[index - 1 : index + 3]
        assert ranks.around(any_engine, board, "nobody", 5) is None


def test_around_on_a_board_smaller_than_the_window(any_engine: Engine) -> None:
    board = Board(id="small", top_n=10, channel="unused")
    for user, total in [("a", 3), ("b", 2), ("c", 1)]:
        write(any_engine, board.id, user, total, T0)
    found = ranks.around(any_engine, board, "c", 10)
    assert found is not None
    assert rows(found.entries) == [(1, "a", 3), (2, "b", 2), (3, "c", 1)]


def test_friends_come_in_rank_order_with_exact_ranks_and_unknown_users_left_out(any_engine: Engine) -> None:
    board = Board(id="friends", top_n=10, channel="unused")
    for state in ranking_states(any_engine, board.id, random.Random(23)):
        expected = expected_entries(any_engine, board.id)
        chosen = random.Random(len(state)).sample(expected, 12)
        users = [user for _, user, _ in chosen] + ["nobody", "user003"]  # user003 was deleted in the last state
        got = rows(ranks.ranks_of(any_engine, board, users))
        assert got == sorted(entry for entry in expected if entry[1] in users), state


def test_rankings_carry_the_names_users_gave(any_engine: Engine) -> None:
    board = Board(id="named", top_n=10, channel="unused")
    for user, total in [("a", 3), ("b", 2)]:
        write(any_engine, board.id, user, total, T0)
    with any_engine.begin() as conn:
        conn.execute(text("INSERT INTO user_names (user_id, name, updated_at) VALUES ('b', 'Bea', :t)"), {"t": T0})
    page = ranks.page(any_engine, board, 0, 10)
    assert [(entry.user_id, entry.name) for entry in page.entries] == [("a", None), ("b", "Bea")]
    assert [entry.name for entry in ranks.ranks_of(any_engine, board, ["b"])] == ["Bea"]


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A JSON plan's node and every node under it."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


@pytest.fixture
def own_database(base_env: dict[str, str]) -> Iterator[str]:
    """A migrated PostgreSQL database of the test's own: the statistics it makes PostgreSQL
    keep (ANALYZE) would change other tests' plans."""
    with created_database(f"lb_test_{RUN_ID}_stats") as url:
        flask_db_upgrade({**base_env, "DATABASE_URL": url})
        yield url


def crowded_board(engine: Engine, small_boards: int = 300) -> Board:
    """A board of 2,000 users with changes waiting in the gaps between its buckets, beside
    `small_boards` of 2 users, with PostgreSQL's statistics of it all."""
    board = Board(id="crowded", top_n=10, channel="unused")
    for name in [board.id] + [f"small{i}" for i in range(small_boards)]:
        ensure_board(engine, name)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version)"
                " SELECT 'small' || (g % :n), 'user' || g, g, :t, 1 FROM generate_series(1, 2 * :n) g"
            ),
            {"t": T0, "n": small_boards},
        )
        conn.execute(
            text(
                "INSERT INTO scores (board, user_id, total, reached_at, version)"
                " SELECT :b, 'user' || g, g % 997, :t, 1 FROM generate_series(1, 2000) g"
            ),
            {"b": board.id, "t": T0},
        )
    compact_rank_index(engine, board.id, bucket_size=50)
    with engine.begin() as conn:  # changes waiting, in the gaps between the buckets
        conn.execute(text("UPDATE scores SET total = total + 500 WHERE board = :b AND total % 7 = 0"), {"b": board.id})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE scores, rank_deltas, rank_buckets"))
    return board


def as_served(settings: Settings, name: str, sql: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The plan PostgreSQL runs a prepared ranking statement by on the services' connections
    (generic plans; app.sql.WITHOUT_SEQSCANS), with its actual loops, and its rows."""
    service = create_engine(settings.database_url, **settings.flask_config()["SQLALCHEMY_ENGINE_OPTIONS"])
    connection = service.raw_connection()
    try:
        cursor = connection.cursor()
        statement, args = _prepared_call(service, connection.dbapi_connection, name, sql, params)
        cursor.execute(WITHOUT_SEQSCANS + "EXPLAIN (ANALYZE, FORMAT JSON) " + statement, args)
        plan = cursor.fetchone()[0][0]["Plan"]
        cursor.execute(WITHOUT_SEQSCANS + statement, args)
        return plan, cursor.fetchall()
    finally:
        connection.close()
        service.dispose()


def test_a_friends_list_walks_the_changes_once_per_friend(
    own_database: str, make_settings: Callable[..., Settings]
) -> None:
    """Beside many small boards the planner expects one row for a board, and a generic plan
    of the friends query that joined the friends to their buckets' running sum ran that
    sum again for every friend (1,601 walks of rank_deltas for 50 friends here; 100
    friends on 1,000,000 users took 21 ms instead of 4, measured)."""
    engine = create_engine(normalize_database_url(own_database))
    board = crowded_board(engine)
    friends = [f"user{i}" for i in range(1, 2000, 40)]
    sql = ranks.in_dialect(ranks.RANKS_OF, "postgresql")
    params = {"board": board.id, "period": "", "user_ids": friends}
    plan, rows = as_served(make_settings(DATABASE_URL=own_database), "friends", sql, params)
    got = sorted((int(rank), user) for user, _, _, rank in rows)
    expected = naive_ranks(engine, board.id)
    assert got == sorted((expected[user][1], user) for user in friends)
    walks = sum(node["Actual Loops"] for node in plan_nodes(plan) if node.get("Relation Name") == "rank_deltas")
    assert walks <= len(friends), f"rank_deltas walked {walks} times for {len(friends)} friends"
    engine.dispose()


def test_rankings_walk_the_changes_by_their_index_not_the_whole_table(
    own_database: str, make_settings: Callable[..., Settings]
) -> None:
    """The changes waiting are a small table, and a plan would rather read it whole than walk
    its index; a page, a window and a friends list each walk it once per bucket or friend,
    so each would read every change that often (2,000 waiting on 1,000,000 users: a page
    7.6 ms instead of 2.8, a friends list 17.8 instead of 6.0, measured). As on a deployment
    of one big board: all the changes waiting are its own."""
    engine = create_engine(normalize_database_url(own_database))
    board = crowded_board(engine, small_boards=0)
    settings = make_settings(DATABASE_URL=own_database)
    expected = naive_ranks(engine, board.id)
    by_rank = sorted(expected, key=lambda user: expected[user][1])
    asked = {
        "page": (ranks.PAGE, {"offset": 1000, "limit": 10}, by_rank[1000:1010]),
        "around": (
            ranks.in_dialect(ranks.AROUND, "postgresql"),
            {"user_id": by_rank[700], "limit": 5, "half": 2},
            by_rank[698:703],
        ),
        "friends": (
            ranks.in_dialect(ranks.RANKS_OF, "postgresql"),
            {"user_ids": by_rank[::97]},
            by_rank[::97],
        ),
    }
    for name, (sql, params, users) in asked.items():
        plan, rows = as_served(settings, name, sql, {"board": board.id, "period": "", **params})
        scans = {node["Node Type"] for node in plan_nodes(plan) if node.get("Relation Name") == "rank_deltas"}
        assert "Seq Scan" not in scans, f"{name}: {scans}"
        assert [row[2] if name != "friends" else row[0] for row in rows] == users, name
    engine.dispose()
