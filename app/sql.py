"""Fixed SQL on the pooled DBAPI connection, for the paths that run on every request.

SQLAlchemy's pool still hands out, pings, recycles and invalidates the
connections; only statement building is skipped, because on this class of
machine building and compiling a statement costs more CPU than the rest of
a request (BENCHMARKS.md). Statements are written once, with `:name`
parameters, `{now}` and `{now_us}` for the database's clock (a timestamp, µs since the
epoch) and `{greatest}`, `{least}` for the larger or smaller of two values, and adapted per database.
"""

from __future__ import annotations

import functools
import re
import select
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from gevent.monkey import get_original
from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import Pool, QueuePool

# The database's own clock, for "when the user reached this total" and which
# period a submission counts in. On PostgreSQL clock_timestamp(), not now():
# the time of this statement, after any lock wait, not the start of the
# transaction; plus the session's `leaderboard.clock_offset` in seconds (unset:
# 0), which is how the tests move the database's time (PGOPTIONS="-c
# leaderboard.clock_offset=3600"). On SQLite, milliseconds padded to the six
# digits SQLAlchemy stores, so values compare as text.
CLOCK_OFFSET = (
    "make_interval(secs => coalesce(nullif(current_setting('leaderboard.clock_offset', true), ''), '0')::float8)"
)
NOW = {
    "postgresql": f"((clock_timestamp() + {CLOCK_OFFSET}) AT TIME ZONE 'UTC')",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
}
# The same clock in µs since the epoch, for row versions; and the larger of two values.
NOW_US = {
    "postgresql": f"(extract(epoch from clock_timestamp() + {CLOCK_OFFSET}) * 1000000)::bigint",
    "sqlite": "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
}
GREATEST = {"postgresql": "greatest", "sqlite": "max"}
LEAST = {"postgresql": "least", "sqlite": "min"}

_ADAPTED: dict[tuple[str, str], str] = {}


def adapt(engine: Engine, sql: str) -> str:
    """`sql` for this engine's database: its clock, and its DBAPI's parameter style."""
    dialect = engine.dialect.name
    if dialect not in NOW:
        raise RuntimeError(f"unsupported database: {dialect}")
    if (dialect, sql) not in _ADAPTED:
        text = sql.replace("{now}", NOW[dialect]).replace("{now_us}", NOW_US[dialect])
        text = text.replace("{greatest}", GREATEST[dialect]).replace("{least}", LEAST[dialect])
        if dialect == "postgresql":  # psycopg2 takes %(name)s
            text = re.sub(r"(?<!:):(\w+)", r"%(\1)s", text)
        _ADAPTED[dialect, sql] = text
    return _ADAPTED[dialect, sql]


def check_when_handed_out(engine: Engine) -> None:
    """PostgreSQL: the pool hands out no connection the server has closed, and pings none it has not.

    SQLAlchemy's `pool_pre_ping` sends `SELECT 1` before every use: a round
    trip that wakes PostgreSQL, per request on the board service and per
    batch on the write path (9% of a board worker's samples serving friends
    lists; docs/write-path-profile.md). A connection the server closed while
    it sat in the pool (a restart, `pg_terminate_backend`, an idle timeout)
    has something to read: the server's last message, then the end of the
    stream. So the socket is looked at first, without blocking (`poll`, no
    round trip), and only a connection with something to read is pinged;
    one the ping fails is replaced, as with `pool_pre_ping`. What this does
    not see, a server gone without a word (a partition), the ping would have
    waited out too: the statement fails within `tcp_user_timeout` instead.
    """
    if engine.dialect.name == "postgresql":
        event.listen(engine, "checkout", functools.partial(_check_handed_out, engine))


# The operating system's poll, not gevent's: a look at the socket that never waits or switches greenlets.
_poll = get_original("select", "poll")


def _check_handed_out(engine: Engine, dbapi_connection: Any, record: Any, proxy: Any) -> None:
    if dbapi_connection.closed:
        raise sa_exc.DisconnectionError("connection closed")
    looking = _poll()
    looking.register(dbapi_connection.fileno(), select.POLLIN)
    if not looking.poll(0):
        return  # nothing came while it was pooled: as the server left it
    try:
        engine.dialect.do_ping(dbapi_connection)
    except engine.dialect.loaded_dbapi.Error as error:
        raise sa_exc.DisconnectionError(f"connection lost: {error}") from error


class FairGate:
    """At most `permits` holders at once; the others get in strictly in the order they came.

    A permit given back goes straight to the longest waiter, so no newcomer
    can take it first. SQLAlchemy's pool lets newcomers do exactly that: a
    returned connection goes to whoever asks next, and a waiter that was
    woken but beaten to it waits again at the back. Under a steady load,
    with every connection busy, that made some requests wait many turns: the
    write p99 at 64 connections was over four times the median
    (docs/write-path-profile.md). Uses `threading`, which gevent patches, so
    it serves greenlets and threads alike.
    """

    def __init__(self, permits: int, timeout: float) -> None:
        self.timeout = timeout
        self._free = permits
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        """A permit, within the timeout, or sqlalchemy.exc.TimeoutError (503) as from the pool."""
        with self._lock:
            turn = None
            if self._free and not self._waiters:
                self._free -= 1
            else:
                turn = threading.Event()
                self._waiters.append(turn)
        if turn is not None and not turn.wait(self.timeout):
            with self._lock:
                if not turn.is_set():  # else the permit came just now: it is ours
                    self._waiters.remove(turn)
                    raise sa_exc.TimeoutError(f"no database connection free within {self.timeout:g} s")
        try:
            yield
        finally:
            with self._lock:
                if self._waiters:
                    self._waiters.popleft().set()
                else:
                    self._free += 1

    @property
    def waiting(self) -> int:
        return len(self._waiters)


