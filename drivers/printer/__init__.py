"""Kitchen and receipt printers (ESC/POS, 58 and 80 mm).

Contract, for every printer driver:
- `status()` asks the printer (DLE EOT 1-4, one round trip) and returns a PrinterStatus: online,
  paper near end, paper out, cover open, cutter error. Uses no paper. Raises DeviceTimeout when
  the printer does not answer within `timeout` seconds, DeviceOperationError on a broken link.
- `print_job(job)` polls status, refuses a printer that is not ready (PrinterNotReady, nothing
  sent), renders and sends the job, waits for the printer to reach the end of it (GS r 1, with
  status polls in between so a paper-out mid-job is seen at once), then polls status again. The
  job counts as printed only when that last poll says the printer is fine: then a JobResult is
  returned (paper near end is a warning in it). Otherwise PrinterNotReady with `sent=True`: the
  ticket may be partly printed, so the caller decides whether to reprint. No reply within
  `job_timeout` raises DeviceTimeout. Bad job content raises ValueError before anything is sent.
- `pulse_drawer(pin)` kicks the cash drawer (pin 2 or 5); `beep()` sounds the buzzer. Both raise
  DeviceOperationError when the profile has no drawer port / buzzer. A drawer command older than
  its TTL is refused (never open a till for a stale request).
- `self_test()` is the status query only; `test_page()` prints one (a separate, explicit call).
Methods are called from one worker thread per printer.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field

from escpos.printer import Dummy

from drivers.base import Device, SelfTest
from drivers.errors import DeviceOperationError, DeviceTimeout, DriverError
from drivers.printer.job import Job, JobBuilder
from drivers.printer.profiles import PROFILES, Profile
from drivers.printer.raster import FontRef
from drivers.printer.render import render
from drivers.printer.status import (
    END_OF_JOB_REQUEST,
    STATUS_REQUEST,
    PrinterStatus,
    decode_status,
    is_end_of_job_byte,
    is_status_byte,
)

log = logging.getLogger(__name__)

__all__ = ["JobResult", "Printer", "PrinterNotReady", "PrinterOptions", "PrinterStatus"]

HINTS = {
    "paper out": "paper out / 缺纸: load paper",
    "cover open": "cover open / 纸仓盖未关: close the printer cover",
    "cutter error": "cutter error / 切刀故障: open the cover, clear the jam, power-cycle",
    "printer error": "printer error / 打印机故障: let the head cool down, then power-cycle",
    "offline": "printer offline / 打印机离线: check the error light and the feed button",
}


@dataclass(frozen=True)
class PrinterOptions:
    profile: str = field(default="generic-80", metadata={"choices": tuple(PROFILES)})
    chinese: str = field(default="kanji", metadata={"choices": ("kanji", "raster")})
    encoding: str = field(default="gb18030", metadata={"choices": ("gb18030", "gbk", "big5")})
    timeout: float = 2.0  # seconds for a status reply
    job_timeout: float = 30.0  # seconds to take and print one job
    # Wait for GS r 1 after a job; turn off only for printers that do not answer it.
    end_of_job: bool = True
    font: str = ""  # a CJK font file for raster mode (default: found by fontconfig)


@dataclass(frozen=True)
class JobResult:
    title: str
    bytes_sent: int
    before: PrinterStatus
    after: PrinterStatus
    seconds: float

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.after.warnings


class PrinterNotReady(DeviceOperationError):
    """The printer reported a problem; `sent` says whether the job's bytes had gone out."""

    def __init__(self, device: str, status: PrinterStatus, sent: bool) -> None:
        self.status = status
        self.sent = sent
        self.hint = HINTS.get(status.problems[0], "") if status.problems else ""
        when = "after sending the job" if sent else "job not sent"
        super().__init__(device, f"{status} ({when}); {self.hint}")


