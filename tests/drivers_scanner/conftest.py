"""Scanner test fixtures: a serial scanner against the pty reader simulator, two ways."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from drivers.scanner import Scanner
from drivers.scanner.serial_scanner import SerialScanner
from drivers.scanner.sim import SimOptions, SimScanner, SimSerialReader


@dataclass
class Rig:
    scanner: Scanner
    present: Callable[[str | bytes], None]
    commands: Callable[[], list[tuple[int, int, bytes]]]
    unplug: Callable[[], None]


@pytest.fixture(params=["sim", "serial"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """The contract subject: the `sim` driver from config, or SerialScanner on a pty reader."""
    if request.param == "sim":
        sim = SimScanner("gate-1", "sim://?kind=serial&dedup=0.3")
        sim.open()

        def unplug_sim() -> None:
            assert sim.reader is not None
            sim.reader.close()

        yield Rig(sim, sim.present, lambda: sim.commands, unplug_sim)
        sim.close()
    else:
        reader = SimSerialReader(SimOptions())
        scanner = SerialScanner("gate-1", f"serial://{reader.path}?feedback=gm65&dedup=0.3")
        scanner.open()
        yield Rig(scanner, reader.present, lambda: list(reader.commands), reader.close)
        scanner.close()
        reader.close()
