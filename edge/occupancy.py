"""Occupancy per zone and crowd alerts (客流预警).

Counts come from the ledger (confirmed entries less confirmed exits, per business day; pending
entries are held against capacity). Thresholds: `warn` and `full` per zone from the config, else
the bundle's zone capacity as `full` and 80 % of it as `warn`. At `full` the rules deny entries
with `capacity_full` (edge/rules.py); here a change of level is an alert, written to the outbox and
published on the bus. Everything here runs on the database thread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from edge.service import RedemptionService
from edge.store import transaction

log = logging.getLogger(__name__)
WARN_RATIO = 0.8
CLEAR_MARGIN = 0.05  # a level clears once the load is this far (at least one) under it
_RANK = {"normal": 0, "warn": 1, "full": 2}
LEVEL_TEXT = {
    "normal": ("客流正常", "Normal"),
    "warn": ("客流预警", "Crowd warning"),
    "full": ("已满 暂停入园", "Full: entries paused"),
}


def held_level(prev: str, level: str, load: int, warn: int | None, full: int | None) -> str:
    """Hysteresis: a level goes down only once the load is clearly under its threshold, so a
    zone at its limit (one out, one in, ...) does not flap alerts at the supervisor and the
    cloud. Going up is never held back."""
    if _RANK[level] >= _RANK[prev]:
        return level
    bar = full if prev == "full" else warn
    if bar is not None and load >= bar - max(1, math.ceil(bar * CLEAR_MARGIN)):
        return prev
    return level


@dataclass(frozen=True)
class ZoneLevel:
    zone: str
    inside: int
    pending: int
    warn: int | None
    full: int | None
    level: str  # normal, warn, full

    def to_json(self) -> dict[str, Any]:
        zh, en = LEVEL_TEXT[self.level]
        return {
            "zone": self.zone,
            "inside": self.inside,
            "pending": self.pending,
            "load": self.inside + self.pending,
            "warn": self.warn,
            "full": self.full,
            "level": self.level,
            "text_zh": zh,
            "text_en": en,
        }


class CrowdWatch:
    def __init__(self, svc: RedemptionService) -> None:
        self.svc = svc
        self.levels: dict[str, str] = {}

    def zones(self, now: float) -> list[ZoneLevel]:
        svc = self.svc
        st = svc.view.state
        ids = set(svc.config.zones) | (set(st.zones) if st is not None else set())
        if st is None:
            return []
        day = svc.view.site_clock.business_day(now).isoformat()
        out = []
        for zone in sorted(ids):
            inside = svc.ledger.zone_inside(zone, day)
            load = svc.ledger.zone_load(zone, day)
            full = svc.zone_full(zone)
            cfg = svc.config.zones.get(zone)
            warn = cfg.warn if cfg is not None and cfg.warn is not None else None
            if warn is None and full is not None:
                warn = max(1, math.ceil(full * WARN_RATIO))
            level = "normal"
            if full is not None and load >= full:
                level = "full"
            elif warn is not None and load >= warn:
                level = "warn"
            level = held_level(self.levels.get(zone, "normal"), level, load, warn, full)
            out.append(ZoneLevel(zone, inside, load - inside, warn, full, level))
        return out

    def check(self, now: float | None = None) -> tuple[list[ZoneLevel], list[ZoneLevel]]:
        """(every zone, the zones whose level changed); a change is written to the outbox."""
        at = self.svc.clock() if now is None else now
        zones = self.zones(at)
        changed = [z for z in zones if self.levels.get(z.zone, "normal") != z.level]
        if changed:
            with transaction(self.svc.ledger.conn):
                for z in changed:
                    self.svc.ledger.append_event("crowd_alert", z.to_json(), at)
            for z in changed:
                log.warning(
                    "zone %s: %s (%d inside, %d pending, full %s)",
                    z.zone,
                    z.level,
                    z.inside,
                    z.pending,
                    z.full,
                )
        self.levels.update({z.zone: z.level for z in zones})
        return zones, changed
