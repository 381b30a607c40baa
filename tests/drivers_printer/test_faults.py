"""Each fault knob of the simulated printer, and what the caller sees."""

from __future__ import annotations

import time

import pytest

from drivers.errors import DeviceOperationError, DeviceTimeout
from drivers.printer import PrinterNotReady
from drivers.printer.job import JobBuilder
from drivers.printer.simserver import SimPrinterServer
from drivers.printer.simstate import SimKnobs
from tests.drivers_printer.conftest import Make, wait_until

JOB = JobBuilder("t").text("第一行").text("第二行").text("第三行").text("第四行").cut().build()
FAULT_KINDS = ("sim-tcp", "escpos-serial")


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_paper_out_job_refused_and_not_sent(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, paper="out")
    st = rig.printer.status()
    assert st.paper_out and not st.online and not st.ready
    with pytest.raises(PrinterNotReady) as err:
        rig.printer.print_job(JOB)
    assert err.value.status.paper_out and err.value.sent is False
    assert "缺纸" in err.value.hint
    check = rig.printer.self_test()
    assert not check.ok and check.hint == "paper out / 缺纸: load paper"
    rig.machine.load_paper()
    assert rig.machine.lines == []  # nothing was queued behind the fault
    rig.printer.print_job(JOB)
    assert len(rig.machine.lines) == 4


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_paper_near_end_prints_with_a_warning(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, paper="near-end")
    result = rig.printer.print_job(JOB)
    assert result.warnings == ("paper near end",) and result.after.paper_near_end
    assert len(rig.machine.lines) == 4
    check = rig.printer.self_test()
    assert check.ok and "纸将尽" in check.hint


@pytest.mark.parametrize(
    ("knob", "field", "word"),
    [({"cover": "open"}, "cover_open", "纸仓盖"), ({"cutter": "error"}, "cutter_error", "切刀")],
)
def test_cover_open_and_cutter_error_refuse_the_job(
    make_printer: Make, knob: dict[str, str], field: str, word: str
) -> None:
    rig = make_printer("sim-tcp", **knob)
    with pytest.raises(PrinterNotReady) as err:
        rig.printer.print_job(JOB)
    assert getattr(err.value.status, field) and not err.value.sent
    assert word in rig.printer.self_test().hint
    assert rig.machine.lines == []


def test_cutter_jam_during_the_job_is_not_counted_printed(make_printer: Make) -> None:
    rig = make_printer("escpos-tcp", cutter="jam")
    with pytest.raises(PrinterNotReady) as err:
        rig.printer.print_job(JOB)
    assert err.value.sent and err.value.status.cutter_error  # printed, then the knife jammed
    assert len(rig.machine.lines) == 4


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_paper_runs_out_mid_job(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, paper_lines=2)
    start = time.monotonic()
    with pytest.raises(PrinterNotReady) as err:
        rig.printer.print_job(JOB)
    # Seen by a status poll while waiting for the end of the job (one 1 s quiet slice), not
    # after job_timeout (30 s).
    assert time.monotonic() - start < 3.0
    assert err.value.sent and err.value.status.paper_out
    assert rig.machine.text == ["第一行", "第二行"]
    rig.machine.load_paper()  # the printer finishes what it held, as a real one does
    assert rig.machine.text[2:] == ["第三行", "第四行"] and rig.machine.cuts == [True]
    assert rig.printer.status().ready


@pytest.mark.parametrize("kind", ["sim-tcp", "escpos-serial", "escpos-file"])
def test_no_reply_times_out_and_releases_the_port(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, reply="none", timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout):
        rig.printer.status()
    with pytest.raises(DeviceTimeout):
        rig.printer.print_job(JOB)
    assert time.monotonic() - start < 1.5
    assert rig.machine.lines == []  # nothing sent: the status before the job never came
    check = rig.printer.self_test()
    assert not check.ok and "no reply" in check.hint
    if "tcp" in kind:
        assert "9100" in check.hint
        assert rig.server.connections == 1
        rig.printer.close()
        assert wait_until(lambda: rig.server.connections == 0)
    else:
        rig.printer.close()
        rig.printer.open()  # the port was released, so it opens again
        rig.printer.close()