_GATES: weakref.WeakKeyDictionary[Pool, FairGate] = weakref.WeakKeyDictionary()


def gate_for(engine: Engine) -> FairGate | None:
    """The gate in front of a fixed-size pool (as many permits as connections), else None."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return None
    if pool not in _GATES:
        _GATES[pool] = FairGate(pool.size(), pool.timeout())
    return _GATES[pool]


@contextmanager
def dbapi_connection(engine: Engine) -> Iterator[Any]:
    """A pooled DBAPI connection, handed out first come, first served; its errors come
    out as SQLAlchemy's, as for any statement.

    A lost connection leaves the pool (the others are pinged before their
    next use), so the service recovers by itself when the database is back.
    """
    gate = gate_for(engine)
    with gate.held() if gate else nullcontext(), _pooled(engine) as connection:
        yield connection


@contextmanager
def _pooled(engine: Engine) -> Iterator[Any]:
    pooled = None
    try:
        pooled = engine.raw_connection()
        yield pooled.dbapi_connection
    except engine.dialect.loaded_dbapi.Error as error:
        lost = pooled is not None and bool(engine.dialect.is_disconnect(error, pooled.dbapi_connection, None))
        if lost and pooled is not None:
            pooled.invalidate(error)
        raise DBAPIError.instance(
            None, None, error, engine.dialect.loaded_dbapi.Error, connection_invalidated=lost
        ) from error
    finally:
        if pooled is not None:
            pooled.close()


def as_sqlalchemy_error(engine: Engine, error: Exception, dbapi_connection: Any) -> Exception:
    """A DBAPI error caught while its connection stays checked out, as SQLAlchemy's (others as they are)."""
    if not isinstance(error, engine.dialect.loaded_dbapi.Error):
        return error
    lost = bool(engine.dialect.is_disconnect(error, dbapi_connection, None))
    return DBAPIError.instance(None, None, error, engine.dialect.loaded_dbapi.Error, connection_invalidated=lost)


@contextmanager
def one_statement(engine: Engine) -> Iterator[Any]:
    """A cursor on a pooled connection in autocommit on PostgreSQL: a statement that stands
    alone needs no BEGIN or COMMIT round trips."""
    postgres = engine.dialect.name == "postgresql"
    with dbapi_connection(engine) as connection:
        if postgres:
            connection.autocommit = True
        try:
            yield connection.cursor()
        finally:
            if postgres and not connection.closed:
                connection.autocommit = False


def fetch_one(
    engine: Engine, sql: str, params: dict[str, Any], *, prepared: str | None = None
) -> tuple[Any, ...] | None:
    """One row of a read-only statement, in autocommit (`prepared`: as for fetch_all)."""
    rows = fetch_all(engine, sql, params, prepared=prepared)
    return rows[0] if rows else None


def fetch_all(
    engine: Engine, sql: str, params: dict[str, Any], *, prepared: str | None = None
) -> list[tuple[Any, ...]]:
    """Every row of a read-only statement, in autocommit: one statement, one snapshot, one round trip.

    With `prepared` (a name), PostgreSQL plans the statement once per
    connection and keeps the plan: for the long ranking statements, and the
    write path's batch statement, planning costs about as much as running
    them, or more. It plans it without sequential scans (WITHOUT_SEQSCANS).
    """
    with one_statement(engine) as cursor:
        execute(engine, cursor, sql, params, prepared=prepared)
        return [tuple(row) for row in cursor.fetchall()]


def execute(engine: Engine, cursor: Any, sql: str, params: dict[str, Any], *, prepared: str | None = None) -> None:
    """Run `sql` (as written for `adapt`) on `cursor`; with `prepared` (a name unique to `sql`), on
    PostgreSQL, as a statement prepared once per connection and planned without sequential scans."""
    if prepared is None or engine.dialect.name != "postgresql":
        cursor.execute(adapt(engine, sql), params)
    else:
        statement, args = _prepared_call(engine, cursor.connection, prepared, sql, params)
        cursor.execute(WITHOUT_SEQSCANS + statement, args)


# Sent with each prepared statement, in the same string: one implicit transaction, so the
# setting holds for that statement and its planning only. Every statement prepared walks
# indexes, none is better off reading a whole table, and the ranking statements walk some
# once per bucket or per friend: on a table as small as the changes waiting between two
# compactions (a few thousand rows), a plan would rather read the whole table each time.
# With 2,000 changes waiting on 1,000,000 users, that took a page from 2.8 to 7.6 ms and a
# friends list of 100 from 6.0 to 17.8 ms (prepared, medians of 300 calls; the same with
# none waiting).
WITHOUT_SEQSCANS = "SET LOCAL enable_seqscan = off; "


_PLACEHOLDERS: dict[str, tuple[str, list[str]]] = {}
_PREPARED_ON: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _prepared_call(
    engine: Engine, connection: Any, name: str, sql: str, params: dict[str, Any]
) -> tuple[str, list[Any]]:
    """PREPARE `sql` on this connection if it is not yet, and the EXECUTE to run it with `params`."""
    if sql not in _PLACEHOLDERS:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        text = adapt(engine, sql)  # the clock and functions; then %(name)s becomes $n
        _PLACEHOLDERS[sql] = (re.sub(r"%\((\w+)\)s", number, text), names)
    text, names = _PLACEHOLDERS[sql]
    done = _PREPARED_ON.setdefault(connection, set())
    if name not in done:
        with connection.cursor() as cursor:
            cursor.execute(f"PREPARE {name} AS {text}")
        done.add(name)
    return f"EXECUTE {name} ({', '.join(['%s'] * len(names))})", [params[key] for key in names]
