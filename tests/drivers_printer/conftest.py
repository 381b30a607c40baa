"""Printers under test: the sim driver and the real EscposPrinter against the simulated printer
over TCP, a pty opened as a serial port, and the same pty opened as a device file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.printer import Printer
from drivers.printer.escpos import EscposPrinter
from drivers.printer.sim import SimPrinter
from drivers.printer.simserver import SimPrinterServer
from drivers.printer.simstate import EscposMachine, SimKnobs

KINDS = ("sim-tcp", "sim-pty", "escpos-tcp", "escpos-serial", "escpos-file")


@dataclass
class Rig:
    printer: Printer
    server: SimPrinterServer

    @property
    def machine(self) -> EscposMachine:
        return self.server.machine


Make = Callable[..., Rig]


def _query(opts: dict[str, Any]) -> str:
    return "&".join(f"{k}={v}" for k, v in opts.items())


@pytest.fixture
def make_printer() -> Iterator[Make]:
    """make_printer(kind, knobs..., printer options...) -> an opened Rig; all closed afterwards."""
    made: list[tuple[Printer, SimPrinterServer | None]] = []

    def make(kind: str, **params: Any) -> Rig:
        knob_names = set(SimKnobs.__dataclass_fields__)
        knobs = {k: v for k, v in params.items() if k in knob_names}
        opts: dict[str, Any] = {"profile": "xp-80", "timeout": 1.0} | {
            k: v for k, v in params.items() if k not in knob_names
        }
        if kind.startswith("sim-"):
            transport = kind.removeprefix("sim-")
            p: Printer = SimPrinter(
                "kitchen", f"sim://?transport={transport}&" + _query(knobs | opts)
            )
            made.append((p, None))
            p.open()
            assert isinstance(p, SimPrinter) and p.server is not None
            return Rig(p, p.server)
        server = SimPrinterServer(SimKnobs(**knobs), opts.get("encoding", "gb18030"))
        made.append((EscposPrinter("x", "tcp://127.0.0.1:1"), server))
        if kind == "escpos-tcp":
            base = server.start_tcp()
        else:
            path = server.start_pty()
            base = f"serial://{path}" if kind == "escpos-serial" else f"file://{path}"
        p = EscposPrinter("kitchen", f"{base}?{_query(opts)}")
        made.append((p, None))
        p.open()
        return Rig(p, server)

    yield make
    for printer, server in reversed(made):
        printer.close()
        if server is not None:
            server.close()


def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
