"""Every simulator fault knob, and what the caller of the gate sees (nothing hangs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, urlencode

import pytest

from drivers.errors import DeviceInitError, DeviceOperationError, DeviceTimeout
from drivers.gate import Passage
from drivers.gate import modbus as mb
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.gate.sim import ModbusRelayBoard, SimGate, Turnstile

from .conftest import FAST, wait_for


@contextmanager
def sim(params: str) -> Iterator[SimGate]:
    """A sim lane with FAST timings; `params` override them."""
    merged = dict(parse_qsl(f"fire_input=3&pass_delay_ms=100&{FAST}")) | dict(parse_qsl(params))
    gate = SimGate("lane-1", f"sim://?{urlencode(merged)}")
    try:
        gate.open()
        yield gate
    finally:
        gate.close()


def pulse_frames(gate: SimGate) -> list[bytes]:
    """FC05 flash (unlock pulse) frames the board read off the wire; not the start-up OFFs."""
    assert gate.board is not None
    return [
        f for _, f in gate.board.frames if f[1] == mb.WRITE_COIL and f[2] << 8 == mb.FLASH_ON_BASE
    ]


def test_no_reply_times_out_with_a_hint_and_releases_the_port() -> None:
    board = ModbusRelayBoard(Turnstile(pass_delay_ms=100), no_reply=True)
    try:
        gate = ModbusRelayGate("lane-1", f"{board.path}?{FAST}&timeout=0.2")
        with gate:
            start = time.monotonic()
            with pytest.raises(DeviceTimeout) as info:
                gate.open("in")
            assert time.monotonic() - start < 1.0
            assert "slave address" in str(info.value) and "波特率" in str(info.value)
            result = gate.self_test()
            assert not result.ok and "slave address" in result.hint and "地址" in result.hint
            board.no_reply = False  # the transaction lock was released: the next call works
            assert gate.open("in").passed == 1
        assert gate.self_test().hint.startswith("the device is not open")
        # close() released the port: another driver opens the same path and works.
        with ModbusRelayGate("lane-2", f"{board.path}?{FAST}") as again:
            assert again.self_test().ok
    finally:
        board.close()


def test_no_reply_from_config() -> None:
    with sim("no_reply=true&timeout=0.1") as gate:
        with pytest.raises(DeviceTimeout):
            gate.inputs()
        assert not gate.self_test().ok


def test_bad_crc_is_an_operation_error() -> None:
    with sim("bad_crc=true") as gate:
        with pytest.raises(DeviceOperationError, match="bad CRC"):
            gate.open("in")
        result = gate.self_test()
        assert not result.ok and "baud rate" in result.hint


# Replies slower than the PASS pulse would let polling miss it: keep PASS longer than a poll cycle.
@pytest.mark.parametrize("knob", ["split=true", "delay_ms=50", "split=true&delay_ms=50"])
def test_split_and_delayed_replies_still_work(knob: str) -> None:
    with sim(knob) as gate:
        gate.turnstile.pass_pulse_ms = 200
        assert gate.open("in", persons=2) == Passage(2, 2, timed_out=False, fire=False)
        assert gate.self_test().ok


def test_reply_later_than_the_timeout_is_a_timeout() -> None:
    with sim("delay_ms=300&timeout=0.1") as gate, pytest.raises(DeviceTimeout):
        gate.inputs()


def test_local_echo_needs_local_echo_option() -> None:
    with sim("echo=true&local_echo=true") as gate:
        assert gate.open("in").passed == 1
    with sim("echo=true") as gate:
        with pytest.raises(DeviceOperationError):
            gate.open("in")
        assert "local_echo=true" in gate.self_test().hint


def test_late_pass_counts_nothing_and_times_out() -> None:
    with sim("pass_delay_ms=1200&window_s=0.4") as gate:
        start = time.monotonic()
        passage = gate.open("in")
        took = time.monotonic() - start
    assert passage == Passage(passed=0, requested=1, timed_out=True, fire=False)
    assert 0.4 <= took < 0.8


def test_missing_pass_times_out_though_the_person_walked() -> None:
    with sim("pass_signal=false&window_s=0.4") as gate:
        assert gate.open("out") == Passage(0, 1, timed_out=True, fire=False)
        assert [d for d, _ in gate.turnstile.passages] == ["out"]


def test_partial_group() -> None:
    with sim("queue=3") as gate:
        assert gate.open("in", persons=4, window_s=0.4) == Passage(3, 4, timed_out=True, fire=False)
        assert len(pulse_frames(gate)) == 4  # the fourth unlock was sent; nobody used it


def test_fire_input_sends_no_pulse() -> None:
    with sim("fire=true") as gate:
        assert gate.fire_active()
        assert gate.open("in", persons=2) == Passage(0, 2, timed_out=False, fire=True)
        time.sleep(0.05)
        assert pulse_frames(gate) == []
        result = gate.self_test()
        assert result.ok and "fire ALARM" in result.detail


def test_fire_during_the_wait_returns_at_once() -> None:
    with sim("pass_delay_ms=5000&window_s=5") as gate:
        alarm = threading.Timer(0.2, lambda: setattr(gate.turnstile, "fire", True))
        alarm.start()
        try:
            start = time.monotonic()
            passage = gate.open("in", persons=2)
            took = time.monotonic() - start
        finally:
            alarm.cancel()
            alarm.join(timeout=1)
    assert passage == Passage(0, 2, timed_out=False, fire=True)
    assert took < 1.0


def test_fire_level_one_wiring() -> None:
    with sim("fire_level=1") as gate:
        assert not gate.fire_active()
        gate.turnstile.fire = True
        assert gate.fire_active()


def test_lane_without_pass_counts_the_open() -> None:
    with sim("pass_wired=false&pass_signal=false") as gate:
        assert gate.open("in", persons=2) == Passage(2, 2, timed_out=False, fire=False)
        assert gate.inputs().pass_a is None
        assert wait_for(lambda: len(pulse_frames(gate)) == 2)


def test_lcus_no_reply_cannot_be_seen_by_open_but_self_test_says_so() -> None:
    with sim("board=lcus&pass_wired=false&no_reply=true&fire_input=none") as gate:
        # The LCUS protocol has no acknowledgement: a deaf board looks like a good pulse.
        assert gate.open("in").passed == 1
        result = gate.self_test()
        assert not result.ok and "USB" in result.hint
        assert gate.turnstile.passages == []


def test_input_beyond_the_board_is_a_refusal_with_a_hint() -> None:
    board = ModbusRelayBoard(Turnstile(), channels=8)
    try:
        with ModbusRelayGate("lane-1", f"{board.path}?{FAST}&fire_input=12") as gate:
            with pytest.raises(DeviceOperationError, match="illegal data address"):
                gate.fire_active()
            assert "channel" in gate.self_test().hint
    finally:
        board.close()


def test_missing_port_is_an_init_error_with_a_hint() -> None:
    gate = ModbusRelayGate("lane-1", "/dev/serial/by-id/no-such-board")
    with pytest.raises(DeviceInitError) as info:
        gate.open()
    assert "by-id" in info.value.hint
    gate.close()
