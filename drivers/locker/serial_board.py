"""What the RS485 lock-board drivers share: URL and options, the port, framed exchanges."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceInitError, DeviceOperationError
from drivers.locker import DoorState, FrameError, Locker, LockerOptions
from drivers.port import SerialPort
from drivers.url import options, parse_url

log = logging.getLogger(__name__)

# Anything serial.serial_for_url opens; `spy://` is left out because its query is pyserial's.
SCHEMES = ("serial", "socket", "loop")
T = TypeVar("T")
SHARED_BUS_HINT = (
    "boards on one RS485 bus must share baudrate and local_echo / 同一485总线上的锁控板波特率需一致"
)


@dataclass
class _Bus:
    port: SerialPort
    settings: tuple[int, bool]  # (baudrate, local_echo): what every board on the bus must share
    users: int = 1


# Several boards (DIP addresses) usually hang on one RS485 bus, each configured as its own
# device: they share one SerialPort, whose lock keeps one transaction at a time on the wire.
_buses: dict[str, _Bus] = {}
_buses_lock = threading.Lock()


def _bus_key(url: str) -> str | None:
    if url.startswith("loop://"):
        return None  # every loop:// is its own loopback
    return os.path.realpath(url) if url.startswith("/") else url


def acquire_port(
    device: str, url: str, baudrate: int, local_echo: bool, timeout: float
) -> SerialPort:
    """The bus's port, opened on first use; raises DeviceInitError."""
    key = _bus_key(url)
    with _buses_lock:
        bus = _buses.get(key) if key is not None else None
        if bus is None:
            port = SerialPort(
                device, url, baudrate=baudrate, timeout=timeout, local_echo=local_echo
            )
            if key is not None:
                _buses[key] = _Bus(port, (baudrate, local_echo))
            return port
        if bus.settings != (baudrate, local_echo):
            got = f"baudrate={bus.settings[0]} local_echo={bus.settings[1]}"
            raise DeviceInitError(device, f"{url} is already open with {got}", SHARED_BUS_HINT)
        bus.users += 1
        return bus.port


def release_port(port: SerialPort) -> None:
    """Close the port when its last board is closed."""
    with _buses_lock:
        for key, bus in list(_buses.items()):
            if bus.port is port:
                bus.users -= 1
                if bus.users:
                    return
                del _buses[key]
        port.close()


class SerialBoard(Locker):
    """One lock board behind a serial port (or an Ethernet-serial bridge)."""

    Options: ClassVar[type[LockerOptions]] = LockerOptions
    max_board: ClassVar[int] = 255
    min_board: ClassVar[int] = 0
    max_channel: ClassVar[int] = 255

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        parsed = parse_url(name, url, SCHEMES)
        self.options = options(name, self.Options, parsed.params)
        self.serial_url = parsed.serial_url
        self._port: SerialPort | None = None
        self._validate()

    def _validate(self) -> None:
        o = self.options
        if not self.min_board <= o.board <= self.max_board:
            raise DeviceConfigError(self.name, "board", f"{self.min_board}..{self.max_board}")
        top = self.max_channel - o.channel_base + 1
        if not 1 <= o.doors <= top:
            raise DeviceConfigError(self.name, "doors", f"1..{top} with this channel_base")
        for param in ("timeout", "confirm_timeout", "confirm_interval"):
            if getattr(o, param) <= 0:
                raise DeviceConfigError(self.name, param, "seconds, > 0")
        if o.settle < 0:
            raise DeviceConfigError(self.name, "settle", "seconds, >= 0")
        if o.baudrate <= 0:
            raise DeviceConfigError(self.name, "baudrate", "a positive integer")

    @override
    def open(self) -> None:
        if self._port is None:
            o = self.options
            self._port = acquire_port(
                self.name, self.serial_url, o.baudrate, o.local_echo, o.timeout
            )

    @override
    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            release_port(port)

    @property
    @override
    def is_open(self) -> bool:
        return self._port is not None

    @property
    def port(self) -> SerialPort:
        if self._port is None:
            raise DeviceOperationError(self.name, "not open")
        return self._port

    def wire(self, door: int) -> int:
        """The channel number on the wire for `door` (1-based)."""
        return door - 1 + self.options.channel_base

    def exchange(self, request: bytes, reply_len: int) -> bytes:
        """Send `request`, read a reply of exactly `reply_len` bytes (frames carry no length).

        Complete unsolicited frames the board may send ahead of the reply (`unsolicited_len`)
        are skipped and handed to `on_unsolicited`, so they are not taken for the reply."""

        def frame_len(buf: bytearray) -> int | None:
            start = self._unsolicited_prefix(buf)
            if start is None or len(buf) < start + reply_len:
                return None
            return start + reply_len

        raw = self.port.transact(request, frame_len, timeout=self.options.timeout)
        start = self._unsolicited_prefix(raw) or 0  # decided on these same bytes above
        at = 0
        while at < start:
            n = self.unsolicited_len(raw[at:]) or start - at
            self.on_unsolicited(raw[at : at + n])
            at += n
        return raw[start:]

    def _unsolicited_prefix(self, buf: bytes | bytearray) -> int | None:
        """Bytes of complete unsolicited frames at the start of `buf`; None: undecided yet."""
        at = 0
        while True:
            n = self.unsolicited_len(buf[at:])
            if n is None:
                return None
            if n == 0:
                return at
            at += n

    def unsolicited_len(self, buf: bytes | bytearray) -> int | None:
        """Length of a complete unsolicited frame at the start of `buf`, 0 when there is none,
        None while more bytes are needed to tell. Boards that never speak unasked: 0."""
        return 0

    def on_unsolicited(self, frame: bytes) -> None:
        """An unsolicited frame skipped before a reply."""
        log.info("%s: unsolicited frame %s", self.name, frame.hex(" "))

    def decode(self, fn: Callable[[bytes], T], frame: bytes) -> T:
        try:
            return fn(frame)
        except FrameError as err:
            raise DeviceOperationError(self.name, str(err)) from err

    def expect(self, what: str, got: int, want: int) -> None:
        if got != want:
            raise DeviceOperationError(self.name, f"reply for {what} {got}, expected {want}")

    def state(self, door: int, signal: bool, item: bool | None = None) -> DoorState:
        return DoorState(door, int(signal) == self.options.open_bit, item)
