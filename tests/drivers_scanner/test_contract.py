"""The scanner contract (drivers/scanner/__init__.py), for the sim driver and SerialScanner."""

from __future__ import annotations

import time

import pytest

from drivers.errors import DeviceOperationError
from drivers.scanner import gm65

from .conftest import Rig

OUT1_HIGH = (gm65.WRITE, gm65.ZONE_OUT1, b"\x01")
OUT1_LOW = (gm65.WRITE, gm65.ZONE_OUT1, b"\x00")


def test_scan_keeps_bytes_text_and_scanner_name(rig: Rig) -> None:
    before = time.time()
    rig.present("T1:ABCDEF234567")
    scan = rig.scanner.read(2.0)
    assert scan is not None
    assert (scan.raw, scan.text, scan.scanner) == (b"T1:ABCDEF234567", "T1:ABCDEF234567", "gate-1")
    assert scan.symbology is None  # a plain serial reader does not say
    assert before <= scan.timestamp <= time.time()


def test_gbk_payload_is_decoded_and_raw_bytes_kept(rig: Rig) -> None:
    payload = "门票 成人".encode("gbk")
    rig.present(payload)
    scan = rig.scanner.read(2.0)
    assert scan is not None
    assert scan.raw == payload and scan.text == "门票 成人"


def test_utf8_payload(rig: Rig) -> None:
    rig.present("¥（成人）")
    scan = rig.scanner.read(2.0)
    assert scan is not None and scan.text == "¥（成人）"


def test_idle_read_returns_none_after_timeout(rig: Rig) -> None:
    start = time.monotonic()
    assert rig.scanner.read(0.2) is None
    assert 0.15 <= time.monotonic() - start < 1.0


def test_duplicates_suppressed_within_window_then_accepted(rig: Rig) -> None:
    rig.present("DUP-1")
    assert rig.scanner.read(2.0) is not None
    rig.present("DUP-1")
    assert rig.scanner.read(0.15) is None  # swallowed
    rig.present("OTHER")  # a different code is never a duplicate
    other = rig.scanner.read(2.0)
    assert other is not None and other.text == "OTHER"
    time.sleep(0.35)  # the 0.3 s window passes with no sighting of DUP-1
    rig.present("DUP-1")
    again = rig.scanner.read(2.0)
    assert again is not None and again.text == "DUP-1"
    assert rig.scanner.duplicates == 1


def test_good_feedback_is_one_out1_pulse(rig: Rig) -> None:
    rig.scanner.feedback(True)
    assert rig.scanner.read(0.4) is None  # the pulse ends while the worker reads
    assert rig.commands() == [OUT1_HIGH, OUT1_LOW]


def test_bad_feedback_is_three_pulses_and_scans_still_read(rig: Rig) -> None:
    rig.scanner.feedback(False)
    rig.present("AFTER-BAD")
    scan = rig.scanner.read(2.0)
    assert scan is not None and scan.text == "AFTER-BAD"  # the reader's ACKs are not scans
    deadline = time.monotonic() + 3
    while len(rig.commands()) < 6 and time.monotonic() < deadline:
        rig.scanner.read(0.1)
    assert rig.commands() == [OUT1_HIGH, OUT1_LOW] * 3


def test_close_mid_pulse_leaves_out1_low(rig: Rig) -> None:
    rig.scanner.feedback(True)
    rig.scanner.close()
    time.sleep(0.1)
    assert rig.commands()[-1] == OUT1_LOW


def test_display_hook_gets_the_line_and_a_broken_one_is_contained(rig: Rig) -> None:
    shown: list[str] = []
    rig.scanner.display_hook = shown.append
    rig.scanner.feedback(True, "欢迎 Welcome")
    assert shown == ["欢迎 Welcome"]

    def broken(line: str) -> None:
        raise RuntimeError("display unplugged")

    rig.scanner.display_hook = broken
    rig.scanner.feedback(False, "请重试 Try again")  # must not raise


def test_self_test_without_a_scan_is_ok_with_a_hint(rig: Rig) -> None:
    result = rig.scanner.self_test(listen=0.2)
    assert result.ok and "no scan" in result.detail and result.hint


def test_self_test_reports_a_scan(rig: Rig) -> None:
    rig.present("HELLO")
    result = rig.scanner.self_test(listen=2.0)
    assert result.ok and "HELLO" in result.detail


def test_close_is_idempotent_and_read_after_close_raises(rig: Rig) -> None:
    rig.scanner.close()
    rig.scanner.close()
    with pytest.raises(DeviceOperationError):
        rig.scanner.read(0.1)
    with pytest.raises(DeviceOperationError):
        rig.scanner.feedback(True)


def test_negative_timeout_is_refused(rig: Rig) -> None:
    with pytest.raises(ValueError):
        rig.scanner.read(-1)


def test_unplugged_reader_raises_operation_error_not_hang(rig: Rig) -> None:
    rig.unplug()
    start = time.monotonic()
    with pytest.raises(DeviceOperationError):
        rig.scanner.read(2.0)
    assert time.monotonic() - start < 2.5
