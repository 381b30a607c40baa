"""Each fault knob of the sim locker, and what the caller sees."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.errors import DeviceOperationError, DeviceTimeout
from drivers.locker import FrameError
from drivers.locker import codec_8a as c8a
from drivers.locker.board8a import Board8A
from drivers.locker.sim import SimBoard8A, SimLocker
from drivers.locker.sim_boards import Faults

FAST = "doors=8&timeout=0.2&confirm_timeout=0.2&confirm_interval=0.05"
# CU48 with its dialect given: a faulty board would fail detection at open() (test_cu48.py),
# and these tests are about what the caller sees afterwards.
DIALECTS = {
    "8a": "dialect=8a",
    "cu16": "dialect=cu16",
    "cu48-a": "dialect=cu48&firmware=a&detect=false",
    "cu48-b": "dialect=cu48&firmware=b&detect=false",
}


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return DIALECTS[request.param]


def sim(dialect: str, knobs: str) -> SimLocker:
    return SimLocker("locker-1", f"sim://?{dialect}&{FAST}&{knobs}")


@contextmanager
def opened(dialect: str, knobs: str) -> Iterator[SimLocker]:
    locker = sim(dialect, knobs)
    locker.open()
    try:
        yield locker
    finally:
        locker.close()


def test_no_reply_times_out_once_and_releases_the_port(dialect: str) -> None:
    with opened(dialect, "no_reply=true") as locker:
        start = time.monotonic()
        with pytest.raises(DeviceTimeout, match="no complete reply"):
            locker.open_door(2)
        assert time.monotonic() - start < 1.5  # bounded: one unlock timeout + one status timeout
        assert len(locker.board.unlocks()) == 1  # the unlock went out once, never resent
        with pytest.raises(DeviceTimeout):
            locker.all_status()
        check = locker.self_test()
        assert not check.ok and "DIP" in check.hint and "波特率" in check.hint
        # The port is free again: once the board answers, the same driver works.
        locker.board.faults = Faults()
        assert locker.door_status(2).open  # the lost-reply unlock did fire the lock
        assert locker.self_test().ok


def test_bad_checksum_is_an_operation_error(dialect: str) -> None:
    with opened(dialect, "bad_checksum=true") as locker:
        with pytest.raises(DeviceOperationError, match=r"bad (BCC|checksum)"):
            locker.door_status(1)
        with pytest.raises(DeviceOperationError):
            locker.open_door(1)
        assert len(locker.board.unlocks()) == 1
        check = locker.self_test()
        assert not check.ok and "baud" in check.hint


def test_split_frames_still_work(dialect: str) -> None:
    with opened(dialect, "split=true") as locker:
        assert locker.open_door(6).opened
        assert locker.all_status()[6].open


def test_delayed_reply_within_timeout_works(dialect: str) -> None:
    with opened(dialect, "delay_ms=60") as locker:
        result = locker.open_door(1)
        assert result.opened and result.elapsed >= 0.06


def test_reply_later_than_timeout_is_a_timeout(dialect: str) -> None:
    with opened(dialect, "delay_ms=350") as locker, pytest.raises(DeviceTimeout):
        locker.door_status(1)


def test_local_echo_works_with_local_echo_on(dialect: str) -> None:
    with opened(dialect, "echo=true&local_echo=true") as locker:
        result = locker.open_door(3)
        assert result.opened and result.acked
        assert locker.all_status()[3].open
        assert len(locker.board.unlocks()) == 1


def test_local_echo_without_the_option_is_a_garbled_reply(dialect: str) -> None:
    with opened(dialect, "echo=true") as locker:
        with pytest.raises(DeviceOperationError):
            locker.door_status(1)
        assert "local_echo" in locker.self_test().hint


def test_stuck_door_reports_not_opened_with_one_unlock_on_the_wire(dialect: str) -> None:
    with opened(dialect, "stuck=2,7") as locker:
        result = locker.open_door(7)
        assert not result.opened and result.acked
        assert result.elapsed >= 0.2 and result.queries >= 3
        assert len(locker.board.unlocks()) == 1
        assert locker.open_door(1).opened  # the other doors are fine


def test_wrong_board_address_gets_no_reply(dialect: str) -> None:
    with opened(dialect, "board=3&sim_board=4") as locker:
        with pytest.raises(DeviceTimeout):
            locker.open_door(1)
        assert len(locker.board.unlocks()) == 1
        assert not locker.board.is_open(1)
        assert "拨码" in locker.self_test().hint


def test_polarity_mismatch_shows_every_door_open(dialect: str) -> None:
    # Board wired normally-open, driver configured for the other polarity: what a technician sees.
    with opened(dialect, "open_bit=1") as locker:
        locker.board.open_bit = 0
        assert all(s.open for s in locker.all_status().values())


def test_inverted_polarity_on_both_sides_works(dialect: str) -> None:
    with opened(dialect, "open_bit=1") as locker:
        assert not any(s.open for s in locker.all_status().values())
        assert locker.open_door(4).opened


class LosesUnlockReplies(SimBoard8A):
    """An 8A board whose unlock replies are lost on the bus (the lock still fires)."""

    def _handle(self, frame: bytes) -> bytes | None:
        reply = super()._handle(frame)
        return None if frame[0] == c8a.UNLOCK else reply


def test_lost_unlock_reply_is_confirmed_by_status_not_resent() -> None:
    board = LosesUnlockReplies(doors=8)
    locker = Board8A("locker-1", f"{board.path}?{FAST}")
    try:
        locker.open()
        result = locker.open_door(5)
        assert result.opened and not result.acked
        assert board.unlocks() == [c8a.encode_unlock(1, 5)]
    finally:
        locker.close()
        board.close()


def test_sim_resynchronises_after_line_noise() -> None:
    board = SimBoard8A(doors=8)
    locker = Board8A("locker-1", f"{board.path}?{FAST}")
    try:
        locker.open()
        locker.port.serial.write(b"\xff\x00\x8a")  # noise before a real request
        assert locker.open_door(2).opened
    finally:
        locker.close()
        board.close()
    with pytest.raises(FrameError):
        c8a.decode_request(b"\xff\x00\x8a\x01\x01")
