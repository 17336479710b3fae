"""Periods of boards with resets: their ids and bounds, in the board's timezone, across DST changes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from app.leaderboard.seasons import InvalidReset, UnknownPeriod, check_reset, period_at, period_named


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_a_daily_period_in_berlin_is_23_hours_on_the_spring_dst_day_and_25_in_autumn() -> None:
    spring = period_at("daily", "Europe/Berlin", utc("2026-03-29 12:00"))
    assert spring is not None
    assert (spring.id, spring.start, spring.end) == ("2026-03-29", utc("2026-03-28 23:00"), utc("2026-03-29 22:00"))
    assert spring.end - spring.start == timedelta(hours=23)
    assert spring.ends_iso("Europe/Berlin") == "2026-03-30T00:00:00+02:00"
    autumn = period_at("daily", "Europe/Berlin", utc("2026-10-25 12:00"))
    assert autumn is not None
    assert autumn.end - autumn.start == timedelta(hours=25)


def test_berlin_midnight_is_the_boundary_not_utc_midnight() -> None:
    before = period_at("daily", "Europe/Berlin", utc("2026-03-29 21:59:59.999999"))
    after = period_at("daily", "Europe/Berlin", utc("2026-03-29 22:00"))
    assert before is not None
    assert after is not None
    assert (before.id, after.id) == ("2026-03-29", "2026-03-30")
    assert before.end == after.start
    assert period_at("daily", "UTC", utc("2026-03-29 22:00")).id == "2026-03-29"  # type: ignore[union-attr]


def test_a_weekly_period_runs_monday_to_monday_with_iso_week_ids() -> None:
    sunday = period_at("weekly", "Europe/Berlin", utc("2026-12-06 22:59:59"))  # Sunday 23:59:59 in Berlin
    monday = period_at("weekly", "Europe/Berlin", utc("2026-12-06 23:00"))  # Monday 00:00
    assert sunday is not None
    assert monday is not None
    assert (sunday.id, monday.id) == ("2026-W49", "2026-W50")
    assert sunday.start == utc("2026-11-29 23:00")
    assert sunday.end == monday.start
    # ISO years: 2026 has a week 53, and 2027-01-03 (a Sunday) is still in it.
    assert period_at("weekly", "UTC", utc("2027-01-03 12:00")).id == "2026-W53"  # type: ignore[union-attr]
    assert period_at("weekly", "UTC", utc("2027-01-04 00:00")).id == "2027-W01"  # type: ignore[union-attr]


def test_a_monthly_period_runs_from_the_first() -> None:
    december = period_at("monthly", "America/New_York", utc("2027-01-01 04:59"))
    assert december is not None
    assert (december.id, december.start, december.end) == ("2026-12", utc("2026-12-01 05:00"), utc("2027-01-01 05:00"))


def test_cron_periods_start_at_each_match_and_are_named_by_their_local_start() -> None:
    six = period_at("0 6 * * *", "Europe/Berlin", utc("2026-12-02 05:00"))  # 06:00 in Berlin
    assert six is not None
    assert (six.id, six.start, six.end) == ("2026-12-02T06:00", utc("2026-12-02 05:00"), utc("2026-12-03 05:00"))
    before = period_at("0 6 * * *", "Europe/Berlin", utc("2026-12-02 04:59:59.9"))
    assert before is not None
    assert before.id == "2026-12-01T06:00"
    tens = period_at("* * * * * */10", "UTC", utc("2026-12-02 10:00:19.5"))
    assert tens is not None
    assert (tens.id, tens.start, tens.end) == (
        "2026-12-02T10:00:10",
        utc("2026-12-02 10:00:10"),
        utc("2026-12-02 10:00:20"),
    )


def test_a_cron_period_across_the_spring_dst_gap() -> None:
    """Hourly in Berlin on 2026-03-29: 02:00 does not exist, so 01:00 lasts until 03:00 (one hour of real time)."""
    one = period_at("0 * * * *", "Europe/Berlin", utc("2026-03-29 00:30"))
    assert one is not None
    assert (one.id, one.start, one.end) == ("2026-03-29T01:00", utc("2026-03-29 00:00"), utc("2026-03-29 01:00"))
    three = period_at("0 * * * *", "Europe/Berlin", utc("2026-03-29 01:00"))
    assert three is not None
    assert three.id == "2026-03-29T03:00"


@pytest.mark.parametrize(
    ("reset", "instant"),
    [
        ("daily", "2026-03-29 12:00"),
        ("weekly", "2026-12-31 12:00"),
        ("monthly", "2026-02-15 00:00"),
        ("0 6 * * 1", "2026-12-02 05:00"),
        ("* * * * * */10", "2026-12-02 10:00:19"),
    ],
)
def test_a_period_is_found_again_by_its_id(reset: str, instant: str) -> None:
    period = period_at(reset, "Europe/Berlin", utc(instant))
    assert period is not None
    assert period_named(reset, "Europe/Berlin", period.id) == period


@pytest.mark.parametrize(
    ("reset", "period_id"),
    [
        ("daily", "2026-02-30"),
        ("daily", "2026-2-3"),
        ("daily", "2026-W49"),
        ("weekly", "2026-W54"),
        ("weekly", "2026-W7"),
        ("monthly", "2026-13"),
        ("monthly", "2026-12-01"),
        ("0 6 * * *", "2026-12-02T06:01"),  # no period starts then
        ("0 6 * * *", "2026-12-02T06:00:00"),  # not its name
        ("none", ""),
        ("daily", "x" * 40),
    ],
)
def test_an_id_that_names_no_period_is_refused(reset: str, period_id: str) -> None:
    with pytest.raises(UnknownPeriod):
        period_named(reset, "Europe/Berlin", period_id)


@pytest.mark.parametrize(
    "reset", ["none", "daily", "weekly", "monthly", "*/5 * * * *", "0 6 * * 1-5", "* * * * * */10"]
)
def test_resets_a_board_may_have(reset: str) -> None:
    check_reset(reset)


@pytest.mark.parametrize(
    "reset", ["hourly", "", "* * * *", "0 6  * * *", "61 * * * *", "* * * * * * * *", "0 6 * * * " + "1" * 100]
)
def test_resets_a_board_may_not_have(reset: str) -> None:
    with pytest.raises(InvalidReset):
        check_reset(reset)


def test_no_period_without_resets() -> None:
    assert period_at("none", "UTC", utc("2026-12-02 10:00")) is None
