"""Kerong KR-CU16 / CU12 lock board (PROTOCOLS.md section 1.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from typing_extensions import override

from drivers.locker import DoorState, LockerOptions
from drivers.locker import codec_kerong as codec
from drivers.locker.serial_board import SerialBoard


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
