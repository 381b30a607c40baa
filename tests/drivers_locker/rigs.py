"""Lockers wired to simulated boards over a pty, for the contract and fault suites."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from drivers.locker import Locker
from drivers.locker.board8a import Board8A
from drivers.locker.kerong import KerongCU16, KerongCU48
from drivers.locker.sim import SimBoard, SimBoard8A, SimKerongCU16, SimKerongCU48, SimLocker

DOORS = 8
FAST = "timeout=0.3&confirm_timeout=0.25&confirm_interval=0.05"


@dataclass
class Rig:
    locker: Locker
    board: SimBoard
    vector: tuple[int, bytes]  # a door and its unlock frame as written in a cited source
    reports_items: bool


# "cu48" and "cu48-b" let KerongCU48 detect the board's firmware dialect at open().
KINDS = ("sim-8a", "sim-cu16", "sim-cu48", "board8a", "cu16", "cu48", "cu48-b")


def _vector(board: SimBoard) -> tuple[int, bytes]:
    if isinstance(board, SimBoard8A):
        return 1, bytes.fromhex("8A 01 01 11 9B")  # PROTOCOLS.md 1.3, unlock board 1 lock 1
    if isinstance(board, SimKerongCU48):
        if board.dialect.name == "a":
            return 5, bytes.fromhex("02 00 04 51 03 5A")  # PROTOCOLS.md 1.2 A, "index 4"
        # PROTOCOLS.md 1.2 B gives no open vector; this is the captured "cell five" open in its
        # cited source, AshurkovAV/KerongConsole "Коды для контролера запрос ответ.txt".
        return 5, bytes.fromhex("02 00 04 61 03 6A")
    return 1, bytes.fromhex("02 00 31 03 36")  # PROTOCOLS.md 1.1, unlock board0 lock1


def _board(kind: str) -> tuple[Locker, SimBoard]:
    query = f"doors={DOORS}&{FAST}"
    if kind == "board8a":
        b8 = SimBoard8A(doors=DOORS)
        return Board8A("locker-1", f"{b8.path}?{query}"), b8
    if kind == "cu16":
        b16 = SimKerongCU16(doors=DOORS)
        return KerongCU16("locker-1", f"serial://{b16.path}?{query}"), b16
    b48 = SimKerongCU48(doors=DOORS, firmware="b" if kind == "cu48-b" else "a")
    return KerongCU48("locker-1", f"serial://{b48.path}?{query}"), b48


@contextmanager
def rig(kind: str, extra: str = "") -> Iterator[Rig]:
    """An opened locker of `kind` on a simulated board, its request log cleared; closes both."""
    board: SimBoard | None = None
    locker: Locker
    if kind.startswith("sim-"):
        dialect = kind.removeprefix("sim-")
        query = f"doors={DOORS}&{FAST}" + (f"&{extra}" if extra else "")
        locker = SimLocker("locker-1", f"sim://?dialect={dialect}&{query}")
    else:
        assert not extra, "extra knobs are for the sim locker"
        locker, board = _board(kind)
    try:
        locker.open()
        if isinstance(locker, SimLocker):
            board = locker.board
        assert board is not None
        board.frames.clear()  # CU48 detection queries at open() are tested in test_cu48.py
        yield Rig(locker, board, _vector(board), reports_items=_reports_items(board))
    finally:
        locker.close()
        if board is not None:
            board.close()


def _reports_items(board: SimBoard) -> bool:
    if isinstance(board, SimKerongCU48):
        return board.dialect.has_sensors
    return isinstance(board, SimKerongCU16)
