"""The domain (app.leaderboard) against real PostgreSQL and Redis: rules, order, N, staleness, rebuild."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

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
    BoardNotFound,
    BoardRegistry,
    Standing,
    Submission,
    Submitted,
    TotalLimitExceeded,
)
from app.leaderboard.ranks import user_rank
from app.leaderboard.rebuild import rebuild_board, top_standings
from app.leaderboard.writes import commit_submissions, group_commit, submit_score
from tests.conftest import ChannelListener

T0 = datetime(2026, 1, 1, 12, 0, 0)
RULES = list(itertools.product(["incr", "best", "set"], ["desc", "asc"]))


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def listen(redis_conn: redis.Redis) -> Iterator[Callable[[Board], ChannelListener]]:
    listeners: list[ChannelListener] = []

    def start(board: Board) -> ChannelListener:
        listeners.append(ChannelListener(redis_conn, board.channel))
        return listeners[-1]

    yield start
    for listener in listeners:
        listener.close()


def insert_rows(engine: Engine, board: Board, rows: list[tuple[str, int, datetime]]) -> None:
    with engine.begin() as conn:
        for user, total, reached in rows:
            conn.execute(
                text(
                    "INSERT INTO scores (board, user_id, total, reached_at, version, ascending)"
                    " VALUES (:b, :u, :t, :r, 1, :asc)"
                ),
                {"b": board.id, "u": user, "t": total, "r": reached, "asc": board.ascending},
            )


def submit(engine: Engine, cache: BoardCache, board: Board, user: str, value: int, **options: Any) -> Submission:
    return submit_score(engine, cache, Submitted(board, user, value, options.pop("name", None)), **options)


def sql_top(session: Session, board: Board) -> list[tuple[str, int]]:
    rows = [(s.user_id, s.total) for s in top_standings(session, board)]
    session.rollback()
    return rows


# -- the tie order -----------------------------------------------------------


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_ties_go_to_who_reached_the_value_first_then_to_user_id(
    engine: Engine, session: Session, cache: BoardCache, make_board: Callable[..., Board], order: str
) -> None:
    board = make_board(10, order=order)
    better, worse = (101, 99) if order == "desc" else (99, 101)
    rows = [
        ("zed", 100, T0),  # first to reach 100
        ("amy", 100, T0 + timedelta(seconds=1)),
        ("Bob", 100, T0 + timedelta(seconds=2)),  # same instant as "bob" and "béa"
        ("bob", 100, T0 + timedelta(seconds=2)),
        ("béa", 100, T0 + timedelta(seconds=2)),
        ("top", better, T0 + timedelta(days=1)),
        ("low", worse, T0 - timedelta(days=1)),
    ]
    insert_rows(engine, board, rows)
    rebuild_board(session, cache, board)
    # Byte order on the last tie: "B" (0x42) < "b" (0x62) < "bé" (0x62 0xc3): not a locale's order.
    expected = [("top", better), ("zed", 100), ("amy", 100), ("Bob", 100), ("bob", 100), ("béa", 100), ("low", worse)]
    assert sql_top(session, board) == expected
    assert cache.entries(board) == expected
    for rank, (user, _) in enumerate(expected, start=1):
        assert cache.rank(board, user) == rank
        assert user_rank(engine, board.id, user) == (dict(expected)[user], rank)


def test_redis_applies_the_same_order_write_by_write(
    engine: Engine, session: Session, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    """Merged one by one, in a shuffled order, standings land where SQL ranks them."""
    board = make_board(5)
    rng = random.Random(7)
    rows = [(f"u{i:02d}", rng.choice([10, 20, 30]), T0 + timedelta(seconds=rng.randint(0, 3))) for i in range(30)]
    insert_rows(engine, board, rows)
    rebuild_board(session, cache, board)
    cache.redis.delete(board.keys.top, board.keys.members)
    for user, total, reached in rng.sample(rows, len(rows)):
        cache.apply(board, [Standing(user, total, reached, version=1)], mode="merge")
    assert cache.entries(board) == sql_top(session, board)


# -- every operator on every order -------------------------------------------


class Oracle:
    """What a board must hold after submissions one at a time, worked out independently of the code."""

    def __init__(self, operator: str, order: str) -> None:
        self.operator, self.ascending = operator, order == "asc"
        self.values: dict[str, int] = {}
        self.reached: dict[str, int] = {}
        self.clock = 0

    def submit(self, user: str, value: int) -> tuple[int, bool]:
        old = self.values.get(user)
        if old is None:
            new, changed = value, True
        elif self.operator == "incr":
            new, changed = old + value, True
        elif self.operator == "best":
            changed = value < old if self.ascending else value > old
            new = value if changed else old
        else:
            new, changed = value, value != old
        if changed:
            self.clock += 1
            self.values[user], self.reached[user] = new, self.clock
        return new, changed

    def ranking(self) -> list[tuple[str, int]]:
        def key(user: str) -> tuple[int, int, bytes]:
            value = self.values[user]
            return (value if self.ascending else -value, self.reached[user], user.encode())

        return [(user, self.values[user]) for user in sorted(self.values, key=key)]


@pytest.mark.parametrize(("operator", "order"), RULES)
def test_every_operator_on_every_order_keeps_sql_redis_and_the_answers_exact(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
    operator: str,
    order: str,
) -> None:
    """Ties, the N boundary (3 of 6 users), users passing each other and falling back, one at a time."""
    board = make_board(3, operator=operator, order=order)
    channel = listen(board)
    oracle = Oracle(operator, order)
    rng = random.Random(hash((operator, order)) & 0xFFFF)
    plays = [(f"u{rng.randrange(6)}", rng.choice([0, 1, 5, 5, 10, 40, 40, 90])) for _ in range(80)]
    low = 1 if operator == "incr" else 0
    changes = 0
    for user, value in plays:
        value = max(value, low)
        expected_value, expected_change = oracle.submit(user, value)
        answer = submit(engine, cache, board, user, value)
        ranking = oracle.ranking()
        rank = [u for u, _ in ranking].index(user) + 1
        assert (answer.total, answer.improved) == (expected_value, expected_change), (user, value)
        assert answer.rank == (rank if rank <= 3 else None)
        assert cache.entries(board) == ranking[:3]
        changes += expected_change
    assert sql_top(session, board) == oracle.ranking()[:3]
    for rank, (user, value) in enumerate(oracle.ranking(), start=1):
        assert user_rank(engine, board.id, user) == (value, rank)
    messages = channel.drain()
    # A message for every change that reached the board, none for a submission that changed nothing.
    assert len(messages) <= changes
    assert messages[-1]["top"] == [[user, str(value)] for user, value in oracle.ranking()[:3]]
    assert all(message["board"] == board.id for message in messages)


def test_a_late_worse_best_never_replaces_a_better_one_in_sql_or_in_redis(
    engine: Engine, session: Session, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    board = make_board(3, operator="best", order="asc")  # lap times: lower is better
    assert submit(engine, cache, board, "amy", 62_000).improved
    faster = submit(engine, cache, board, "amy", 58_500)
    assert (faster.total, faster.improved, faster.rank) == (58_500, True, 1)
    slower = submit(engine, cache, board, "amy", 61_000)
    assert (slower.total, slower.improved, slower.rank) == (58_500, False, 1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT total FROM scores WHERE board = :b"), {"b": board.id}).scalar() == 58_500
    # In Redis too: the first (worse) standing, arriving late, is refused by its older row version.
    [current] = top_standings(session, board)
    session.rollback()
    late = Standing("amy", 62_000, current.reached_at - timedelta(seconds=5), version=current.version - 1)
    assert cache.apply(board, [late], mode="write").status == "unchanged"
    assert cache.entries(board) == [("amy", 58_500)]


def test_a_late_older_set_of_a_user_who_fell_off_stays_off(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    """`set` can make a value worse: Redis remembers who left, so their late older write stays out."""
    board = make_board(2, operator="set")
    for user, value in [("a", 100), ("b", 90), ("c", 80)]:
        submit(engine, cache, board, user, value)
    assert cache.entries(board) == [("a", 100), ("b", 90)]
    before = Standing("a", 100, T0, version=int(cache.redis.hget(board.keys.members, "a").split("|")[0]))
    fallen = submit(engine, cache, board, "a", 10)  # a drops below the board
    assert (fallen.total, fallen.rank) == (10, None)
    assert cache.entries(board) == [("b", 90), ("c", 80)]
    assert cache.apply(board, [before], mode="write").status == "unchanged"  # the late, older write of a
    assert cache.entries(board) == [("b", 90), ("c", 80)]


def test_a_submission_that_changes_nothing_publishes_nothing(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], listen: Callable[[Board], ChannelListener]
) -> None:
    board = make_board(3, operator="best")
    submit(engine, cache, board, "a", 10)
    channel = listen(board)
    version = cache.redis.get(board.keys.version)
    assert not submit(engine, cache, board, "a", 10).improved
    assert not submit(engine, cache, board, "a", 3).improved
    assert channel.drain(0.2) == []
    assert cache.redis.get(board.keys.version) == version


# -- the N boundary ----------------------------------------------------------


def test_exactly_n_then_one_more(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
) -> None:
    board = make_board(3)
    channel = listen(board)
    for user, score in [("a", 30), ("b", 20), ("c", 10)]:
        submit(engine, cache, board, user, score)
    assert cache.entries(board) == [("a", 30), ("b", 20), ("c", 10)]
    published = len(channel.drain())

    # N + 1: a smaller total stays off the board, and nothing is published.
    outsider = submit(engine, cache, board, "d", 5)
    assert (outsider.rank, outsider.total) == (None, 5)
    assert cache.entries(board) == [("a", 30), ("b", 20), ("c", 10)]
    assert len(channel.drain(0.2)) == published

    # A tie with the last entry loses: the last entry reached 10 first.
    assert submit(engine, cache, board, "d", 5).rank is None
    assert cache.entries(board)[-1] == ("c", 10)

    # Beating the smallest pushes it off, and its bookkeeping goes with it.
    assert submit(engine, cache, board, "d", 10).rank == 3
    assert cache.entries(board) == [("a", 30), ("b", 20), ("d", 20)]
    assert set(cache.redis.hkeys(board.keys.members)) == {"a", "b", "d"}
    assert channel.drain()[-1]["top"] == [["a", "30"], ["b", "20"], ["d", "20"]]
    assert sql_top(session, board) == cache.entries(board)


# -- late, stale writes ------------------------------------------------------


def test_a_delayed_older_version_cannot_overwrite_a_newer_one(
    cache: BoardCache, make_board: Callable[..., Board], listen: Callable[[Board], ChannelListener]
) -> None:
    board = make_board(3)
    channel = listen(board)
    cache.apply(board, [Standing("a", 1, T0, version=1)], mode="replace")
    newer = Standing("alice", 50, T0 + timedelta(seconds=2), version=20)
    older = Standing("alice", 40, T0 + timedelta(seconds=1), version=10)
    assert cache.apply(board, [newer], mode="write").status == "written"
    version = cache.redis.get(board.keys.version)
    assert cache.apply(board, [older], mode="write").status == "unchanged"
    assert cache.entries(board) == [("alice", 50), ("a", 1)]
    assert cache.redis.get(board.keys.version) == version
    assert [m["newScore"] for m in channel.drain() if m["updatedUser"] == "alice"] == [50]


def test_a_stale_write_of_a_user_pushed_off_the_board_stays_off(
    cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    board = make_board(2)
    cache.apply(board, [Standing("a", 100, T0, version=1), Standing("b", 90, T0, version=1)], mode="replace")
    assert cache.apply(board, [Standing("c", 80, T0, version=1)], mode="write").status == "unchanged"
    assert cache.entries(board) == [("a", 100), ("b", 90)]


def test_writes_wait_for_a_board_that_was_never_built(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], listen: Callable[[Board], ChannelListener]
) -> None:
    """A flushed (or new) Redis is rebuilt from SQL before the write lands."""
    board = make_board(3)
    channel = listen(board)
    insert_rows(engine, board, [("old1", 500, T0), ("old2", 400, T0), ("old3", 300, T0)])
    submission = submit(engine, cache, board, "new", 450)
    assert submission.rank == 2
    assert cache.entries(board) == [("old1", 500), ("new", 450), ("old2", 400)]
    message = channel.drain()[0]
    assert (message["updatedUser"], message["newScore"]) == ("new", 450)
    assert message["top"] == [["old1", "500"], ["new", "450"], ["old2", "400"]]


def test_a_redis_board_built_from_another_database_is_rebuilt_on_the_next_write(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    """Two checkouts on one Redis, or a deleted board's namesake: Redis state of another origin is not trusted."""
    board = make_board(3)
    insert_rows(engine, board, [("mine", 5, T0)])
    stranger = Board(id=board.id, top_n=3, channel=board.channel, uid="f" * 32)
    cache.apply(stranger, [Standing("theirs", 999, T0, version=1)], mode="replace")
    assert not cache.is_built(board)
    submit(engine, cache, board, "me", 7)
    assert cache.entries(board) == [("me", 7), ("mine", 5)]
    assert cache.is_built(board)


