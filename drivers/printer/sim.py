"""The `sim` printer: a simulated ESC/POS printer (simserver.py) driven by the real EscposPrinter
over a local TCP socket or a pty, so what is tested is the real driver speaking real bytes.

    sim://?profile=tm-t20&paper=ok                 a ready 80 mm printer
    sim://?paper=near-end | paper=out | cover=open | cutter=error | cutter=jam
    sim://?reply=none                              never answers (DeviceTimeout)
    sim://?delay=0.3&split=1                       slow replies, one byte per write
    sim://?paper_lines=5                           the roll runs out after 5 lines
    sim://?transport=pty                           over a pty instead of TCP
Plus every printer option (chinese, encoding, timeout, job_timeout, end_of_job, font).
`server` exposes the simulated printer (what it printed; load_paper(), close_cover() ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import urlencode

from typing_extensions import override

from drivers.errors import DeviceOperationError
from drivers.printer import Printer, PrinterOptions
from drivers.printer.escpos import EscposPrinter
from drivers.printer.simserver import SimPrinterServer
from drivers.printer.simstate import SimKnobs
from drivers.url import options, parse_url


@dataclass(frozen=True)
class SimOptions(PrinterOptions, SimKnobs):
    transport: str = field(default="tcp", metadata={"choices": ("tcp", "pty")})


class SimPrinter(Printer):
    """A simulated printer behind a real EscposPrinter."""

    options: SimOptions

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.options = options(name, SimOptions, parse_url(name, url, ("sim",)).params)
        self.server: SimPrinterServer | None = None
        self._printer: EscposPrinter | None = None

    @property
    def knobs(self) -> SimKnobs:
        return SimKnobs(
            **{f.name: getattr(self.options, f.name) for f in dataclasses.fields(SimKnobs)}
        )

    @override
    def open(self) -> None:
        if self._printer is not None:
            return
        self.server = SimPrinterServer(self.knobs, self.options.encoding)
        try:
            if self.options.transport == "tcp":
                base = self.server.start_tcp()
            else:
                base = f"serial://{self.server.start_pty()}"
            params = {
                f.name: getattr(self.options, f.name) for f in dataclasses.fields(PrinterOptions)
            }
            query = urlencode({k: int(v) if isinstance(v, bool) else v for k, v in params.items()})
            printer = EscposPrinter(self.name, f"{base}?{query}")
            printer.open()
            self._printer = printer
            self.no_reply_hint = printer.no_reply_hint
        except BaseException:
            self.close()
            raise

    @override
    def close(self) -> None:
        printer, self._printer = self._printer, None
        if printer is not None:
            printer.close()
        # The server object stays readable after close: what the simulated printer printed.
        if self.server is not None:
            self.server.close()

    @override
    def _reconnect(self) -> bool:
        return self._printer is not None and self._printer._reconnect()

    def _p(self) -> EscposPrinter:
        if self._printer is None:
            raise DeviceOperationError(self.name, "printer not open")
        return self._printer

    @override
    def _write(self, data: bytes, timeout: float) -> None:
        self._p()._write(data, timeout)

    @override
    def _read(self, timeout: float) -> bytes:
        return self._p()._read(timeout)

    @override
    def _drain(self) -> None:
        self._p()._drain()
