"""A serial port with one transaction at a time (never two threads on one port).

Opened through `serial.serial_for_url`, so a device path, `/dev/serial/by-id/...`, a pty,
`socket://host:port` (an Ethernet-serial bridge or a TCP simulator) and `loop://` all work.
Open failures become DeviceInitError with a hint a technician can act on.
"""

from __future__ import annotations

import errno
import termios
import threading
import time
from collections.abc import Callable

import serial

from drivers.errors import DeviceInitError, DeviceOperationError, DeviceTimeout

# What pyserial lets escape from I/O on a port that went away: a USB adapter unplugged mid-call
# hangs the tty up, and tcflush (reset_input_buffer) then raises termios.error, which is neither
# a SerialException nor an OSError.
SERIAL_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, termios.error)


def open_hint(err: BaseException, url: str) -> str:
    """What a technician should check when `url` cannot be opened."""
    code = getattr(err, "errno", None)
    text = str(err)
    if code == errno.EACCES or "Permission denied" in text:
        return "permission denied: add the service user to the dialout group (or fix the udev rule)"
    if code == errno.ENOENT or "No such file" in text or "could not open port" in text:
        return f"{url} does not exist: check the cable, the udev name and `ls /dev/serial/by-id/`"
    if code == errno.EBUSY or "busy" in text.lower():
        return f"{url} is in use by another process (another gateway, a console, ModemManager)"
    if "Connection refused" in text or code == errno.ECONNREFUSED:
        return "nothing listens at that address: check the serial server's IP, port and power"
    return "check the device path or address in the configuration"


class SerialPort:
    def __init__(
        self,
        device: str,
        url: str,
        *,
        baudrate: int = 9600,
        timeout: float = 0.5,
        local_echo: bool = False,
    ) -> None:
        self.device = device
        self.url = url
        self.timeout = timeout
        self.local_echo = local_echo
        self._lock = threading.Lock()
        try:
            self._ser = serial.serial_for_url(
                url, baudrate=baudrate, timeout=timeout, write_timeout=timeout
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise DeviceInitError(device, f"cannot open {url}: {err}", open_hint(err, url)) from err

    @property
    def serial(self) -> serial.SerialBase:
        return self._ser

    def close(self) -> None:
        """Idempotent."""
        ser = getattr(self, "_ser", None)
        if ser is not None and ser.is_open:
            ser.close()

    def transact(
        self,
        request: bytes,
        reply: Callable[[bytearray], int | None] | None,
        timeout: float | None = None,
    ) -> bytes:
        """Write `request` and read one reply, holding the port for the whole exchange.

        `reply(buffer)` returns the length of a complete frame at the start of the buffer, or
        None while more bytes are needed. With `reply=None` nothing is read (write-only command).
        Stale input is discarded first; with local echo the adapter's copy of the request is
        skipped. Raises DeviceTimeout when no complete frame arrives within `timeout`.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._lock:
            try:
                self._ser.reset_input_buffer()
                self._ser.write(request)
                self._ser.flush()
                if reply is None:
                    return b""
                buf = bytearray()
                skip = len(request) if self.local_echo else 0
                while True:
                    need = reply(buf[skip:]) if len(buf) >= skip else None
                    if need is not None:
                        return bytes(buf[skip : skip + need])
                    left = deadline - time.monotonic()
                    if left <= 0:
                        got = buf[skip:].hex(" ") or "nothing"
                        raise DeviceTimeout(self.device, f"no complete reply (got {got})")
                    self._ser.timeout = min(left, 0.05)
                    chunk = self._ser.read(self._ser.in_waiting or 1)
                    buf += chunk
            except DeviceTimeout:
                raise
            except SERIAL_ERRORS as err:
                raise DeviceOperationError(
                    self.device, f"serial I/O failed (adapter unplugged?): {err}"
                ) from err
