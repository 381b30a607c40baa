"""A real printer, only with EDGE_HW_PRINTER_URL set (e.g. tcp://192.168.1.50?profile=xp-80 or
usb://?vendor=0x0416&product=0x5011). Prints one short ticket: load paper first."""

from __future__ import annotations

import os

import pytest

from drivers.errors import DeviceInitError, DriverUnavailable
from drivers.printer.escpos import EscposPrinter
from drivers.printer.job import OrderLine, kitchen_ticket

URL = os.environ.get("EDGE_HW_PRINTER_URL", "")


def test_usb_without_a_device_fails_at_once_instead_of_blocking() -> None:
    # No hardware needed: without pyusb or without the device, open() refuses promptly.
    with pytest.raises((DriverUnavailable, DeviceInitError)):
        EscposPrinter("k", "usb://?vendor=0x0416&product=0x5011&timeout=0.5").open()


@pytest.mark.skipif(not URL, reason="set EDGE_HW_PRINTER_URL to test a real printer")
def test_real_printer_status_and_ticket() -> None:
    with EscposPrinter("hw", URL) as p:
        check = p.self_test()
        assert check.ok, f"{check.detail}: {check.hint}"
        job = kitchen_ticket("测试", "1", "HW-TEST", [OrderLine("宫保鸡丁 ¥38", 1, note="少辣")])
        result = p.print_job(job)
        assert result.after.ready
