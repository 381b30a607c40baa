"""Clock trust: when the box's wall clock cannot be relied on for time-window decisions.

The clock is suspect when it reads earlier than something that already happened (the last
redemption, or the issue time of the active bundle), when the offset to cloud time learned at the
last sync is too large, or when no offset has been learned for longer than the policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClockPolicy:
    backwards_tolerance_s: float = 120.0
    max_offset_s: float = 300.0
    max_unsynced_s: float = 7 * 86400.0


@dataclass(frozen=True)
class ClockFacts:
    high_water: float  # latest time known to have passed (redemption or bundle issue time)
    offset_s: float | None  # cloud time minus box time at the last sync
    offset_at: float | None  # box time of the last sync
    since: float  # when the ledger was created (the unsynced clock starts here)


def clock_suspect(now: float, facts: ClockFacts, policy: ClockPolicy) -> str | None:
    """Return why the clock is suspect at `now`, or None when it can be trusted."""
    if now + policy.backwards_tolerance_s < facts.high_water:
        return "clock is behind the last recorded event"
    if facts.offset_s is not None and abs(facts.offset_s) > policy.max_offset_s:
        return f"clock differs from cloud time by {facts.offset_s:+.0f} s"
    last_sync = facts.offset_at if facts.offset_at is not None else facts.since
    if now - last_sync > policy.max_unsynced_s:
        return "no clock sync for too long"
    return None
