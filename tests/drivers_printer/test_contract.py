"""The printer contract, for the sim driver and for EscposPrinter on every transport."""

from __future__ import annotations

import time

import pytest
from PIL import Image, ImageOps

from drivers.errors import DeviceConfigError, DeviceInitError, DeviceOperationError
from drivers.printer import Printer
from drivers.printer.escpos import EscposPrinter
from drivers.printer.job import JobBuilder, OrderLine, kitchen_ticket, receipt
from drivers.printer.sim import SimPrinter
from drivers.registry import load
from tests.drivers_printer.conftest import KINDS, Make

TICKET = kitchen_ticket(
    "热菜",
    "A12",
    "0042",
    [OrderLine("宫保鸡丁", 1, note="少辣"), OrderLine("米饭", 2)],
    time="12:30",
)


@pytest.mark.parametrize("kind", KINDS)
def test_status_and_self_test_use_no_paper(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    st = rig.printer.status()
    assert st.ready and st.online and str(st) == "ready"
    check = rig.printer.self_test()
    assert check.ok and "ready" in check.detail and check.hint == ""
    assert rig.machine.lines == [] and rig.machine.cuts == []


@pytest.mark.parametrize("kind", KINDS)
def test_kitchen_ticket_is_printed_when_print_job_returns(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    result = rig.printer.print_job(TICKET)
    # No waiting: the job is only reported printed once the printer has processed all of it.
    assert rig.machine.text == [
        "热菜 桌号 A12",
        "单号 0042  12:30",
        "=" * 48,
        "1 x 宫保鸡丁",
        "   （少辣）",
        "2 x 米饭",
        "=" * 48,
    ]
    assert rig.machine.cuts == [True] and rig.machine.unknown == []
    assert result.before.ready and result.after.ready and result.warnings == ()
    assert result.bytes_sent > 100 and result.title == "kitchen 热菜 0042"


@pytest.mark.parametrize("kind", ["sim-tcp", "escpos-serial"])
def test_receipt_with_native_qr_and_barcode(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    job = receipt("小店", "0042", [OrderLine("宫保鸡丁", 1, 3800)], qr="https://t.example/q/42")
    rig.printer.print_job(job)
    rig.printer.print_job(JobBuilder().barcode("TICKET-42").cut().build())
    assert rig.machine.qr == ["https://t.example/q/42"]
    assert rig.machine.barcodes == ["TICKET-42"]
    assert rig.machine.text[-2] == "合计 Total" + " " * 31 + "￥38.00"


def test_raster_qr_on_a_printer_without_native_qr_decodes(make_printer: Make) -> None:
    from pyzbar.pyzbar import decode

    rig = make_printer("sim-tcp", profile="generic-80")
    rig.printer.print_job(JobBuilder().qr("EDGE-1234", size=6).build())
    assert rig.machine.qr == [] and len(rig.machine.images) == 1
    img = rig.machine.images[0]
    # GS v 0 sets a bit for black; PIL's mode "1" reads a set bit as white.
    pic = ImageOps.invert(Image.frombytes("1", (img.width, img.height), img.data).convert("L"))
    assert [d.data for d in decode(pic)] == [b"EDGE-1234"]


@pytest.mark.parametrize("kind", ["sim-pty", "escpos-tcp"])
def test_raster_mode_sends_images_not_text(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, chinese="raster")
    rig.printer.print_job(TICKET)
    assert rig.machine.text == [] and rig.machine.images and rig.machine.cuts == [True]


@pytest.mark.parametrize("kind", ["sim-tcp", "escpos-file"])
def test_drawer_and_buzzer(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    rig.printer.pulse_drawer()
    rig.printer.pulse_drawer(5, issued_at=time.monotonic())
    rig.printer.beep(2)
    rig.printer.status()  # in order: once it answers, the commands before it were processed
    assert rig.machine.drawer == [2, 5] and rig.machine.beeps == 2
    with pytest.raises(DeviceOperationError, match="older than"):
        rig.printer.pulse_drawer(issued_at=time.monotonic() - 60)
    assert rig.machine.lines == []


def test_capabilities_follow_the_profile(make_printer: Make) -> None:
    rig = make_printer("sim-tcp", profile="tm-t20")
    with pytest.raises(DeviceOperationError, match="no buzzer"):
        rig.printer.beep()
    p58 = make_printer("sim-tcp", profile="generic-58").printer
    with pytest.raises(DeviceOperationError, match="no drawer"):
        p58.pulse_drawer()
    p58.print_job(JobBuilder().text("一" * 20).divider().cut().build())
    assert p58.profile.columns == 32 and not p58.profile.cutter


@pytest.mark.parametrize("kind", ["sim-tcp", "escpos-serial"])
def test_test_page_is_a_separate_call(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    rig.printer.self_test()
    assert rig.machine.lines == []
    rig.printer.test_page()
    assert "打印测试 TEST PAGE" in rig.machine.text and len(rig.machine.qr) == 1
    assert any(line.endswith("￥38.00") for line in rig.machine.text)


@pytest.mark.parametrize("kind", KINDS)
def test_close_is_idempotent_and_reopen_works(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind)
    rig.printer.close()
    rig.printer.close()
    with pytest.raises(DeviceOperationError):
        rig.printer.status()
    rig.printer.open()
    assert rig.printer.status().ready


def test_registry_and_config_errors() -> None:
    assert load("p", "printer", "sim") is SimPrinter
    assert load("p", "printer", "escpos") is EscposPrinter
    for url, param in [
        ("sim://?colour=red", "colour"),
        ("sim://?profile=tm-t99", "profile"),
        ("sim://?chinese=codepage", "chinese"),
        ("usb://?vendor=0x0416", "vendor"),
        ("tcp://10.0.0.5?vendor=0x0416&product=1", "vendor"),
        ("http://10.0.0.5", "url"),
    ]:
        cls: type[Printer] = SimPrinter if url.startswith("sim") else EscposPrinter
        with pytest.raises(DeviceConfigError) as err:
            cls("kitchen", url)
        assert err.value.param == param and "kitchen" in str(err.value)
    p = EscposPrinter("k", "tcp://10.0.0.5?profile=tm-t88&encoding=big5&timeout=1.5")
    assert (p.options.encoding, p.options.timeout, p.profile.dots) == ("big5", 1.5, 512)


def test_open_failures_say_what_to_check() -> None:
    with pytest.raises(DeviceInitError) as err:
        EscposPrinter("k", "tcp://127.0.0.1:1").open()
    assert "9100" in err.value.hint
    with pytest.raises(DeviceInitError) as err:
        EscposPrinter("k", "file:///dev/usb/lp9").open()
    assert "does not exist" in err.value.hint
