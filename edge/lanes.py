"""Lanes: a scanner bound to a gate direction, a locker bank or a counter, and a check-in list.

Gate lane: scan -> decision -> (admit) PENDING redemption, durable -> gate open -> passage within
the window -> CONFIRMED (the persons counted); no passage -> VOIDED, the ticket usable again. The
same ticket read again while its visitor is still at the reader does nothing (dedupe by canonical
id). The hardware fire input puts the lane in free passage: it reports it and sends no command;
the supervisor's "emergency free passage" is a separate, audited software mode that opens for
anyone and can never clear the hardware input. The gate's actuation: edge/lane_gate.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from drivers.errors import DriverError
from drivers.gate import Gate
from drivers.scanner import Scanner
from edge.bus import EventBus
from edge.codes import code_fingerprint
from edge.config_sections import LaneConfig
from edge.decision import Decision
from edge.devices import DeviceDown, DeviceSlot
from edge.errors import Stopping
from edge.lane_gate import actuate, free_passage
from edge.lane_hold import HeldCodes
from edge.lane_text import LINE_AGAIN, LINE_CONFIRM, LINE_FAULT, LINE_NOT_HERE, display_line
from edge.pickup_codes import is_pickup_code
from edge.rules import Reason
from edge.runner import Runner
from edge.service import RedemptionService

log = logging.getLogger(__name__)

FIRE_POLL_S = 1.0
# A read blocks the scanner's thread this long at most: the beep for a decision waits behind it.
SCAN_READ_S = 0.05
COMMAND_TTL_S = 5.0  # a scan older than this when its turn comes is not acted on
SERVE_POLL_S = 0.5  # a stop or reload waits up to this for each lane's serve() (tests shorten it)


_Item = tuple[str, float, str, "asyncio.Future[dict[str, Any]] | None"]


class Hooks(Protocol):
    """What a lane needs from the daemon besides the service: metrics, events, occupancy."""

    def observe(self, lane: str, decision: Decision, latency_s: float | None) -> None: ...
    async def record(self, kind: str, body: dict[str, Any]) -> None: ...
    async def occupancy_changed(self) -> None: ...


class PickupHandler(Protocol):
    async def pickup(self, code: str, lane: str) -> dict[str, Any]: ...


@dataclass
class LaneState:
    fire: bool = False  # the hardware fire input reports an alarm
    emergency: bool = False  # the supervisor's software free passage
    busy: bool = False  # a gate open is running
    scans: int = 0
    duplicates: int = 0
    last: dict[str, Any] | None = None
    recent: dict[str, float] = field(default_factory=dict)  # canonical id -> monotonic deadline


class Lane:
    def __init__(
        self,
        cfg: LaneConfig,
        *,
        db: Runner,
        svc: RedemptionService,
        bus: EventBus,
        hooks: Hooks,
        scanner: DeviceSlot | None = None,
        gate: DeviceSlot | None = None,
        lockers: PickupHandler | None = None,
    ) -> None:
        self.cfg, self.db, self.svc, self.bus, self.hooks = cfg, db, svc, bus, hooks
        self.scanner, self.gate, self.lockers = scanner, gate, lockers
        self.state = LaneState()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=64)
        self.accepting = True
        self.inflight: str | None = None  # redemption id waiting for its passage
        self.turn = asyncio.Lock()  # one visitor at a time: scans, forced admits, manual opens
        self.actuations: set[asyncio.Task[dict[str, Any]]] = set()
        self.held = HeldCodes()  # counter vouchers waiting for the cashier's tap

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- loops (the daemon supervises them) -------------------------------------------------

    async def read_scanner(self, stop: asyncio.Event) -> None:
        """Hand every scan from the lane's scanner to the lane. Never two reads at once."""
        slot = self.scanner
        assert slot is not None
        while not stop.is_set():
            if not slot.up:
                await _sleep_or_stop(stop, 0.2)
                continue
            try:
                scan = await slot.call(Scanner.read, SCAN_READ_S)
            except DeviceDown:
                continue
            except DriverError as err:  # unplugged: down until the supervisor reopens it
                slot.mark_down(str(err), "check the scanner's cable / 检查扫码器连接")
                continue
            if scan is None or not self.accepting:
                continue
            t0 = time.monotonic() - max(0.0, time.time() - scan.timestamp)
            try:
                self.queue.put_nowait((scan.text, t0, "scanner", None))
            except asyncio.QueueFull:
                log.warning("lane %s: scans arrive faster than they are handled", self.name)

    async def serve(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                text, t0, source, fut = await asyncio.wait_for(self.queue.get(), SERVE_POLL_S)
            except TimeoutError:
                continue
            try:
                async with self.turn:
                    result = await self.handle(text, t0=t0, source=source)
            except Exception as err:
                # One bad scan must not stall the lane: log it, tell the visitor, go on.
                log.exception("lane %s: handling a scan failed", self.name)
                self.feedback(False, LINE_FAULT)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
                continue
            if fut is not None and not fut.done():
                fut.set_result(result)
        self._fail_queued()

    def _fail_queued(self) -> None:
        """At stop: callers waiting on queued scans get an answer instead of hanging."""
        while not self.queue.empty():
            *_, fut = self.queue.get_nowait()
            if fut is not None and not fut.done():
                fut.set_exception(Stopping(f"lane {self.name} is stopping"))

    async def watch_fire(self, stop: asyncio.Event) -> None:
        """Mirror the gate's fire input (hardware wins; software only reports it)."""
        gate = self.gate
        assert gate is not None
        while not stop.is_set():
            if gate.up and not self.state.busy:
                try:
                    inputs = await gate.call(Gate.inputs)
                except DeviceDown:
                    pass
                except DriverError as err:
                    log.warning("lane %s: gate inputs: %s", self.name, err)
                else:
                    await self.set_fire(inputs.fire is True)
            await _sleep_or_stop(stop, FIRE_POLL_S)

    # -- one scan ----------------------------------------------------------------------------

    async def submit(self, text: str, source: str = "kiosk") -> dict[str, Any]:
        """A code typed at the kiosk or injected for this lane (`edge scan`): handled in turn
        with the scanner's scans; returns what the lane showed."""
        if not self.accepting:
            raise Stopping(f"lane {self.name} is stopping")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self.queue.put((text, time.monotonic(), source, fut))
        return await fut

    async def redeem_code(
        self,
        code: str,
        redemption_id: bytes | None = None,
        *,
        source: str = "kiosk",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A counter's confirming tap on a typed code: redeem it now (a voucher too), in turn
        with the lane's scanner. A retry with the same `redemption_id` gets the recorded
        outcome. Returns (and publishes) what the lane showed, with `extra` added."""
        async with self.turn:
            return await self._redeem_now(code, redemption_id, source, extra or {})

    async def redeem_held(
        self,
        token: str,
        redemption_id: bytes | None = None,
        *,
        source: str = "kiosk",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The tap on a voucher this lane held (`confirm_token` of its `confirm` decision):
        the token is good for one tap; the same tap again (same `redemption_id`) gets its
        recorded answer; anything else raises ConfirmGone (edge/lane_hold.py)."""
        rid = redemption_id or secrets.token_bytes(16)
        item = self.held.take(token, rid)
        async with self.turn:
            if item.outcome is None:
                item.outcome = await self._redeem_now(item.code, rid, source, extra or {})
        return item.outcome

    async def _redeem_now(
        self, code: str, rid: bytes | None, source: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        d = await self.db.call(self.svc.redeem, code, self.name, redemption_id=rid)
        latency = time.monotonic() - t0
        self.hooks.observe(self.name, d, latency)
        if d.admit and d.list_id:
            await self.hooks.occupancy_changed()
        zh, en = display_line(d.reason)
        out = {
            "source": source,
            "code_fp": code_fingerprint(code),
            "line_zh": zh,
            "line_en": en,
            "needs_confirm": False,
            "latency_ms": round(latency * 1000, 2),
        }
        return self.publish(d.to_json() | out | extra)

    async def handle(
        self, text: str, *, t0: float | None = None, source: str = "scanner"
    ) -> dict[str, Any]:
        """Decide and act on one scan; returns what was shown (for the API and the tests)."""
        t0 = time.monotonic() if t0 is None else t0
        self.state.scans += 1
        fp = code_fingerprint(text)
        if self.cfg.kind == "gate" and (self.state.fire or self.state.emergency):
            return await free_passage(self, fp, t0)
        if self.cfg.kind == "locker" and self.lockers is not None and _pickup_like(text):
            result = await self.lockers.pickup(text, self.name)
            self.feedback(bool(result.get("ok")), (result["line_zh"], result["line_en"]))
            verdict = "admit" if result.get("ok") else "deny"
            return self.publish(
                {"lane": self.name, "source": source, "code_fp": fp, "decision": verdict, **result}
            )
        if self.cfg.kind == "locker":
            # Only the box's pickup codes open a compartment; anything else is not for here.
            checked = await self.db.call(self.svc.validate, text, self.name)
            decision = checked.with_(
                reason=Reason.UNKNOWN_CODE if checked.admit else checked.reason,
                detail="not a pickup code of this locker / 非本柜取件码",
            )
            zh, en = LINE_NOT_HERE if checked.admit else display_line(decision.reason)
            self.feedback(False, (zh, en))
            self.hooks.observe(self.name, decision, time.monotonic() - t0)
            return self.publish(
                decision.to_json() | {"source": source, "code_fp": fp, "line_zh": zh, "line_en": en}
            )
        if self.cfg.kind == "gate" and time.monotonic() - t0 > COMMAND_TTL_S:
            # Read while an earlier group was passing: the visitor may have gone. Nothing is
            # recorded; whoever is still there scans again.
            self.feedback(False, LINE_AGAIN)
            return self.publish(
                {
                    "lane": self.name,
                    "decision": "scan_again",
                    "code_fp": fp,
                    "source": source,
                    "line_zh": LINE_AGAIN[0],
                    "line_en": LINE_AGAIN[1],
                }
            )
        # The same ticket (canonical id, so a rotating code's next frame too) read again while its
        # visitor is still at the reader: nothing happens. The service checks it with the one
        # verification of the scan and writes nothing then.
        ignore = self._at_reader if self.cfg.kind == "gate" else None
        if self.cfg.kind == "gate" and (self.gate is None or not self.gate.up):
            # The gate cannot open: say so and record nothing (the ticket stays unused).
            decision = await self.db.call(self.svc.validate, text, self.name, ignore=ignore)
            if decision.extra.get("duplicate"):
                return self._duplicate(fp)
            self.feedback(False, LINE_FAULT)
            return self.publish(
                decision.to_json()
                | {
                    "decision": "deny",
                    "source": source,
                    "code_fp": fp,
                    "gate_down": True,
                    "line_zh": LINE_FAULT[0],
                    "line_en": LINE_FAULT[1],
                }
            )
        counter = self.cfg.kind == "counter"
        decision = await self.db.call(
            self.svc.redeem, text, self.name, ignore=ignore, hold_vouchers=counter
        )
        if decision.extra.get("duplicate"):
            return self._duplicate(fp)
        if decision.extra.get("needs_confirm"):
            # A voucher at a counter waits for the cashier's tap (the kiosk redeems it then):
            # nothing is written and nothing counted yet.
            self.feedback(True, LINE_CONFIRM)
            return self.publish(
                decision.to_json()
                | {
                    "decision": "confirm",
                    "needs_confirm": True,
                    "confirm_token": self.held.hold(text),
                    "source": source,
                    "code_fp": fp,
                    "line_zh": LINE_CONFIRM[0],
                    "line_en": LINE_CONFIRM[1],
                }
            )
        latency = time.monotonic() - t0
        outcome: dict[str, Any] = {}
        if decision.admit and self.cfg.kind == "gate":
            outcome = await self.open_gate(decision, t0)
            latency = outcome.pop("latency_s", latency)
        else:
            self.feedback(decision.admit, display_line(decision.reason))
        self.hooks.observe(self.name, decision, latency)
        log.info(
            "decision lane=%s reason=%s code=%s latency_ms=%.1f",
            self.name,
            decision.reason,
            fp,
            latency * 1000,
            extra={"lane": self.name, "reason": str(decision.reason), "code_fp": fp},
        )
        if decision.admit and decision.list_id:
            await self.hooks.occupancy_changed()
        zh, en = display_line(decision.reason)
        return self.publish(
            decision.to_json()
            | {
                "source": source,
                "code_fp": fp,
                "line_zh": zh,
                "line_en": en,
                "latency_ms": round(latency * 1000, 2),
            }
            | outcome
        )

    async def open_gate(self, d: Decision, t0: float) -> dict[str, Any]:
        """Open for the persons admitted and settle the redemption (confirm what passed, void
        when nobody did). It runs as its own task: a lane cancelled at shutdown cuts the open
        short but still settles, so a visitor who went through is never left on a voided or
        pending ticket."""
        task = asyncio.ensure_future(actuate(self, d, t0))
        self.actuations.add(task)
        task.add_done_callback(self.actuations.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self.cancel_inflight()
            await asyncio.wait([task])
            raise

    async def set_emergency(self, on: bool) -> None:
        self.state.emergency = on
        self.bus.publish("lane", lane=self.name, emergency=on, fire=self.state.fire)

    async def set_fire(self, active: bool) -> None:
        if active == self.state.fire:
            return
        self.state.fire = active
        log.warning("lane %s: fire input %s", self.name, "ALARM" if active else "normal")
        self.bus.publish("lane", lane=self.name, fire=active, emergency=self.state.emergency)
        await self.hooks.record("fire_mode", {"lane": self.name, "active": active})

    def cancel_inflight(self) -> None:
        """Shutdown: end a running gate open now (what passed is still confirmed)."""
        if self.gate is not None and self.gate.device is not None:
            dev = self.gate.device
            assert isinstance(dev, Gate)
            dev.cancel()

    # -- helpers -----------------------------------------------------------------------------

    def feedback(self, good: bool, line: tuple[str, str]) -> None:
        slot = self.scanner
        if slot is None or not slot.up or slot.device is None:
            return
        text = f"{line[0]} {line[1]}" if self.cfg.display else None
        fut = slot.runner.submit(Scanner.feedback, slot.device, good, text)  # type: ignore[arg-type]
        fut.add_done_callback(_log_failure)

    def publish(self, data: dict[str, Any]) -> dict[str, Any]:
        self.state.last = data
        self.bus.publish("decision", **data)
        return data

    def _at_reader(self, canonical_id: str) -> bool:
        """Runs on the database thread: a read of a dict the loop writes (atomic in CPython)."""
        return self.state.recent.get(canonical_id, 0.0) > time.monotonic()

    def _duplicate(self, fp: str) -> dict[str, Any]:
        self.state.duplicates += 1
        log.debug("lane %s: %s read again while at the reader: ignored", self.name, fp)
        return {"lane": self.name, "duplicate": True, "code_fp": fp}

    def prune_recent(self) -> None:
        now = time.monotonic()
        for cid in [c for c, until in self.state.recent.items() if until <= now]:
            del self.state.recent[cid]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.cfg.kind,
            "direction": str(self.cfg.direction),
            "list": self.cfg.list_id,
            "scanner": self.cfg.scanner,
            "gate": self.cfg.gate,
            "locker": self.cfg.locker,
            "fire": self.state.fire,
            "emergency": self.state.emergency,
            "busy": self.state.busy,
            "scans": self.state.scans,
            "duplicates": self.state.duplicates,
            "last": self.state.last,
        }


def _pickup_like(text: str) -> bool:
    """Box-minted pickup codes are exactly 7 digits (cloud codes are 8-16)."""
    return is_pickup_code(text.strip())


def _log_failure(fut: Any) -> None:
    err = fut.exception()
    if err is not None:
        log.warning("scanner feedback failed: %s", err)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
