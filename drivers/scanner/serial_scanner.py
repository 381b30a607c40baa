"""Serial and USB-CDC scanners (`/dev/ttyACM0`, `/dev/serial/by-id/...`, `socket://`, a pty).

URL: `serial:///dev/serial/by-id/usb-...?baud=9600&suffix=crlf&gap=0.1&max_len=512`
- suffix: what the reader ends a scan with: crlf (CR, LF or CRLF), tab, none (the gap ends it)
- gap: inter-character timeout, seconds (see lines.py for what happens to a partial line)
- aim: the reader prefixes AIM code ids (`]Q1`...), which are stripped into `symbology`
- feedback: none, or gm65 (OUT1 pulses, see gm65.py); pulse: seconds per pulse
- dedup: seconds of duplicate suppression (see drivers.scanner)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import cast

import serial
from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceOperationError
from drivers.port import SerialPort
from drivers.scanner import Scanner, ScannerOptions, gm65
from drivers.scanner.lines import LineAssembler
from drivers.url import options, parse_url

log = logging.getLogger(__name__)

SCHEMES = ("serial", "socket", "loop", "spy")
# AIM code id letter -> zbar-style symbology name (AIM ISS "Symbology Identifiers").
AIM = {
    "A": "CODE39",
    "C": "CODE128",
    "E": "EAN13",
    "I": "I25",
    "L": "PDF417",
    "Q": "QRCODE",
    "d": "DATAMATRIX",
    "e": "DATABAR",
    "z": "AZTEC",
}
# Control bytes a real payload can carry: TAB, and GS/RS/EOT of GS1 and ISO 15434 data.
_ALLOWED_CONTROLS = frozenset(b"\t\x1d\x1e\x04")


@dataclass(frozen=True)
class SerialOptions(ScannerOptions):
    baud: int = 9600
    suffix: str = field(default="crlf", metadata={"choices": ("crlf", "tab", "none")})
    gap: float = 0.1
    max_len: int = 512
    aim: bool = False
    feedback: str = field(default="none", metadata={"choices": ("none", "gm65")})
    pulse: float = 0.15


def is_line_noise(line: bytes) -> bool:
    """Bytes no reader sends as a scan: C0 controls other than TAB/GS/RS/EOT, or neither UTF-8
    nor GB18030 (what a reader emits while powering up, or a wrong baud rate produces)."""
    if any(b < 0x20 and b not in _ALLOWED_CONTROLS for b in line) or b"\x7f" in line:
        return True
    for encoding in ("utf-8", "gb18030"):
        try:
            line.decode(encoding)
            return False
        except UnicodeDecodeError:
            pass
    return True


def split_aim(line: bytes) -> tuple[bytes, str | None]:
    if len(line) >= 3 and line[:1] == b"]":
        return line[3:], AIM.get(chr(line[1]), f"AIM-{chr(line[1])}")
    return line, None


class SerialScanner(Scanner):
    """A scanner that sends each scan as a line on a serial port."""

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, SCHEMES)
        opts = options(name, SerialOptions, parsed.params)
        super().__init__(name, url, opts.dedup)
        positive = {
            "baud": opts.baud,
            "max_len": opts.max_len,
            "gap": opts.gap,
            "pulse": opts.pulse,
        }
        for param, value in positive.items():
            if value <= 0:
                raise DeviceConfigError(name, param, "must be > 0")
        self.options = opts
        self.port_url = parsed.serial_url
        self.noise = 0  # lines dropped as line noise
        self._port: SerialPort | None = None
        self._lines = LineAssembler(name, opts.suffix, opts.max_len, opts.gap)
        self._queue: list[bytes] = []
        self._pending: list[tuple[float, bytes]] = []  # feedback frames due later

    @property
    def frames(self) -> list[bytes]:
        """The latest command echoes and reader replies taken out of the stream (diagnostics)."""
        return list(self._lines.frames)

    @override
    def _open(self) -> None:
        self._port = SerialPort(self.name, self.port_url, baudrate=self.options.baud)
        self._serial().reset_input_buffer()  # stale scans from before we started

    @override
    def _close(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        if self._pending:
            # Never leave OUT1 (LED/beeper) on: send the final level now.
            try:
                port.serial.write(self._pending[-1][1])
                port.serial.flush()
            except (serial.SerialException, OSError):
                log.warning("scanner %s: could not reset OUT1 on close", self.name)
            self._pending.clear()
        port.close()

    @override
    def _read(self, timeout: float) -> tuple[bytes, str | None] | None:
        ser = self._serial()
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            flushed = self._lines.expire(now)
            if flushed is not None:
                self._queue.append(flushed)
            while self._queue:
                line = self._queue.pop(0)
                if is_line_noise(line):
                    self.noise += 1
                    log.warning("scanner %s: dropped line noise (%d bytes)", self.name, len(line))
                    continue
                return split_aim(line) if self.options.aim else (line, None)
            self._send_due(now)
            wake = [deadline]
            if self._pending:
                wake.append(self._pending[0][0])
            expiry = self._lines.deadline()
            if expiry is not None:
                wake.append(expiry)
            wait = min(wake) - now
            if now >= deadline:
                return None
            try:
                ser.timeout = max(wait, 0.001)
                chunk = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError) as err:
                raise DeviceOperationError(self.name, f"serial read failed: {err}") from err
            self._queue += self._lines.feed(chunk, time.monotonic())

    @override
    def _feedback(self, good: bool) -> None:
        if self.options.feedback == "none":
            return
        now, pulse = time.monotonic(), self.options.pulse
        pulses = 1 if good else 3
        self._pending = []
        for i in range(pulses):
            self._pending.append((now + 2 * i * pulse, gm65.encode_out1(True)))
            self._pending.append((now + (2 * i + 1) * pulse, gm65.encode_out1(False)))
        self._send_due(now)

    def _send_due(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, frame = self._pending.pop(0)
            try:
                self._serial().write(frame)
            except (serial.SerialException, OSError) as err:
                raise DeviceOperationError(self.name, f"serial write failed: {err}") from err

    def _serial(self) -> serial.Serial:
        if self._port is None:
            raise DeviceOperationError(self.name, "port not open")
        # serial_for_url returns a SerialBase subclass; every one has the Serial methods used.
        return cast(serial.Serial, self._port.serial)
