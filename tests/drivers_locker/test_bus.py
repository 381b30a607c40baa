"""Several boards on one RS485 bus: one port, one transaction on the wire at a time."""

from __future__ import annotations

import threading

import pytest

from drivers.errors import DeviceInitError, DeviceTimeout
from drivers.locker.board8a import Board8A
from drivers.locker.sim import SimBoard8A

FAST = "doors=8&timeout=0.2&confirm_timeout=0.2"


def test_boards_on_one_bus_share_the_port_and_never_interleave() -> None:
    sim = SimBoard8A(doors=8)
    a = Board8A("lockers-a", f"{sim.path}?{FAST}")
    b = Board8A("lockers-b", f"{sim.path}?{FAST}")
    errors: list[BaseException] = []

    def hammer(locker: Board8A, door: int) -> None:
        try:
            for _ in range(150):
                locker.door_status(door)
                locker.all_status()
        except BaseException as err:
            errors.append(err)

    try:
        a.open()
        b.open()
        assert a.port is b.port
        threads = [threading.Thread(target=hammer, args=(x, d)) for x, d in ((a, 1), (b, 2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors  # interleaved replies would fail to decode or time out
        a.close()
        assert b.door_status(2).closed  # still usable: the port stays open for the last board
    finally:
        a.close()
        b.close()
        sim.close()


def test_a_board_at_another_address_on_the_bus_times_out_alone() -> None:
    sim = SimBoard8A(doors=8)
    here = Board8A("lockers-1", f"{sim.path}?{FAST}")
    absent = Board8A("lockers-2", f"{sim.path}?board=2&{FAST}")
    try:
        here.open()
        absent.open()
        with pytest.raises(DeviceTimeout):
            absent.all_status()
        assert here.open_door(3).opened
    finally:
        here.close()
        absent.close()
        sim.close()


def test_boards_on_one_bus_must_agree_on_the_baud_rate() -> None:
    sim = SimBoard8A(doors=8)
    a = Board8A("lockers-a", f"{sim.path}?{FAST}")
    b = Board8A("lockers-b", f"{sim.path}?baudrate=19200&{FAST}")
    try:
        a.open()
        with pytest.raises(DeviceInitError, match="already open") as info:
            b.open()
        assert "baudrate" in info.value.hint
    finally:
        a.close()
        b.close()
        sim.close()
