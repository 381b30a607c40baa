"""The Gate contract (drivers/gate/__init__.py), parametrised over every driver."""

from __future__ import annotations

import itertools
import time

import pytest

from drivers.errors import DeviceConfigError
from drivers.gate import GateInputs, Passage
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.gate.sim import SimGate

from .conftest import Lane, make_lane, wait_for


def test_one_person_passes(lane: Lane) -> None:
    assert lane.gate.open("in") == Passage(passed=1, requested=1, timed_out=False, fire=False)
    assert wait_for(lambda: len(lane.board.pulses) == 1)
    pulse = lane.board.pulses[0]
    assert pulse.channel == 1
    assert pulse.ms >= 100  # controllers ignore pulses under 100 ms (PROTOCOLS.md 2.1)
    assert [d for d, _ in lane.turnstile.passages] == ["in"]


def test_out_uses_the_b_relay_and_aliases_work(lane: Lane) -> None:
    assert lane.gate.open("B").passed == 1
    assert wait_for(lambda: len(lane.board.pulses) == 1)
    assert lane.board.pulses[0].channel == 2
    assert [d for d, _ in lane.turnstile.passages] == ["out"]


def test_group_gets_one_pulse_per_person(lane: Lane) -> None:
    passage = lane.gate.open("in", persons=3)
    assert passage == Passage(3, 3, timed_out=False, fire=False)
    assert wait_for(lambda: len(lane.board.pulses) == 3)
    starts = [p.at for p in lane.board.pulses]
    # Each unlock must be a separate contact closure, not one long pulse.
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(starts))


def test_open_waits_for_pass_where_wired(lane: Lane) -> None:
    start = time.monotonic()
    lane.gate.open("in")
    took = time.monotonic() - start
    if lane.wired:
        assert took >= 0.1  # the simulated person needs 100 ms to walk through
    else:
        assert took < 0.5  # no PASS: the open itself is the passage


def test_bad_arguments_are_refused_before_anything_moves(lane: Lane) -> None:
    for kwargs in (
        {"direction": "up"},
        {"direction": "in", "persons": 0},
        {"direction": "in", "persons": 101},
        {"direction": "in", "window_s": 0},
    ):
        with pytest.raises(ValueError):
            lane.gate.open(**kwargs)
    time.sleep(0.05)
    assert lane.board.pulses == []


def test_inputs_and_fire(lane: Lane) -> None:
    inputs = lane.gate.inputs()
    assert isinstance(inputs, GateInputs)
    assert lane.gate.fire_active() is False
    if lane.wired:
        assert inputs == GateInputs(pass_a=False, pass_b=False, fire=False)
        lane.turnstile.fire = True
        assert lane.gate.fire_active() is True
        assert lane.gate.inputs().fire is True
    else:
        assert inputs == GateInputs(None, None, None)  # LCUS has no inputs: nothing is invented


def test_self_test_moves_nothing(lane: Lane) -> None:
    result = lane.gate.self_test()
    assert result.ok, result
    assert result.hint == ""
    time.sleep(0.05)
    assert lane.board.pulses == []
    assert lane.turnstile.passages == []


def test_close_is_idempotent_and_reopen_works(lane: Lane) -> None:
    lane.gate.close()
    lane.gate.close()
    if lane.kind != "sim":  # the sim's board goes with it; the others stay on their pty
        lane.gate.open()
        assert lane.gate.open("in").passed == 1


@pytest.mark.parametrize("kind", ["sim", "modbus-relay", "lcus"])
def test_unknown_parameter_is_refused_at_construction(kind: str) -> None:
    with pytest.raises(DeviceConfigError) as info:
        gate, board = make_lane(kind, "relay=3")
        gate.close()
        if board is not None:
            board.close()
    assert info.value.param == "relay" and "lane-" in str(info.value)


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("sim://?relay_in=2&relay_out=2", "relay_out"),
        ("sim://?pulse_ms=50", "pulse_ms"),
        ("sim://?pulse_ms=250", "pulse_ms"),  # the Modbus flash counts 100 ms steps
        ("sim://?window_s=0", "window_s"),
        ("sim://?slave=300", "slave"),
        ("sim://?fire=true", "fire"),  # a fire alarm needs a fire input to show on
        ("sim://?board=lcus", "pass_wired"),  # LCUS has no PASS input
        ("sim://?board=lcus&pass_wired=false&fire_input=3", "fire_input"),
        ("sim://?board=plc", "board"),
        ("sim://?fire_level=2", "fire_level"),
    ],
)
def test_bad_configuration_names_the_parameter(url: str, param: str) -> None:
    with pytest.raises(DeviceConfigError) as info:
        SimGate("lane-1", url)
    assert info.value.param == param


def test_registry_names_the_gate_drivers() -> None:
    from drivers.registry import load

    assert load("g", "gate", "sim") is SimGate
    assert load("g", "gate", "modbus-relay") is ModbusRelayGate
    assert load("g", "gate", "lcus").__name__ == "LcusGate"
