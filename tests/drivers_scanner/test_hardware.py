"""Real readers, opt-in: EDGE_HW_SCANNER_URL=serial:///dev/serial/by-id/...?feedback=gm65
(the driver follows the scheme: serial, evdev, camera). A person scans any code when asked."""

from __future__ import annotations

import os

import pytest

from drivers.registry import load
from drivers.scanner import Scanner

URL = os.environ.get("EDGE_HW_SCANNER_URL", "")
DRIVERS = {"serial": "serial", "socket": "serial", "evdev": "evdev", "camera": "camera"}


@pytest.mark.skipif(not URL, reason="set EDGE_HW_SCANNER_URL to test a real scanner")
def test_real_scanner_reads_one_scan_and_gives_feedback() -> None:
    driver = DRIVERS[URL.split("://", 1)[0]]
    scanner = load("hw", "scanner", driver)("hw", URL)
    assert isinstance(scanner, Scanner)
    try:
        scanner.open()
        print("scan any code within 15 s")
        scan = scanner.read(15.0)
        assert scan is not None, "no scan within 15 s"
        scanner.feedback(True)
        scanner.read(0.5)  # let the feedback pulse finish
    finally:
        scanner.close()
