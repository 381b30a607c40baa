"""A USB-serial adapter unplugged while a driver holds the port: every driver reports a
DriverError (or a failed self-test), never a raw termios/OS error, and never hangs.

Closing the pty's master hangs the slave up exactly as the kernel does for /dev/ttyUSB0.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from drivers.base import Device
from drivers.errors import DriverError
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.locker.board8a import Board8A
from drivers.printer.escpos import EscposPrinter
from drivers.pty import PtyPair
from drivers.scanner.serial_scanner import SerialScanner

MAKERS: dict[str, Callable[[str], Device]] = {
    "locker": lambda p: Board8A("lk", f"serial://{p}?timeout=0.2"),
    "gate": lambda p: ModbusRelayGate("gt", f"serial://{p}?timeout=0.2"),
    "printer": lambda p: EscposPrinter("pr", f"serial://{p}?timeout=0.2"),
    "scanner": lambda p: SerialScanner("sc", f"serial://{p}"),
}
OPERATIONS: dict[str, Callable[[Any], object]] = {
    "locker": lambda d: d.open_door(1),
    "gate": lambda d: d.open("in"),
    "printer": lambda d: d.status(),
    "scanner": lambda d: d.read(0.2),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_unplugged_adapter_gives_driver_errors(kind: str) -> None:
    pty = PtyPair()
    device = MAKERS[kind](pty.path)
    device.open()
    os.close(pty.master)  # unplug
    try:
        with pytest.raises(DriverError):
            OPERATIONS[kind](device)
        if kind != "scanner":  # a scanner's self-test listens; its read above is the check
            result = device.self_test()
            assert not result.ok and result.hint
    finally:
        device.close()
        pty.close()
