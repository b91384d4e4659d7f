"""Retention deadlines (SPEC §3.4): calendar months, clamped to the month's last day, in UTC."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class Months:
    """The retention that applies to a call: media and call record, in calendar months."""

    media: int
    record: int


def add_months(moment: datetime, months: int) -> datetime:
    """``moment`` plus ``months`` calendar months, the day clamped to the target month's end.

    31 August + 18 months is the last day of February. The result is UTC; a naive input is
    refused because a deadline must never depend on the server's time zone.
    """
    if moment.tzinfo is None:
        raise ValueError("retention dates must be timezone-aware")
    moment = moment.astimezone(UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)
