"""Boards: what a board is, its settings, and the registry of every board of a deployment.

The `boards` table is the truth; each process keeps what it read for a few
seconds (`BoardRegistry.TTL`), so the write path and the board service look
a board up without a query. A rule that a stale copy could get wrong cannot
hurt: the write statement joins `boards` on the board's uid (app.leaderboard
.records), and a board's rules are fixed once it has scores.

The default board (`LEADERBOARD_ID`) always exists: each process writes the
environment's settings to its row on first use.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import unicodedata
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from app.leaderboard.errors import BoardImmutable, BoardNotFound, BoardProtected, InvalidBoard
from app.leaderboard.rules import MAX_SAFE_TOTAL, OPERATORS, ORDERS, default_bounds, least_score
from app.leaderboard.seasons import (
    DatabaseClock,
    InvalidReset,
    Period,
    PeriodNotBegun,
    UnknownPeriod,
    check_reset,
    period_at,
    period_named,
)
from app.models import (
    BOARD_ID_MAX_LENGTH,
    BOARD_TITLE_MAX_LENGTH,
    BoardRow,
    IdempotencyKey,
    RankBucket,
    RankDelta,
    Score,
)

BOARD_ID = re.compile(rf"^[A-Za-z0-9_.-]{{1,{BOARD_ID_MAX_LENGTH}}}$")
TOP_N_MAX = 1000
# Rules a board keeps once it has scores.
FIXED_ONCE_SCORED = ("order", "operator", "reset", "timezone")


def is_board_id(value: object) -> bool:
    return isinstance(value, str) and BOARD_ID.match(value) is not None


def utc_now() -> datetime:
    """Naive UTC, as the database columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class BoardKeys:
    """Redis key names of a board. One hash tag, so they share a cluster slot."""

    top: str
    members: str
    version: str
    latest: str
    names: str
    gone: str
    origin: str
    changes: str  # the change log: a stream, one entry per accepted change (app.leaderboard.changes)
    changed: str  # not a key: the Pub/Sub channel that says the change log grew
    logged: str  # the row version of each user's change logged last (so the log keeps commit order)
    held: str  # changes waiting for the one before them, and since when
    held_since: str
    updates: str  # a stream of one entry: the last published message (BOARD_TRANSPORT=streams follows it)

    @classmethod
    def for_board(cls, board_id: str) -> BoardKeys:
        prefix = f"lb:{{{board_id}}}"
        return cls(
            top=f"{prefix}:top",
            members=f"{prefix}:members",
            version=f"{prefix}:version",
            latest=f"{prefix}:latest",
            names=f"{prefix}:names",
            gone=f"{prefix}:gone",
            origin=f"{prefix}:origin",
            changes=f"{prefix}:changes",
            changed=f"{prefix}:changed",
            logged=f"{prefix}:logged",
            held=f"{prefix}:held",
            held_since=f"{prefix}:held-since",
            updates=f"{prefix}:updates",
        )

    def as_list(self) -> list[str]:
        """The keys, in the order APPLY_SCRIPT takes them."""
        return [
            self.top,
            self.members,
            self.version,
            self.latest,
            self.names,
            self.gone,
            self.origin,
            self.changes,
            self.logged,
            self.held,
            self.held_since,
            self.updates,
        ]


def channel_for(board_id: str) -> str:
    """The Pub/Sub channel of a board other than the default (which keeps `REDIS_CHANNEL`)."""
    return f"leaderboard:updated:{{{board_id}}}"


