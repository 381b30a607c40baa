"""GM65/GM812-style ("Grow") serial scanner command frames (PROTOCOLS.md section 3.1).

Host -> reader: `7E 00 TYPE LEN ADDR_H ADDR_L DATA CRC_H CRC_L`, TYPE 07 read, 08 write, 09 save;
CRC-16/XMODEM over TYPE..DATA (or `AB CD`, which tells the reader to skip the check).
Reader -> host: `02 00 STATUS LEN DATA CRC_H CRC_L`; a write is acknowledged `02 00 00 01 00 33 31`.

Feedback: these readers have no "beep now" command; their own decode beep is a setting. The
visitor signal goes out on OUT1 (zone 0x00E7, 1 = high), the output a gate reader wires to its
green LED/beeper: a good scan is one pulse, a bad scan three short pulses. The pulse timing is
driven by the host (see serial_scanner.Feedback), because a frame sets a level, not a pulse.
"""

from __future__ import annotations

HEAD = b"\x7e\x00"
REPLY_HEAD = b"\x02\x00"
WRITE = 0x08
READ = 0x07
SAVE = 0x09
ZONE_OUT1 = 0x00E7
ACK = bytes.fromhex("02 00 00 01 00 33 31")


def crc16_xmodem(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(kind: int, zone: int, data: bytes, check: bool = True) -> bytes:
    """One host command frame; `check=False` sends `AB CD` instead of the CRC."""
    body = bytes([kind, len(data), zone >> 8, zone & 0xFF]) + data
    crc = crc16_xmodem(body).to_bytes(2, "big") if check else b"\xab\xcd"
    return HEAD + body + crc


def encode_out1(high: bool) -> bytes:
    return encode(WRITE, ZONE_OUT1, bytes([1 if high else 0]))


def frame_length(buf: bytes | bytearray) -> int | None:
    """Length of the command or reply frame at the start of `buf`: 0 if `buf` does not start
    with one, None while more bytes are needed to tell. Used to take our own commands (local
    echo) and the reader's acknowledgements out of the scan stream."""
    if len(buf) < 2:
        return None if buf in (b"\x7e", b"\x02") else 0
    head = bytes(buf[:2])
    if head == HEAD:
        if len(buf) < 4:
            return None
        return 2 + 1 + 1 + 2 + buf[3] + 2  # head, type, len, zone, data, crc
    if head == REPLY_HEAD:
        if len(buf) < 4:
            return None
        return 2 + 1 + 1 + buf[3] + 2  # head, status, len, data, crc
    return 0


def decode_command(frame: bytes) -> tuple[int, int, bytes, bool]:
    """(type, zone, data, crc_ok) of a host command frame (used by the simulator)."""
    if frame[:2] != HEAD or len(frame) < 8:
        raise ValueError(f"not a command frame: {frame.hex(' ')}")
    length = frame[3]
    body = frame[2 : 6 + length]
    crc = frame[6 + length : 8 + length]
    crc_ok = crc == b"\xab\xcd" or crc == crc16_xmodem(body).to_bytes(2, "big")
    return frame[2], int.from_bytes(frame[4:6], "big"), bytes(frame[6 : 6 + length]), crc_ok
