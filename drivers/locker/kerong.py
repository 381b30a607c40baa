"""Kerong KR-CU16 / CU12 (PROTOCOLS.md section 1.1) and CU48 (section 1.2) lock boards."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from typing_extensions import override

from drivers.errors import DeviceInitError, DeviceOperationError, DeviceTimeout, DriverError
from drivers.locker import (
    BAD_REPLY_HINT,
    NO_REPLY_HINT,
    DoorState,
    FrameError,
    LockerOptions,
)
from drivers.locker import codec_cu48 as c48
from drivers.locker import codec_kerong as codec
from drivers.locker.serial_board import SerialBoard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KerongOptions(LockerOptions):
    board: int = 0  # 0-15
    doors: int = 16
    channel_base: int = field(default=0, metadata={"choices": (0, 1)})
    baudrate: int = 19200
    # The unlock has no reply, so nothing paces the next frame: give the board time to drive the
    # solenoid before it is asked for status.
    settle: float = 0.02


class KerongCU16(SerialBoard):
    """Kerong CU16: STX/ETX frames, sum checksum, unlock unacknowledged, 9-byte status with IR."""

    Options = KerongOptions
    max_board = codec.MAX_BOARD
    max_channel = codec.MAX_LOCK

    @override
    def _open_door(self, door: int) -> None:
        # The board does not answer an unlock; reading zero bytes still consumes an adapter's echo.
        request = codec.encode_unlock(self.options.board, self.wire(door))
        self.port.transact(request, lambda _: 0, timeout=self.options.timeout)

    @override
    def _door_status(self, door: int) -> DoorState:
        # One CU's status covers all its locks: the same query as all_status.
        return self._all_status()[door]

    @override
    def _all_status(self) -> dict[int, DoorState]:
        board = self.options.board
        frame = self.exchange(codec.encode_query(board), codec.STATUS_LEN)
        status = self.decode(codec.decode_status, frame)
        self.expect("board", status.board, board)
        states = {}
        for door in range(1, self.options.doors + 1):
            bit = self.wire(door)
            states[door] = self.state(
                door, bool(status.locks >> bit & 1), bool(status.items >> bit & 1)
            )
        return states


@dataclass(frozen=True)
class KerongCU48Options(LockerOptions):
    board: int = 0  # the ADDR byte
    doors: int = 48
    channel_base: int = field(default=0, metadata={"choices": (0, 1)})
    baudrate: int = 19200
    settle: float = 0.02  # the open is unanswered too (see KerongOptions)
    # Firmware dialect (PROTOCOLS.md 1.2): "auto" asks the board at open(); "a"/"b" skip asking.
    dialect: str = field(default="auto", metadata={"choices": ("auto", *c48.DIALECTS)})


class KerongCU48(SerialBoard):
    """Kerong CU48: 6-byte requests with a LOCK byte, open unanswered, one status reply for all
    48 locks; two firmware dialects (A: 0x50/0x51, 12-byte reply; B: 0x60/0x61, 18-byte reply with
    sensor bits as `item`).

    Dialect detection (dialect=auto): open() sends the dialect-A status query, then, if that gets
    no matching reply within `timeout`, the dialect-B one, and keeps the first dialect whose own
    reply code comes back from this board's address. Only status queries are sent, never an open,
    so detection moves no lock. A dialect-B board therefore costs one `timeout` at start-up; set
    dialect=b (or a) to skip detection. No reply to either query is a DeviceInitError with the
    address/baud/wiring hint.
    """

    Options = KerongCU48Options
    options: KerongCU48Options
    max_board = c48.MAX_BOARD
    max_channel = c48.MAX_LOCK

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self._dialect: c48.Dialect | None = None

    @property
    def dialect(self) -> c48.Dialect:
        """The dialect in use: configured, or detected by open()."""
        if self._dialect is None:
            raise DeviceOperationError(self.name, "not open")
        return self._dialect

    @override
    def open(self) -> None:
        if self.is_open:
            return
        super().open()
        try:
            wanted = self.options.dialect
            self._dialect = self._detect() if wanted == "auto" else c48.DIALECTS[wanted]
        except BaseException:
            self.close()
            raise

    @override
    def close(self) -> None:
        self._dialect = None
        super().close()

    def _detect(self) -> c48.Dialect:
        board = self.options.board
        heard: list[str] = []  # what came back that was not a match, for the error
        for dialect in (c48.A, c48.B):
            request = c48.encode_query(dialect, board)
            try:
                frame = self.port.transact(request, c48.reply_length, timeout=self.options.timeout)
            except DeviceTimeout:
                continue
            except DriverError as err:  # the port itself failed
                raise DeviceInitError(self.name, f"dialect detection: {err}") from err
            try:
                status = c48.decode_status(frame)
            except FrameError as err:
                heard.append(f"to {dialect.name.upper()}: {err}")
                continue
            if status.board != board or status.dialect is not dialect:
                heard.append(f"to {dialect.name.upper()}: {frame.hex(' ')}")
                continue
            log.info("%s: CU48 dialect %s detected", self.name, dialect.name.upper())
            return dialect
        if heard:
            detail = "; ".join(heard)
            raise DeviceInitError(
                self.name, f"no CU48 dialect detected, unexpected replies {detail}", BAD_REPLY_HINT
            )
        raise DeviceInitError(
            self.name,
            "no reply to the CU48 status query of dialect A (0x50) or B (0x60)",
            NO_REPLY_HINT,
        )

    @override
    def _open_door(self, door: int) -> None:
        # Unanswered, as on the CU16: reading zero bytes still consumes an adapter's echo.
        request = c48.encode_unlock(self.dialect, self.options.board, self.wire(door))
        self.port.transact(request, lambda _: 0, timeout=self.options.timeout)

    @override
    def _door_status(self, door: int) -> DoorState:
        # The only query there is covers all 48 locks.
        return self._all_status()[door]

    @override
    def _all_status(self) -> dict[int, DoorState]:
        board, dialect = self.options.board, self.dialect
        frame = self.exchange(c48.encode_query(dialect, board), dialect.reply_len)
        status = self.decode(c48.decode_status, frame)
        self.expect("board", status.board, board)
        self.expect("reply code", status.dialect.reply, dialect.reply)
        sensors = status.sensors
        states = {}
        for door in range(1, self.options.doors + 1):
            bit = self.wire(door)
            item = None if sensors is None else bool(sensors >> bit & 1)
            states[door] = self.state(door, bool(status.locks >> bit & 1), item)
        return states
