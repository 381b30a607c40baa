"""Each sim fault knob, and what the caller of read() sees. Nothing hangs; the port is released."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.scanner.serial_scanner import SerialScanner
from drivers.scanner.sim import SimScanner


@contextmanager
def sim(query: str) -> Iterator[SimScanner]:
    scanner = SimScanner("lane-2", "sim://?kind=serial" + (f"&{query}" if query else ""))
    scanner.open()
    try:
        yield scanner
    finally:
        scanner.close()


def serial_of(scanner: SimScanner) -> SerialScanner:
    assert isinstance(scanner.inner, SerialScanner)
    return scanner.inner


def test_split_bytes_with_short_delays_are_still_one_scan() -> None:
    with sim("split=2&delay=0.02") as s:
        s.present("ABCDEFGH")
        scan = s.read(3.0)
        assert scan is not None and scan.text == "ABCDEFGH"
        assert s.read(0.2) is None


def test_bytes_delayed_past_the_gap_are_dropped_then_next_scan_reads() -> None:
    with sim("split=3&delay=0.25&gap=0.1") as s:
        s.present("ABCDEF")  # "ABC" then, 250 ms later, "DEF\r": the first part times out
        assert s.read(1.0) is None
        assert serial_of(s)._lines.dropped >= 1
    with sim("split=3&delay=0.25&gap=0.5") as s:  # a technician raises gap for a slow link
        s.present("ABCDEF")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "ABCDEF"


def test_garbage_line_is_dropped_and_the_scan_reads() -> None:
    with sim("garbage=1") as s:
        s.present("GOOD-1")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "GOOD-1"
        assert s.read(0.2) is None
        assert serial_of(s).noise == 1


def test_overlong_line_is_discarded_and_the_next_scan_reads() -> None:
    with sim("overlong=1&max_len=64") as s:
        s.present("GOOD-2")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "GOOD-2"
        s.present("GOOD-3")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "GOOD-3"
        assert serial_of(s)._lines.dropped == 2


def test_missing_terminator_drops_the_partial_when_a_suffix_is_expected() -> None:
    with sim("terminator=none&gap=0.1") as s:
        s.present("NO-END")
        assert s.read(0.6) is None
        assert serial_of(s)._lines.dropped == 1


def test_missing_terminator_is_the_scan_when_configured_with_suffix_none() -> None:
    with sim("terminator=none&suffix=none&gap=0.1") as s:
        start = time.monotonic()
        s.present("NO-END")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "NO-END"
        assert time.monotonic() - start >= 0.1  # ended by the gap


def test_crlf_terminator_gives_one_scan() -> None:
    with sim("terminator=crlf") as s:
        s.present("CRLF-1")
        s.present("CRLF-2")
        texts = [scan.text for scan in (s.read(2.0), s.read(2.0)) if scan is not None]
        assert texts == ["CRLF-1", "CRLF-2"]
        assert s.read(0.2) is None


def test_tab_terminator() -> None:
    with sim("terminator=tab&suffix=tab") as s:
        s.present("TAB-1")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "TAB-1"


def test_duplicate_reads_suppressed_within_window_accepted_after() -> None:
    with sim("dup=3&dedup=0.4") as s:
        s.present("TWICE")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "TWICE"
        assert s.read(0.4) is None  # the three re-reads, 50 ms apart, are swallowed
        assert s.duplicates == 3
        time.sleep(0.45)
        s.present("TWICE")
        again = s.read(2.0)
        assert again is not None and again.text == "TWICE"


def test_local_echo_of_feedback_commands_never_becomes_a_scan() -> None:
    with sim("echo=1") as s:
        s.feedback(True)
        s.feedback(False)
        s.present("AFTER-ECHO")
        scan = s.read(2.0)
        assert scan is not None and scan.text == "AFTER-ECHO"
        deadline = time.monotonic() + 2
        while len(s.commands) < 7 and time.monotonic() < deadline:
            assert s.read(0.1) is None
        frames = serial_of(s).frames
        assert any(f.startswith(b"\x7e\x00") for f in frames)  # echoes, taken out
        assert b"\x02\x00\x00\x01\x00\x33\x31" in frames  # the reader's ACKs, taken out


def test_aim_prefix_becomes_symbology() -> None:
    with sim("aim=1") as s:
        s.present("T1:QR")
        scan = s.read(2.0)
        assert scan is not None
        assert (scan.text, scan.symbology) == ("T1:QR", "QRCODE")


def test_port_is_released_on_close() -> None:
    with sim("") as s:
        inner = serial_of(s)
        reader = s.reader
        assert reader is not None
        s.present("X")
        assert s.read(2.0) is not None
    assert inner._port is None and s.reader is None
    with pytest.raises(OSError):
        os.fstat(reader.path_fd)  # the simulator's pty is closed too
