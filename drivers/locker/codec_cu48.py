"""Kerong CU48 family (PROTOCOLS.md section 1.2): pure encoders and decoders for both dialects.

Requests are 6 bytes, `STX ADDR LOCK CMD ETX SUM`, LOCK 0-47, SUM the low byte of the sum of the
preceding bytes. Two firmware dialects differ only in their command codes and status reply:

- A: query 0x50, open 0x51; reply `02 ADDR 00 65 D1..D6 03 SUM` (12 bytes), 48 lock bits.
- B: query 0x60, open 0x61; reply `02 ADDR 00 75 L1..L6 S1..S6 03 SUM` (18 bytes), 48 lock bits
  then 48 sensor bits.

Bits are LSB first: bit 0 of the first data byte is LOCK 0. The open command has no reply in
either dialect (both sources write the open and go straight to a query).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.locker import FrameError
from drivers.locker.codec_kerong import ETX, STX, checksum, frame

REQUEST_LEN = 6
MAX_BOARD = 0xFF  # ADDR is a whole byte; no source states the DIP range
MAX_LOCK = 47
GROUP_BYTES = 6  # 48 bits


@dataclass(frozen=True)
class Dialect:
    name: str
    query: int
    unlock: int
    reply: int
    reply_len: int
    has_sensors: bool


A = Dialect("a", query=0x50, unlock=0x51, reply=0x65, reply_len=12, has_sensors=False)
B = Dialect("b", query=0x60, unlock=0x61, reply=0x75, reply_len=18, has_sensors=True)
DIALECTS = {d.name: d for d in (A, B)}
BY_REPLY = {d.reply: d for d in (A, B)}


def _check(board: int, lock: int) -> None:
    if not 0 <= board <= MAX_BOARD:
        raise ValueError(f"board {board} outside 0..{MAX_BOARD}")
    if not 0 <= lock <= MAX_LOCK:
        raise ValueError(f"lock {lock} outside 0..{MAX_LOCK}")


def encode_unlock(dialect: Dialect, board: int, lock: int) -> bytes:
    """Open lock index `lock` (0-47)."""
    _check(board, lock)
    return frame(STX, board, lock, dialect.unlock, ETX)


def encode_query(dialect: Dialect, board: int) -> bytes:
    """Status of every lock on the board."""
    _check(board, 0)
    return frame(STX, board, 0, dialect.query, ETX)


@dataclass(frozen=True)
class Request:
    board: int
    lock: int
    cmd: int


def decode_request(frame: bytes) -> Request:
    """A 6-byte request (the simulator's side)."""
    if len(frame) != REQUEST_LEN or frame[0] != STX or frame[4] != ETX:
        raise FrameError(f"not a CU48 request: {frame.hex(' ')}")
    if checksum(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad checksum in {frame.hex(' ')}")
    return Request(frame[1], frame[2], frame[3])


@dataclass(frozen=True)
class Status:
    dialect: Dialect
    board: int
    locks: int  # bit i = lock index i
    sensors: int | None  # bit i = sensor of lock index i (dialect B only)


def _bits(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _group(bits: int) -> bytes:
    return (bits & (1 << 8 * GROUP_BYTES) - 1).to_bytes(GROUP_BYTES, "little")


def encode_status(dialect: Dialect, board: int, locks: int, sensors: int = 0) -> bytes:
    """The status reply (the simulator's side); `sensors` is dropped in dialect A."""
    data = _group(locks) + (_group(sensors) if dialect.has_sensors else b"")
    return frame(STX, board, 0, dialect.reply, *data, ETX)


def reply_length(buf: bytes | bytearray) -> int | None:
    """How long the status reply starting `buf` is, from its reply code; None until it is known.

    Lets detection read either dialect's reply to either query. An unknown code makes the bytes
    read so far the "frame", so decode_status reports them instead of waiting for a timeout.
    """
    if len(buf) < 4:
        return None
    dialect = BY_REPLY.get(buf[3])
    need = dialect.reply_len if dialect is not None else 4
    return need if len(buf) >= need else None


def decode_status(frame: bytes) -> Status:
    """A 12-byte (A) or 18-byte (B) status reply; which one is told by the reply code."""
    dialect = BY_REPLY.get(frame[3]) if len(frame) >= 4 else None
    if frame[:1] != bytes([STX]) or dialect is None:
        raise FrameError(f"not a CU48 status reply: {frame.hex(' ')}")
    if len(frame) != dialect.reply_len:
        raise FrameError(
            f"status reply length {len(frame)}, expected {dialect.reply_len}: {frame.hex(' ')}"
        )
    if frame[-2] != ETX:
        raise FrameError(f"malformed status reply {frame.hex(' ')}")
    if checksum(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad checksum in reply {frame.hex(' ')}")
    locks = _bits(frame[4 : 4 + GROUP_BYTES])
    sensors = _bits(frame[4 + GROUP_BYTES : 4 + 2 * GROUP_BYTES]) if dialect.has_sensors else None
    return Status(dialect, frame[1], locks, sensors)