@pytest.mark.parametrize("kind", ["sim-tcp", "sim-pty"])
def test_slow_split_replies_are_reassembled(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, delay=0.15, split=True, timeout=1.0)
    assert rig.printer.status().ready
    rig.printer.print_job(JOB)
    assert len(rig.machine.lines) == 4


@pytest.mark.parametrize("kind", ["sim-tcp", "escpos-serial"])
def test_a_late_reply_is_not_taken_for_the_next_one(make_printer: Make, kind: str) -> None:
    rig = make_printer(kind, paper="out", delay=0.5, timeout=0.2)
    with pytest.raises(DeviceTimeout):
        rig.printer.status()
    time.sleep(0.45)  # the late "paper out" reply arrives now
    rig.server.set_knobs(SimKnobs())
    rig.machine.load_paper()
    assert rig.printer.status().ready  # stale input was dropped before asking again


def test_dropped_tcp_connection_is_reopened_before_the_next_job(make_printer: Make) -> None:
    """Printers close an idle port 9100 socket (or reboot); the next job reconnects once,
    because nothing of it has been sent until a status poll says the printer is ready."""
    rig = make_printer("escpos-tcp")
    rig.printer.print_job(JOB)
    rig.server.drop_connections()
    time.sleep(0.05)
    rig.printer.print_job(JOB)
    assert len(rig.machine.lines) == 8 and rig.server.accepted == 2
    assert rig.printer.self_test().ok


def test_a_job_interrupted_mid_print_does_not_lend_its_reply_to_the_next(
    make_printer: Make,
) -> None:
    """Paper runs out mid-job: the printer holds that job's GS r reply and sends it once paper
    is loaded. The next job first lets the printer fall quiet, so the late reply cannot end the
    next job's wait before the next job has printed."""
    rig = make_printer("escpos-tcp", paper_lines=2)
    with pytest.raises(PrinterNotReady) as err:
        rig.printer.print_job(JOB)
    assert err.value.sent and err.value.status.paper_out
    rig.machine.load_paper()
    result = rig.printer.print_job(JOB)
    assert result.after.ready and len(rig.machine.lines) == 8
    assert rig.printer._late_reply_possible is False


@pytest.mark.parametrize("kind", ["escpos-tcp", "sim-tcp"])
def test_a_failed_job_then_a_dropped_connection_does_not_wedge_the_printer(
    make_printer: Make, kind: str
) -> None:
    """A job fails its end-of-job wait (its GS r reply may still come), then the printer hangs
    up. The next job must not die settling on the closed socket: it reconnects and prints."""
    rig = make_printer(kind, paper_lines=2, timeout=0.3)
    with pytest.raises(PrinterNotReady):
        rig.printer.print_job(JOB)
    assert rig.printer._late_reply_possible
    rig.machine.load_paper()  # the held reply goes out on the old socket...
    rig.server.drop_connections()  # ...which the printer then closes
    time.sleep(0.05)
    for _ in range(2):  # before the fix: "printer closed the connection", every time
        assert rig.printer.print_job(JOB).after.ready
    assert rig.printer._late_reply_possible is False
    assert len(rig.machine.lines) == 12 and rig.server.accepted == 2


def test_a_refused_reconnect_is_retried_by_the_next_call(make_printer: Make) -> None:
    """The printer is power-cycled: its socket closes and, while it boots, connections are
    refused. Each later call tries again; once it is up, jobs print (nothing sent twice)."""
    rig = make_printer("escpos-tcp", timeout=0.3)
    rig.printer.print_job(JOB)
    port = rig.server.port
    rig.server.close()  # powered off: socket closed, port refused
    with pytest.raises(DeviceOperationError, match="reconnect failed"):
        rig.printer.print_job(JOB)
    with pytest.raises(DeviceOperationError):
        rig.printer.status()
    assert not rig.printer.self_test().ok
    rebooted = SimPrinterServer()
    rebooted.start_tcp(port=port)
    try:
        assert rig.printer.print_job(JOB).after.ready  # before the fix: "printer not open"
        assert len(rebooted.machine.lines) == 4 and rebooted.accepted == 1
        assert rig.printer.self_test().ok
        rig.printer.close()
        rig.printer.close()  # idempotent
        assert wait_until(lambda: rebooted.connections == 0)
        with pytest.raises(DeviceOperationError, match="not open"):
            rig.printer.status()  # closed by its owner: never reconnected behind its back
        assert rebooted.accepted == 1
    finally:
        rebooted.close()
