"""A locker bank (自助柜): deposit with a box-minted pickup code, and pickup at the locker's
scanner.

Every door command goes through the bank's DeviceSlot (the board's own thread); every write goes
through the db Runner to the PickupStore (one transaction with its outbox event). An unlock is
never retried blindly: a door that the board does not report open is a door fault, and a pickup
code whose door did not open stays valid. Before a door is unlocked its intent is durable (a
deposit holds the door, a pickup is `opening`), so a crash loses nothing (edge/pickups.py). Doors
in use are also reserved in memory (`_busy`) so two staff or two customers cannot get the same
door at once. A pickup answers as soon as its door is seen open: watching the door close and
recording the pickup run on as a task in `pending_tasks`, which `close()` settles.

The staff side (technicians' door commands, the door grid, expiry) is edge/locker_staff.py, a
mixin of LockerBank; what the bank raises is edge/locker_errors.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from drivers.errors import DriverError
from drivers.locker import DoorState, Locker
from edge.bus import EventBus
from edge.config_sections import LockerBankConfig
from edge.devices import DeviceDown, DeviceSlot
from edge.errors import Stopping
from edge.locker_errors import DoorNotClosed, LockerError, LockerFull, LockerUnavailable
from edge.locker_staff import Audit, LockerStaff, Unlock
from edge.pickup_codes import LINES, Lookup, Pickup
from edge.pickups import PickupStore
from edge.runner import Runner

log = logging.getLogger(__name__)

PrintSlip = Callable[[dict[str, Any]], Awaitable[None]]
MAX_ORDER_NO = 64
GUESSES = frozenset({"malformed", "unknown_code"})  # what counts against the wrong-code budget
CLOSE_WAIT_S = 5.0  # close(): how long pickups with an open door get to be recorded


@dataclass(frozen=True)
class RateLimit:
    """Wrong codes at one bank, whichever of its lanes they come from: `failures` within
    `window_s` lock the bank for `lockout_s`, doubled at each lockout up to `max_lockout_s`; the
    doubling starts again after `forget_s` without a lockout."""

    failures: int = 5
    window_s: float = 60.0
    lockout_s: float = 60.0
    max_lockout_s: float = 3600.0
    forget_s: float = 3600.0


class LockerBank(LockerStaff):
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
        # pickup id -> the answer of the scan that opens its door, until the door is closed
        self._opening: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.pending_tasks: set[asyncio.Task[None]] = set()
        self.stopping = False  # the daemon is stopping: no new work, stop waiting for doors
        self._closed = False
        self._failures: deque[float] = deque()
        self._locked_until, self._streak = 0.0, 0
        self._guard_loaded = False  # the lockout kept in the ledger is read at the first scan
        self.recovered = [r for r in store.recovered if r["locker"] == self.name]
        for r in self.recovered:  # resolved by the store at start-up: staff must look
            self._alert(r["door"], r["what"], order_no=r["order_no"])

    async def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Take no more work and settle the pickups in flight: a door still open is recorded
        picked now with door_closed False (its watch ends at its next poll). Waits at most
        `timeout`; a task cut short leaves its pickup `opening`, settled at the next start.
        Idempotent; call before the ledger closes."""
        self.stopping = True
        if self._closed:
            return
        self._closed = True
        if not self.pending_tasks:
            return
        _, late = await asyncio.wait(set(self.pending_tasks), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("locker %s: %d pickup(s) not settled at close", self.name, len(late))
            await asyncio.wait(late, timeout=1.0)

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.pending_tasks.add(task)
        task.add_done_callback(self.pending_tasks.discard)

    def _refuse_if_stopping(self) -> None:
        if self.stopping:
            raise Stopping(f"locker {self.name}: the gateway is stopping / 网关正在停止")

    # -- deposit --------------------------------------------------------------------------------

    async def deposit(
        self, order_no: str, size: str | None = None, actor: str = ""
    ) -> dict[str, Any]:
        """Assign a free compartment, open it, wait for the door to close, mint the code, print
        the slip. Raises LockerFull, DoorNotClosed, LockerUnavailable, Stopping or LockerError."""
        order_no = order_no.strip() if isinstance(order_no, str) else ""
        if not order_no or len(order_no) > MAX_ORDER_NO or not order_no.isprintable():
            raise LockerError(self.name, f"order number must be 1-{MAX_ORDER_NO} printable chars")
        if size is not None and size not in self.cfg.sizes:
            raise LockerError(
                self.name, f"unknown size {size!r}; sizes: {', '.join(self.cfg.sizes)}"
            )
        self._refuse_if_stopping()
        failed: list[int] = []
        done: tuple[str, float] | None = None
        while done is None:
            door = await self._reserve(size, failed)
            try:
                done = await self._deposit_in(door, order_no, actor, failed)
            finally:
                self._busy.discard(door)
        code, expires_at = done
        out = {"locker": self.name, "door": door, "code": code, "expires_at": expires_at}
        out |= {"order_no": order_no, "size": self.size_of[door]}
        out["printed"] = await self._print(dict(out))
        self.bus.publish("locker", event="deposit", locker=self.name, door=door, order_no=order_no)
        return out

    async def _deposit_in(
        self, door: int, order_no: str, actor: str, failed: list[int]
    ) -> tuple[str, float] | None:
        """One door: (code, expires_at), or None when it did not open (try the next one)."""
        await self.db.call(self.store.begin_deposit, self.name, door, order_no, self.clock())
        u = await self._unlock(door)
        if not u.opened:
            await self.db.call(self.store.end_deposit, self.name, door, self.clock())
            if u.down:
                raise LockerUnavailable(self.name, u.why)
            if failed:  # a second door in a row: the wall (lock power, board), not its doors
                why = f"doors {failed[-1]} and {door} did not open: check the lock power"
                self._alert(door, why)
                raise LockerUnavailable(self.name, f"{why} / 柜门连续未能打开，请检查锁控电源")
            await self._fault(door, u.why)
            failed.append(door)
            return None
        self.bus.publish("locker", event="deposit_open", locker=self.name, door=door)
        closed = await self._wait_closed(door, self.cfg.door_close_timeout_s)
        now = self.clock()
        if not closed:
            why = "door not closed after deposit"
            await self.db.call(self.store.hold_open, self.name, door, order_no, why, now)
            self._alert(door, why, order_no=order_no)
            raise DoorNotClosed(self.name, door, order_no)
        expires_at = now + self.cfg.pickup_hours * 3600
        try:
            what = (self.name, door, order_no, self.size_of[door], expires_at, now)
            code = await self.db.call(self.store.mint, *what, actor=actor)
        except Exception as err:  # the parcel is inside with no code: the door waits for staff
            why = f"pickup code not recorded: {err}"
            try:
                await self.db.call(self.store.hold_open, self.name, door, order_no, why, now)
            except Exception:  # the durable deposit intent still holds the door
                log.exception("locker %s door %d: hold after a failed mint", self.name, door)
            self._alert(door, why, order_no=order_no)
            raise LockerError(
                self.name, f"door {door}: {why}; the door is held for staff / 格口已保留"
            ) from err
        return code, expires_at

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
        """A customer's code at this bank's scanner or keypad. Never raises for bad input.
        Answers once the door is seen open; the rest runs on in `pending_tasks`."""
        now = self.clock()
        if self.stopping:
            return self._answer("locker_down", lane, detail="the gateway is stopping")
        if await self._locked(now):
            return self._answer("rate_limited", lane, detail="too many wrong codes at this locker")
        found: Lookup = await self.db.call(self.store.lookup, str(code), now)
        p = found.pickup
        if p is not None and p.device != self.name:  # another bank's: no hint that it is real
            found, p = Lookup("unknown_code", "no pickup with this code"), None
        if not found.ok or p is None:
            if found.reason in GUESSES:
                await self._failed(lane, now)
            return self._answer(found.reason, lane, detail=found.detail)
        first = self._opening.get(p.id)
        if first is not None:  # scanned again while its door is opening or open: same answer
            ans = await asyncio.shield(first)
            more = {"redemption_id": ans["redemption_id"]} if "redemption_id" in ans else {}
            detail = f"scanned again; {ans['detail'] or 'door already open'}"
            return self._answer(ans["reason"], lane, door=ans["door"], detail=detail, **more)
        if p.state == "opening":  # the door was closed: the pickup is being recorded
            return self._answer("already_used", lane, detail="already picked up")
        if p.door in self._busy:  # staff are re-sending or cancelling this code right now
            return self._answer("locker_down", lane, detail=f"door {p.door} in use by staff")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._opening[p.id] = answer
        self._busy.add(p.door)
        self._track(self._pick(p, lane, answer))
        return await asyncio.shield(answer)

    async def _pick(self, p: Pickup, lane: str, answer: asyncio.Future[dict[str, Any]]) -> None:
        """Record the intent, unlock, answer; then watch the door close and record the pickup
        (picked, with door_closed False if it stayed open or the box is stopping)."""
        opened = False
        try:
            began = await self.db.call(self.store.begin_pickup, p.id, lane, self.clock())
            if not began.ok or began.pickup is None:  # expired or cancelled since the lookup
                answer.set_result(self._answer(began.reason, lane, detail=began.detail))
                return
            u = await self._unlock(p.door)
            if not u.opened:
                await self.db.call(self.store.abort_pickup, p.id, self.clock(), u.why)
                if u.down:
                    self._alert(p.door, f"pickup: {u.why}", order_no=p.order_no)
                else:
                    await self._fault(p.door, u.why, p)
                reason = "locker_down" if u.down else "door_fault"
                answer.set_result(self._answer(reason, lane, door=p.door, detail=u.why))
                return
            opened = True
            rid = began.pickup.redemption_id.hex() if began.pickup.redemption_id else None
            zh, en = LINES["ok"]
            line = {"line_zh": zh.format(door=p.door), "line_en": en.format(door=p.door)}
            self.bus.publish(
                "locker", event="door_open", locker=self.name, door=p.door, lane=lane, **line
            )
            answer.set_result(self._answer("ok", lane, door=p.door, redemption_id=rid))
            closed = await self._wait_closed(p.door, self.cfg.door_close_timeout_s)
            self._opening.pop(p.id, None)  # a scan from now on reads the stored state
            await self.db.call(self.store.mark_picked, p.id, self.clock(), lane, door_closed=closed)
            if not closed:
                self._alert(p.door, "door left open after pickup", order_no=p.order_no)
            self.bus.publish(
                "locker", event="picked", locker=self.name, door=p.door, lane=lane,
                door_closed=closed, redemption_id=rid,
            )  # fmt: skip
        except Exception as err:  # the ledger failed: an opened pickup is settled at next start
            log.exception("locker %s door %d: pickup not settled", self.name, p.door)
            if not opened:
                with contextlib.suppress(Exception):
                    await self.db.call(self.store.abort_pickup, p.id, self.clock(), str(err))
            if not answer.done():
                answer.set_result(self._answer("locker_down", lane, door=p.door, detail=str(err)))
        finally:
            self._opening.pop(p.id, None)
            self._busy.discard(p.door)
            if not answer.done():  # cut short at close() before the door was seen open
                detail = "the gateway is stopping"
                answer.set_result(self._answer("locker_down", lane, door=p.door, detail=detail))

    async def _locked(self, now: float) -> bool:
        if not self._guard_loaded:
            self._locked_until, self._streak = await self.db.call(self.store.lockout, self.name)
            self._guard_loaded = True
        return self._locked_until > now

    async def _failed(self, lane: str, now: float) -> None:
        """A wrong code at any lane of this bank; too many lock the bank (staff alerted)."""
        q, lim = self._failures, self.limit
        q.append(now)
        while q and q[0] <= now - lim.window_s:
            q.popleft()
        if len(q) < lim.failures:
            return
        q.clear()
        if now - self._locked_until > lim.forget_s:
            self._streak = 0
        lockout = min(lim.lockout_s * 2**self._streak, lim.max_lockout_s)
        self._streak += 1
        self._locked_until = now + lockout
        log.warning("locker %s: wrong codes, locked for %.0f s (lane %s)", self.name, lockout, lane)
        self.bus.publish(
            "locker", event="rate_limited", alert=True, locker=self.name, lane=lane,
            lockout_s=lockout,
        )  # fmt: skip
        try:  # kept across a restart; the lockout holds in memory regardless
            await self.db.call(
                self.store.set_lockout, self.name, self._locked_until, self._streak, lane, now
            )
        except Exception:
            log.exception("locker %s: lockout not recorded", self.name)

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

    async def _unlock(self, door: int) -> Unlock:
        try:
            result = await self.slot.call(Locker.open_door, door, issued_at=time.monotonic())
        except (DeviceDown, DriverError) as err:  # no reply, garbled, stale: not the door
            return Unlock(False, str(err), down=True)
        return Unlock(result.opened, "" if result.opened else "not seen open after unlock")

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
