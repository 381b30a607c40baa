"""Pure codecs against the hex vectors of PROTOCOLS.md section 2.2 (copied here verbatim)."""

from __future__ import annotations

import pytest

from drivers.gate import lcus
from drivers.gate import modbus as mb

# PROTOCOLS.md 2.2, "Modbus RTU relay (Waveshare "Modbus RTU Relay (D)", High)".
RELAY0_ON = "01 05 00 00 FF 00 8C 3A"
RELAY0_OFF = "01 05 00 00 00 00 CD CA"
RELAY1_ON = "01 05 00 01 FF 00 DD FA"
FLASH_RELAY0_700MS = "01 05 02 00 00 07 8D B0"
ALL_OFF = "01 05 00 FF 00 00 FD FA"
READ_COILS_0_7 = "01 01 00 00 00 08 3D CC"
READ_INPUTS_0_7 = "01 02 00 00 00 08 79 CC"

# PROTOCOLS.md 2.2, "LCUS-1/2/4/8 USB relay".
LCUS_CH1_ON = "A0 01 01 A2"
LCUS_CH1_OFF = "A0 01 00 A1"
LCUS_CH2_ON = "A0 02 01 A3"
LCUS_CH8_ON = "A0 08 01 A9"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@pytest.mark.parametrize(
    "vector",
    [
        RELAY0_ON,
        RELAY0_OFF,
        RELAY1_ON,
        FLASH_RELAY0_700MS,
        ALL_OFF,
        READ_COILS_0_7,
        READ_INPUTS_0_7,
    ],
)
def test_crc16_of_every_vector(vector: str) -> None:
    frame = h(vector)
    assert mb.crc16(frame[:-2]).to_bytes(2, "little") == frame[-2:]
    assert mb.crc_ok(frame)


def test_fc05_write_coil_vectors() -> None:
    assert mb.encode_write_coil(1, 0, True) == h(RELAY0_ON)
    assert mb.encode_write_coil(1, 0, False) == h(RELAY0_OFF)
    assert mb.encode_write_coil(1, 1, True) == h(RELAY1_ON)
    assert mb.encode_write_coil(1, mb.ALL_RELAYS, False) == h(ALL_OFF)


def test_flash_is_board_timed_in_100ms_steps() -> None:
    assert mb.encode_flash(1, 0, 700) == h(FLASH_RELAY0_700MS)
    for bad in (0, 150, 250):
        with pytest.raises(ValueError):
            mb.encode_flash(1, 0, bad)


def test_fc02_read_inputs_vector_and_reply() -> None:
    assert mb.encode_read_inputs(1, 0, 8) == h(READ_INPUTS_0_7)
    reply = mb.encode_bits_reply(1, mb.READ_INPUTS, [True, False, True] + [False] * 5)
    assert reply[:4] == h("01 02 01 05") and mb.crc_ok(reply)
    assert mb.reply_length(reply) == len(reply) == 6
    assert mb.decode_read_inputs(1, 8, reply) == [True, False, True] + [False] * 5


def test_reply_framing_waits_for_the_whole_frame() -> None:
    reply = h(RELAY0_ON)
    assert [mb.reply_length(reply[:n]) for n in range(8)] == [None] * 8
    assert mb.reply_length(reply + b"\x00") == 8
    assert mb.reply_length(mb.encode_exception(1, 5, 2)) == 5


def test_write_coil_reply_must_echo_the_request() -> None:
    mb.decode_write_coil_reply(h(FLASH_RELAY0_700MS), h(FLASH_RELAY0_700MS))
    with pytest.raises(mb.ModbusError, match="does not echo"):
        mb.decode_write_coil_reply(h(FLASH_RELAY0_700MS), h(RELAY0_ON))


def test_reply_errors() -> None:
    corrupt = h(READ_INPUTS_0_7)[:-1] + b"\x00"
    with pytest.raises(mb.ModbusError, match="bad CRC"):
        mb.decode_write_coil_reply(h(RELAY0_ON), h(RELAY0_ON)[:-1] + b"\x00")
    with pytest.raises(mb.ModbusError, match="bad CRC"):
        mb.decode_read_inputs(1, 8, corrupt)
    with pytest.raises(mb.ModbusException) as info:
        mb.decode_read_inputs(1, 8, mb.encode_exception(1, mb.READ_INPUTS, 2))
    assert info.value.code == 2 and "illegal data address" in str(info.value)
    with pytest.raises(mb.ModbusError, match="slave 2"):
        mb.decode_read_inputs(1, 8, mb.encode_bits_reply(2, mb.READ_INPUTS, [False] * 8))


def test_request_decoding_for_the_simulator() -> None:
    req = mb.decode_request(h(FLASH_RELAY0_700MS))
    assert req == mb.Request(1, 5, 0x0200, 7)
    with pytest.raises(mb.ModbusError):
        mb.decode_request(h(RELAY0_ON)[:-1] + b"\x00")


def test_lcus_vectors() -> None:
    assert lcus.encode_switch(1, True) == h(LCUS_CH1_ON)
    assert lcus.encode_switch(1, False) == h(LCUS_CH1_OFF)
    assert lcus.encode_switch(2, True) == h(LCUS_CH2_ON)
    assert lcus.encode_switch(8, True) == h(LCUS_CH8_ON)
    assert lcus.decode_switch(h(LCUS_CH8_ON)) == (8, True)
    with pytest.raises(ValueError, match="checksum"):
        lcus.decode_switch(h("A0 01 01 A3"))


def test_lcus_status_lines() -> None:
    text = lcus.encode_status([False, True])
    assert text == b"CH1: OFF\r\nCH2: ON\r\n"
    assert lcus.decode_status(text) == {1: False, 2: True}
    assert lcus.decode_status(b"garbage\r\nCH3: on\r\n") == {3: True}
