"""8A board specifics: a board with more channels than doors, and its unsolicited 0x82 reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from drivers.errors import DeviceConfigError, DeviceOperationError
from drivers.locker import DoorState
from drivers.locker import codec_8a as c8a
from drivers.locker.board8a import Board8A
from drivers.locker.sim import SimBoard8A, SimLocker
from drivers.pty import PtyDevice

FAST = "timeout=0.3&confirm_timeout=0.25&confirm_interval=0.05"


@contextmanager
def wired(board: SimBoard8A, query: str) -> Iterator[Board8A]:
    locker = Board8A("locker-1", f"serial://{board.path}?{FAST}&{query}")
    try:
        locker.open()
        yield locker
    finally:
        locker.close()
        board.close()


# A board with more channels than doors wired (32-channel board, 24 doors).


def test_sim_board_sends_every_group_it_has() -> None:
    board = SimBoard8A(doors=24, channels=32)
    locker = Board8A("locker-1", f"serial://{board.path}?{FAST}&doors=24&channels=32")
    try:
        locker.open()
        frame = locker.exchange(c8a.encode_query(1, 0), c8a.status_reply_len(0, 32))
        # Four groups, highest first; unwired channels 25-32 read 1, closed doors read 1.
        assert frame == bytes.fromhex("80 01 FF FF FF FF 33 B2")
    finally:
        locker.close()
        board.close()


def test_board_with_more_channels_than_doors_reads_with_channels_set() -> None:
    with wired(SimBoard8A(doors=24, channels=32), "doors=24&channels=32") as locker:
        assert locker.open_door(24).opened
        states = locker.all_status()
        assert list(states) == list(range(1, 25))  # the unwired channels are not doors
        assert [d for d, s in states.items() if s.open] == [24]
        check = locker.self_test()
        assert check.ok, check


def test_board_with_more_channels_than_doors_says_to_set_channels() -> None:
    # The reviewer's case: the default reads a 24-channel reply off a 32-channel board.
    with wired(SimBoard8A(doors=24, channels=32), "doors=24") as locker:
        assert locker.open_door(3).opened  # single-lock frames do not depend on the count
        with pytest.raises(DeviceOperationError, match="channels="):
            locker.all_status()
        check = locker.self_test()
        assert not check.ok and "channels=" in check.detail


def test_sim_locker_with_a_wider_board() -> None:
    locker = SimLocker("locker-1", f"sim://?doors=20&channels=40&{FAST}")
    try:
        locker.open()
        assert isinstance(locker.board, SimBoard8A) and locker.board.channels == 40
        assert locker.open_door(20).opened and locker.all_status()[20].open
    finally:
        locker.close()
    locker = SimLocker("locker-1", f"sim://?doors=20&sim_channels=40&{FAST}")
    try:
        locker.open()
        assert not locker.self_test().ok  # the driver was not told: a clear error, not a pass
    finally:
        locker.close()


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/dev/ttyUSB0?doors=24&channels=16", "channels"),  # fewer than the doors wired
        ("/dev/ttyUSB0?channels=256", "channels"),
    ],
)
def test_channels_is_validated(url: str, param: str) -> None:
    with pytest.raises(DeviceConfigError, match=param):
        Board8A("l", url)


@pytest.mark.parametrize(
    "url",
    [
        "sim://?doors=8&sim_channels=4",
        "sim://?dialect=cu16&sim_channels=32",
        "sim://?dialect=cu16&report_door=1",
        "sim://?doors=8&report_door=9",
        "sim://?dialect=cu16&channels=16",  # not a Kerong option
    ],
)
def test_sim_8a_knobs_are_validated(url: str) -> None:
    with pytest.raises(DeviceConfigError):
        SimLocker("l", url)


def test_default_channels_is_the_last_door() -> None:
    assert Board8A("l", "/dev/ttyUSB0?doors=8").channels == 8
    assert Board8A("l", "/dev/ttyUSB0?doors=8&channels=32").channels == 32


# The unsolicited report `82 B L ST BCC` landing just before a reply.


def test_report_codec() -> None:
    report = c8a.encode_report(1, 7, True)
    assert report == bytes.fromhex("82 01 07 11 95")
    assert c8a.report_len(report + b"\x80") == 5
    assert c8a.report_len(report[:3]) is None  # undecided until the frame is complete
    assert c8a.report_len(b"") == 0
    assert c8a.report_len(c8a.encode_status_one(1, 7, True)) == 0
    assert c8a.report_len(report[:-1] + b"\x00") == 0  # bad BCC: not a report
    status = c8a.decode_report(report)
    assert (status.board, status.lock, status.bits) == (1, 7, 1)


def test_report_before_the_unlock_and_status_replies_is_skipped() -> None:
    # The reviewer's case: a visitor shuts door 7 as we query door 3.
    board = SimBoard8A(doors=8)
    with wired(board, "doors=8") as locker:
        board.queue_report(7)
        board.queue_report(7)  # two back to back, both ahead of the unlock reply
        result = locker.open_door(3)
        assert result.opened and result.acked
        assert board.unlocks() == [c8a.encode_unlock(1, 3)]  # once, never resent
        assert list(locker.reports) == [DoorState(7, False)] * 2  # surfaced as door events
        board.queue_report(3)
        assert locker.all_status()[3].open
        assert list(locker.reports)[-1] == DoorState(3, True)


@pytest.mark.parametrize("knobs", ["", "&split=true", "&echo=true&local_echo=true"])
def test_sim_report_door_before_every_reply(knobs: str) -> None:
    locker = SimLocker("locker-1", f"sim://?doors=8&report_door=5{knobs}&{FAST}")
    try:
        locker.open()
        assert locker.open_door(2).opened
        assert locker.all_status()[2].open
        assert locker.self_test().ok
        assert len(locker.board.unlocks()) == 1
    finally:
        locker.close()


def _raw_board(prefix: bytes) -> PtyDevice:
    """A board that sends `prefix` ahead of every single-lock status reply (lock closed)."""

    def answer(data: bytes) -> bytes:
        req = c8a.decode_request(data[:5])
        return prefix + c8a.encode_status_one(req.board, req.lock, True)

    return PtyDevice(answer)


def test_reports_for_another_board_are_skipped_but_not_recorded() -> None:
    dev = _raw_board(c8a.encode_report(2, 1, False) + c8a.encode_report(1, 30, False))
    locker = Board8A("locker-1", f"serial://{dev.path}?doors=8&{FAST}")
    try:
        locker.open()
        assert locker.door_status(1) == DoorState(1, False)
        assert not locker.reports  # board 2's report, and a channel with no door
    finally:
        locker.close()
        dev.close()


def test_garbage_that_only_looks_like_a_report_is_still_an_error() -> None:
    dev = _raw_board(bytes.fromhex("82 01 07 11 00"))  # bad BCC: not a report, not a reply
    locker = Board8A("locker-1", f"serial://{dev.path}?doors=8&{FAST}")
    try:
        locker.open()
        with pytest.raises(DeviceOperationError, match="header 82"):
            locker.door_status(1)
    finally:
        locker.close()
        dev.close()
