"""Calendar-aligned budget periods (day, ISO week, month, total) in UTC or a configured time zone.

A period is named by a label (`2026-01-31`, `2026-W05`, `2026-01`, `total`); the label is part of
every ledger key, so rollover needs no job: a new period simply starts on fresh keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month", "total"]


@dataclass(frozen=True, slots=True)
class Window:
    """One period: its label, start and end (unix seconds; end None: it never resets)."""

    label: str
    start: float
    end: float | None

    def resets_at(self) -> str | None:
        if self.end is None:
            return None
        return datetime.fromtimestamp(self.end, ZoneInfo("UTC")).isoformat().replace("+00:00", "Z")


def window_at(period: Period, zone: ZoneInfo, now: float) -> Window:
    """The period of `period` kind that contains `now`."""
    if period == "total":
        return Window("total", 0.0, None)
    local = datetime.fromtimestamp(now, zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = midnight, _next_day(midnight, 1)
        label = start.strftime("%Y-%m-%d")
    elif period == "week":
        start = _next_day(midnight, -midnight.weekday())
        end = _next_day(start, 7)
        year, week, _ = start.isocalendar()
        label = f"{year}-W{week:02d}"
    else:
        start = midnight.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
            start.replace(month=start.month + 1)
        label = start.strftime("%Y-%m")
    return Window(label, start.timestamp(), end.timestamp())


def _next_day(day: datetime, days: int) -> datetime:
    # Calendar arithmetic on the wall clock, then re-attach the zone: right across DST changes.
    moved = day.replace(tzinfo=None) + timedelta(days=days)
    return moved.replace(tzinfo=day.tzinfo)


class PeriodClock:
    """Caches the current window of one period kind; recomputed only when `now` leaves it."""

    __slots__ = ("_current", "_period", "_zone")

    def __init__(self, period: Period, zone: ZoneInfo) -> None:
        self._period = period
        self._zone = zone
        self._current: Window | None = None

    def window(self, now: float) -> Window:
        current = self._current
        if current is None or now < current.start or (current.end is not None and now >= current.end):
            current = self._current = window_at(self._period, self._zone, now)
        return current
