"""Modbus RTU codec for relay boards (Waveshare "Modbus RTU Relay (D)" style): pure functions.

PROTOCOLS.md 2.2. Frames are `slave fc data... crc_lo crc_hi`, CRC-16/MODBUS sent low byte first.
Coils and inputs are addressed from 0 on the wire (channel n on the board is address n-1).
The "flash" command is FC05 on coil 0x0200+n with the pulse length in 100 ms steps as the value:
the board times the pulse itself, so a crashed daemon cannot hold a gate open.
Both sides are here: requests and reply decoding for the driver, request decoding and replies
for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

READ_COILS = 0x01
READ_INPUTS = 0x02
WRITE_COIL = 0x05
FLASH_ON_BASE = 0x0200  # + relay address; value = pulse length in 100 ms steps
FLASH_OFF_BASE = 0x0400  # + relay address; the relay is on, then off after the time
ALL_RELAYS = 0x00FF
FLASH_STEP_MS = 100
ON, OFF = 0xFF00, 0x0000
REQUEST_LEN = 8  # every request this codec knows is 8 bytes long

EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "slave device failure",
}


class ModbusError(ValueError):
    """A frame that is not a valid reply (bad CRC, wrong address or function, bad length)."""


class ModbusException(ModbusError):
    """The slave answered with an exception reply."""

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        name = EXCEPTIONS.get(code, "unknown")
        super().__init__(f"modbus exception {code} ({name}) to function {function:#04x}")


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def _request(slave: int, function: int, address: int, value: int) -> bytes:
    if not 0 <= slave <= 247:
        raise ValueError(f"slave address {slave} out of range 0..247")
    if not 0 <= address <= 0xFFFF or not 0 <= value <= 0xFFFF:
        raise ValueError("address and value are 16-bit")
    return with_crc(
        bytes([slave, function]) + address.to_bytes(2, "big") + value.to_bytes(2, "big")
    )


def encode_write_coil(slave: int, address: int, on: bool) -> bytes:
    """FC05: relay `address` (0-based) on or off; 0x00FF addresses all relays."""
    return _request(slave, WRITE_COIL, address, ON if on else OFF)


def flash_steps(pulse_ms: int) -> int:
    """The flash value for `pulse_ms`; must be a whole number of 100 ms steps, 1..0x7FFF."""
    steps, rest = divmod(pulse_ms, FLASH_STEP_MS)
    if rest or not 1 <= steps <= 0x7FFF:
        raise ValueError(f"flash pulse {pulse_ms} ms is not a multiple of 100 ms in range")
    return steps


def encode_flash(slave: int, address: int, pulse_ms: int) -> bytes:
    """FC05 "flash on": relay `address` (0-based) on for `pulse_ms`, timed by the board."""
    if not 0 <= address < 0x100:
        raise ValueError(f"relay address {address} out of range")
    return _request(slave, WRITE_COIL, FLASH_ON_BASE + address, flash_steps(pulse_ms))


def encode_read_inputs(slave: int, start: int, count: int) -> bytes:
    """FC02: read `count` discrete inputs from `start` (0-based)."""
    if not 1 <= count <= 2000:
        raise ValueError(f"input count {count} out of range 1..2000")
    return _request(slave, READ_INPUTS, start, count)


def reply_length(buf: bytes | bytearray) -> int | None:
    """Length of the reply frame at the start of `buf`, or None while more bytes are needed."""
    if len(buf) < 3:
        return None
    function = buf[1]
    if function & 0x80:
        size = 5
    elif function in (READ_COILS, READ_INPUTS):
        size = 3 + buf[2] + 2
    else:
        size = 8  # FC05 (and FC06) echo the request
    return size if len(buf) >= size else None


def _check(slave: int, function: int, frame: bytes) -> None:
    if not crc_ok(frame):
        raise ModbusError(f"bad CRC in reply {frame.hex(' ')}")
    if frame[0] != slave:
        raise ModbusError(f"reply from slave {frame[0]}, expected {slave}")
    if frame[1] == function | 0x80:
        raise ModbusException(function, frame[2])
    if frame[1] != function:
        raise ModbusError(f"reply to function {frame[1]:#04x}, expected {function:#04x}")


def decode_write_coil_reply(request: bytes, reply: bytes) -> None:
    """An FC05 reply must echo the request; raises ModbusError/ModbusException otherwise."""
    _check(request[0], WRITE_COIL, reply)
    if reply != request:
        raise ModbusError(f"reply {reply.hex(' ')} does not echo {request.hex(' ')}")


def decode_read_inputs(slave: int, count: int, reply: bytes) -> list[bool]:
    """Input states from an FC02 reply, input `start` first (bit 0 of the first data byte)."""
    _check(slave, READ_INPUTS, reply)
    nbytes = (count + 7) // 8
    if reply[2] != nbytes or len(reply) != 5 + nbytes:
        raise ModbusError(f"reply carries {reply[2]} data bytes, expected {nbytes}")
    data = reply[3 : 3 + nbytes]
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


# Simulator side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    slave: int
    function: int
    address: int
    value: int  # FC05: the coil value; FC01/02: the count


def decode_request(frame: bytes) -> Request:
    """An 8-byte request frame (FC01/02/05/06); raises ModbusError on a bad CRC or length."""
    if len(frame) != REQUEST_LEN:
        raise ModbusError(f"request of {len(frame)} bytes, expected {REQUEST_LEN}")
    if not crc_ok(frame):
        raise ModbusError(f"bad CRC in request {frame.hex(' ')}")
    return Request(
        frame[0],
        frame[1],
        int.from_bytes(frame[2:4], "big"),
        int.from_bytes(frame[4:6], "big"),
    )


def encode_bits_reply(slave: int, function: int, bits: list[bool]) -> bytes:
    """An FC01/FC02 reply carrying `bits`, first bit in bit 0 of the first data byte."""
    data = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            data[i // 8] |= 1 << (i % 8)
    return with_crc(bytes([slave, function, len(data)]) + bytes(data))


def encode_exception(slave: int, function: int, code: int) -> bytes:
    return with_crc(bytes([slave, function | 0x80, code]))
