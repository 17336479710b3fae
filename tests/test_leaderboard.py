"""The domain (app.leaderboard) against real PostgreSQL and Redis: order, N, staleness, rebuild."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
import redis
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from app.leaderboard import (
    Board,
    BoardCache,
    Standing,
    Submission,
    TotalLimitExceeded,
    commit_submissions,
    group_commit,
    rebuild_board,
    submit_score,
    top_standings,
)
from app.ranks import user_rank
from tests.conftest import ChannelListener

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def make_cache(redis_conn: redis.Redis, board_name: str, base_env: dict[str, str]) -> Callable[[int], BoardCache]:
    def build(top_n: int = 3) -> BoardCache:
        board = Board(name=board_name, top_n=top_n, channel=base_env["REDIS_CHANNEL"], max_increment=1_000_000)
        return BoardCache(redis_conn, board)

    return build


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def insert_rows(engine: Engine, board: str, rows: list[tuple[str, int, datetime]]) -> None:
    with engine.begin() as conn:
        for user, total, reached in rows:
            conn.execute(
                text("INSERT INTO scores (board, user_id, total, reached_at, version) VALUES (:b, :u, :t, :r, 1)"),
                {"b": board, "u": user, "t": total, "r": reached},
            )


def sql_top(session: Session, cache: BoardCache) -> list[tuple[str, int]]:
    rows = [(s.user_id, s.total) for s in top_standings(session, cache.board)]
    session.rollback()
    return rows


# -- the tie order -----------------------------------------------------------


def test_ties_go_to_who_reached_the_score_first_then_to_user_id(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache]
) -> None:
    cache = make_cache(10)
    rows = [
        ("zed", 100, T0),  # first to reach 100
        ("amy", 100, T0 + timedelta(seconds=1)),
        ("Bob", 100, T0 + timedelta(seconds=2)),  # same instant as "bob" and "béa"
        ("bob", 100, T0 + timedelta(seconds=2)),
        ("béa", 100, T0 + timedelta(seconds=2)),
        ("top", 101, T0 + timedelta(days=1)),
        ("low", 99, T0 - timedelta(days=1)),
    ]
    insert_rows(engine, cache.board.name, rows)
    rebuild_board(session, cache)
    # Byte order on the last tie: "B" (0x42) < "b" (0x62) < "bé" (0x62 0xc3): not a locale's order.
    expected = [("top", 101), ("zed", 100), ("amy", 100), ("Bob", 100), ("bob", 100), ("béa", 100), ("low", 99)]
    assert sql_top(session, cache) == expected
    assert cache.entries() == expected
    for rank, (user, _) in enumerate(expected, start=1):
        assert cache.rank(user) == rank
        assert user_rank(engine, cache.board.name, user) == (dict(expected)[user], rank)


def test_redis_applies_the_same_order_write_by_write(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache]
) -> None:
    """Merged one by one, in a shuffled order, standings land where SQL ranks them."""
    cache = make_cache(5)
    rng = random.Random(7)
    rows = [(f"u{i:02d}", rng.choice([10, 20, 30]), T0 + timedelta(seconds=rng.randint(0, 3))) for i in range(30)]
    insert_rows(engine, cache.board.name, rows)
    rebuild_board(session, cache)
    cache.redis.delete(cache.keys.top, cache.keys.members)
    for user, total, reached in rng.sample(rows, len(rows)):
        cache.apply([Standing(user, total, reached)], mode="merge")
    assert cache.entries() == sql_top(session, cache)


# -- the N boundary ----------------------------------------------------------


def test_fewer_than_n_users_are_all_on_the_board(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache]
) -> None:
    cache = make_cache(3)
    assert submit_score(engine, cache, "a", 5).rank == 1
    assert submit_score(engine, cache, "b", 1).rank == 2
    assert cache.entries() == [("a", 5), ("b", 1)]


def test_exactly_n_then_one_more(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache], channel: ChannelListener
) -> None:
    cache = make_cache(3)
    for user, score in [("a", 30), ("b", 20), ("c", 10)]:
        submit_score(engine, cache, user, score)
    assert cache.entries() == [("a", 30), ("b", 20), ("c", 10)]
    published = len(channel.drain())

    # N + 1: a smaller total stays off the board, and nothing is published.
    outsider = submit_score(engine, cache, "d", 5)
    assert outsider.rank is None
    assert outsider.total == 5
    assert cache.entries() == [("a", 30), ("b", 20), ("c", 10)]
    assert len(channel.drain(0.2)) == published

    # A tie with the last entry loses: the last entry reached 10 first.
    assert submit_score(engine, cache, "d", 5).rank is None
    assert cache.entries()[-1] == ("c", 10)

    # Beating the smallest pushes it off, and its bookkeeping goes with it.
    assert submit_score(engine, cache, "d", 10).rank == 3
    assert cache.entries() == [("a", 30), ("b", 20), ("d", 20)]
    assert set(cache.redis.hkeys(cache.keys.members)) == {"a", "b", "d"}
    assert channel.drain()[-1]["top"] == [["a", "30"], ["b", "20"], ["d", "20"]]
    assert sql_top(session, cache) == cache.entries()


# -- late, stale writes ------------------------------------------------------


def test_a_delayed_smaller_total_cannot_overwrite_a_larger_one(
    make_cache: Callable[[int], BoardCache], channel: ChannelListener
) -> None:
    cache = make_cache(3)
    cache.apply([Standing("a", 1, T0)], mode="replace")
    newer = Standing("alice", 50, T0 + timedelta(seconds=2))
    older = Standing("alice", 40, T0 + timedelta(seconds=1))
    assert cache.apply([newer], mode="write").status == "written"
    version = cache.redis.get(cache.keys.version)
    result = cache.apply([older], mode="write")
    assert result.status == "unchanged"
    assert cache.entries() == [("alice", 50), ("a", 1)]
    assert cache.redis.get(cache.keys.version) == version
    assert [m["newScore"] for m in channel.drain() if m["updatedUser"] == "alice"] == [50]


def test_a_stale_write_of_a_user_pushed_off_the_board_stays_off(make_cache: Callable[[int], BoardCache]) -> None:
    cache = make_cache(2)
    cache.apply([Standing("a", 100, T0), Standing("b", 90, T0)], mode="replace")
    stale = Standing("c", 80, T0)
    assert cache.apply([stale], mode="write").status == "unchanged"
    assert cache.entries() == [("a", 100), ("b", 90)]


def test_writes_wait_for_a_board_that_was_never_built(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache], channel: ChannelListener
) -> None:
    """A flushed (or new) Redis is rebuilt from SQL before the write lands."""
    cache = make_cache(3)
    insert_rows(engine, cache.board.name, [("old1", 500, T0), ("old2", 400, T0), ("old3", 300, T0)])
    submission = submit_score(engine, cache, "new", 450)
    assert submission.rank == 2
    assert cache.entries() == [("old1", 500), ("new", 450), ("old2", 400)]
    message = channel.drain()[0]
    assert message["updatedUser"] == "new"
    assert message["newScore"] == 450
    assert message["top"] == [["old1", "500"], ["new", "450"], ["old2", "400"]]


def test_versions_only_go_up_even_after_redis_loses_everything(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache]
) -> None:
    cache = make_cache(3)
    submit_score(engine, cache, "a", 1)
    submit_score(engine, cache, "a", 1)
    before = int(cache.redis.get(cache.keys.version) or 0)
    cache.redis.delete(*cache.keys.as_list())
    submit_score(engine, cache, "a", 1)
    assert int(cache.redis.get(cache.keys.version) or 0) > before
    assert cache.entries() == [("a", 3)]


def test_rebuild_replaces_entries_sql_does_not_have(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache]
) -> None:
    cache = make_cache(3)
    insert_rows(engine, cache.board.name, [("real", 10, T0)])
    cache.apply([Standing("ghost", 999, T0)], mode="replace")
    rebuild_board(session, cache)
    assert cache.entries() == [("real", 10)]
    assert cache.latest_message() is not None
    assert cache.latest_message()["top"] == [["real", "10"]]


# -- submissions recorded together -------------------------------------------


def test_a_batch_ranks_and_publishes_each_submission_as_if_applied_one_by_one(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache], channel: ChannelListener
) -> None:
    """Users passing each other in one batch: every answer and message fits one serial order."""
    cache = make_cache(3)
    insert_rows(engine, cache.board.name, [("p", 100, T0), ("q", 90, T0), ("r", 80, T0)])
    rebuild_board(session, cache)
    channel.drain()
    channel.messages.clear()

    outcomes = commit_submissions(engine, cache, [("r", 25), ("q", 5), ("s", 85)])

    # From the lowest new total up: s (85) behind p and q, then q (95) behind p, then r (105) first.
    assert outcomes == [Submission("r", 105, 1), Submission("q", 95, 2), Submission("s", 85, 3)]
    messages = channel.drain()
    assert [(m["updatedUser"], m["newScore"]) for m in messages] == [("s", 85), ("q", 95), ("r", 105)]
    assert [m["top"] for m in messages] == [
        [["p", "100"], ["q", "90"], ["s", "85"]],
        [["p", "100"], ["q", "95"], ["s", "85"]],
        [["r", "105"], ["p", "100"], ["q", "95"]],
    ]
    versions = [m["version"] for m in messages]
    assert versions == sorted(set(versions))
    assert cache.entries() == sql_top(session, cache) == [("r", 105), ("p", 100), ("q", 95)]


def test_a_big_boards_batch_goes_to_redis_in_short_script_calls_each_submission_still_published(
    engine: Engine, session: Session, make_cache: Callable[[int], BoardCache], channel: ChannelListener
) -> None:
    cache = make_cache(1000)  # 4 submissions per call: each message encodes up to 1,000 entries
    calls_before = REGISTRY.get_sample_value("leaderboard_redis_script_seconds_count", {"mode": "write"}) or 0
    cache.apply([], mode="replace")
    channel.drain()
    channel.messages.clear()
    outcomes = commit_submissions(engine, cache, [(f"user{i}", 10 + i) for i in range(10)])
    # Applied from the lowest total up, each new user goes to the top as it lands.
    assert outcomes == [Submission(f"user{i}", 10 + i, 1) for i in range(10)]
    calls = (REGISTRY.get_sample_value("leaderboard_redis_script_seconds_count", {"mode": "write"}) or 0) - calls_before
    assert calls == 3
    assert [m["updatedUser"] for m in channel.drain()] == [f"user{i}" for i in range(10)]
    assert cache.entries() == sql_top(session, cache)


def test_a_submission_over_the_maximum_fails_alone_in_its_batch(
    engine: Engine, redis_conn: redis.Redis, board_name: str, base_env: dict[str, str]
) -> None:
    board = Board(name=board_name, top_n=3, channel=base_env["REDIS_CHANNEL"], max_increment=100, max_total=1000)
    cache = BoardCache(redis_conn, board)
    insert_rows(engine, board_name, [("near", 998, T0)])
    outcomes = commit_submissions(engine, cache, [("near", 5), ("fine", 7)])
    assert isinstance(outcomes[0], TotalLimitExceeded)
    assert outcomes[1] == Submission("fine", 7, 2)
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT user_id, total FROM scores")).all()) == {"near": 998, "fine": 7}
    assert cache.entries() == [("near", 998), ("fine", 7)]


def test_a_value_the_database_refuses_fails_alone_in_its_batch(
    engine: Engine, make_cache: Callable[[int], BoardCache]
) -> None:
    cache = make_cache(3)
    too_long = "x" * 200  # past the user id column; the service refuses such tokens before this
    outcomes = commit_submissions(engine, cache, [("a", 1), (too_long, 1), ("b", 2)])
    assert isinstance(outcomes[1], DataError)
    assert outcomes[0] == Submission("a", 1, 1)  # each on its own, in order: a, then b ahead of it
    assert outcomes[2] == Submission("b", 2, 1)
    with engine.connect() as conn:
        assert dict(conn.execute(text("SELECT user_id, total FROM scores")).all()) == {"a": 1, "b": 2}


# -- concurrency -------------------------------------------------------------


@pytest.mark.parametrize("grouped", [False, True], ids=["one_by_one", "group_commit"])
def test_500_concurrent_submissions_for_20_users_lose_nothing(
    engine: Engine, make_cache: Callable[[int], BoardCache], grouped: bool
) -> None:
    """Threads race on PostgreSQL rows and on the Redis script, each on its own or through group commit."""
    cache = make_cache(10)
    together = group_commit(engine, cache) if grouped else None
    rng = random.Random(2026)
    jobs = [(f"player{rng.randrange(20):02d}", rng.randint(1, 1000)) for _ in range(500)]
    expected: dict[str, int] = {}
    for user, score in jobs:
        expected[user] = expected.get(user, 0) + score
    batches_before = REGISTRY.get_sample_value("leaderboard_write_batch_size_count") or 0
    barrier = threading.Barrier(25)
    answers: list[Submission] = []
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[str, int]]) -> None:
        barrier.wait()
        for user, score in chunk:
            try:
                answers.append(submit_score(engine, cache, user, score, together=together))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(jobs[i::25],)) for i in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT user_id, total FROM scores")).all())
    assert totals == expected
    # Each user's answers count up to their final total.
    assert {user: max(a.total for a in answers if a.user_id == user) for user in expected} == expected
    with Session(engine) as check:
        assert cache.entries() == sql_top(check, cache)
    assert len(cache.entries()) == 10
    batches = (REGISTRY.get_sample_value("leaderboard_write_batch_size_count") or 0) - batches_before
    if grouped:
        assert 0 < batches < 500  # fewer statements than submissions
    else:
        assert batches == 500
