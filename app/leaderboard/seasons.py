"""Seasons: a board's periods (daily, weekly, monthly or cron resets), and the one clock they follow.

A period is a half-open interval [start, end) of the board's timezone's
local time, named as SPEC.md says: `2026-12-02` (daily), `2026-W49` (ISO
week, from Monday), `2026-12` (monthly), or a cron period's local start,
`2026-12-02T06:00` (`...T06:00:10` for a cron with a seconds field). Days
with a DST change are as long as they are (23 or 25 hours): the bounds are
local midnights turned into UTC.

Cron expressions have 5 fields, or 6 with seconds last (croniter's
convention, e.g. `* * * * * */10`), and are croniter's.

The clock is the database's (`DatabaseClock`): a submission counts in the
period its write statement runs in by that clock (app.leaderboard.records
checks it), and everything else that asks "which period is it now" asks the
same clock. Never imports Flask.
"""

from __future__ import annotations

import re
import time
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from croniter import CroniterBadCronError, croniter
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.sql import fetch_all, fetch_one

NAMED_RESETS = ("none", "daily", "weekly", "monthly")
RESET_MAX_LENGTH = 100
EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Period:
    """One period of a board: its id, and its bounds as naive UTC (as the database stores times)."""

    id: str
    start: datetime
    end: datetime

    @property
    def start_us(self) -> int:
        return (self.start - EPOCH) // timedelta(microseconds=1)

    def ends_iso(self, timezone: str) -> str:
        """The end as an ISO time in the board's timezone (what `periodEnds` says)."""
        return self.end.replace(tzinfo=UTC).astimezone(zoneinfo.ZoneInfo(timezone)).isoformat()

    def as_json(self, timezone: str) -> dict[str, str]:
        return {"id": self.id, "start": self.start_iso(timezone), "end": self.ends_iso(timezone)}

    def start_iso(self, timezone: str) -> str:
        return self.start.replace(tzinfo=UTC).astimezone(zoneinfo.ZoneInfo(timezone)).isoformat()


class InvalidReset(ValueError):
    """Not a reset a board can have."""


class UnknownPeriod(ValueError):
    """Not the id of one of the board's periods."""


class PeriodNotBegun(ValueError):
    """A period of the board that has not begun yet."""


def check_reset(reset: str) -> None:
    """Raises InvalidReset unless `reset` is none, daily, weekly, monthly or a cron expression."""
    if reset in NAMED_RESETS:
        return
    fields = reset.split(" ")
    well_formed = len(fields) in (5, 6) and "" not in fields and len(reset) <= RESET_MAX_LENGTH
    if not well_formed or not croniter.is_valid(reset):
        raise InvalidReset(
            "reset must be none, daily, weekly, monthly, or a cron expression of 5 fields (6 with seconds last)."
        )


def period_at(reset: str, timezone: str, instant: datetime) -> Period | None:
    """The period `instant` (naive UTC) falls in, on a board with these settings; None without resets."""
    if reset == "none":
        return None
    zone = zoneinfo.ZoneInfo(timezone)
    local = instant.replace(tzinfo=UTC).astimezone(zone)
    if reset == "daily":
        day = local.date()
        return Period(day.isoformat(), _midnight(day, zone), _midnight(day + timedelta(days=1), zone))
    if reset == "weekly":
        monday = local.date() - timedelta(days=local.weekday())
        year, week, _ = monday.isocalendar()
        return Period(f"{year}-W{week:02d}", _midnight(monday, zone), _midnight(monday + timedelta(days=7), zone))
    if reset == "monthly":
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return Period(f"{first:%Y-%m}", _midnight(first, zone), _midnight(following, zone))
    return _cron_period(reset, zone, local)


