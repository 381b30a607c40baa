"""Outbox backpressure: a size and age alarm, and telemetry coalesced before it is written.

The outbox (in the ledger) empties only when the cloud's ack names its rows, so while the link or
the hub is down it grows. The alarm ([sync] outbox_alarm_rows, outbox_alarm_age_s) rises once when
the backlog reaches either threshold: a bus "outbox" event, an `outbox_alarm` outbox event, /healthz
"degraded" with the reason, the STATUS= line and `edge_outbox_alarm 1`. It clears once both are
back under 90 % of their threshold, so a backlog hovering at a threshold does not flap. The alarm
only tells: nothing is ever dropped, and a redemption is written whatever the backlog.

Rows are never deleted to make room: the hub acks the highest contiguous seq it holds, so a gap
would stall every later row. Telemetry is thinned before it is written instead. Business facts
(redemptions, confirmations, voids, forced admits, audit entries, locker pickups and deposits,
print results, fire mode, bundles, certificates, config) are never touched; only the kinds in
TELEMETRY, which a flapping device or a misbehaving sender can repeat without end, pass through
the Coalescer: per source (a device, a refusal reason) the first event of an interval is written
at once; the ones that follow within it are counted, and when the interval ends the latest is
written with `suppressed` (events of that source not written since the last one written) and
`suppressed_since`, so the cloud's last word on a device is its current state. While the alarm is
up the interval is longer ([sync] telemetry_interval_s, telemetry_interval_alarm_s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.ledger import unacked_span
from edge.store import transaction

if TYPE_CHECKING:
    from edge.box import Box

log = logging.getLogger(__name__)

# kind -> the source an event is about; one window per (kind, source).
TELEMETRY: dict[str, Callable[[dict[str, Any]], str]] = {
    "device_alert": lambda body: str(body.get("device", "")),
    "downlink_refused": lambda body: str(body.get("reason", "")),
}
CLEAR_RATIO = 0.9
ALARM_KEY = "outbox_alarm"  # ledger meta: "1" while the cloud was last told the alarm is up
CHECK_S = 5.0  # how often the backlog is read (two index lookups on the database thread)
TICK_S = 1.0  # how often coalesced telemetry whose interval ended is written
DEFAULT_INTERVAL_S = 60.0  # a box without [sync]
DEFAULT_ALARM_INTERVAL_S = 600.0


@dataclass(frozen=True)
class Backlog:
    depth: int
    oldest_age_s: float | None  # None: empty


def read_backlog(conn: sqlite3.Connection, now: float) -> Backlog:
    """On the ledger's thread: the events the cloud has not acked (a span of seqs: a few rowid
    lookups instead of a count(*) over a backlog of a million rows) and the oldest one's age."""
    span = unacked_span(conn)
    if span is None:
        return Backlog(0, None)
    lo, hi = span
    row = conn.execute("SELECT created_at FROM outbox WHERE seq = ?", (lo,)).fetchone()
    return Backlog(hi - lo + 1, max(0.0, now - float(row[0])) if row else None)


class OutboxAlarm:
    """Raised at either threshold, cleared under both (with hysteresis)."""

    def __init__(self, rows: int, age_s: float) -> None:
        self.rows, self.age_s = rows, age_s
        self.active = False
        self.backlog = Backlog(0, None)

    def update(self, backlog: Backlog) -> bool:
        """True when the alarm rose or cleared."""
        self.backlog = backlog
        age = backlog.oldest_age_s or 0.0
        if not self.active:
            self.active = backlog.depth >= self.rows or age >= self.age_s
            return self.active
        if backlog.depth < self.rows * CLEAR_RATIO and age < self.age_s * CLEAR_RATIO:
            self.active = False
            return True
        return False

    def reasons(self) -> list[str]:
        b, out = self.backlog, []
        if b.depth >= self.rows * CLEAR_RATIO:
            out.append(f"{b.depth} events waiting for the cloud (alarm at {self.rows})")
        age = b.oldest_age_s or 0.0
        if age >= self.age_s * CLEAR_RATIO:
            out.append(f"oldest event {_span(age)} old (alarm at {_span(self.age_s)})")
        return out or [f"{b.depth} events waiting for the cloud"]

    def to_json(self) -> dict[str, Any]:
        return {
            "alarm": "outbox",
            "reason": "; ".join(self.reasons()),
            "depth": self.backlog.depth,
            "oldest_age_s": _round(self.backlog.oldest_age_s),
            "alarm_rows": self.rows,
            "alarm_age_s": self.age_s,
        }


