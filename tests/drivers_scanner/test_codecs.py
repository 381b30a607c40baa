"""Pure parts: text decoding, GM65 frames (hex vectors from PROTOCOLS.md 3.1), line assembly,
duplicate suppression, configuration errors."""

from __future__ import annotations

import pytest

from drivers.errors import DeviceConfigError, DeviceInitError
from drivers.registry import BACKENDS, load
from drivers.scanner import Deduper, Scanner, decode_text, gm65
from drivers.scanner.lines import FRAMES_KEPT, LineAssembler
from drivers.scanner.serial_scanner import SerialScanner, is_line_noise, split_aim


def test_decode_text_utf8_then_gb18030_then_replacement() -> None:
    assert decode_text("成人票".encode()) == "成人票"
    assert decode_text("成人票".encode("gbk")) == "成人票"
    assert decode_text(b"\x80\xff") == "\ufffd\ufffd"


@pytest.mark.parametrize(
    ("frame", "hexstr"),
    [
        (gm65.encode(gm65.SAVE, 0x0000, b"\x00"), "7E 00 09 01 00 00 00 DE C8"),
        (gm65.encode(gm65.READ, 0x002A, b"\x02"), "7E 00 07 01 00 2A 02 D8 0F"),
        (gm65.encode(gm65.WRITE, 0x002A, b"\x39\x01"), "7E 00 08 02 00 2A 39 01 A7 EA"),
        (gm65.encode(gm65.WRITE, 0x0002, b"\x01", check=False), "7E 00 08 01 00 02 01 AB CD"),
    ],
)
def test_gm65_frames_match_protocols_md(frame: bytes, hexstr: str) -> None:
    assert frame == bytes.fromhex(hexstr)
    assert gm65.frame_length(frame) == len(frame)
    assert gm65.decode_command(frame)[3]  # CRC (or AB CD) accepted


def test_gm65_ack_vector_and_frame_lengths() -> None:
    assert gm65.crc16_xmodem(bytes.fromhex("00 01 00")) == 0x3331  # ACK 02 00 00 01 00 33 31
    assert gm65.frame_length(gm65.ACK) == 7
    assert gm65.frame_length(b"\x7e") is None and gm65.frame_length(b"\x7e\x00\x08") is None
    assert gm65.frame_length(b"T1:") == 0 and gm65.frame_length(b"~A") == 0
    bad = bytearray(gm65.encode_out1(True))
    bad[-1] ^= 1
    assert not gm65.decode_command(bytes(bad))[3]


def test_lines_cr_lf_crlf_and_split_input() -> None:
    lines = LineAssembler("t", "crlf", 16, gap=0.1)
    assert lines.feed(b"AB", 0.0) == []
    assert lines.feed(b"C\rD\nE\r\nF", 0.05) == [b"ABC", b"D", b"E"]
    assert lines.feed(b"\r", 0.06) == [b"F"]


def test_lines_partial_after_gap_dropped_unless_suffix_none() -> None:
    lines = LineAssembler("t", "crlf", 16, gap=0.1)
    lines.feed(b"PART", 0.0)
    assert lines.expire(0.05) is None and lines.pending
    assert lines.expire(0.2) is None and not lines.pending and lines.dropped == 1
    assert lines.feed(b"NEXT\r", 0.3) == [b"NEXT"]
    bare = LineAssembler("t", "none", 16, gap=0.1)
    bare.feed(b"CODE", 0.0)
    assert bare.deadline() == pytest.approx(0.1)
    assert bare.expire(0.1) == b"CODE"


def test_lines_length_cap_discards_to_the_terminator() -> None:
    lines = LineAssembler("t", "crlf", 8, gap=1.0)
    assert lines.feed(b"0123456789", 0.0) == []  # over the cap, no terminator yet
    assert lines.feed(b"ABC\rOK\r", 0.1) == [b"OK"]
    assert lines.feed(b"0123456789\rOK2\r", 0.2) == [b"OK2"]
    assert lines.dropped == 2


def test_lines_take_gm65_frames_out_of_the_stream() -> None:
    lines = LineAssembler("t", "crlf", 64, gap=1.0)
    echo = gm65.encode_out1(True)
    assert lines.feed(echo[:3], 0.0) == []
    assert lines.feed(echo[3:] + gm65.ACK + b"SCAN\r", 0.01) == [b"SCAN"]
    assert list(lines.frames) == [echo, gm65.ACK]


def test_line_noise_and_aim() -> None:
    assert is_line_noise(b"\x00\xff\xfe")
    assert not is_line_noise("票".encode("gbk"))
    assert not is_line_noise(b"]C1010012345\x1d10ABC")  # GS1 with a GS separator
    assert split_aim(b"]E09780201379624") == (b"9780201379624", "EAN13")
    assert split_aim(b"PLAIN") == (b"PLAIN", None)


def test_deduper_window_slides_with_each_sighting() -> None:
    d = Deduper(1.0)
    assert not d.is_duplicate("A", 0.0)
    assert d.is_duplicate("A", 0.9)
    assert d.is_duplicate("A", 1.8)  # held under the reader: still the same visit
    assert not d.is_duplicate("A", 3.0)
    assert not Deduper(0).is_duplicate("A", 0.0) and not Deduper(0).is_duplicate("A", 0.0)


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("serial:///dev/ttyACM0?bogus=1", "bogus"),
        ("serial:///dev/ttyACM0?suffix=semicolon", "suffix"),
        ("serial:///dev/ttyACM0?gap=0", "gap"),
        ("serial:///dev/ttyACM0?dedup=-1", "dedup"),
        ("serial:///dev/ttyACM0?feedback=loud", "feedback"),
    ],
)
def test_bad_configuration_names_the_parameter(url: str, param: str) -> None:
    with pytest.raises(DeviceConfigError) as err:
        SerialScanner("gate-3", url)
    assert err.value.param == param and "gate-3" in str(err.value)


def test_missing_port_gives_a_hint() -> None:
    scanner = SerialScanner("gate-4", "serial:///dev/serial/by-id/no-such-scanner")
    with pytest.raises(DeviceInitError) as err:
        scanner.open()
    assert "by-id" in err.value.hint
    scanner.close()


def test_every_registered_backend_loads_and_is_a_scanner() -> None:
    for driver in BACKENDS["scanner"]:
        assert issubclass(load("x", "scanner", driver), Scanner)


def test_reader_replies_kept_for_diagnostics_are_bounded() -> None:
    lines = LineAssembler("t", "crlf", 16, gap=0.1)
    for i in range(1000):
        lines.feed(gm65.ACK, float(i))
    assert len(lines.frames) == FRAMES_KEPT  # a reader acks every beep: never grows per scan
