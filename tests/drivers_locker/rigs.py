"""Lockers wired to simulated boards over a pty, for the contract and fault suites."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from drivers.locker import Locker
from drivers.locker.board8a import Board8A
from drivers.locker.kerong import KerongCU16
from drivers.locker.sim import SimBoard, SimBoard8A, SimKerongCU16, SimLocker

DOORS = 8
FAST = "timeout=0.3&confirm_timeout=0.25&confirm_interval=0.05"


@dataclass
class Rig:
    locker: Locker
    board: SimBoard
    door1_unlock: bytes  # the unlock frame for door 1, from PROTOCOLS.md 1.1 / 1.3
    reports_items: bool


KINDS = ("sim-8a", "sim-cu16", "board8a", "cu16")


@contextmanager
def rig(kind: str, extra: str = "") -> Iterator[Rig]:
    """An opened locker of `kind` on a simulated board; closes both."""
    query = f"doors={DOORS}&{FAST}" + (f"&{extra}" if extra else "")
    board: SimBoard | None = None
    locker: Locker
    if kind.startswith("sim-"):
        dialect = kind.removeprefix("sim-")
        locker = SimLocker("locker-1", f"sim://?dialect={dialect}&{query}")
    elif kind == "board8a":
        board = SimBoard8A(doors=DOORS)
        locker = Board8A("locker-1", f"{board.path}?{query}")
    else:
        board = SimKerongCU16(doors=DOORS)
        locker = KerongCU16("locker-1", f"serial://{board.path}?{query}")
    try:
        locker.open()
        if isinstance(locker, SimLocker):
            board = locker.board
        assert board is not None
        dialect_8a = isinstance(board, SimBoard8A)
        unlock = bytes.fromhex("8A 01 01 11 9B" if dialect_8a else "02 00 31 03 36")
        yield Rig(locker, board, unlock, reports_items=not dialect_8a)
    finally:
        locker.close()
        if board is not None:
            board.close()
