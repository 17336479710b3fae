"""Display names: the `name` claim of a user's token, kept with the user and shown on the boards.

A name is data: 1 to NAME_MAX_LENGTH printable characters (letters, marks,
numbers, punctuation, symbols and plain spaces), trimmed; anything else is not
a name and is not stored. Each process remembers what it last stored per
user, so a submission writes a name only when it is new or changed.
"""

from __future__ import annotations

import threading
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Mapping

from sqlalchemy import Engine

from app.leaderboard.boards import utc_now
from app.models import NAME_MAX_LENGTH
from app.sql import adapt, one_statement

# How many users' names a process remembers as stored (least recently used go).
REMEMBERED = 100_000

_STORE = {
    "postgresql": """
        INSERT INTO user_names (user_id, name, updated_at)
        SELECT user_id, name, :now FROM unnest(CAST(:user_ids AS text[]), CAST(:names AS text[])) AS n (user_id, name)
        ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at
        WHERE user_names.name <> excluded.name
    """,
    "sqlite": """
        INSERT INTO user_names (user_id, name, updated_at) VALUES (:user_id, :name, :now)
        ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, updated_at = excluded.updated_at
        WHERE user_names.name <> excluded.name
    """,
}


def display_name(claim: object) -> str | None:
    """The claim as a display name, or None when it is not one."""
    if not isinstance(claim, str):
        return None
    name = claim.strip()
    if not 1 <= len(name) <= NAME_MAX_LENGTH:
        return None
    if not all(ch == " " or unicodedata.category(ch)[0] in "LMNPS" for ch in name):
        return None
    return name


class _Stored:
    def __init__(self) -> None:
        self.names: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()


_STORED: weakref.WeakKeyDictionary[Engine, _Stored] = weakref.WeakKeyDictionary()


def store_names(engine: Engine, names: Mapping[str, str]) -> None:
    """Keep each user's name in SQL; only those this process has not stored as they are now are written."""
    stored = _STORED.setdefault(engine, _Stored())
    with stored.lock:
        fresh = {user: name for user, name in names.items() if stored.names.get(user) != name}
    if not fresh:
        return
    sql = adapt(engine, _STORE[engine.dialect.name])
    now = utc_now()
    with one_statement(engine) as cursor:
        if engine.dialect.name == "postgresql":
            cursor.execute(sql, {"user_ids": list(fresh), "names": list(fresh.values()), "now": now})
        else:
            for user, name in fresh.items():
                cursor.execute(sql, {"user_id": user, "name": name, "now": now})
            cursor.connection.commit()
    with stored.lock:
        for user, name in fresh.items():
            stored.names[user] = name
            stored.names.move_to_end(user)
        while len(stored.names) > REMEMBERED:
            stored.names.popitem(last=False)


def forget_names(engine: Engine, user_id: str) -> None:
    """This process no longer believes the user's name stored (it was erased)."""
    stored = _STORED.get(engine)
    if stored is not None:
        with stored.lock:
            stored.names.pop(user_id, None)
