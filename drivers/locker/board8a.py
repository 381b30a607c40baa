"""The generic Chinese "8A/80" lock board (PROTOCOLS.md section 1.3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from typing_extensions import override

from drivers.errors import DeviceConfigError
from drivers.locker import DoorState, LockerOptions
from drivers.locker import codec_8a as codec
from drivers.locker.serial_board import SerialBoard


@dataclass(frozen=True)
class Board8AOptions(LockerOptions):
    board: int = 1  # DIP switches, 1-32 (some boards 64)
    doors: int = 24
    channel_base: int = field(default=1, metadata={"choices": (0, 1)})
    baudrate: int = 9600


class Board8A(SerialBoard):
    """8A/80 board: XOR checksum, unlock acknowledged, query one or all (highest group first)."""

    Options = Board8AOptions
    min_board = 1

    @override
    def _validate(self) -> None:
        super()._validate()
        if self.options.channel_base != 1:
            # Channel 0 means "every lock" on this board: door 1 must never map to it.
            raise DeviceConfigError(self.name, "channel_base", "1 (channel 0 unlocks every door)")

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
        board, doors = self.options.board, self.options.doors
        channels = self.wire(doors)
        frame = self.exchange(codec.encode_query(board, 0), codec.status_reply_len(0, channels))
        status = self.decode(codec.decode_status, frame)
        self.expect("board", status.board, board)
        self.expect("query-all lock field", status.lock, 0)
        # Bit 0 of the lowest group is channel 1.
        bits = status.bits
        return {d: self.state(d, bool(bits >> (self.wire(d) - 1) & 1)) for d in range(1, doors + 1)}
