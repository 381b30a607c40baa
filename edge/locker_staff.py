"""A locker bank's staff side: technicians' audited door commands (open one door, open all, re-send
a code, take a parcel back) and the views (the door grid, expiry). LockerStaff is a mixin of
edge.lockers.LockerBank, used from the asyncio loop like the rest of it: every door command goes
through the bank's DeviceSlot, every write through the db Runner, and an action that moves a
door is on record (audit) before it moves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.locker import DoorState
from edge.bus import EventBus
from edge.locker_errors import LockerError, LockerUnavailable
from edge.pickup_codes import Pickup
from edge.pickups import PickupStore
from edge.runner import Runner

log = logging.getLogger(__name__)

Audit = Callable[[str, str, str, str], Awaitable[None]]  # (actor, action, target, detail)


@dataclass(frozen=True)
class Unlock:
    """What came of one unlock command."""

    opened: bool
    why: str = ""
    down: bool = False  # the board or its thread did not answer: not the door's fault


class LockerStaff:
    """The staff half of LockerBank: the attributes below are LockerBank's."""

    name: str
    doors: list[int]
    size_of: dict[int, str]
    db: Runner
    store: PickupStore
    bus: EventBus
    audit: Audit | None
    clock: Callable[[], float]
    _busy: set[int]

    if TYPE_CHECKING:

        async def _unlock(self, door: int) -> Unlock: ...
        async def _status(self) -> dict[int, DoorState]: ...
        async def _print(self, slip: dict[str, Any]) -> bool: ...
        def _refuse_if_stopping(self) -> None: ...

    # -- shared with the customers' side -------------------------------------------------------

    async def _fault(self, door: int, why: str, pickup: Pickup | None = None) -> None:
        await self.db.call(self.store.door_fault, self.name, door, why, self.clock(), pickup=pickup)
        self._alert(door, f"door fault: {why}", order_no=pickup.order_no if pickup else "")

    def _alert(self, door: int, what: str, **more: Any) -> None:
        log.warning("locker %s door %d: %s", self.name, door, what)
        self.bus.publish(
            "locker", event="alert", alert=True, locker=self.name, door=door, what=what, **more
        )

    @contextlib.contextmanager
    def _using(self, door: int) -> Iterator[None]:
        """Staff work on `door`; refused while a customer or another staff member uses it."""
        if door in self._busy:
            raise LockerError(self.name, f"door {door} is in use right now; try again shortly")
        self._busy.add(door)
        try:
            yield
        finally:
            self._busy.discard(door)

    # -- technicians ----------------------------------------------------------------------------

    async def open_door(self, door: int, actor: str, why: str) -> dict[str, Any]:
        """Open one door (a technician's audited command: on record before the door moves, and
        with the result); a successful open clears the door's fault or hold."""
        self._check_door(door)
        target = f"{self.name}:{door}"
        await self._audited(actor, "locker_open_door_start", target, why, {}, before=True)
        result = await self._tech_open(door, actor)
        await self._audited(actor, "locker_open_door", target, why, result)
        return result

    async def open_all(self, actor: str, why: str) -> dict[str, Any]:
        """Open every door, one at a time (one transaction on the wire at a time). Audited
        before the first door moves (so an interrupted run is on record) and with the result."""
        await self._audited(
            actor, "locker_open_all_start", self.name, why, {"doors": len(self.doors)}, before=True
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
        self,
        actor: str,
        action: str,
        target: str,
        why: str,
        result: dict[str, Any],
        *,
        before: bool = False,
    ) -> None:
        """An audit row. `before` a door moves, a failure to write it refuses the action."""
        detail = f"why={why}; result={result}" if result else f"why={why}"
        if self.audit is None:  # no audit log wired (tests, tools): the log line is the record
            log.info("audit actor=%s action=%s target=%s %s", actor, action, target, detail)
            return
        try:
            await self.audit(actor, action, target, detail)
        except Exception:
            if before:
                raise
            log.exception("locker %s: audit of %s failed", self.name, action)  # door moved

    def _check_door(self, door: int) -> None:
        if door not in self.size_of:
            raise LockerError(
                self.name, f"no door {door!r}; doors: {self.doors[0]}-{self.doors[-1]}"
            )

    async def _active_at(self, door: int) -> Pickup:
        p = (await self.db.call(self.store.active, self.name)).get(door)
        if p is None or p.state != "active":
            raise LockerError(self.name, f"door {door} holds no active pickup")
        return p

    async def reissue(self, door: int, actor: str) -> dict[str, Any]:
        """A re-sent code: a new code for the parcel in `door`, the old one stops working, and
        the slip is printed again with the new code."""
        self._check_door(door)
        self._refuse_if_stopping()
        with self._using(door):
            p = await self._active_at(door)
            code, new = await self.db.call(self.store.reissue, p.id, self.clock(), actor)
        slip = {"locker": self.name, "door": door, "code": code, "expires_at": new.expires_at}
        slip |= {"order_no": new.order_no, "size": new.size}
        out = slip | {"reissued": True, "printed": await self._print(dict(slip))}
        await self._audited(
            actor,
            "locker_reissue",
            f"{self.name}:{door}",
            "code re-sent",
            {"order_no": new.order_no, "pickup_id": new.id.hex()},
        )
        return out

    async def cancel(self, door: int, actor: str, why: str) -> dict[str, Any]:
        """Staff take a parcel back: on record, the door opens, then the code stops working. A
        door that does not open is a fault and the code stays valid."""
        self._check_door(door)
        self._refuse_if_stopping()
        target = f"{self.name}:{door}"
        with self._using(door):
            p = await self._active_at(door)
            intent = {"order_no": p.order_no}
            await self._audited(actor, "locker_cancel_start", target, why, intent, before=True)
            result = await self._tech_open(door, actor)
            if result["opened"]:
                await self.db.call(self.store.cancel, p.id, self.clock(), why, actor)
        result["cancelled"] = bool(result["opened"])
        await self._audited(actor, "locker_cancel", target, why, result)
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
            elif (f is not None and f.held in ("open", "deposit")) or (st is not None and st.open):
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
        state change), and their compartments held as `expired` until a technician opens them.
        A door in use right now (its pickup opening, staff at it) waits for the next round."""
        at = self.clock() if now is None else now
        busy = frozenset(self._busy)
        expired = await self.db.call(self.store.expire, at, self.name, skip=busy)
        for p in expired:
            self._alert(p.door, "pickup expired", order_no=p.order_no, pickup_id=p.id.hex())
        return [p.to_json() for p in expired]
