"""ESC/POS printers over TCP 9100, serial, a device file or USB.

URLs:
  tcp://192.168.1.50[:9100]?profile=xp-80
  serial:///dev/ttyUSB0?baudrate=19200        (anything serial_for_url opens, incl. a pty)
  file:///dev/usb/lp0?profile=tm-t20          (the usblp kernel driver's device)
  usb://?vendor=0x0416&product=0x5011         (python-escpos Usb, with a timeout)
Common parameters: profile, chinese (kanji|raster), encoding (gb18030|gbk|big5), timeout,
job_timeout, end_of_job, font.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceInitError, DeviceOperationError
from drivers.printer import Printer, PrinterOptions
from drivers.printer.raster import FONT_HINT, find_cjk_font
from drivers.printer.transport import (
    TCP_HINT,
    FileTransport,
    SerialTransport,
    TcpTransport,
    UsbTransport,
)
from drivers.url import DeviceUrl, options, parse_url

if TYPE_CHECKING:
    from drivers.printer.transport import Transport

SCHEMES = ("tcp", "serial", "file", "usb")


@dataclass(frozen=True)
class EscposOptions(PrinterOptions):
    baudrate: int = 9600  # serial only
    vendor: int | None = None  # usb only, e.g. 0x0416
    product: int | None = None
    in_ep: int = 0x82
    out_ep: int = 0x01


class EscposPrinter(Printer):
    """An ESC/POS printer on a real transport."""

    options: EscposOptions

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.target = parse_url(name, url, SCHEMES)
        self.options = opts = options(name, EscposOptions, self.target.params)
        self._transport: Transport | None = None
        self._opened = False  # set by open(), cleared only by close(); survives a lost link
        usb_only = opts.vendor is not None or opts.product is not None
        if self.target.scheme == "usb" and (opts.vendor is None or opts.product is None):
            raise DeviceConfigError(name, "vendor", "usb:// needs vendor and product ids")
        if self.target.scheme != "usb" and usb_only:
            raise DeviceConfigError(name, "vendor", "only for usb:// printers")
        if self.target.scheme == "tcp":
            self._host, self._port = _host_port(name, self.target)
        self.no_reply_hint = {
            "tcp": TCP_HINT,
            "serial": "no reply: check the cable, the baud rate (printer self-test page) and "
            "that the printer is on",
            "file": "no reply: check the USB cable; the printer must support the back channel",
            "usb": "no reply: check the USB cable and the endpoints (in_ep/out_ep)",
        }[self.target.scheme]

    @override
    def open(self) -> None:
        if self._transport is not None:
            return
        opts = self.options
        if opts.chinese == "raster" and not opts.font:
            try:
                find_cjk_font()
            except LookupError as err:
                msg = "raster mode without a CJK font"
                raise DeviceInitError(self.name, msg, FONT_HINT) from err
        self._connect()
        # Only now: a printer that never opened must not be reconnected behind the caller's back.
        self._opened = True

    def _connect(self) -> None:
        opts, t = self.options, self.target
        if t.scheme == "tcp":
            self._transport = TcpTransport(self.name, self._host, self._port, opts.timeout)
        elif t.scheme == "serial":
            self._transport = SerialTransport(self.name, t.serial_url, opts.baudrate, opts.timeout)
        elif t.scheme == "file":
            self._transport = FileTransport(self.name, t.target)
        else:
            assert opts.vendor is not None and opts.product is not None
            self._transport = UsbTransport(
                self.name, opts.vendor, opts.product, opts.in_ep, opts.out_ep, opts.timeout
            )

    @override
    def _reconnect(self) -> bool:
        """Replace a lost TCP link. Tests `_opened`, not `_transport`: a reconnect refused while
        the printer reboots leaves no transport, and the next status() must try again rather
        than report "not open" forever. Only status() calls this and then repeats its status
        query; a job's bytes are never re-sent."""
        if self.target.scheme != "tcp" or not self._opened:
            return False
        self._drop_transport()
        self._late_reply_possible = False  # a new socket cannot carry the old one's late reply
        try:
            self._connect()
        except DeviceInitError as err:
            # Still a broken link to the caller (status() contract), retried on the next call.
            msg = f"reconnect failed: {err.message}; {err.hint or self.no_reply_hint}"
            raise DeviceOperationError(self.name, msg) from err
        return True

    @override
    def close(self) -> None:
        self._opened = False
        self._drop_transport()

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _t(self) -> Transport:
        if self._transport is None:
            if self._opened:  # the last reconnect was refused; the next status() retries
                msg = "connection lost; reconnecting on the next status query"
                raise DeviceOperationError(self.name, msg)
            raise DeviceOperationError(self.name, "printer not open")
        return self._transport

    @override
    def _write(self, data: bytes, timeout: float) -> None:
        self._t().write(data, timeout)

    @override
    def _read(self, timeout: float) -> bytes:
        return self._t().read(timeout)

    @override
    def _drain(self) -> None:
        self._t().drain()


def _host_port(name: str, target: DeviceUrl) -> tuple[str, int]:
    host, _, port = target.target.rstrip("/").rpartition(":")
    if not host:
        host, port = target.target.rstrip("/"), "9100"
    if not host or not port.isdigit():
        raise DeviceConfigError(name, "url", "tcp://host[:port]")
    return host, int(port)
