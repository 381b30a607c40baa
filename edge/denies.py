"""Denies per site business day, lane and reason, kept in the ledger.

The gate screen shows today's deny counts by reason. The decision metrics start again at every
restart of the box, so the ledger keeps its own tally: one UPSERT per deny, queued on the
database thread behind the decision's own write (`Box.observe`; nobody waits for it). A deny on
a counter lane also counts in the open shift (edge/shifts.py), in the same transaction. "Today"
is the site's business day (its timezone and rollover hour, as the ledger's redemptions).
"""

from __future__ import annotations

from edge import shifts
from edge.service import RedemptionService
from edge.store import transaction


def note(svc: RedemptionService, lane: str, reason: str, at: float, *, counter: bool) -> None:
    """Count one deny (on the database thread)."""
    day = svc.view.site_clock.business_day(at).isoformat()
    with transaction(svc.ledger.conn) as conn:
        conn.execute(
            "INSERT INTO deny_counts (day, lane, reason, n) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (day, lane, reason) DO UPDATE SET n = n + 1",
            (day, lane, reason),
        )
        if counter:
            shifts.count_deny(svc, lane, reason, at)


def today(svc: RedemptionService, now: float) -> tuple[str, dict[str, dict[str, int]]]:
    """(the business day, {lane: {reason: n}}) of the denies counted on the day `now` is in."""
    day = svc.view.site_clock.business_day(now).isoformat()
    out: dict[str, dict[str, int]] = {}
    for lane, reason, n in svc.ledger.conn.execute(
        "SELECT lane, reason, n FROM deny_counts WHERE day = ? ORDER BY lane, n DESC, reason",
        (day,),
    ):
        out.setdefault(str(lane), {})[str(reason)] = int(n)
    return day, out
