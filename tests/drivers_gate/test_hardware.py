"""Real hardware, opt-in only: EDGE_HW_GATE_URL=<driver>:<url>, e.g.
`modbus-relay:/dev/serial/by-id/usb-1a86_...?slave=1&fire_input=3`. The self-test reads inputs
only; EDGE_HW_GATE_PULSE=1 also unlocks "in" once (someone must be at the gate to walk through)."""

from __future__ import annotations

import os

import pytest

from drivers.gate import Gate
from drivers.registry import load


def hardware_gate() -> Gate:
    spec = os.environ.get("EDGE_HW_GATE_URL")
    if not spec:
        pytest.skip("set EDGE_HW_GATE_URL=<driver>:<url> to test a real gate")
    driver, _, url = spec.partition(":")
    cls = load("hw-gate", "gate", driver)
    gate = cls("hw-gate", url)
    assert isinstance(gate, Gate)
    return gate


def test_hardware_self_test() -> None:
    with hardware_gate() as gate:
        result = gate.self_test()
        assert result.ok, f"{result.detail}; {result.hint}"


def test_hardware_pulse() -> None:
    gate = hardware_gate()
    if os.environ.get("EDGE_HW_GATE_PULSE") != "1":
        pytest.skip("set EDGE_HW_GATE_PULSE=1 to unlock the real gate once")
    with gate:
        passage = gate.open("in", persons=1)
        assert passage.passed == 1 or passage.timed_out
