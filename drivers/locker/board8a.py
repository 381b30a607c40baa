"""The generic Chinese "8A/80" lock board (PROTOCOLS.md section 1.3)."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceOperationError
from drivers.locker import DoorState, FrameError, LockerOptions
from drivers.locker import codec_8a as codec
from drivers.locker.serial_board import SerialBoard

log = logging.getLogger(__name__)
REPORTS_KEPT = 64


@dataclass(frozen=True)
class Board8AOptions(LockerOptions):
    board: int = 1  # DIP switches, 1-32 (some boards 64)
    doors: int = 24
    channel_base: int = field(default=1, metadata={"choices": (0, 1)})
    baudrate: int = 9600
    # The board's own channel count (8-50 by model, not only the doors wired): the query-all
    # reply carries every group the board has. None: the last door's channel.
    channels: int | None = None


class Board8A(SerialBoard):
    """8A/80 board: XOR checksum, unlock acknowledged, query one or all (highest group first)."""

    Options = Board8AOptions
    options: Board8AOptions
    min_board = 1

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        # Door changes the board reported unasked (newest last), for a caller that wants them.
        self.reports: deque[DoorState] = deque(maxlen=REPORTS_KEPT)

    @property
    def channels(self) -> int:
        """The board's channel count, which sets the length of the query-all reply."""
        o = self.options
        return self.wire(o.doors) if o.channels is None else o.channels

    @override
    def _validate(self) -> None:
        super()._validate()
        if self.options.channel_base != 1:
            # Channel 0 means "every lock" on this board: door 1 must never map to it.
            raise DeviceConfigError(self.name, "channel_base", "1 (channel 0 unlocks every door)")
        last = self.wire(self.options.doors)
        if not last <= self.channels <= self.max_channel:
            raise DeviceConfigError(
                self.name, "channels", f"the board's channel count, {last}..{self.max_channel}"
            )

    @override
    def unsolicited_len(self, buf: bytes | bytearray) -> int | None:
        return codec.report_len(buf)

    @override
    def on_unsolicited(self, frame: bytes) -> None:
        # A door changed just before our request: the frame is not the reply, but it is news.
        report = codec.decode_report(frame)
        door = report.lock - self.options.channel_base + 1
        if report.board != self.options.board or not 1 <= door <= self.options.doors:
            log.info("%s: report for another board or channel: %s", self.name, frame.hex(" "))
            return
        state = self.state(door, bool(report.bits))
        log.info("%s: board reported %s", self.name, state)
        self.reports.append(state)

    @override
    def _open_door(self, door: int) -> None:
        board, lock = self.options.board, self.wire(door)
        frame = self.exchange(codec.encode_unlock(board, lock), 5)
        status = self.decode(codec.decode_unlock_reply, frame)
        self.expect("board", status.board, board)
        self.expect("lock", status.lock, lock)

    @override
    def _door_status(self, door: int) -> DoorState:
        board, lock = self.options.board, self.wire(door)
        frame = self.exchange(codec.encode_query(board, lock), 5)
        status = self.decode(codec.decode_status, frame)
        self.expect("board", status.board, board)
        self.expect("lock", status.lock, lock)
        return self.state(door, bool(status.bits & 1))

    @override
    def _all_status(self) -> dict[int, DoorState]:
        board, doors, channels = self.options.board, self.options.doors, self.channels
        frame = self.exchange(codec.encode_query(board, 0), codec.status_reply_len(0, channels))
        try:
            status = codec.decode_status(frame)
        except FrameError as err:
            # The usual cause on a sound line: a board with more groups than `channels` says.
            raise DeviceOperationError(
                self.name,
                f"{err} (read as a {channels}-channel board: if the board has more channels "
                "than that, set channels= / 若锁控板路数多于门数，请设置 channels)",
            ) from err
        self.expect("board", status.board, board)
        self.expect("query-all lock field", status.lock, 0)
        # Bit 0 of the lowest group is channel 1.
        bits = status.bits
        return {d: self.state(d, bool(bits >> (self.wire(d) - 1) & 1)) for d in range(1, doors + 1)}
