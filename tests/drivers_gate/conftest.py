"""Gate lanes for the contract suite: the sim driver, and each protocol driver against its board
simulator on a pty (the real driver speaks real bytes; no mocks)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from drivers.gate import Gate
from drivers.gate.lcus import LcusGate
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.gate.sim import LcusBoard, ModbusRelayBoard, SimGate, Turnstile

FAST = "window_s=1&pulse_ms=100&poll_ms=10"  # short enough that the whole suite stays quick


@dataclass
class Lane:
    kind: str
    gate: Gate
    board: ModbusRelayBoard | LcusBoard
    wired: bool  # PASS and fire inputs can be read

    @property
    def turnstile(self) -> Turnstile:
        return self.board.turnstile


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `cond` until true or `timeout`; the board simulator runs on its own thread."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def make_lane(kind: str, extra: str = "") -> tuple[Gate, ModbusRelayBoard | LcusBoard | None]:
    """An unopened gate of `kind` and, for the protocol drivers, its running board."""
    params = f"{FAST}{'&' + extra if extra else ''}"
    if kind == "sim":
        return SimGate("lane-sim", f"sim://?fire_input=3&pass_delay_ms=100&{params}"), None
    if kind == "modbus-relay":
        board = ModbusRelayBoard(Turnstile(fire_input=3, pass_delay_ms=100))
        try:
            return ModbusRelayGate("lane-modbus", f"{board.path}?fire_input=3&{params}"), board
        except BaseException:
            board.close()
            raise
    lboard = LcusBoard(Turnstile(pass_delay_ms=100), channels=4)
    try:
        return LcusGate("lane-lcus", f"{lboard.path}?pass_wired=false&{params}"), lboard
    except BaseException:
        lboard.close()
        raise


@pytest.fixture(params=["sim", "modbus-relay", "lcus"])
def lane(request: pytest.FixtureRequest) -> Iterator[Lane]:
    kind: str = request.param
    gate, board = make_lane(kind)
    try:
        gate.open()
        if isinstance(gate, SimGate):
            assert gate.board is not None
            board = gate.board
        assert board is not None
        yield Lane(kind, gate, board, wired=kind != "lcus")
    finally:
        gate.close()
        if board is not None:
            board.close()