class Printer(Device):
    device_class = "printer"
    options: PrinterOptions
    no_reply_hint = "no reply: check the printer's power and cable"

    @property
    def profile(self) -> Profile:
        return PROFILES[self.options.profile]

    def render(self, job: Job) -> bytes:
        font = FontRef(self.options.font) if self.options.font else None
        return render(
            job,
            self.profile,
            chinese=self.options.chinese,
            encoding=self.options.encoding,
            font=font,
        )

    def status(self) -> PrinterStatus:
        """DLE EOT 1-4. A dropped connection (a printer that closed an idle 9100 socket or was
        power-cycled) is reopened once: a status query is safe to repeat, and a job is only
        sent after this status says the printer is ready."""
        try:
            self._drain()
            return self._poll_status()[0]
        except DeviceTimeout:
            raise
        except DeviceOperationError as err:
            if not self._reconnect():
                raise
            # A fresh connection cannot carry the old connection's late GS r reply.
            self._late_reply_possible = False
            log.warning("printer %s: connection lost (%s); reconnected", self.name, err)
            self._drain()
            return self._poll_status()[0]

    def _reconnect(self) -> bool:
        """Reopen a lost link, if the transport can (TCP); returns whether it did."""
        return False

    # Set when a job's end-of-job wait timed out: its GS r reply may still come, and must not be
    # taken for the next job's.
    _late_reply_possible = False

    def print_job(self, job: Job) -> JobResult:
        data = self.render(job)
        if self._late_reply_possible:
            self._settle()
        start = time.monotonic()
        before = self.status()
        if not before.ready:
            raise PrinterNotReady(self.name, before, sent=False)
        self._write(data, self.options.job_timeout)
        log.info("printer %s: sent %s (%d bytes)", self.name, job.title or "job", len(data))
        if self.options.end_of_job:
            try:
                self._await_end_of_job(start + self.options.job_timeout)
            except DriverError:  # timed out, or held by a fault: its GS r reply may come later
                self._late_reply_possible = True
                raise
        after = self.status()
        if not after.ready:
            raise PrinterNotReady(self.name, after, sent=True)
        if after.warnings:
            log.warning("printer %s: %s", self.name, ", ".join(after.warnings))
        return JobResult(job.title, len(data), before, after, time.monotonic() - start)

    def pulse_drawer(
        self, pin: int = 2, *, issued_at: float | None = None, ttl: float = 12.0
    ) -> None:
        """`issued_at` is a time.monotonic() stamp of the request; stale requests are refused."""
        if pin not in (2, 5):
            raise ValueError("drawer pin is 2 or 5")
        if not self.profile.drawer:
            raise DeviceOperationError(self.name, f"profile {self.profile.name} has no drawer port")
        if issued_at is not None and time.monotonic() - issued_at > ttl:
            raise DeviceOperationError(self.name, f"drawer request older than {ttl:g} s refused")
        d = Dummy(profile=self.profile.escpos_profile)
        d.cashdraw(pin)
        self._write(d.output, self.options.timeout)

    def beep(self, times: int = 1, duration: int = 3) -> None:
        """`times` beeps of `duration` x ~100 ms (1-9 each)."""
        if not self.profile.buzzer:
            raise DeviceOperationError(self.name, f"profile {self.profile.name} has no buzzer")
        d = Dummy(profile=self.profile.escpos_profile)
        d.buzzer(times, duration)
        self._write(d.output, self.options.timeout)

    def self_test(self) -> SelfTest:
        try:
            st = self.status()
        except DeviceTimeout:
            return SelfTest(False, "no reply to the status query (DLE EOT)", self.no_reply_hint)
        except DriverError as err:
            return SelfTest(False, str(err), self.no_reply_hint)
        detail = f"{self.profile.model}, {self.options.chinese} mode: {st}"
        if st.ready:
            return SelfTest(
                True,
                detail,
                "paper near end / 纸将尽: load paper soon" if st.paper_near_end else "",
            )
        return SelfTest(False, detail, HINTS.get(st.problems[0], ""))

    def test_page(self) -> JobResult:
        """Prints a page: profile, a column ruler, Chinese with ¥ and full-width brackets, a QR."""
        p = self.profile
        b = JobBuilder(title="test page").text(
            "打印测试 TEST PAGE", bold=True, double=True, align="center"
        )
        b.text(f"{p.model} {p.paper_mm}mm {p.columns}col {self.options.chinese}")
        b.text("".join(str(i % 10) for i in range(1, p.columns + 1)))
        b.columns("宫保鸡丁（少辣）", "￥38.00").columns("Total ¥", "¥38.00", bold=True)
        b.qr("EDGE TEST " + self.name).cut()
        return self.print_job(b.build())

    # -- the status exchange, shared by every transport --

    def _poll_status(self) -> tuple[PrinterStatus, bool]:
        """Send DLE EOT 1-4 and read the four replies; also says if a GS r reply came by."""
        self._write(STATUS_REQUEST, self.options.timeout)
        got, eoj = bytearray(), False
        deadline = time.monotonic() + self.options.timeout
        while len(got) < 4:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeout(
                    self.name, f"status: {len(got)} of 4 replies; " + self.no_reply_hint
                )
            for b in self._read(left):
                if is_status_byte(b):
                    got.append(b)
                elif is_end_of_job_byte(b):
                    eoj = True
                else:
                    log.debug("printer %s: stray byte %02x", self.name, b)
        return decode_status(bytes(got[:4])), eoj

    def _settle(self, rounds: int = 3) -> None:
        """Read and drop input until the printer has been quiet for one `timeout` (at most
        `rounds` of them), so a late reply to a timed-out job cannot end the next job's wait."""
        for _ in range(rounds):
            try:
                data = self._read(self.options.timeout)
            except DeviceTimeout:
                raise
            except DeviceOperationError as err:
                # The link is closed (printer rebooted or dropped an idle socket): it cannot
                # deliver the late reply any more, and status() reconnects next. Keeping the
                # flag would fail every later job here, before that reconnect is reached.
                log.info("printer %s: link lost while settling (%s)", self.name, err)
                self._late_reply_possible = False
                return
            if not data:
                self._late_reply_possible = False
                return
        log.warning(
            "printer %s: still sending stale replies; the next job may end early", self.name
        )

    def _await_end_of_job(self, deadline: float) -> None:
        """Wait for the GS r 1 reply; each quiet `timeout` slice, check the printer is fine."""
        self._drain()
        self._write(END_OF_JOB_REQUEST, self.options.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                msg = "the job did not finish (no GS r reply); without GS r set end_of_job=0"
                raise DeviceTimeout(self.name, msg)
            data = self._read(min(self.options.timeout, left))
            if any(is_end_of_job_byte(b) for b in data):
                return
            if not data:
                st, eoj = self._poll_status()
                if eoj:
                    return
                if not st.ready:
                    raise PrinterNotReady(self.name, st, sent=True)

    # -- transport hooks --

    @abstractmethod
    def _write(self, data: bytes, timeout: float) -> None:
        """Send all of `data` within `timeout` seconds, else DeviceTimeout."""

    @abstractmethod
    def _read(self, timeout: float) -> bytes:
        """What arrives within `timeout` seconds (b"" if nothing)."""

    @abstractmethod
    def _drain(self) -> None:
        """Drop stale input (a late reply to an earlier, timed-out query)."""
