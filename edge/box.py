"""The box's parts wired together: databases, devices, lanes, print spool, lockers, occupancy,
metrics and the audit log. The daemon (edge/daemon.py) runs it; the HTTP API (edge/http.py) and
the kiosk call its methods. The database objects live on one thread (`db`), every device on its
own; the rest runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from drivers.errors import DriverUnavailable
from edge import audit as auditlog
from edge import box_metrics, denies
from edge.bus import EventBus
from edge.cache import ImportResult
from edge.cloud_config import config_status
from edge.config import BoxConfig
from edge.decision import Decision
from edge.devices import DeviceDown, DeviceSlot, make_slot
from edge.errors import Stopping
from edge.http_tls import tls_info
from edge.lane_gate import manual_open
from edge.lanes import Lane
from edge.ledger import Ledger
from edge.lockers import LockerBank
from edge.metrics import CONTENT_TYPE, Registry
from edge.occupancy import CrowdWatch, ZoneLevel
from edge.outbox_sweep import OutboxSweeper, WalKeeper
from edge.outbox_watch import OutboxWatch
from edge.pickups import PickupStore
from edge.rules import Reason, zone_info
from edge.runner import Runner
from edge.service import RedemptionService
from edge.spool import PrintSpool
from edge.store import transaction

if TYPE_CHECKING:
    from fastapi import FastAPI

    from edge.cloud_config import ReloadRequest

log = logging.getLogger(__name__)
Loop = Callable[[asyncio.Event], Awaitable[None]]
T = TypeVar("T")
ALERTS_POLL_S = 0.5  # a stop or reload waits up to this for the alert forwarder (tests shorten it)


class Box:
    def __init__(self, config: BoxConfig, *, token: str) -> None:
        self.config = config
        self.token = token
        self.bus = EventBus()
        self.db = Runner("db")
        self.svc: RedemptionService | None = None
        self.crowd: CrowdWatch | None = None
        self.slots: dict[str, DeviceSlot] = {}
        self.lanes: dict[str, Lane] = {}
        self.lockers: dict[str, LockerBank] = {}
        self.spool: PrintSpool | None = None
        self.zones: list[ZoneLevel] = []
        self.stats: dict[str, Any] = {"outbox_depth": 0, "cache_age_s": None, "print_queue": {}}
        self.stopping = False
        self.cloud_status: Callable[[], dict[str, Any]] | None = None  # set by the cloud link
        # Set by extensions (the kiosk): each is called with the HTTP app after edge's routes.
        self.http_hooks: list[Callable[[FastAPI], None]] = []
        self._tls_info: dict[str, Any] | None = None  # Box.tls_info(), made once
        # Set by the daemon: validate the config on disk and restart the box with it.
        self.reload: Callable[[ReloadRequest], Awaitable[str]] | None = None
        self.metrics = Registry()
        self.m_decisions, self.m_latency = box_metrics.register(self.metrics, self)
        self.watch = OutboxWatch(self)  # backlog alarm, telemetry coalescing (and their metrics)
        self.sweeper = OutboxSweeper(self.db, self._ledger)  # acked rows leave the outbox
        self.wal = WalKeeper(self._ledger)  # the ledger's checkpoints, off the lanes' thread

    # -- start and stop ----------------------------------------------------------------------

    async def start(self, *, full_check: bool, bundle: Path | None = None) -> None:
        self.bus.bind(asyncio.get_running_loop())
        svc = await self.db.call(RedemptionService, self.config, full_check=full_check)
        self.svc = svc
        if bundle is not None:
            result = await self.db.call(svc.import_bundle, bundle)
            log.info("bundle %s seq %d imported", result.kind, result.seq)
        voided = await self.db.call(
            self._void_pending, "the box restarted before the passage was seen"
        )
        if voided:
            log.warning("%d redemption(s) left pending by the last run were voided", voided)
        self.crowd = CrowdWatch(svc)
        for name, cfg in self.config.devices.items():
            try:
                self.slots[name] = make_slot(cfg, self.bus)
            except DriverUnavailable as err:  # a library missing: degraded, not stuck
                slot = DeviceSlot(cfg, None, Runner(f"dev-{name}"), self.bus)
                slot.mark_down(str(err), "install the driver's extra / 安装驱动依赖")
                self.slots[name] = slot
        await asyncio.gather(*(s.open() for s in self.slots.values()))
        printers = {n: s for n, s in self.slots.items() if s.device_class == "printer"}

        def site_tz() -> tzinfo:
            # Asked per job: a bundle can change the site's timezone. Reading the view's
            # (frozen) SiteClock from the loop is one attribute load; bundles validate the name.
            return zone_info(svc.view.site_clock.timezone)

        self.spool = PrintSpool(
            self.config.state_dir / "spool.db",
            self.config.printing,
            printers,
            self.bus,
            record=self.record,
            site_tz=site_tz,
        )
        await self.spool.open()
        store = await self.db.call(PickupStore, svc.ledger)
        for name, bank_cfg in self.config.lockers.items():
            self.lockers[name] = LockerBank(
                bank_cfg,
                self.slots[bank_cfg.device],
                self.db,
                store,
                self.bus,
                print_slip=self._print_slip,
                audit=self.audit,
            )
        for name, lane_cfg in self.config.lanes.items():
            self.lanes[name] = Lane(
                lane_cfg,
                db=self.db,
                svc=svc,
                bus=self.bus,
                hooks=self,
                scanner=self.slots.get(lane_cfg.scanner or ""),
                gate=self.slots.get(lane_cfg.gate or ""),
                lockers=self.lockers.get(lane_cfg.locker or ""),
            )
            for reason in Reason:
                self.m_decisions.inc(0, lane=name, reason=str(reason))
        if await self.db.call(svc.ledger.meta, "emergency") == "1":
            log.warning("emergency free passage was on at the last stop: still on")
            for lane in self.lanes.values():
                if lane.cfg.kind == "gate":
                    await lane.set_emergency(True)
        await self.refresh_stats()
        self.crowd.levels.update({z.zone: z.level for z in self.zones})
        # The HTTPS certificate (made the first time: a key generation and fsyncs) is made
        # here off the loop, so the server's start only finds it.
        await asyncio.to_thread(self.tls_info)

    def loops(self) -> list[tuple[str, Loop]]:
        """The long-lived loops the daemon supervises."""
        out: list[tuple[str, Loop]] = []
        for name, slot in self.slots.items():
            out.append((f"device-{name}", slot.keep_open))
        for name, lane in self.lanes.items():
            out.append((f"lane-{name}", lane.serve))
            if lane.scanner is not None:
                out.append((f"scanner-{name}", lane.read_scanner))
            if lane.gate is not None:
                out.append((f"fire-{name}", lane.watch_fire))
        assert self.spool is not None
        out.append(("spool", self.spool.run))
        out.append(("alerts", self._forward_alerts))
        out.append(("outbox-watch", self.watch.run))
        out.append(("outbox-sweep", self.sweeper.run))
        out.append(("wal-checkpoint", self.wal.run))
        return out

    def _ledger(self) -> Ledger:
        assert self.svc is not None
        return self.svc.ledger

    async def _forward_alerts(self, stop: asyncio.Event) -> None:
        """Device alerts (down, up again, paper out) go to the cloud through the outbox."""
        sub = self.bus.subscribe({"device"})
        try:
            while not stop.is_set():
                event = await sub.get(timeout=ALERTS_POLL_S)
                if event is not None:
                    await self.record("device_alert", dict(event.data))
        finally:
            sub.close()

    async def stop_lanes(self, grace_s: float) -> None:
        """Stop taking scans; a passage in progress gets `grace_s`, then every gate is told to
        stop (an open queued behind an inputs read is refused by `accepting` instead)."""
        self.stopping = True
        for lane in self.lanes.values():
            lane.accepting = False
        for bank in self.lockers.values():
            bank.stopping = True
        deadline = time.monotonic() + grace_s
        while any(lane.state.busy for lane in self.lanes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for lane in self.lanes.values():
            lane.cancel_inflight()

    async def close(self) -> None:
        """Persist and release everything; safe after a failed start. Idempotent."""
        self.stopping = True
        for lane in self.lanes.values():  # settle opens still running (cut short by now)
            lane.accepting = False
            lane.cancel_inflight()
        actuations = [t for lane in self.lanes.values() for t in lane.actuations]
        if actuations:
            await asyncio.wait(actuations, timeout=3.0)
        for bank in self.lockers.values():  # pickups in flight: recorded before the ledger closes
            await bank.close()
        if self.spool is not None:
            with contextlib.suppress(Exception):
                await self.spool.close()
        if self.svc is not None:
            with contextlib.suppress(Exception):
                n = await self.db.call(
                    self._void_pending, "the box stopped before the passage was seen"
                )
                if n:
                    log.warning("%d pending redemption(s) voided at shutdown", n)
            with contextlib.suppress(Exception):  # telemetry held back: its last word
                await self.watch.flush()
        await asyncio.gather(*(s.close() for s in self.slots.values()), return_exceptions=True)
        if self.svc is not None:
            svc, self.svc = self.svc, None
            with contextlib.suppress(Exception):
                await self.db.call(svc.close)
        self.db.close()
        self.bus.close()

    def _void_pending(self, why: str) -> int:
        assert self.svc is not None
        pending = self.svc.pending()
        for r in pending:
            self.svc.void(r.id, why)
        return len(pending)

    async def import_bundle(self, path: Path, at: float | None = None) -> ImportResult:
        """Verify and activate a bundle off the database thread (a million-code snapshot must
        not hold up the lanes); the ledger event follows. Raises BundleRefused."""
        assert self.svc is not None
        svc = self.svc
        now = time.time() if at is None else at
        result = await asyncio.to_thread(svc.cache.import_file, path, now)
        await self.db.call(
            svc.record_event, "bundle_applied", {"seq": result.seq, "kind": result.kind}, now
        )
        await self.db.call(svc.view.refresh)
        self.bus.publish("bundle", seq=result.seq, kind=result.kind, counts=result.counts)
        return result

    # -- hooks for lanes, spool, lockers -------------------------------------------------------

    def observe(self, lane: str, decision: Decision, latency_s: float | None) -> None:
        self.m_decisions.inc(lane=lane, reason=str(decision.reason))
        if latency_s is not None:
            self.m_latency.observe(latency_s, lane=lane)
        cfg = self.config.lanes.get(lane)
        if not decision.admit and self.svc is not None:
            # Today's deny counts and a counter shift's denies by reason (edge/denies.py);
            # queued behind the decision's own write on the database thread, nobody waits.
            counter = cfg is not None and cfg.kind == "counter"
            fut = self.db.submit(
                denies.note, self.svc, lane, str(decision.reason), decision.at, counter=counter
            )
            fut.add_done_callback(_log_failure)

    async def record(self, kind: str, body: dict[str, Any]) -> None:
        """An event for the cloud (outbox) that is not part of a redemption's transaction.
        Telemetry (device alerts...) may be coalesced first: edge/outbox_watch.py."""
        assert self.svc is not None
        await self.watch.record(kind, body)

    async def audit(self, actor: str, action: str, target: str, detail: str) -> None:
        """A privileged action: the audit table and its outbox event in one transaction."""
        assert self.svc is not None
        await self.db.call(self._audit, actor, action, target, detail)
        self.bus.publish("audit", actor=actor, action=action, target=target, detail=detail)

    async def audited(
        self, fn: Callable[[Callable[[str, str], None]], T], actor: str, action: str
    ) -> T:
        """`fn(audit)` on the database thread, where `audit(target, detail)` writes the audit
        entry (and its outbox event) inside fn's own transaction: a business write and its
        audit commit together or not at all. fn calls it only when it did something."""
        done: list[tuple[str, str]] = []

        def audit(target: str, detail: str) -> None:
            self._audit_row(actor, action, target, detail)
            done.append((target, detail))

        result = await self.db.call(fn, audit)
        for target, detail in done:
            log.warning("audit actor=%s action=%s target=%s %s", actor, action, target, detail)
            self.bus.publish("audit", actor=actor, action=action, target=target, detail=detail)
        return result

    def _audit(self, actor: str, action: str, target: str, detail: str) -> None:
        assert self.svc is not None
        with transaction(self.svc.ledger.conn):
            self._audit_row(actor, action, target, detail)
        log.warning("audit actor=%s action=%s target=%s %s", actor, action, target, detail)

    def _audit_row(self, actor: str, action: str, target: str, detail: str) -> None:
        """The audit row and its outbox event, inside the caller's transaction."""
        assert self.svc is not None
        auditlog.write_entry(self.svc.ledger, actor, action, target, detail)

    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        assert self.svc is not None
        return await self.db.call(auditlog.recent_entries, self.svc.ledger.conn, limit)

    async def occupancy_changed(self) -> None:
        assert self.crowd is not None
        zones, changed = await self.db.call(self.crowd.check)
        self.zones = zones
        for z in changed:
            self.bus.publish("occupancy", alert=True, **z.to_json())
        if not changed:
            self.bus.publish("occupancy", alert=False, zones=[z.to_json() for z in zones])

    async def _print_slip(self, data: dict[str, Any]) -> None:
        """Raises when the slip cannot be queued, so the deposit answers `printed: false`."""
        from edge.errors import ConfigError

        target = self.config.printing.receipt
        if target is None:
            raise ConfigError(self.config.path, "[printing] receipt", "not set: no slip printer")
        assert self.spool is not None
        await self.spool.submit("pickup_slip", data, target=target, source="locker")

    # -- supervisor actions (audited) ------------------------------------------------------------

    async def set_emergency(self, on: bool, actor: str, note: str = "") -> dict[str, Any]:
        """Software free passage on every gate lane (audited, kept across a restart). It never
        clears a lane's hardware fire state."""
        await self.audit(
            actor,
            "emergency_free_passage",
            "all gate lanes",
            f"{'on' if on else 'off'} {note}".strip(),
        )
        assert self.svc is not None
        await self.db.call(self._set_meta, "emergency", "1" if on else "0")
        for lane in self.lanes.values():
            if lane.cfg.kind == "gate":
                await lane.set_emergency(on)
        return self.lanes_json()

    def _set_meta(self, key: str, value: str) -> None:
        assert self.svc is not None
        with transaction(self.svc.ledger.conn):
            self.svc.ledger.set_meta(key, value)

    async def manual_open(self, lane: str, actor: str, persons: int, note: str) -> dict[str, Any]:
        target = self._lane(lane)
        self._refuse_if_stopping()
        await self.audit(actor, "manual_open", lane, f"{persons} person(s): {note}")
        return await manual_open(target, persons)

    async def force_admit(self, code: str, lane: str, actor: str, note: str) -> dict[str, Any]:
        """A supervisor overrides a deny: recorded forced, audited, and (gate lanes) the gate
        opens in the lane's turn, like a scan. Refused where it could not be settled."""
        target = self._lane(lane)
        self._refuse_if_stopping()
        if target.cfg.kind == "locker":
            raise ValueError(f"lane {lane} is a locker lane: open a door from the locker screen")
        if target.cfg.kind == "gate":
            if target.gate is None or not target.gate.up:
                raise DeviceDown(lane, "the lane's gate is down", "check the gate / 检查闸机")
            if target.state.fire:
                raise ValueError(f"lane {lane} is in fire mode: free passage, nothing to admit")
        assert self.svc is not None
        async with target.turn:
            t0 = time.monotonic()
            d = await self.db.call(self.svc.force_admit, code, lane, note=note, actor=actor)
            await self.audit(actor, "force_admit", lane, f"{d.canonical_id or '-'}: {note}")
            self.observe(lane, d, None)
            out = d.to_json()
            if d.admit and target.cfg.kind == "gate" and d.state == "pending":
                out |= await target.open_gate(d, t0)
                out.pop("latency_s", None)
        if d.admit:
            await self.occupancy_changed()
        return target.publish(out | {"source": "force_admit"})

    def _refuse_if_stopping(self) -> None:
        if self.stopping:
            raise Stopping("the gateway is stopping / 网关正在停止")

    def _lane(self, name: str) -> Lane:
        lane = self.lanes.get(name)
        if lane is None:
            raise KeyError(f"no lane named {name!r}")
        return lane

    # -- health, status, metrics -------------------------------------------------------------

    async def health_check(self, timeout: float) -> bool:
        """The database thread answers and the ledger is readable."""
        assert self.svc is not None
        svc = self.svc
        try:
            await asyncio.wait_for(self.db.call(svc.ledger.outbox_depth), timeout)
        except Exception as err:
            log.error("health check failed: %s", err)
            return False
        return True

    async def refresh_stats(self) -> None:
        assert self.svc is not None and self.crowd is not None
        svc, crowd = self.svc, self.crowd

        def gather() -> tuple[int, float | None, int | None, list[ZoneLevel]]:
            svc.view.refresh()
            st = svc.view.state
            age = time.time() - st.issued_at if st is not None else None
            seq = st.seq if st is not None else None
            return svc.ledger.outbox_depth(), age, seq, crowd.zones(time.time())

        depth, age, seq, self.zones = await self.db.call(gather)
        self.stats["outbox_depth"], self.stats["cache_age_s"] = depth, age
        self.stats["cache_seq"] = seq
        if self.spool is not None:
            self.stats["print_queue"] = await self.spool.queue_depths()

    async def render_metrics(self) -> tuple[str, str]:
        await self.refresh_stats()
        return self.metrics.render(), CONTENT_TYPE

    async def maintenance(self) -> None:
        """Periodic: checkpoint the WAL off the redemption path, expire pickups, prune the print
        spool, refresh stats."""
        assert self.svc is not None
        ledger = self.svc.ledger
        await asyncio.to_thread(ledger.checkpoint, "PASSIVE")
        if self.spool is not None:
            await self.spool.prune(time.time())
        for bank in self.lockers.values():
            await bank.expire()
        await self.occupancy_changed()  # the business day rolls over; voids from the kiosk
        await self.refresh_stats()

    def degraded(self) -> list[str]:
        return [n for n, s in self.slots.items() if not s.up]

    def alarms(self) -> list[dict[str, Any]]:
        """What makes the box degraded besides its devices (the outbox backlog)."""
        return self.watch.alarms()

    def status_line(self) -> str:
        down = self.degraded()
        lanes = len(self.lanes)
        problems = [f"{', '.join(down)} down"] if down else []
        if backlog := self.watch.status_text():
            problems.append(backlog)
        if problems:
            return f"degraded 降级: {'; '.join(problems)}; {lanes} lanes"
        return f"running 运行中: {lanes} lanes, {len(self.slots)} devices up"

    def lanes_json(self) -> dict[str, Any]:
        return {n: lane.to_json() for n, lane in self.lanes.items()}

    async def status(self) -> dict[str, Any]:
        assert self.svc is not None
        st = await self.db.call(self.svc.status)
        await self.refresh_stats()
        bad = self.degraded() or self.alarms()
        return st | {
            "state": "stopping" if self.stopping else ("degraded" if bad else "ok"),
            "alarms": self.alarms(),
            "outbox": self.watch.to_json(),
            "config": config_status(self.config),
            "devices": [s.to_json() for s in self.slots.values()],
            "lanes": self.lanes_json(),
            "zones": [z.to_json() for z in self.zones],
            "print_queue": self.stats["print_queue"],
            "cloud": self.cloud_status() if self.cloud_status is not None else None,
        }

    # -- HTTPS certificate ------------------------------------------------------------------

    def tls_info(self) -> dict[str, Any]:
        """{"enabled", "fingerprint", "not_after", "source"} of the HTTPS certificate (the
        status screen shows the fingerprint; a self-made one is made here if still missing)."""
        if self._tls_info is None:
            self._tls_info = tls_info(self.config)
        return self._tls_info


def _log_failure(fut: concurrent.futures.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("counting a deny (today's counts, the shift) failed: %s", fut.exception())
