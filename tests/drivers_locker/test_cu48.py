"""Kerong CU48 (PROTOCOLS.md section 1.2): the codec against the cited vectors, and dialect
detection at open() against the pty simulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.errors import DeviceInitError, DeviceTimeout
from drivers.locker import FrameError
from drivers.locker import codec_cu48 as c48
from drivers.locker.kerong import KerongCU48
from drivers.locker.sim import SimKerongCU48, SimLocker
from drivers.locker.sim_boards import Faults

FAST = "doors=8&timeout=0.2&confirm_timeout=0.2&confirm_interval=0.05"
QUERY_A = bytes.fromhex("02 00 00 50 03 55")
QUERY_B = bytes.fromhex("02 00 00 60 03 65")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# PROTOCOLS.md 1.2, dialect A: query and "open index 4".
def test_dialect_a_requests_match_protocol_vectors() -> None:
    assert c48.encode_query(c48.A, 0) == h("02 00 00 50 03 55")
    assert c48.encode_unlock(c48.A, 0, 4) == h("02 00 04 51 03 5A")


# PROTOCOLS.md 1.2, dialect B: the query. It gives no B open vector; the opens below are the
# captured ones in its cited source, AshurkovAV/KerongConsole "Коды для контролера запрос ответ.txt"
# ("cell one" and "cell five").
def test_dialect_b_requests_match_vectors() -> None:
    assert c48.encode_query(c48.B, 0) == h("02 00 00 60 03 65")
    assert c48.encode_unlock(c48.B, 0, 0) == h("02 00 00 61 03 66")
    assert c48.encode_unlock(c48.B, 0, 4) == h("02 00 04 61 03 6A")


def test_dialect_b_captured_replies() -> None:
    # PROTOCOLS.md 1.2 B: "02 00 00 75 10 00 … 00 03 8A (lock 5)", written out in full (18 bytes)
    # as in the dump cited there.
    lock5 = h("02 00 00 75 10 00 00 00 00 00 00 00 00 00 00 00 03 8A")
    status = c48.decode_status(lock5)
    assert (status.dialect, status.board, status.locks, status.sensors) == (c48.B, 0, 1 << 4, 0)
    assert c48.encode_status(c48.B, 0, 1 << 4) == lock5
    # The same dump (KerongConsole): lock 1 with sensor 1, "cell 14", and "all cells open".
    both = c48.decode_status(h("02 00 00 75 01 00 00 00 00 00 01 00 00 00 00 00 03 7C"))
    assert (both.locks, both.sensors) == (1, 1)
    cell14 = c48.decode_status(h("02 00 00 75 00 20 00 00 00 00 00 00 00 00 00 00 03 9A"))
    assert cell14.locks == 1 << 13
    none = c48.decode_status(h("02 00 00 75 00 00 00 00 00 00 00 00 00 00 00 00 03 7A"))
    assert (none.locks, none.sensors) == (0, 0)


def test_dialect_a_reply_round_trip() -> None:
    # No captured dialect-A reply exists in PROTOCOLS.md or its source (only the layout
    # "02 00 00 65 D1..D6 03 SUM", 48 lock bits LSB first): this checks the layout, not a capture.
    frame = c48.encode_status(c48.A, 0, 1 | 1 << 47, sensors=0xFF)
    assert len(frame) == 12 and frame[:4] == h("02 00 00 65")
    assert frame[4:10] == h("01 00 00 00 00 80") and frame[10] == c48.ETX
    assert frame[-1] == sum(frame[:-1]) & 0xFF
    status = c48.decode_status(frame)
    assert (status.dialect, status.locks, status.sensors) == (c48.A, 1 | 1 << 47, None)


def test_reply_length_follows_the_reply_code() -> None:
    assert c48.reply_length(h("02 00 00")) is None
    assert c48.reply_length(h("02 00 00 65")) is None  # 12 needed
    assert c48.reply_length(h("02 00 00 65") + bytes(8)) == 12
    assert c48.reply_length(h("02 00 00 75") + bytes(8)) is None
    assert c48.reply_length(h("02 00 00 75") + bytes(14)) == 18
    assert c48.reply_length(QUERY_A) == 4  # not a reply: hand it over to fail decoding


def test_request_round_trip_and_ranges() -> None:
    req = c48.decode_request(h("02 00 04 51 03 5A"))
    assert (req.board, req.lock, req.cmd) == (0, 4, 0x51)
    with pytest.raises(ValueError):
        c48.encode_unlock(c48.A, 0, 48)
    with pytest.raises(ValueError):
        c48.encode_query(c48.B, 256)
    with pytest.raises(FrameError):
        c48.decode_request(h("02 00 04 51 03 5B"))


@pytest.mark.parametrize(
    "frame",
    [
        "02 00 00 75 10 00 00 00 00 00 00 00 00 00 00 00 03 8B",  # bad checksum
        "02 00 00 75 10 00 00 00 00 00 00 00 03 8A",  # a B code cut to A's length
        "02 00 00 65 00 00 00 00 00 00 04 6B",  # no ETX
        "02 00 00 50 03 55",  # an echo of the query
        "02 00",  # short
    ],
)
def test_bad_replies_raise_frame_error(frame: str) -> None:
    with pytest.raises(FrameError):
        c48.decode_status(h(frame))


@contextmanager
def wired(board: SimKerongCU48, extra: str = "") -> Iterator[KerongCU48]:
    """KerongCU48 on `board`, not yet opened; closes both."""
    locker = KerongCU48("locker-1", f"serial://{board.path}?{FAST}&{extra}")
    try:
        yield locker
    finally:
        locker.close()
        board.close()


def sent(board: SimKerongCU48) -> list[bytes]:
    return [frame for _, frame in board.frames]


@pytest.mark.parametrize("firmware", ["a", "b"])
def test_detection_picks_the_boards_dialect_with_status_queries_only(firmware: str) -> None:
    board = SimKerongCU48(doors=8, firmware=firmware)
    with wired(board) as locker:
        locker.open()
        assert locker.dialect is c48.DIALECTS[firmware]
        # Dialect A answers the first query; a B board leaves it unanswered. No open is sent.
        assert sent(board) == ([QUERY_A] if firmware == "a" else [QUERY_A, QUERY_B])
        assert board.unlocks() == []
        assert locker.open_door(3).opened
        assert board.unlocks() == [c48.encode_unlock(c48.DIALECTS[firmware], 0, 2)]


def test_explicit_dialect_skips_detection() -> None:
    board = SimKerongCU48(doors=8, firmware="b")
    with wired(board, "dialect=b") as locker:
        locker.open()
        assert locker.dialect is c48.B
        assert locker.all_status()[1].closed
        assert sent(board) == [QUERY_B]  # the status query above, nothing at open()


def test_explicit_wrong_dialect_is_believed_and_then_times_out() -> None:
    # What a technician sees after forcing the wrong dialect: open() succeeds (it asks nothing),
    # every query then goes unanswered.
    board = SimKerongCU48(doors=8, firmware="b")
    with wired(board, "dialect=a") as locker:
        locker.open()
        with pytest.raises(DeviceTimeout):
            locker.all_status()
        assert "拨码" in locker.self_test().hint


def test_no_reply_during_detection_is_an_init_error_with_the_dip_and_baud_hint() -> None:
    board = SimKerongCU48(doors=8, faults=Faults(no_reply=True))
    with wired(board) as locker:
        with pytest.raises(DeviceInitError) as info:
            locker.open()
        assert "DIP" in info.value.hint and "baud" in info.value.hint and "拨码" in info.value.hint
        assert "0x50" in info.value.message and "0x60" in info.value.message
        assert not locker.is_open
        assert sent(board) == [QUERY_A, QUERY_B] and board.unlocks() == []
        # The port was released: once the board answers, the same driver opens.
        board.faults = Faults()
        locker.open()
        assert locker.dialect is c48.A


def test_wrong_address_during_detection_is_an_init_error() -> None:
    board = SimKerongCU48(board=4, doors=8)
    with wired(board, "board=3") as locker, pytest.raises(DeviceInitError, match="no reply"):
        locker.open()


def test_garbled_reply_during_detection_is_an_init_error_with_the_wiring_hint() -> None:
    board = SimKerongCU48(doors=8, faults=Faults(bad_checksum=True))
    with wired(board) as locker:
        with pytest.raises(DeviceInitError, match="bad checksum") as info:
            locker.open()
        assert "local_echo" in info.value.hint
        assert not locker.is_open


@pytest.mark.parametrize("knobs", ["split", "echo", "delay"])
def test_detection_survives_split_echoed_and_delayed_replies(knobs: str) -> None:
    faults = Faults(split=knobs == "split", echo=knobs == "echo", delay_ms=60 * (knobs == "delay"))
    board = SimKerongCU48(doors=8, firmware="b", faults=faults)
    with wired(board, "local_echo=true" if knobs == "echo" else "") as locker:
        locker.open()
        assert locker.dialect is c48.B


class AnswersEveryQuery(SimKerongCU48):
    """A dialect-B board that answers the dialect-A query with its own B reply too."""

    def _handle(self, frame: bytes) -> bytes | None:
        if frame == QUERY_A:
            frame = QUERY_B
        return super()._handle(frame)


def test_a_reply_in_the_other_dialect_is_not_taken_for_a_match() -> None:
    # Only a reply code matching the query counts; the B query then settles it.
    board = AnswersEveryQuery(doors=8, firmware="b")
    with wired(board) as locker:
        locker.open()
        assert locker.dialect is c48.B


def test_sim_locker_detects_its_boards_firmware() -> None:
    with SimLocker("l", f"sim://?dialect=cu48&firmware=b&{FAST}&items=2") as locker:
        driver = locker.driver
        assert isinstance(driver, KerongCU48) and driver.dialect is c48.B
        assert locker.door_status(2).item is True
    with SimLocker("l", f"sim://?dialect=cu48&firmware=b&detect=false&{FAST}") as locker:
        assert locker.board.frames == []


def test_all_48_doors_map_to_lock_indexes_0_to_47() -> None:
    with SimLocker("l", "sim://?dialect=cu48&timeout=0.2&confirm_timeout=0.2") as locker:
        assert len(locker.all_status()) == 48
        assert locker.open_door(48).opened
        assert locker.board.unlocks() == [c48.encode_unlock(c48.A, 0, 47)]
        states = locker.all_status()
        assert states[48].open and not any(s.open for d, s in states.items() if d != 48)