def period_named(reset: str, timezone: str, period_id: str) -> Period:
    """The board's period with this id; raises UnknownPeriod when no period has it."""
    if reset == "none" or not isinstance(period_id, str) or len(period_id) > 32:
        raise UnknownPeriod(period_id)
    zone = zoneinfo.ZoneInfo(timezone)
    try:
        if reset == "daily" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", period_id):
            start = _midnight(date.fromisoformat(period_id), zone)
        elif reset == "weekly" and (week := re.fullmatch(r"(\d{4})-W(\d{2})", period_id)):
            start = _midnight(date.fromisocalendar(int(week[1]), int(week[2]), 1), zone)
        elif reset == "monthly" and re.fullmatch(r"\d{4}-\d{2}", period_id):
            start = _midnight(date.fromisoformat(period_id + "-01"), zone)
        elif reset not in NAMED_RESETS and re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", period_id):
            start = datetime.fromisoformat(period_id).replace(tzinfo=zone).astimezone(UTC).replace(tzinfo=None)
        else:
            raise UnknownPeriod(period_id)
    except ValueError:
        raise UnknownPeriod(period_id) from None
    period = period_at(reset, timezone, start)
    if period is None or period.id != period_id:  # not canonical, or no period starts there
        raise UnknownPeriod(period_id)
    return period


def _midnight(day: date, zone: zoneinfo.ZoneInfo) -> datetime:
    """Local midnight of `day` in `zone`, as naive UTC."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC).replace(tzinfo=None)


def _cron_period(reset: str, zone: zoneinfo.ZoneInfo, local: datetime) -> Period:
    with_seconds = len(reset.split(" ")) == 6
    # croniter's get_prev is strictly before its base: start from just after `local`.
    base = local.replace(microsecond=0) + timedelta(seconds=1 if with_seconds else 0)
    if not with_seconds:
        base = base.replace(second=0) + timedelta(minutes=1)
    try:
        start = croniter(reset, base).get_prev(datetime)
        end = croniter(reset, start).get_next(datetime)
    except CroniterBadCronError as error:
        raise InvalidReset(str(error)) from None
    label = f"{start:%Y-%m-%dT%H:%M:%S}" if with_seconds else f"{start:%Y-%m-%dT%H:%M}"
    return Period(label, _utc(start), _utc(end))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


# The periods of a board that have rows, newest first, from before `:before`:
# one probe of the rank index per period (a loose index scan), whatever their sizes.
# Ids sort as their periods do (zero-padded dates and times, ISO weeks).
_PERIODS_BEFORE = """
    WITH RECURSIVE found (period) AS (
        SELECT max(period) FROM scores WHERE board = :board AND period < :before
        UNION ALL
        SELECT (SELECT max(period) FROM scores WHERE board = :board AND period < found.period)
        FROM found WHERE found.period IS NOT NULL
    )
    SELECT period FROM found WHERE period IS NOT NULL LIMIT :limit
"""


def periods_before(engine: Engine, board_id: str, reset: str, timezone: str, before: str, limit: int) -> list[Period]:
    """Up to `limit` periods of the board that have scores and began before the one named
    `before`, newest first."""
    rows = fetch_all(engine, _PERIODS_BEFORE, {"board": board_id, "before": before, "limit": limit})
    return [period_named(reset, timezone, row[0]) for row in rows]


# The database's clock, as the write statements read it (app.sql `{now}`).
_DATABASE_NOW = "SELECT {now}"


def database_now(engine: Engine) -> datetime:
    """Now by the database's clock (naive UTC), asked of the database."""
    found: Any = fetch_one(engine, _DATABASE_NOW, {})
    assert found is not None
    return datetime.fromisoformat(found[0]) if isinstance(found[0], str) else found[0]


class DatabaseClock:
    """The database's time, read from this process: the local clock plus the skew last measured.

    Measured again every SYNC_EVERY seconds (one query), and whenever a write
    statement disagreed with it about the period (`sync`). Tests move the
    database's clock (see app.sql's clock offset), and everything follows.
    """

    SYNC_EVERY = 10.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._skew: float | None = None
        self._synced_at = 0.0

    def now(self) -> datetime:
        """Now by the database's clock, naive UTC."""
        if self._skew is None or time.monotonic() - self._synced_at > self.SYNC_EVERY:
            try:
                self.sync()
            except SQLAlchemyError:  # the database is away: the last skew (or none) will do for a while
                self._synced_at = time.monotonic()
        return datetime.fromtimestamp(time.time() + (self._skew or 0.0), UTC).replace(tzinfo=None)

    def sync(self) -> None:
        """Measure the skew between this process's clock and the database's now."""
        before = time.time()
        database_at = (database_now(self.engine) - EPOCH).total_seconds()
        after = time.time()
        self._skew = database_at - (before + after) / 2
        self._synced_at = time.monotonic()
