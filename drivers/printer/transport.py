"""Byte pipes to a printer: TCP 9100, a serial port, a device file (/dev/usb/lp0), USB.

Each has `write(data, timeout)`, `read(timeout)` (what has arrived, b"" when nothing did in
time), `drain()` (drop stale input) and `close()` (idempotent). Every call has a deadline: a
printer that stops reading, or a USB endpoint that never answers, raises DeviceTimeout instead of
blocking the device's worker forever.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from typing import Any, Protocol, cast

import serial

from drivers.errors import DeviceInitError, DeviceOperationError, DeviceTimeout, DriverUnavailable
from drivers.port import SERIAL_ERRORS, SerialPort, open_hint

TCP_HINT = "no reply: check the printer's IP and that port 9100 is open (ping it; self-test page)"


class Transport(Protocol):
    def write(self, data: bytes, timeout: float) -> None: ...
    def read(self, timeout: float) -> bytes: ...
    def drain(self) -> None: ...
    def close(self) -> None: ...


class TcpTransport:
    def __init__(self, device: str, host: str, port: int, timeout: float) -> None:
        self.device, self.host, self.port = device, host, port
        try:
            self._sock: socket.socket | None = socket.create_connection((host, port), timeout)
        except OSError as err:
            msg = f"cannot connect to {host}:{port}: {err}"
            raise DeviceInitError(device, msg, TCP_HINT) from err

    def _s(self) -> socket.socket:
        if self._sock is None:
            raise DeviceOperationError(self.device, "connection closed")
        return self._sock

    def write(self, data: bytes, timeout: float) -> None:
        s = self._s()
        s.settimeout(timeout)
        try:
            s.sendall(data)
        except TimeoutError as err:
            raise DeviceTimeout(self.device, "printer stopped taking data (buffer full?)") from err
        except OSError as err:
            raise DeviceOperationError(self.device, f"send failed: {err}") from err

    def read(self, timeout: float) -> bytes:
        s = self._s()
        s.settimeout(max(timeout, 0.001))
        try:
            data = s.recv(64)
        except TimeoutError:
            return b""
        except OSError as err:
            raise DeviceOperationError(self.device, f"receive failed: {err}") from err
        if not data:
            raise DeviceOperationError(self.device, "printer closed the connection")
        return data

    def drain(self) -> None:
        s = self._s()
        s.setblocking(False)
        try:
            while s.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as err:
            raise DeviceOperationError(self.device, f"receive failed: {err}") from err

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class SerialTransport:
    """Through drivers.port, so pty paths, /dev/serial/by-id and socket:// bridges all open."""

    def __init__(self, device: str, url: str, baudrate: int, timeout: float) -> None:
        self.device = device
        self._port = SerialPort(device, url, baudrate=baudrate, timeout=timeout)
        self._ser = cast(serial.Serial, self._port.serial)

    def write(self, data: bytes, timeout: float) -> None:
        # A raster ticket is tens of KB: at 9600 baud that alone takes ~1 ms per byte.
        self._ser.write_timeout = timeout + len(data) * 10 / max(self._ser.baudrate, 1)
        try:
            self._ser.write(data)
            self._ser.flush()
        except serial.SerialTimeoutException as err:
            raise DeviceTimeout(self.device, "printer stopped taking data (flow control?)") from err
        except SERIAL_ERRORS as err:
            raise DeviceOperationError(self.device, f"serial write failed: {err}") from err

    def read(self, timeout: float) -> bytes:
        self._ser.timeout = max(timeout, 0.001)
        try:
            first: bytes = self._ser.read(1)
            return first + (self._ser.read(self._ser.in_waiting) if first else b"")
        except SERIAL_ERRORS as err:
            raise DeviceOperationError(self.device, f"serial read failed: {err}") from err

    def drain(self) -> None:
        try:
            self._ser.reset_input_buffer()
        except SERIAL_ERRORS as err:
            raise DeviceOperationError(self.device, f"serial port gone: {err}") from err

    def close(self) -> None:
        self._port.close()


class FileTransport:
    """A printer character device (usblp's /dev/usb/lp0); reads come from the back channel."""

    def __init__(self, device: str, path: str) -> None:
        self.device, self.path = device, path
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as err:
            hint = open_hint(err, path)
            if err.errno == errno.EACCES:
                hint = "permission denied: add the service user to the lp group (or a udev rule)"
            raise DeviceInitError(device, f"cannot open {path}: {err}", hint) from err

    def _f(self) -> int:
        if self._fd is None:
            raise DeviceOperationError(self.device, "device file closed")
        return self._fd

    def write(self, data: bytes, timeout: float) -> None:
        fd, view, deadline = self._f(), memoryview(data), time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise DeviceTimeout(self.device, "printer stopped taking data")
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                continue
            except OSError as err:
                raise DeviceOperationError(self.device, f"write failed: {err}") from err

    def read(self, timeout: float) -> bytes:
        fd = self._f()
        if not select.select([fd], [], [], max(timeout, 0))[0]:
            return b""
        try:
            return os.read(fd, 64)
        except BlockingIOError:
            return b""
        except OSError as err:
            raise DeviceOperationError(self.device, f"read failed: {err}") from err

    def drain(self) -> None:
        while self.read(0):
            pass

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class UsbTransport:
    """python-escpos Usb, always with a timeout (its default 0 means wait forever)."""

    def __init__(
        self, device: str, vendor: int, product: int, in_ep: int, out_ep: int, timeout: float
    ) -> None:
        from escpos.printer import Usb

        self.device, self.in_ep = device, in_ep
        if not Usb.is_usable():
            raise DriverUnavailable(device, "USB printing needs pyusb: pip install pyusb")
        self._usb: Any = Usb(
            vendor, product, timeout=int(timeout * 1000), in_ep=in_ep, out_ep=out_ep
        )
        try:
            self._usb.open()
        except Exception as err:  # python-escpos raises its DeviceNotFoundError
            raise DeviceInitError(
                device,
                f"USB {vendor:04x}:{product:04x}: {err}",
                "check the cable and `lsusb`; the service user needs access (udev rule)",
            ) from err

    def write(self, data: bytes, timeout: float) -> None:
        self._usb.timeout = int(timeout * 1000)
        try:
            self._usb._raw(data)
        except Exception as err:  # pyusb's USBTimeoutError / USBError
            if "timeout" in type(err).__name__.lower() or "timed out" in str(err):
                raise DeviceTimeout(self.device, f"USB write timed out: {err}") from err
            raise DeviceOperationError(self.device, f"USB write failed: {err}") from err

    def read(self, timeout: float) -> bytes:
        # Like Odoo's patch: a status read often needs several short tries on cheap printers.
        try:
            return bytes(self._usb.device.read(self.in_ep, 64, max(int(timeout * 1000), 1)))
        except Exception as err:
            if "timeout" in type(err).__name__.lower() or "timed out" in str(err):
                return b""
            raise DeviceOperationError(self.device, f"USB read failed: {err}") from err

    def drain(self) -> None:
        while self.read(0.01):
            pass

    def close(self) -> None:
        usb, self._usb = getattr(self, "_usb", None), None
        if usb is not None:
            usb.close()
