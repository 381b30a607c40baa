"""Actuator commands carry a time to live: a stale unlock or gate open is dropped, never sent."""

from __future__ import annotations

import time

import pytest

from drivers.errors import StaleCommand
from drivers.gate.sim import SimGate
from drivers.locker.sim import SimLocker


def test_stale_unlock_is_dropped_and_a_fresh_one_goes_out() -> None:
    with SimLocker("lk", "sim://?dialect=8a&doors=8") as locker:
        with pytest.raises(StaleCommand, match="unlock door 2"):
            locker.open_door(2, issued_at=time.monotonic() - 11)
        assert locker.board.unlocks() == []
        result = locker.open_door(2, issued_at=time.monotonic() - 1)
        assert result.opened and len(locker.board.unlocks()) == 1


def test_stale_gate_open_is_dropped_and_a_fresh_one_pulses() -> None:
    with SimGate("gt", "sim://?pass_wired=false") as gate:
        assert gate.board is not None
        with pytest.raises(StaleCommand, match="open in"):
            gate.open("in", issued_at=time.monotonic() - 6)
        assert gate.board.pulses == []
        passage = gate.open("in", issued_at=time.monotonic(), ttl=2.0)
        assert passage.passed == 1 and len(gate.board.pulses) == 1
