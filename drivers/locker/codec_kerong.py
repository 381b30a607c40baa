"""Kerong KR-CU16/CU12 (PROTOCOLS.md section 1.1): pure encoders and decoders.

Requests are `STX ADDR CMD ETX SUM` with ADDR = board<<4 | lock (both 0-15) and SUM the low byte
of the sum of the preceding bytes. The status reply is 9 bytes:
`STX ADDR 35 L1-8 L9-16 IR1-8 IR9-16 ETX SUM`, bit 0 = lock 1; lock bits are the hook switch,
IR bits say an item is inside. The unlock command has no reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.locker import FrameError

STX = 0x02
ETX = 0x03
CMD_STATUS = 0x30
CMD_UNLOCK = 0x31
CMD_STATUS_ALL = 0x32
REPLY_STATUS = 0x35
STATUS_LEN = 9
MAX_BOARD = 15
MAX_LOCK = 15


def checksum(data: bytes) -> int:
    """Low byte of the sum."""
    return sum(data) & 0xFF


def frame(*body: int) -> bytes:
    """`body` followed by its sum checksum (every Kerong board frames this way)."""
    raw = bytes(body)
    return raw + bytes([checksum(raw)])


def _addr(board: int, lock: int) -> int:
    if not 0 <= board <= MAX_BOARD:
        raise ValueError(f"board {board} outside 0..{MAX_BOARD}")
    if not 0 <= lock <= MAX_LOCK:
        raise ValueError(f"lock {lock} outside 0..{MAX_LOCK}")
    return board << 4 | lock


def encode_unlock(board: int, lock: int) -> bytes:
    """Unlock lock index `lock` (0-15) on `board` (0-15)."""
    return frame(STX, _addr(board, lock), CMD_UNLOCK, ETX)


def encode_query(board: int) -> bytes:
    """Status of one CU (all its locks and IR sensors)."""
    return frame(STX, _addr(board, 0), CMD_STATUS, ETX)


def encode_query_all() -> bytes:
    """Status of every CU on the bus (not used by the driver: one board per device)."""
    return frame(STX, 0x00, CMD_STATUS_ALL, ETX)


@dataclass(frozen=True)
class Request:
    board: int
    lock: int
    cmd: int


def decode_request(frame: bytes) -> Request:
    """A 5-byte request (the simulator's side)."""
    if len(frame) != 5 or frame[0] != STX or frame[3] != ETX:
        raise FrameError(f"not a CU request: {frame.hex(' ')}")
    if checksum(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad checksum in {frame.hex(' ')}")
    return Request(frame[1] >> 4, frame[1] & 0x0F, frame[2])


@dataclass(frozen=True)
class Status:
    board: int
    locks: int  # bit i = lock index i (hook switch)
    items: int  # bit i = item inside lock index i


def encode_status(board: int, locks: int, items: int) -> bytes:
    return frame(
        STX,
        _addr(board, 0),
        REPLY_STATUS,
        locks & 0xFF,
        locks >> 8 & 0xFF,
        items & 0xFF,
        items >> 8 & 0xFF,
        ETX,
    )


def decode_status(frame: bytes) -> Status:
    """The 9-byte 0x35 reply."""
    if len(frame) != STATUS_LEN:
        raise FrameError(f"status reply length {len(frame)}, expected 9: {frame.hex(' ')}")
    if frame[0] != STX or frame[7] != ETX or frame[2] != REPLY_STATUS:
        raise FrameError(f"malformed status reply {frame.hex(' ')}")
    if checksum(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad checksum in reply {frame.hex(' ')}")
    return Status(frame[1] >> 4, frame[3] | frame[4] << 8, frame[5] | frame[6] << 8)