@dataclass(frozen=True)
class Board:
    """One leaderboard: its id, settings and rules, and where its updates are published."""

    id: str
    top_n: int
    channel: str
    title: str = ""
    order: str = "desc"
    operator: str = "incr"
    score_min: int = 1
    score_max: int = 1_000_000
    reset: str = "none"
    timezone: str = "UTC"
    # The board's identity in this database; "" when not known (SQL unreachable).
    uid: str = ""
    is_default: bool = False
    # The period this copy of the board stands for (a board with resets; see
    # app.leaderboard.seasons): the current one, as the registry hands it out,
    # or a past one a query asked for. None without resets.
    period: Period | None = field(default=None, compare=False)
    keys: BoardKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", BoardKeys.for_board(self.id))

    @property
    def ascending(self) -> bool:
        """Lower is better."""
        return self.order == "asc"

    @property
    def period_id(self) -> str:
        """The period SQL rows of this copy count in: "" on a board without resets."""
        return "" if self.period is None else self.period.id

    @property
    def origin(self) -> str:
        """What the cached board is built from: this board's SQL (its uid), in this period.

        A cache built from an earlier period of the same board is rebuilt (the
        reset); one from a later period is never taken back (APPLY_SCRIPT).
        """
        if self.period is None or not self.uid:
            return self.uid
        return f"{self.uid}@{self.period.start_us}"

    def at(self, period: Period | None) -> Board:
        """This board as of `period`."""
        return replace(self, period=period)

    def as_of(self, period_id: str | None) -> Board:
        """This board (as of its current period) as of the period named `period_id` (None: as is).

        Raises UnknownPeriod for an id that names none of the board's periods
        (any id, on a board without resets), PeriodNotBegun for a later one.
        """
        if period_id is None or period_id == self.period_id:
            return self
        if self.period is None:
            raise UnknownPeriod(period_id)
        period = period_named(self.reset, self.timezone, period_id)
        if period.start > self.period.start:
            raise PeriodNotBegun(period_id)
        return self.at(period)

    def period_json(self) -> dict[str, str]:
        """What frames and snapshots of a board with resets add: the period and when it ends."""
        if self.period is None:
            return {}
        return {"period": self.period.id, "periodEnds": self.period.ends_iso(self.timezone)}

    def as_json(self) -> dict[str, Any]:
        """The board's settings (and, with resets, its current period and when it ends)."""
        return {
            "id": self.id,
            "title": self.title,
            "topN": self.top_n,
            "order": self.order,
            "operator": self.operator,
            "scoreMin": self.score_min,
            "scoreMax": self.score_max,
            "reset": self.reset,
            "timezone": self.timezone,
        } | self.period_json()


@dataclass(frozen=True)
class BoardDefaults:
    """The deployment's settings that boards start from, and the default board's."""

    default_id: str
    default_channel: str
    top_n: int
    max_increment: int

    def default_board(self, uid: str = "", title: str | None = None) -> Board:
        """The default board exactly as the environment says."""
        return Board(
            id=self.default_id,
            title=title or self.default_id,
            top_n=self.top_n,
            channel=self.default_channel,
            score_min=1,
            score_max=self.max_increment,
            uid=uid,
            is_default=True,
        )


def with_changes(current: Board | None, board_id: str, changes: Mapping[str, Any], defaults: BoardDefaults) -> Board:
    """The board `changes` make of `current` (None: a new board), checked; raises InvalidBoard.

    `changes` holds any of title, top_n, order, operator, score_min,
    score_max, reset, timezone, already of the right types. Bounds left out
    stay as they are, or become the operator's defaults when the operator changes.
    """
    base = current or Board(id=board_id, top_n=defaults.top_n, channel=channel_for(board_id), title=board_id)
    operator = changes.get("operator", base.operator)
    if operator not in OPERATORS:
        raise InvalidBoard(f"operator must be one of {', '.join(OPERATORS)}.")
    order = changes.get("order", base.order)
    if order not in ORDERS:
        raise InvalidBoard(f"order must be one of {', '.join(ORDERS)}.")
    low, high = (base.score_min, base.score_max)
    if current is None or operator != base.operator:
        low, high = default_bounds(operator, defaults.max_increment)
    low, high = changes.get("score_min", low), changes.get("score_max", high)
    if not least_score(operator) <= low <= high <= MAX_SAFE_TOTAL:
        raise InvalidBoard(
            f"scoreMin and scoreMax must satisfy {least_score(operator)} <= scoreMin <= scoreMax <= {MAX_SAFE_TOTAL}"
            f" on an {operator!r} board."
        )
    top_n = changes.get("top_n", base.top_n)
    if not 1 <= top_n <= TOP_N_MAX:
        raise InvalidBoard(f"topN must be between 1 and {TOP_N_MAX}.")
    title = changes.get("title", base.title).strip()
    if not 1 <= len(title) <= BOARD_TITLE_MAX_LENGTH or not all(_is_text(ch) for ch in title):
        raise InvalidBoard(f"title must be 1 to {BOARD_TITLE_MAX_LENGTH} printable characters.")
    reset = changes.get("reset", base.reset)
    try:
        check_reset(reset)
    except InvalidReset as error:
        raise InvalidBoard(str(error)) from None
    timezone = changes.get("timezone", base.timezone)
    if not _is_timezone(timezone):
        raise InvalidBoard(f"timezone {timezone!r} is not an IANA time zone name (like UTC or Europe/Berlin).")
    return replace(
        base,
        title=title,
        top_n=top_n,
        order=order,
        operator=operator,
        score_min=low,
        score_max=high,
        reset=reset,
        timezone=timezone,
    )


