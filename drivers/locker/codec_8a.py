"""The generic "8A/80" lock board (PROTOCOLS.md section 1.3): pure encoders and decoders.

Frames are `HEAD BOARD LOCK DATA BCC`, BCC = XOR of every preceding byte. LOCK 0 means "all".
The query-all reply carries one bit per channel, grouped in bytes with the HIGHEST group first
(`80 01 [17-24] [9-16] [1-8] 33 BCC`); bit 0 of the last group is channel 1. Boards with up to 24
channels still send three group bytes. The status byte of a single-lock reply is 0x11 or 0x00;
here it is the "signal" bit (0x11 -> 1) and the driver maps it to open/closed by polarity.
Some boards also send an unsolicited report `82 BOARD LOCK ST BCC` when a door changes; one can
land on the bus just before the reply to our request, so `report_len` lets the driver skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.locker import FrameError

UNLOCK = 0x8A
QUERY = 0x80
REPORT = 0x82
UNLOCK_CMD = 0x11
QUERY_CMD = 0x33
SIGNAL_ON = 0x11
SIGNAL_OFF = 0x00
MIN_GROUPS = 3


def bcc(data: bytes) -> int:
    """XOR of all bytes."""
    out = 0
    for b in data:
        out ^= b
    return out


def _frame(*body: int) -> bytes:
    for b in body:
        if not 0 <= b <= 0xFF:
            raise ValueError(f"byte out of range: {b}")
    raw = bytes(body)
    return raw + bytes([bcc(raw)])


def groups(channels: int) -> int:
    """Group bytes in a query-all reply for a board with `channels` channels."""
    return max(MIN_GROUPS, (channels + 7) // 8)


def encode_unlock(board: int, lock: int) -> bytes:
    """Unlock `lock` (wire channel; 0 = every lock) on `board`."""
    return _frame(UNLOCK, board, lock, UNLOCK_CMD)


def encode_query(board: int, lock: int = 0) -> bytes:
    """Query one lock, or every lock with `lock=0`."""
    return _frame(QUERY, board, lock, QUERY_CMD)


@dataclass(frozen=True)
class Request:
    head: int
    board: int
    lock: int
    cmd: int


def decode_request(frame: bytes) -> Request:
    """A 5-byte request (the simulator's side)."""
    if len(frame) != 5:
        raise FrameError(f"request length {len(frame)}, expected 5")
    if bcc(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad BCC in {frame.hex(' ')}")
    return Request(frame[0], frame[1], frame[2], frame[3])


def encode_unlock_reply(board: int, lock: int, signal: bool) -> bytes:
    return _frame(UNLOCK, board, lock, SIGNAL_ON if signal else SIGNAL_OFF)


def encode_status_one(board: int, lock: int, signal: bool) -> bytes:
    return _frame(QUERY, board, lock, SIGNAL_ON if signal else SIGNAL_OFF)


def encode_status_all(board: int, bits: int, channels: int) -> bytes:
    """Query-all reply: bit i of `bits` is channel i+1; highest group first."""
    n = groups(channels)
    return _frame(QUERY, board, *bits.to_bytes(n, "big"), QUERY_CMD)


@dataclass(frozen=True)
class Status:
    board: int
    lock: int  # the lock queried, 0 for a query-all reply
    bits: int  # bit i = channel i+1 (for a single lock: bit 0 is its signal)
    channels: int  # channels the reply covers


def _check(frame: bytes, head: int) -> None:
    if len(frame) < 5:
        raise FrameError(f"reply too short: {frame.hex(' ') or 'empty'}")
    if frame[0] != head:
        raise FrameError(f"reply header {frame[0]:02x}, expected {head:02x}: {frame.hex(' ')}")
    if bcc(frame[:-1]) != frame[-1]:
        raise FrameError(f"bad BCC in reply {frame.hex(' ')}")


def _signal(frame: bytes) -> bool:
    if frame[3] not in (SIGNAL_ON, SIGNAL_OFF):
        raise FrameError(f"unknown status byte {frame[3]:02x} in {frame.hex(' ')}")
    return frame[3] == SIGNAL_ON


def decode_unlock_reply(frame: bytes) -> Status:
    """`8A BOARD LOCK ST BCC`."""
    _check(frame, UNLOCK)
    if len(frame) != 5:
        raise FrameError(f"unlock reply length {len(frame)}: {frame.hex(' ')}")
    return Status(frame[1], frame[2], int(_signal(frame)), 1)


def decode_status(frame: bytes) -> Status:
    """A query reply: single lock (`80 B L ST BCC`) or query-all (`80 B G_hi..G_lo 33 BCC`)."""
    _check(frame, QUERY)
    if len(frame) == 5:
        return Status(frame[1], frame[2], int(_signal(frame)), 1)
    if len(frame) < 4 + MIN_GROUPS or frame[-2] != QUERY_CMD:
        raise FrameError(f"malformed query-all reply {frame.hex(' ')}")
    body = frame[2:-2]
    return Status(frame[1], 0, int.from_bytes(body, "big"), 8 * len(body))


def status_reply_len(lock: int, channels: int) -> int:
    """Length of the reply to `encode_query(board, lock)` on a board with `channels` channels."""
    return 5 if lock else 4 + groups(channels)


def encode_report(board: int, lock: int, signal: bool) -> bytes:
    """The board's unsolicited report that `lock`'s signal changed (the simulator's side)."""
    return _frame(REPORT, board, lock, SIGNAL_ON if signal else SIGNAL_OFF)


def report_len(buf: bytes | bytearray) -> int | None:
    """5 when `buf` starts with a complete, valid unsolicited report; 0 when it does not start
    with one; None while fewer than 5 bytes after a 0x82 leave it undecided."""
    if not buf or buf[0] != REPORT:
        return 0
    if len(buf) < 5:
        return None
    frame = bytes(buf[:5])
    valid = bcc(frame[:-1]) == frame[-1] and frame[3] in (SIGNAL_ON, SIGNAL_OFF)
    return 5 if valid else 0


def decode_report(frame: bytes) -> Status:
    """`82 BOARD LOCK ST BCC` (bits: the lock's signal)."""
    _check(frame, REPORT)
    if len(frame) != 5:
        raise FrameError(f"report length {len(frame)}: {frame.hex(' ')}")
    return Status(frame[1], frame[2], int(_signal(frame)), 1)
