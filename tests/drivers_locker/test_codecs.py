"""Pure codecs against the hex vectors in ../shared/design/PROTOCOLS.md section 1."""

from __future__ import annotations

import pytest

from drivers.locker import FrameError
from drivers.locker import codec_8a as c8a
from drivers.locker import codec_kerong as ckr


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# PROTOCOLS.md 1.3, the "8A/80" board table and the group-order examples.
def test_8a_requests_match_protocol_vectors() -> None:
    assert c8a.encode_unlock(1, 1) == h("8A 01 01 11 9B")  # unlock board 1, lock 1
    assert c8a.encode_unlock(1, 0) == h("8A 01 00 11 9A")  # unlock all on board 1
    assert c8a.encode_query(1, 1) == h("80 01 01 33 B3")  # query board 1, lock 1
    assert c8a.encode_query(1) == h("80 01 00 33 B2")  # query all on board 1


def test_8a_bcc_is_xor() -> None:
    assert c8a.bcc(h("8A 01 01 11")) == 0x9B
    assert c8a.bcc(b"") == 0


def test_8a_single_lock_replies() -> None:
    on = c8a.decode_status(h("80 01 01 11 91"))
    off = c8a.decode_status(h("80 01 01 00 80"))
    assert (on.board, on.lock, on.bits) == (1, 1, 1)
    assert (off.board, off.lock, off.bits) == (1, 1, 0)
    assert c8a.encode_status_one(1, 1, True) == h("80 01 01 11 91")
    assert c8a.encode_status_one(1, 1, False) == h("80 01 01 00 80")


def test_8a_query_all_highest_group_first() -> None:
    # Open-Locker's captured 8-channel reply: three group bytes even for 8 channels.
    captured = c8a.decode_status(h("80 01 00 00 00 33 B2"))
    assert (captured.board, captured.lock, captured.bits, captured.channels) == (1, 0, 0, 24)
    assert c8a.encode_status_all(1, 0, 8) == h("80 01 00 00 00 33 B2")
    # A 32-channel board with every group byte FF.
    full = c8a.decode_status(h("80 01 FF FF FF FF 33 B2"))
    assert (full.bits, full.channels) == (0xFFFFFFFF, 32)
    assert c8a.encode_status_all(1, 0xFFFFFFFF, 32) == h("80 01 FF FF FF FF 33 B2")
    # 24 channels: [17-24] [9-16] [1-8]; channel 1 is bit 0 of the LAST group byte.
    frame = c8a.encode_status_all(1, 1 | 1 << 23, 24)
    assert frame[2:5] == h("80 00 01")
    assert c8a.decode_status(frame).bits == 1 | 1 << 23


def test_8a_unlock_reply_and_request_round_trip() -> None:
    reply = c8a.encode_unlock_reply(1, 3, True)
    assert reply == h("8A 01 03 11") + bytes([c8a.bcc(h("8A 01 03 11"))])
    status = c8a.decode_unlock_reply(reply)
    assert (status.board, status.lock, status.bits) == (1, 3, 1)
    req = c8a.decode_request(h("8A 01 01 11 9B"))
    assert (req.head, req.board, req.lock, req.cmd) == (0x8A, 1, 1, 0x11)


@pytest.mark.parametrize(
    "frame",
    [
        "80 01 01 11 90",  # bad BCC
        "80 01 01 22 A2",  # unknown status byte
        "8A 01 01 11 9B",  # an unlock echo, not a query reply
        "80 01 00 00 00 34 B5",  # query-all without the 33 marker
        "80 01 01",  # short
    ],
)
def test_8a_bad_replies_raise_frame_error(frame: str) -> None:
    with pytest.raises(FrameError):
        c8a.decode_status(h(frame))


def test_8a_groups() -> None:
    assert [c8a.groups(n) for n in (1, 8, 24, 25, 32, 50)] == [3, 3, 3, 4, 4, 7]
    assert c8a.status_reply_len(0, 24) == 7
    assert c8a.status_reply_len(5, 24) == 5


# PROTOCOLS.md 1.1, Kerong KR-CU16 examples.
def test_kerong_requests_match_protocol_vectors() -> None:
    assert ckr.encode_unlock(0, 0) == h("02 00 31 03 36")  # unlock board0 lock1
    assert ckr.encode_unlock(1, 2) == h("02 12 31 03 48")  # unlock board1 lock3
    assert ckr.encode_query(0) == h("02 00 30 03 35")  # status board0
    assert ckr.encode_query_all() == h("02 00 32 03 37")  # lkaas-kerong query-all
    assert ckr.checksum(h("02 00 31 03")) == 0x36


def test_kerong_status_reply_vector() -> None:
    # "lock1 closed, IR1": 02 00 35 01 00 01 00 03 3C (9 bytes).
    status = ckr.decode_status(h("02 00 35 01 00 01 00 03 3C"))
    assert (status.board, status.locks, status.items) == (0, 0x0001, 0x0001)
    assert ckr.encode_status(0, 1, 1) == h("02 00 35 01 00 01 00 03 3C")


def test_kerong_status_bytes_are_low_lock_first() -> None:
    frame = ckr.encode_status(3, 0x8001, 0x0100)
    assert frame[1] == 0x30 and frame[3:7] == h("01 80 00 01")
    status = ckr.decode_status(frame)
    assert (status.board, status.locks, status.items) == (3, 0x8001, 0x0100)


def test_kerong_request_round_trip_and_ranges() -> None:
    req = ckr.decode_request(h("02 12 31 03 48"))
    assert (req.board, req.lock, req.cmd) == (1, 2, 0x31)
    with pytest.raises(ValueError):
        ckr.encode_unlock(16, 0)
    with pytest.raises(ValueError):
        ckr.encode_unlock(0, 16)


@pytest.mark.parametrize(
    "frame",
    [
        "02 00 35 01 00 01 00 03 3D",  # bad checksum
        "02 00 35 01 00 01 00 03",  # short
        "02 00 36 01 00 01 00 03 3D",  # not a 0x35 reply
        "02 00 30 03 35",  # an echo of the query
    ],
)
def test_kerong_bad_replies_raise_frame_error(frame: str) -> None:
    with pytest.raises(FrameError):
        ckr.decode_status(h(frame))
