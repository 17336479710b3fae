"""Fixed SQL on the pooled DBAPI connection, for the paths that run on every request.

SQLAlchemy's pool still hands out, pings, recycles and invalidates the
connections; only statement building is skipped, because on this class of
machine building and compiling a statement costs more CPU than the rest of
a request (BENCHMARKS.md). Statements are written once, with `:name`
parameters and `{now}` for the database's clock, and adapted per database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

# The database's own clock, for "when the user reached this total". On
# PostgreSQL clock_timestamp(), not now(): the time of this statement, after
# any lock wait, not the start of the transaction. On SQLite, milliseconds
# padded to the six digits SQLAlchemy stores, so values compare as text.
NOW = {
    "postgresql": "(clock_timestamp() AT TIME ZONE 'UTC')",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
}

_ADAPTED: dict[tuple[str, str], str] = {}


def adapt(engine: Engine, sql: str) -> str:
    """`sql` for this engine's database: its clock, and its DBAPI's parameter style."""
    dialect = engine.dialect.name
    if dialect not in NOW:
        raise RuntimeError(f"unsupported database: {dialect}")
    if (dialect, sql) not in _ADAPTED:
        text = sql.replace("{now}", NOW[dialect])
        if dialect == "postgresql":  # psycopg2 takes %(name)s
            text = re.sub(r"(?<!:):(\w+)", r"%(\1)s", text)
        _ADAPTED[dialect, sql] = text
    return _ADAPTED[dialect, sql]


@contextmanager
def dbapi_connection(engine: Engine) -> Iterator[Any]:
    """A pooled DBAPI connection; its errors come out as SQLAlchemy's, as for any statement.

    A lost connection leaves the pool (the others are pinged before their
    next use), so the service recovers by itself when the database is back.
    """
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


def fetch_one(engine: Engine, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One row of a read-only statement, in autocommit (no BEGIN or COMMIT round trips)."""
    with dbapi_connection(engine) as connection:
        if engine.dialect.name == "postgresql":
            connection.autocommit = True
        try:
            cursor = connection.cursor()
            cursor.execute(adapt(engine, sql), params)
            row = cursor.fetchone()
        finally:
            if engine.dialect.name == "postgresql" and not connection.closed:
                connection.autocommit = False
        return None if row is None else tuple(row)
