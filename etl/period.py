"""The period of one delivery: a half-open interval of received_at dates.

A period is ``[start, end)`` in UTC calendar days, so consecutive deliveries can share a
boundary (one ends where the next starts) without delivering a record twice or losing one.
Its label ``<start>_<end>`` names the drop folder, the lock and the staging folder, so it
must be the same everywhere; this module is the one place that spells it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time


@dataclass(frozen=True, order=True)
class Period:
    """Records received from ``start`` 00:00 UTC up to, not including, ``end`` 00:00 UTC."""

    start: date
    end: date

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            # datetime is a subclass of date; a time part would leak into the label.
            if not isinstance(value, date) or isinstance(value, datetime):
                raise TypeError(f"period {name} must be a date, not {type(value).__name__}")
        if self.start >= self.end:
            raise ValueError(
                f"period start {self.start.isoformat()} must be before its end "
                f"{self.end.isoformat()} (the period is [start, end), so it cannot be empty)"
            )

    @property
    def label(self) -> str:
        """``<start>_<end>`` in ISO dates: the drop folder's name (contract section 4)."""
        return f"{self.start.isoformat()}_{self.end.isoformat()}"

    def bounds(self) -> tuple[datetime, datetime]:
        """The period as naive UTC instants, ready to bind against received_at."""
        return datetime.combine(self.start, time()), datetime.combine(self.end, time())
