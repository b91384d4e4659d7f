"""Retention deadlines (SPEC §3.4): calendar months, clamped to the month's last day, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from app.domain.retention import add_months

LONDON = ZoneInfo("Europe/London")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (utc(2026, 8, 31), utc(2028, 2, 29)),  # target year 2028 is a leap year
        (utc(2025, 8, 31), utc(2027, 2, 28)),  # target year 2027 is not
    ],
)
def test_31_august_plus_18_months_is_the_last_day_of_february(
    start: datetime, expected: datetime
) -> None:
    got = add_months(start, 18)
    assert got == expected, (
        f"{start:%d %b %Y} + 18 months should be {expected:%d %b %Y}, got {got:%d %b %Y}"
    )


def test_29_february_plus_12_months_is_28_february() -> None:
    got = add_months(utc(2028, 2, 29), 12)
    assert got == utc(2029, 2, 28), (
        f"29 Feb 2028 + 12 months should clamp to 28 Feb 2029, got {got}"
    )


def test_29_february_plus_48_months_lands_on_29_february_again() -> None:
    got = add_months(utc(2028, 2, 29), 48)
    assert got == utc(2032, 2, 29), f"leap day to leap year must keep the 29th, got {got}"


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (utc(2026, 1, 15), 18, utc(2027, 7, 15)),
        (utc(2026, 11, 28), 1, utc(2026, 12, 28)),
        (utc(2026, 12, 10), 1, utc(2027, 1, 10)),  # across the year end
        (utc(2026, 3, 31), 1, utc(2026, 4, 30)),  # 30-day month clamps too
        (utc(2026, 1, 31), 18, utc(2027, 7, 31)),  # July has 31 days: no clamp
        (utc(2026, 5, 1), 0, utc(2026, 5, 1)),
    ],
)
def test_ordinary_dates_keep_their_day(start: datetime, months: int, expected: datetime) -> None:
    got = add_months(start, months)
    assert got == expected, f"{start} + {months} months should be {expected}, got {got}"


def test_72_months_for_call_records() -> None:
    got = add_months(utc(2026, 11, 28, 10, 0), 72)
    assert got == utc(2032, 11, 28, 10, 0), f"6-year call record deadline wrong: {got}"


def test_72_months_from_leap_day() -> None:
    got = add_months(utc(2028, 2, 29), 72)
    assert got == utc(2034, 2, 28), f"29 Feb + 72 months (non-leap target) should clamp, got {got}"


def test_time_of_day_is_kept() -> None:
    start = datetime(2026, 8, 31, 23, 59, 58, 123456, tzinfo=UTC)
    got = add_months(start, 18)
    assert (got.hour, got.minute, got.second, got.microsecond) == (23, 59, 58, 123456), (
        f"time of day changed: {got.time()}"
    )


def test_result_is_utc() -> None:
    got = add_months(utc(2026, 1, 1), 18)
    assert got.utcoffset() == timedelta(0), f"deadline must be UTC, got offset {got.utcoffset()}"


def test_non_utc_moment_is_converted_to_utc_before_adding() -> None:
    # 00:30 BST on 1 June is 23:30 UTC on 31 May, so the month arithmetic starts from 31 May.
    start = datetime(2026, 6, 1, 0, 30, tzinfo=LONDON)
    assert start.utcoffset() == timedelta(hours=1), "test premise: June in London is BST"
    got = add_months(start, 18)
    assert got == utc(2027, 11, 30, 23, 30), (
        f"expected 31 May 23:30 UTC + 18 months = 30 Nov 2027 23:30 UTC, got {got}"
    )
    assert got.utcoffset() == timedelta(0), "result must be expressed in UTC"


def test_fixed_offset_moment_is_converted_to_utc() -> None:
    start = datetime(2026, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))  # 28 Feb 23:00 UTC
    got = add_months(start, 1)
    assert got == utc(2026, 3, 28, 23, 0), f"offset must be removed before adding, got {got}"


def test_the_same_instant_gives_the_same_deadline_in_any_zone() -> None:
    # Mid-March London is GMT, mid-September BST: local arithmetic would be an hour out.
    instant = utc(2026, 3, 15, 12, 0)
    expected = utc(2026, 9, 15, 12, 0)
    for zone in (UTC, LONDON, ZoneInfo("Asia/Tokyo"), ZoneInfo("America/New_York")):
        got = add_months(instant.astimezone(zone), 6)
        assert got == expected, f"deadline depends on the zone {zone}: got {got}, want {expected}"


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_months(datetime(2026, 8, 31), 18)