def test_versions_only_go_up_even_after_redis_loses_everything(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    board = make_board(3)
    submit(engine, cache, board, "a", 1)
    submit(engine, cache, board, "a", 1)
    before = int(cache.redis.get(board.keys.version) or 0)
    cache.redis.delete(*board.keys.as_list())
    submit(engine, cache, board, "a", 1)
    assert int(cache.redis.get(board.keys.version) or 0) > before
    assert cache.entries(board) == [("a", 3)]


def test_rebuild_replaces_entries_sql_does_not_have(
    engine: Engine, session: Session, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    board = make_board(3)
    insert_rows(engine, board, [("real", 10, T0)])
    cache.apply(board, [Standing("ghost", 999, T0, version=1)], mode="replace")
    rebuild_board(session, cache, board)
    assert cache.entries(board) == [("real", 10)]
    latest = cache.latest_message(board)
    assert latest is not None
    assert latest["top"] == [["real", "10"]]


def test_a_missing_board_rebuilt_by_two_processes_is_published_once(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
) -> None:
    """As after a Redis restart, when a write and the keeper (or a board worker) both find it missing."""
    board = make_board(3)
    insert_rows(engine, board, [("real", 10, T0)])
    channel = listen(board)
    first = rebuild_board(session, cache, board, reason="missing")
    second = rebuild_board(session, cache, board, reason="missing")
    assert first.version is not None
    assert second.version == first.version
    assert [m["version"] for m in channel.drain()] == [first.version]  # one message, not two
    assert cache.entries(board) == [("real", 10)]
    # A drift (or a manual) rebuild still replaces what is there.
    assert rebuild_board(session, cache, board, reason="drift").version > first.version


def test_a_board_deleted_meanwhile_takes_no_write(
    engine: Engine, cache: BoardCache, registry: BoardRegistry, make_board: Callable[..., Board]
) -> None:
    board = make_board(3)
    registry.remove(board.id)
    with pytest.raises(BoardNotFound):
        submit(engine, cache, board, "a", 1)
    again, _ = registry.put(board.id, {"top_n": 3})  # the same id, another board
    with pytest.raises(BoardNotFound):
        submit(engine, cache, board, "a", 1, idempotency_key="k")  # a stale copy of the old one
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scores WHERE board = :b"), {"b": board.id}).scalar() == 0
    assert submit(engine, cache, again, "a", 1).total == 1


# -- display names -----------------------------------------------------------


def test_names_are_stored_with_the_user_and_travel_with_the_board(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
) -> None:
    board = make_board(3)
    channel = listen(board)
    submit(engine, cache, board, "u1", 5, name="Ada <b>Lovelace</b>")
    submit(engine, cache, board, "u2", 3)
    message = channel.drain()[-1]
    assert message["names"] == {"u1": "Ada <b>Lovelace</b>"}  # data, as given: the page shows it as text
    submit(engine, cache, board, "u1", 1, name="Ada")
    assert channel.drain()[-1]["names"] == {"u1": "Ada"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM user_names WHERE user_id = 'u1'")).scalar() == "Ada"
    cache.redis.delete(*board.keys.as_list())
    rebuild_board(session, cache, board)  # from SQL, names included
    assert cache.names(board) == {"u1": "Ada"}
    # A user pushed off the board takes their name along.
    for user in ("x", "y", "z"):
        submit(engine, cache, board, user, 100)
    assert cache.names(board) == {}


def test_a_board_without_names_publishes_the_seeds_message(
    engine: Engine, cache: BoardCache, registry: BoardRegistry, channel: ChannelListener
) -> None:
    """The default board's message is Part 1's, field for field."""
    board = registry.get(registry.default_id)
    submit(engine, cache, board, "a", 5)
    [message] = channel.drain()
    assert list(message) == ["type", "updatedUser", "newScore", "top", "version", "ts"]


# -- submissions recorded together -------------------------------------------


def test_a_batch_ranks_and_publishes_each_submission_as_if_applied_one_by_one(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
) -> None:
    """Users passing each other in one batch: every answer and message fits one serial order."""
    board = make_board(3)
    insert_rows(engine, board, [("p", 100, T0), ("q", 90, T0), ("r", 80, T0)])
    rebuild_board(session, cache, board)
    channel = listen(board)

    outcomes = commit_submissions(
        engine, cache, [Submitted(board, "r", 25), Submitted(board, "q", 5), Submitted(board, "s", 85)]
    )

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
    assert cache.entries(board) == sql_top(session, board) == [("r", 105), ("p", 100), ("q", 95)]


def test_one_batch_on_boards_of_different_rules(
    engine: Engine, session: Session, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    total, laps, latest = make_board(3), make_board(3, operator="best", order="asc"), make_board(3, operator="set")
    for board in (total, laps, latest):
        submit(engine, cache, board, "a", 50)
    outcomes = commit_submissions(
        engine,
        cache,
        [Submitted(total, "a", 5), Submitted(laps, "a", 40), Submitted(latest, "a", 7), Submitted(laps, "b", 60)],
    )
    assert outcomes == [
        Submission("a", 55, 1),
        Submission("a", 40, 1),
        Submission("a", 7, 1),
        Submission("b", 60, 2),
    ]
    for board, expected in [(total, [("a", 55)]), (laps, [("a", 40), ("b", 60)]), (latest, [("a", 7)])]:
        assert cache.entries(board) == sql_top(session, board) == expected


def test_a_big_boards_batch_goes_to_redis_in_short_script_calls_each_submission_still_published(
    engine: Engine,
    session: Session,
    cache: BoardCache,
    make_board: Callable[..., Board],
    listen: Callable[[Board], ChannelListener],
) -> None:
    board = make_board(1000)  # 4 submissions per call: each message encodes up to 1,000 entries
    rebuild_board(session, cache, board)
    channel = listen(board)
    calls_before = REGISTRY.get_sample_value("leaderboard_redis_script_seconds_count", {"mode": "write"}) or 0
    outcomes = commit_submissions(engine, cache, [Submitted(board, f"user{i}", 10 + i) for i in range(10)])
    # Applied from the lowest total up, each new user goes to the top as it lands.
    assert outcomes == [Submission(f"user{i}", 10 + i, 1) for i in range(10)]
    calls = (REGISTRY.get_sample_value("leaderboard_redis_script_seconds_count", {"mode": "write"}) or 0) - calls_before
    assert calls == 1  # one pipelined round trip ...
    assert [m["updatedUser"] for m in channel.drain()] == [f"user{i}" for i in range(10)]  # ... of three calls
    assert cache.entries(board) == sql_top(session, board)


def test_a_submission_over_the_maximum_fails_alone_in_its_batch(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board]
) -> None:
    board = make_board(3)
    insert_rows(engine, board, [("near", 2**53 - 3, T0)])
    outcomes = commit_submissions(engine, cache, [Submitted(board, "near", 5), Submitted(board, "fine", 7)])
    assert isinstance(outcomes[0], TotalLimitExceeded)
    assert outcomes[1] == Submission("fine", 7, 2)
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT user_id, total FROM scores WHERE board = :b"), {"b": board.id}).all())
    assert totals == {"near": 2**53 - 3, "fine": 7}


@pytest.mark.parametrize(
    ("bad_user", "error"),
    [("x" * 200, DataError), ("bad\ud800", UnicodeEncodeError)],
    ids=["refused_by_the_database", "not_sendable_at_all"],
)
def test_a_submission_that_fails_in_any_way_fails_alone_in_its_batch(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], bad_user: str, error: type[Exception]
) -> None:
    board = make_board(3)
    batch = [Submitted(board, "a", 1), Submitted(board, bad_user, 1), Submitted(board, "b", 2)]
    outcomes = commit_submissions(engine, cache, batch)
    assert isinstance(outcomes[1], error)
    assert outcomes[0] == Submission("a", 1, 1)  # each on its own, in order: a, then b ahead of it
    assert outcomes[2] == Submission("b", 2, 1)
    with engine.connect() as conn:
        totals = dict(conn.execute(text("SELECT user_id, total FROM scores WHERE board = :b"), {"b": board.id}).all())
    assert totals == {"a": 1, "b": 2}


# -- concurrency -------------------------------------------------------------


@pytest.mark.parametrize("grouped", [False, True], ids=["one_by_one", "group_commit"])
def test_500_concurrent_submissions_for_20_users_on_3_boards_lose_nothing(
    engine: Engine, cache: BoardCache, make_board: Callable[..., Board], grouped: bool
) -> None:
    """Threads race on PostgreSQL rows and on the Redis script, on boards of three rules, alone or grouped."""
    boards = [make_board(10), make_board(10, operator="best", order="asc"), make_board(10, operator="set")]
    together = group_commit(engine, cache) if grouped else None
    rng = random.Random(2026)
    jobs = [(rng.choice(boards), f"player{rng.randrange(20):02d}", rng.randint(1, 1000)) for _ in range(500)]
    batches_before = REGISTRY.get_sample_value("leaderboard_write_batch_size_count") or 0
    barrier = threading.Barrier(25)
    answers: list[tuple[Board, Submission]] = []
    errors: list[BaseException] = []

    def worker(chunk: list[tuple[Board, str, int]]) -> None:
        barrier.wait()
        for board, user, score in chunk:
            try:
                answers.append((board, submit(engine, cache, board, user, score, together=together)))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(jobs[i::25],)) for i in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    totals, bests = {}, {}
    for board, user, score in jobs:
        if board is boards[0]:
            totals[user] = totals.get(user, 0) + score
        elif board is boards[1]:
            bests[user] = min(bests.get(user, score), score)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT board, user_id, total FROM scores")).all()
    assert {user: total for board, user, total in rows if board == boards[0].id} == totals
    assert {user: total for board, user, total in rows if board == boards[1].id} == bests
    # `set`: each user's value is one they sent, and the last answer of theirs names it.
    latest = {user: total for board, user, total in rows if board == boards[2].id}
    assert all(total in {s for b, u, s in jobs if b is boards[2] and u == user} for user, total in latest.items())
    # Each user's answers on the add-up board count up to their final total.
    added = [(a.user_id, a.total) for board, a in answers if board is boards[0]]
    assert {user: max(t for u, t in added if u == user) for user in totals} == totals
    with Session(engine) as check:
        for board in boards:
            assert cache.entries(board) == sql_top(check, board)
            assert len(cache.entries(board)) == 10
    batches = (REGISTRY.get_sample_value("leaderboard_write_batch_size_count") or 0) - batches_before
    if grouped:
        assert 0 < batches < 500  # fewer statements than submissions
    else:
        assert batches == 500
