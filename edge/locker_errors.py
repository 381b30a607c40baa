"""What a locker bank's requests raise (edge/lockers.py, edge/locker_staff.py); the kiosk's
locker API turns each into its answer."""

from __future__ import annotations

from collections.abc import Iterable

from edge.errors import EdgeError


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