def _is_text(ch: str) -> bool:
    """Printable, as shown to people: no control, format or separator characters other than a space."""
    return ch == " " or unicodedata.category(ch)[0] not in "CZ"


def _is_timezone(name: object) -> bool:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name):
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


BOARDS = BoardRow.__table__


def _dialect_insert(engine: Engine) -> Any:
    """INSERT with ON CONFLICT, for this engine's database."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def _from_row(row: Any, defaults: BoardDefaults) -> Board:
    is_default = row.id == defaults.default_id
    return Board(
        id=row.id,
        title=row.title,
        top_n=row.top_n,
        channel=defaults.default_channel if is_default else channel_for(row.id),
        order=row.sort_order,
        operator=row.operator,
        score_min=row.score_min,
        score_max=row.score_max,
        reset=row.reset,
        timezone=row.timezone,
        uid=row.uid,
        is_default=is_default,
    )


def _row_values(board: Board) -> dict[str, Any]:
    return {
        "title": board.title,
        "top_n": board.top_n,
        "sort_order": board.order,
        "operator": board.operator,
        "score_min": board.score_min,
        "score_max": board.score_max,
        "reset": board.reset,
        "timezone": board.timezone,
    }


class BoardRegistry:
    """Every board of the deployment: read from SQL, kept for TTL seconds per process."""

    TTL = 5.0
    # How long "no such board" is believed: short, so a new board is found
    # soon everywhere, but enough that unknown ids cost SQL little.
    MISSING_TTL = 1.0

    def __init__(self, engine: Engine, defaults: BoardDefaults, clock: DatabaseClock | None = None) -> None:
        self.engine = engine
        self.defaults = defaults
        self.clock = clock or DatabaseClock(engine)
        self._known: dict[str, tuple[Board | None, float]] = {}
        self._periods: dict[tuple[str, str, str], Period] = {}
        self._default_ensured = False
        self._lock = threading.Lock()

    def current(self, board: Board) -> Board:
        """`board` in its period current now by the database's clock (as is, without resets)."""
        if board.reset == "none":
            return board
        rules = (board.id, board.reset, board.timezone)
        now = self.clock.now()
        period = self._periods.get(rules)
        if period is None or not period.start <= now < period.end:
            period = period_at(board.reset, board.timezone, now)
            assert period is not None
            self._periods[rules] = period
        return board.at(period)

    @property
    def default_id(self) -> str:
        return self.defaults.default_id

    def get(self, board_id: str) -> Board:
        """The board, from this process's copy when fresh; raises BoardNotFound."""
        known = self._known.get(board_id)
        if known is not None and known[1] > time.monotonic():
            board = known[0]
        elif board_id == self.defaults.default_id:
            board = self._default()
        else:
            board = self._read(board_id)
        if board is None:
            raise BoardNotFound(board_id)
        return self.current(board)

    def named(self, board_id: str | None) -> Board:
        """The board a route names (None: the default board); BoardNotFound for any other id."""
        if board_id is None:
            return self.get(self.defaults.default_id)
        if not is_board_id(board_id):
            raise BoardNotFound(board_id)
        return self.get(board_id)

    def find(self, board_id: str) -> Board | None:
        try:
            return self.get(board_id)
        except BoardNotFound:
            return None

    def forget(self, board_id: str) -> None:
        """Read this board from SQL next time (it changed, or a write found it gone)."""
        self._known.pop(board_id, None)
        if board_id == self.defaults.default_id:
            self._default_ensured = False

    def all(self) -> list[Board]:
        """Every board, by id, read from SQL now (the default board ensured first)."""
        self._default()
        with self.engine.connect() as connection:
            rows = connection.execute(select(BOARDS).order_by(BOARDS.c.id)).all()
        boards = [_from_row(row, self.defaults) for row in rows]
        expires = time.monotonic() + self.TTL
        for board in boards:
            self._known[board.id] = (board, expires)
        return [self.current(board) for board in boards]

    def _remember(self, board_id: str, board: Board | None) -> Board | None:
        ttl = self.TTL if board is not None else self.MISSING_TTL
        self._known[board_id] = (board, time.monotonic() + ttl)
        return board

    def _read(self, board_id: str) -> Board | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(BOARDS).where(BOARDS.c.id == board_id)).first()
        return self._remember(board_id, None if row is None else _from_row(row, self.defaults))

    def _default(self) -> Board:
        """The default board, its row made to match the environment once per process.

        Without SQL, the environment's board with no uid: the board service
        can still serve what Redis holds.
        """
        if not self._default_ensured:
            try:
                board, _ = self.ensure_default()
            except SQLAlchemyError:
                return self.defaults.default_board()
            return board
        return self._read(self.defaults.default_id) or self.defaults.default_board()

    def ensure_default(self) -> tuple[Board, bool]:
        """Write the environment's settings to the default board's row; returns it and whether it changed.

        Its title is the operator's to choose (PUT /admin/boards/<id>); its
        size, bounds and rules are the environment's (TOP_N, SCORE_MAX_INCREMENT).
        """
        wanted = self.defaults.default_board()
        now = utc_now()
        values = _row_values(wanted) | {"id": wanted.id, "uid": secrets.token_hex(16)}
        insert_once = _dialect_insert(self.engine)(BOARDS).values(**values, created_at=now, updated_at=now)
        with self.engine.begin() as connection:
            # Every process of a fleet may get here at once: one inserts, the others find its row.
            created = connection.execute(insert_once.on_conflict_do_nothing(index_elements=["id"])).rowcount == 1
            row = connection.execute(select(BOARDS).where(BOARDS.c.id == wanted.id).with_for_update()).one()
            uid, title = row.uid, row.title
            target = _row_values(replace(wanted, title=row.title))
            changed = created or _row_values(_from_row(row, self.defaults)) != target
            if changed and not created:
                connection.execute(update(BoardRow).where(BoardRow.id == wanted.id).values(**target, updated_at=now))
        board = self.defaults.default_board(uid=uid, title=title)
        self._default_ensured = True
        self._remember(board.id, board)
        return board, changed

    def put(self, board_id: str, changes: Mapping[str, Any]) -> tuple[Board, bool]:
        """Create the board or change its settings; returns it and whether it is new.

        Raises InvalidBoard, or BoardImmutable for a rule of a board that
        has scores (or any setting of the default board but its title).
        """
        if not is_board_id(board_id):
            raise InvalidBoard(f"A board id is 1 to {BOARD_ID_MAX_LENGTH} of A-Z a-z 0-9 _ . -")
        if board_id == self.defaults.default_id:
            self.ensure_default()
        now = utc_now()
        with self.engine.begin() as connection:
            # FOR UPDATE (not the weaker lock an UPDATE takes): a first score
            # being written holds a key-share lock on the row until it
            # commits, so the check for scores below sees it.
            row = connection.execute(select(BOARDS).where(BOARDS.c.id == board_id).with_for_update()).first()
            current = None if row is None else _from_row(row, self.defaults)
            board = with_changes(current, board_id, changes, self.defaults)
            if current is None:
                board = replace(board, uid=secrets.token_hex(16))
                connection.execute(
                    insert(BoardRow).values(
                        id=board_id, uid=board.uid, **_row_values(board), created_at=now, updated_at=now
                    )
                )
            else:
                self._check_changes_allowed(connection, current, board)
                connection.execute(
                    update(BoardRow).where(BoardRow.id == board_id).values(**_row_values(board), updated_at=now)
                )
        self._remember(board_id, board)
        return self.current(board), current is None

    def _check_changes_allowed(self, connection: Any, current: Board, board: Board) -> None:
        if current.is_default:
            if replace(board, title=current.title) != current:
                raise BoardImmutable(
                    "The default board's size, bounds and rules come from the environment"
                    " (TOP_N, SCORE_MAX_INCREMENT); only its title can change here."
                )
            return
        changed = [name for name in FIXED_ONCE_SCORED if getattr(current, name) != getattr(board, name)]
        if changed and connection.execute(select(exists().where(Score.board == current.id))).scalar():
            raise BoardImmutable(f"The board has scores: its {', '.join(changed)} can no longer change.")

    def remove(self, board_id: str) -> Board:
        """Delete the board and everything SQL holds of it, in one transaction; returns what it was.

        Raises BoardNotFound, or BoardProtected for the default board.
        """
        if board_id == self.defaults.default_id:
            raise BoardProtected("The default board always exists; it cannot be deleted.")
        with self.engine.begin() as connection:
            row = connection.execute(select(BOARDS).where(BOARDS.c.id == board_id).with_for_update()).first()
            if row is None:
                raise BoardNotFound(board_id)
            board = _from_row(row, self.defaults)
            connection.execute(delete(IdempotencyKey).where(IdempotencyKey.board == board_id))
            connection.execute(delete(RankBucket).where(RankBucket.board == board_id))
            connection.execute(delete(Score).where(Score.board == board_id))
            # The trigger on scores noted every row's going; none of it matters now.
            connection.execute(delete(RankDelta).where(RankDelta.board == board_id))
            connection.execute(delete(BoardRow).where(BoardRow.id == board_id))
        self._remember(board_id, None)
        return board