@dataclass
class _Window:
    ends: float  # monotonic
    suppressed: int = 0
    since: float = 0.0  # wall time of the first event not written
    latest: dict[str, Any] | None = None


class Coalescer:
    """Per (kind, source): one event per interval, the latest state at its end (module doc).
    Runs on the loop only."""

    def __init__(
        self,
        interval_s: float,
        alarm_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.interval_s, self.alarm_interval_s = interval_s, alarm_interval_s
        self.clock, self.wall = clock, wall
        self.alarm = False
        self.suppressed: dict[str, int] = {}  # kind -> events never written, since start
        self._windows: dict[tuple[str, str], _Window] = {}

    def interval(self) -> float:
        return self.alarm_interval_s if self.alarm else self.interval_s

    def offer(self, kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """The body to write now, or None: held back and counted (the window's end writes the
        latest)."""
        source = TELEMETRY.get(kind)
        if source is None or self.interval() <= 0:
            return body
        key, now = (kind, source(body)), self.clock()
        w = self._windows.get(key)
        if w is None or now >= w.ends:
            out = body if w is None or not w.suppressed else _summary(body, w.suppressed, w)
            self._windows[key] = _Window(now + self.interval())
            return out
        if not w.suppressed:
            w.since = self.wall()
        w.suppressed += 1
        w.latest = body
        self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
        return None

    def due(self) -> list[tuple[str, dict[str, Any]]]:
        """The latest event of each window that ended with events held back; each opens a new
        window (it is that window's one event)."""
        now, out = self.clock(), []
        for key, w in list(self._windows.items()):
            if now < w.ends:
                continue
            if w.suppressed and w.latest is not None:
                out.append((key[0], _summary(w.latest, w.suppressed - 1, w)))
                self.suppressed[key[0]] -= 1  # the latest is written after all
                self._windows[key] = _Window(now + self.interval())
            else:
                del self._windows[key]
        return out

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        """Everything held back, now (at stop: a device's last state is not lost)."""
        out = []
        for key, w in self._windows.items():
            if w.suppressed and w.latest is not None:
                out.append((key[0], _summary(w.latest, w.suppressed - 1, w)))
                self.suppressed[key[0]] -= 1
        self._windows.clear()
        return out


def _summary(body: dict[str, Any], suppressed: int, w: _Window) -> dict[str, Any]:
    return body | {"suppressed": suppressed, "suppressed_since": w.since}


class OutboxWatch:
    """The box's backlog watch and telemetry coalescer; `run` is one of its supervised loops."""

    def __init__(self, box: Box) -> None:
        self.box = box
        sync = box.config.sync
        self.alarm = OutboxAlarm(sync.outbox_alarm_rows, sync.outbox_alarm_age_s) if sync else None
        self.coalescer = Coalescer(
            sync.telemetry_interval_s if sync else DEFAULT_INTERVAL_S,
            sync.telemetry_interval_alarm_s if sync else DEFAULT_ALARM_INTERVAL_S,
        )
        # An age alarm of minutes (tests, a site that wants to know early) is checked more often.
        self.check_s = min(CHECK_S, max(0.2, sync.outbox_alarm_age_s / 20)) if sync else CHECK_S
        self.backlog = Backlog(0, None)
        self._loaded = False  # the alarm's state read back from the ledger
        m = box.metrics
        m.gauge_fn(
            "edge_outbox_oldest_age_seconds",
            "Age of the oldest event waiting for the cloud (0: none)",
            lambda: self.backlog.oldest_age_s or 0.0,
        )
        m.gauge_fn(
            "edge_outbox_alarm",
            "1 while the outbox backlog alarm is up",
            lambda: float(self.alarm is not None and self.alarm.active),
        )
        m.gauge_fn(
            "edge_telemetry_suppressed",
            "Telemetry events coalesced away (not written) since start, per kind",
            lambda: {(k,): float(n) for k, n in self.coalescer.suppressed.items()},
            labels=("kind",),
        )

    async def record(self, kind: str, body: dict[str, Any]) -> None:
        """Box.record's path: telemetry may be held back; everything else is written now."""
        out = self.coalescer.offer(kind, body)
        if out is not None:
            await self._write(kind, out)

    async def _write(self, kind: str, body: dict[str, Any]) -> None:
        svc = self.box.svc
        assert svc is not None
        await self.box.db.call(svc.record_event, kind, body)

    async def run(self, stop: asyncio.Event) -> None:
        next_check = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + self.check_s
                await self.check()
            for kind, body in self.coalescer.due():
                await self._write(kind, body)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(TICK_S, self.check_s))

    async def check(self) -> Backlog:
        svc = self.box.svc
        assert svc is not None
        conn = svc.ledger.conn
        alarm = self.alarm
        if alarm is not None and not self._loaded:
            # The state the cloud was last told survives a reload or a restart: no second
            # "raised", and a backlog left in the hysteresis band still clears one day.
            alarm.active = await self.box.db.call(svc.ledger.meta, ALARM_KEY) == "1"
            self.coalescer.alarm = alarm.active
            self._loaded = True
        self.backlog = await self.box.db.call(read_backlog, conn, time.time())
        self.box.stats["outbox_depth"] = self.backlog.depth
        if alarm is not None and alarm.update(self.backlog):
            await self._changed(alarm)
        return self.backlog

    async def _changed(self, alarm: OutboxAlarm) -> None:
        self.coalescer.alarm = alarm.active
        state = "raised" if alarm.active else "cleared"
        body = alarm.to_json() | {"state": state}
        if alarm.active:
            log.warning("outbox alarm 积压告警: %s", body["reason"])
        else:
            log.info("outbox alarm cleared: %d events waiting", alarm.backlog.depth)
        svc = self.box.svc
        assert svc is not None
        ledger, active = svc.ledger, alarm.active

        def write() -> None:  # the event and the state it reports, in one transaction
            with transaction(ledger.conn):
                ledger.append_event("outbox_alarm", body, time.time())
                ledger.set_meta(ALARM_KEY, "1" if active else "0")

        await self.box.db.call(write)
        # After the write: a bus event wakes the cloud link, which must find the row.
        self.box.bus.publish("outbox", **body)

    async def flush(self) -> None:
        """At stop or reload, before the ledger closes: what the coalescer holds is written."""
        for kind, body in self.coalescer.drain():
            await self._write(kind, body)

    def alarms(self) -> list[dict[str, Any]]:
        return [self.alarm.to_json()] if self.alarm is not None and self.alarm.active else []

    def status_text(self) -> str:
        """For the STATUS= line; empty when the alarm is down."""
        if self.alarm is None or not self.alarm.active:
            return ""
        return "outbox backlog 积压: " + "; ".join(self.alarm.reasons())

    def to_json(self) -> dict[str, Any]:
        return {
            "depth": self.backlog.depth,
            "oldest_age_s": _round(self.backlog.oldest_age_s),
            "alarm": self.alarm is not None and self.alarm.active,
            "telemetry_suppressed": dict(self.coalescer.suppressed),
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _span(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
