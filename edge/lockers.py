"""A locker bank (自助柜): deposit with a box-minted pickup code, pickup at the locker's scanner,
expiry, and technicians' audited door commands.

Every door command goes through the bank's DeviceSlot (the board's own thread); every write goes
through the db Runner to the PickupStore (one transaction with its outbox event). An unlock is
never retried blindly: a door that the board does not report open is a door fault, and a pickup
code whose door did not open stays valid. Doors being used by a deposit or a pickup are reserved
in memory (`_busy`) so two staff or two customers cannot get the same door at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError
from drivers.locker import DoorState, Locker
from edge.bus import EventBus
from edge.config import LockerBankConfig
from edge.devices import DeviceDown, DeviceSlot
from edge.errors import EdgeError
from edge.pickups import LINES, Lookup, Pickup, PickupStore
from edge.runner import Runner

log = logging.getLogger(__name__)

PrintSlip = Callable[[dict[str, Any]], Awaitable[None]]
Audit = Callable[[str, str, str, str], Awaitable[None]]  # (actor, action, target, detail)
MAX_ORDER_NO = 64


class LockerError(EdgeError):
    """A locker request that cannot be done; `bank` names the locker bank."""

    def __init__(self, bank: str, message: str) -> None:
        self.bank = bank
        super().__init__(f"locker {bank}: {message}")


class LockerFull(LockerError):
    """No free compartment of `size` (None: of any size)."""

    def __init__(self, bank: str, size: str | None, failed: Iterable[int] = ()) -> None:
        self.size = size
        self.failed = tuple(failed)
        what = f"size {size}" if size else "any size"
        extra = f" ({len(self.failed)} door(s) failed to open)" if self.failed else ""
        super().__init__(bank, f"no free compartment of {what}{extra} / 没有空闲格口")


class LockerUnavailable(LockerError):
    """The lock board is down or did not answer; nothing was recorded."""


class DoorNotClosed(LockerError):
    """The door stayed open after a deposit: it is held (parcel maybe inside), no code minted."""

    def __init__(self, bank: str, door: int, order_no: str) -> None:
        self.door = door
        self.order_no = order_no
        super().__init__(bank, f"door {door} was not closed; it stays reserved for {order_no}")


@dataclass(frozen=True)
class RateLimit:
    """Wrong codes on one lane: `failures` within `window_s` lock the lane for `lockout_s`."""

    failures: int = 5
    window_s: float = 60.0
    lockout_s: float = 60.0


@dataclass(frozen=True)
class _Unlock:
    opened: bool
    why: str = ""
    down: bool = False  # the board or its thread did not answer: not the door's fault


class LockerBank:
    """One locker device's compartments (sizes from config), used from the asyncio loop."""

    def __init__(
        self,
        cfg: LockerBankConfig,
        slot: DeviceSlot,
        db: Runner,
        store: PickupStore,
        bus: EventBus,
        print_slip: PrintSlip | None = None,
        audit: Audit | None = None,
        clock: Callable[[], float] = time.time,
        *,
        poll_s: float = 0.2,
        limit: RateLimit = RateLimit(),
    ) -> None:
        self.cfg = cfg
        self.name = cfg.device
        self.slot, self.db, self.store, self.bus = slot, db, store, bus
        self.print_slip, self.audit, self.clock = print_slip, audit, clock
        self.poll_s, self.limit = poll_s, limit
        self.doors = sorted(d for doors in cfg.sizes.values() for d in doors)
        self.size_of = {d: s for s, doors in cfg.sizes.items() for d in doors}
        self._busy: set[int] = set()
        self.stopping = False  # the daemon is stopping: stop waiting for doors to close
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    # -- deposit --------------------------------------------------------------------------------

    async def deposit(
        self, order_no: str, size: str | None = None, actor: str = ""
    ) -> dict[str, Any]:
        """Assign a free compartment, open it, wait for the door to close, mint the code, print
        the slip. Raises LockerFull, DoorNotClosed, LockerUnavailable or LockerError."""
        order_no = order_no.strip() if isinstance(order_no, str) else ""
        if not order_no or len(order_no) > MAX_ORDER_NO or not order_no.isprintable():
            raise LockerError(self.name, f"order number must be 1-{MAX_ORDER_NO} printable chars")
        if size is not None and size not in self.cfg.sizes:
            raise LockerError(
                self.name, f"unknown size {size!r}; sizes: {', '.join(self.cfg.sizes)}"
            )
        failed: list[int] = []
        while True:
            door = await self._reserve(size, failed)
            try:
                u = await self._unlock(door)
                if u.down:
                    raise LockerUnavailable(self.name, u.why)
                if not u.opened:
                    await self._fault(door, u.why)
                    failed.append(door)
                    continue
                self.bus.publish("locker", event="deposit_open", locker=self.name, door=door)
                closed = await self._wait_closed(door, self.cfg.door_close_timeout_s)
                now = self.clock()
                if not closed:
                    why = "door not closed after deposit"
                    await self.db.call(self.store.hold_open, self.name, door, order_no, why, now)
                    self._alert(door, why, order_no=order_no)
                    raise DoorNotClosed(self.name, door, order_no)
                expires_at = now + self.cfg.pickup_hours * 3600
                code = await self.db.call(
                    self.store.mint,
                    self.name,
                    door,
                    order_no,
                    self.size_of[door],
                    expires_at,
                    now,
                    actor=actor,
                )
            finally:
                self._busy.discard(door)
            break
        out = {"locker": self.name, "door": door, "code": code, "expires_at": expires_at}
        out |= {"order_no": order_no, "size": self.size_of[door]}
        out["printed"] = await self._print(dict(out))
        self.bus.publish("locker", event="deposit", locker=self.name, door=door, order_no=order_no)
        return out

    async def _reserve(self, size: str | None, exclude: list[int]) -> int:
        taken = await self.db.call(self._taken)
        status = await self._status()
        sizes = [size] if size is not None else list(self.cfg.sizes)
        for s in sizes:
            for door in self.cfg.sizes[s]:
                state = status.get(door)
                if door in taken or door in self._busy or door in exclude or state is None:
                    continue
                if state.closed:
                    self._busy.add(door)  # no await since the check: nobody else can take it
                    return door
        raise LockerFull(self.name, size, exclude)

    def _taken(self) -> set[int]:
        """(db thread) Doors with a parcel in or out of service."""
        flags = self.store.door_flags(self.name)
        held = {d for d, f in flags.items() if f.fault or f.held}
        return held | set(self.store.active(self.name))

    async def _print(self, slip: dict[str, Any]) -> bool:
        if self.print_slip is None:
            return False
        try:
            await self.print_slip(slip)
        except Exception as err:  # the code is recorded and shown to staff; a slip is a copy
            log.warning("locker %s: pickup slip not printed: %s", self.name, err)
            self._alert(slip["door"], f"pickup slip not printed: {err}")
            return False
        return True

    # -- pickup ---------------------------------------------------------------------------------

    async def pickup(self, code: str, lane: str) -> dict[str, Any]:
        """A customer's code at this bank's scanner or keypad. Never raises for bad input."""
        now = self.clock()
        if self._locked_until.get(lane, 0.0) > now:
            return self._answer("rate_limited", lane, detail="too many wrong codes on this lane")
        found: Lookup = await self.db.call(self.store.lookup, str(code), now)
        if found.ok and found.pickup is not None and found.pickup.device != self.name:
            return self._answer("unknown_code", lane, detail="code for another locker bank")
        if not found.ok or found.pickup is None:
            self._failed(lane, now)
            return self._answer(found.reason, lane, detail=found.detail)
        p = found.pickup
        if p.door in self._busy:
            return self._answer("ok", lane, door=p.door, detail="door already opening")
        self._busy.add(p.door)
        try:
            return await self._pick(p, lane)
        finally:
            self._busy.discard(p.door)

    async def _pick(self, p: Pickup, lane: str) -> dict[str, Any]:
        u = await self._unlock(p.door)
        if u.down:
            self._alert(p.door, f"pickup: {u.why}", order_no=p.order_no)
            return self._answer("locker_down", lane, door=p.door, detail=u.why)
        if not u.opened:
            await self._fault(p.door, u.why, p)
            return self._answer("door_fault", lane, door=p.door, detail=u.why)
        zh, en = LINES["ok"]
        self.bus.publish(
            "locker",
            event="door_open",
            locker=self.name,
            door=p.door,
            lane=lane,
            line_zh=zh.format(door=p.door),
            line_en=en.format(door=p.door),
        )
        closed = await self._wait_closed(p.door, self.cfg.door_close_timeout_s)
        picked = await self.db.call(
            self.store.mark_picked, p.id, self.clock(), lane, door_closed=closed
        )
        if not closed:
            self._alert(p.door, "door left open after pickup", order_no=p.order_no)
        rid = picked.redemption_id.hex() if picked.redemption_id else None
        return self._answer("ok", lane, door=p.door, redemption_id=rid, door_closed=closed)

    def _failed(self, lane: str, now: float) -> None:
        q = self._failures.setdefault(lane, deque())
        q.append(now)
        while q and q[0] <= now - self.limit.window_s:
            q.popleft()
        if len(q) >= self.limit.failures:
            q.clear()
            self._locked_until[lane] = now + self.limit.lockout_s
            log.warning("locker %s: lane %s rate-limited", self.name, lane)
            self.bus.publish(
                "locker", event="rate_limited", alert=True, locker=self.name, lane=lane
            )

    def _answer(
        self, reason: str, lane: str, *, door: int | None = None, detail: str = "", **more: Any
    ) -> dict[str, Any]:
        zh, en = LINES[reason]
        out: dict[str, Any] = {
            "ok": reason == "ok",
            "reason": reason,
            "detail": detail,
            "locker": self.name,
            "lane": lane,
            "door": door,
            "line_zh": zh.format(door=door),
            "line_en": en.format(door=door),
            **more,
        }
        log.info("locker pickup locker=%s lane=%s reason=%s door=%s", self.name, lane, reason, door)
        self.bus.publish("locker", event="pickup", **out)
        return out

    # -- doors ----------------------------------------------------------------------------------

    async def _unlock(self, door: int) -> _Unlock:
        try:
            result = await self.slot.call(Locker.open_door, door, issued_at=time.monotonic())
        except (DeviceDown, DriverError) as err:  # no reply, garbled, stale: not the door
            return _Unlock(False, str(err), down=True)
        return _Unlock(result.opened, "" if result.opened else "not seen open after unlock")

    async def _status(self) -> dict[int, DoorState]:
        try:
            return await self.slot.call(Locker.all_status)
        except (DeviceDown, DriverError) as err:
            raise LockerUnavailable(self.name, str(err)) from err

    async def _wait_closed(self, door: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if (await self.slot.call(Locker.door_status, door)).closed:
                    return True
            except (DeviceDown, DriverError) as err:  # keep looking until the deadline
                log.debug("locker %s: door %d status: %s", self.name, door, err)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopping:
                return False
            await asyncio.sleep(min(self.poll_s, remaining))

    async def _fault(self, door: int, why: str, pickup: Pickup | None = None) -> None:
        await self.db.call(self.store.door_fault, self.name, door, why, self.clock(), pickup=pickup)
        self._alert(door, f"door fault: {why}", order_no=pickup.order_no if pickup else "")

    def _alert(self, door: int, what: str, **more: Any) -> None:
        log.warning("locker %s door %d: %s", self.name, door, what)
        self.bus.publish(
            "locker", event="alert", alert=True, locker=self.name, door=door, what=what, **more
        )

    # -- technicians ----------------------------------------------------------------------------

    async def open_door(self, door: int, actor: str, why: str) -> dict[str, Any]:
        """Open one door (a technician's audited command); a successful open clears the door's
        fault or hold, so it is assigned again."""
        self._check_door(door)
        result = await self._tech_open(door, actor)
        await self._audited(actor, "locker_open_door", f"{self.name}:{door}", why, result)
        return result

    async def open_all(self, actor: str, why: str) -> dict[str, Any]:
        """Open every door, one at a time (one transaction on the wire at a time). Audited
        before the first door moves (so an interrupted run is on record) and with the result."""
        await self._audited(
            actor, "locker_open_all_start", self.name, why, {"doors": len(self.doors)}
        )
        results = [await self._tech_open(door, actor) for door in self.doors]
        out = {
            "locker": self.name,
            "opened": [r["door"] for r in results if r["opened"]],
            "failed": [r["door"] for r in results if not r["opened"]],
            "doors": results,
        }
        summary = {k: out[k] for k in ("opened", "failed")}
        await self._audited(actor, "locker_open_all", self.name, why, summary)
        return out

    async def _tech_open(self, door: int, actor: str) -> dict[str, Any]:
        u = await self._unlock(door)
        cleared = False
        if u.opened:
            cleared = await self.db.call(
                self.store.clear_door, self.name, door, self.clock(), actor
            )
        elif not u.down:
            await self._fault(door, u.why)
        result = dict(locker=self.name, door=door, opened=u.opened, error=u.why, cleared=cleared)
        self.bus.publish("locker", event="technician_open", actor=actor, **result)
        return result

    async def _audited(
        self, actor: str, action: str, target: str, why: str, result: dict[str, Any]
    ) -> None:
        detail = f"why={why}; result={result}"
        if self.audit is None:  # no audit log wired (tests, tools): the log line is the record
            log.info("audit actor=%s action=%s target=%s %s", actor, action, target, detail)
            return
        try:
            await self.audit(actor, action, target, detail)
        except Exception:  # the door has moved already: losing the audit line must not hide it
            log.exception("locker %s: audit of %s failed", self.name, action)

    def _check_door(self, door: int) -> None:
        if door not in self.size_of:
            raise LockerError(
                self.name, f"no door {door!r}; doors: {self.doors[0]}-{self.doors[-1]}"
            )

    async def _active_at(self, door: int) -> Pickup:
        self._check_door(door)
        p = (await self.db.call(self.store.active, self.name)).get(door)
        if p is None:
            raise LockerError(self.name, f"door {door} holds no active pickup")
        return p

    async def reissue(self, door: int, actor: str) -> dict[str, Any]:
        """A re-sent code: a new code for the parcel in `door`, the old one stops working, and
        the slip is printed again with the new code."""
        p = await self._active_at(door)
        code, new = await self.db.call(self.store.reissue, p.id, self.clock(), actor)
        out = {"locker": self.name, "door": door, "code": code, "expires_at": new.expires_at}
        out |= {"order_no": new.order_no, "size": new.size, "reissued": True}
        out["printed"] = await self._print(dict(out))
        await self._audited(
            actor,
            "locker_reissue",
            f"{self.name}:{door}",
            "code re-sent",
            {"order_no": new.order_no, "pickup_id": new.id.hex()},
        )
        return out

    async def cancel(self, door: int, actor: str, why: str) -> dict[str, Any]:
        """Staff take a parcel back: the door opens, then the code stops working. A door that
        does not open is a fault and the code stays valid."""
        p = await self._active_at(door)
        result = await self._tech_open(door, actor)
        if result["opened"]:
            await self.db.call(self.store.cancel, p.id, self.clock(), why, actor)
        result["cancelled"] = bool(result["opened"])
        await self._audited(actor, "locker_cancel", f"{self.name}:{door}", why, result)
        return result

    # -- views ----------------------------------------------------------------------------------

    async def grid(self) -> list[dict[str, Any]]:
        """Per door: state in {free, occupied, open, fault, expired}. With the board down the
        live door sensors are unknown (`sensor: None`) and the stored state is shown."""
        active, flags = await self.db.call(
            lambda: (self.store.active(self.name), self.store.door_flags(self.name))
        )
        try:
            status: dict[int, DoorState] = await self._status()
        except LockerUnavailable:
            status = {}
        out = []
        for door in self.doors:
            f, p, st = flags.get(door), active.get(door), status.get(door)
            if f is not None and f.fault:
                state = "fault"
            elif f is not None and f.held == "expired":
                state = "expired"
            elif (f is not None and f.held == "open") or (st is not None and st.open):
                state = "open"
            else:
                state = "occupied" if p is not None else "free"
            row: dict[str, Any] = {"door": door, "size": self.size_of[door], "state": state}
            row["sensor"] = None if st is None else ("open" if st.open else "closed")
            row["order_no"] = p.order_no if p is not None else (f.order_no if f else "") or None
            row["expires_at"] = p.expires_at if p is not None else None
            row["fault"] = f.fault if f is not None and f.fault else None
            out.append(row)
        return out

    async def expire(self, now: float | None = None) -> list[dict[str, Any]]:
        """Pickups past their time: reported (bus alert; outbox in the same transaction as the
        state change), and their compartments held as `expired` until a technician opens them."""
        at = self.clock() if now is None else now
        expired = await self.db.call(self.store.expire, at, self.name)
        for p in expired:
            self._alert(p.door, "pickup expired", order_no=p.order_no, pickup_id=p.id.hex())
        return [p.to_json() for p in expired]
