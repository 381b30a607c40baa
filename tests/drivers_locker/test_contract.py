"""The locker contract, for the sim driver and each protocol driver on its pty simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.errors import DeviceOperationError
from drivers.locker import DoorResult, DoorState
from tests.drivers_locker.rigs import DOORS, KINDS, Rig, rig


@pytest.fixture(params=KINDS)
def r(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with rig(request.param) as opened:
        yield opened


def test_all_doors_start_closed(r: Rig) -> None:
    states = r.locker.all_status()
    assert list(states) == list(range(1, DOORS + 1))
    assert all(s.closed for s in states.values())
    assert r.board.unlocks() == []


def test_open_door_opens_and_confirms(r: Rig) -> None:
    result = r.locker.open_door(3)
    assert isinstance(result, DoorResult)
    assert (result.door, result.opened, result.acked) == (3, True, True)
    assert result.state.open and result.queries >= 1
    assert r.board.is_open(3)
    assert r.locker.door_status(3).open
    others = {d: s.open for d, s in r.locker.all_status().items() if d != 3}
    assert not any(others.values())
    assert len(r.board.unlocks()) == 1


def test_unlock_on_the_wire_is_the_protocol_vector(r: Rig) -> None:
    door, frame = r.vector
    r.locker.open_door(door)
    assert r.board.unlocks() == [frame]


def test_last_door_maps_to_the_last_channel(r: Rig) -> None:
    assert r.locker.open_door(DOORS).opened
    assert r.board.is_open(DOORS) and not r.board.is_open(DOORS - 1)
    assert r.locker.all_status()[DOORS].open


def test_door_closed_by_visitor_reads_closed(r: Rig) -> None:
    r.locker.open_door(2)
    r.board.close_door(2)
    assert r.locker.door_status(2) == DoorState(2, False, False if r.reports_items else None)


def test_stuck_door_reports_not_opened_after_one_unlock(r: Rig) -> None:
    r.board.set_stuck(5)
    result = r.locker.open_door(5)
    assert not result.opened and result.state.closed
    assert result.queries >= 2  # polled the sensor for the confirm window...
    assert len(r.board.unlocks()) == 1  # ...but never sent the unlock twice


def test_item_present_where_the_board_reports_it(r: Rig) -> None:
    r.board.set_item(4)
    state = r.locker.door_status(4)
    if r.reports_items:
        assert state.item is True and r.locker.door_status(3).item is False
    else:
        assert state.item is None


@pytest.mark.parametrize("door", [0, DOORS + 1, -1])
def test_door_outside_the_board_is_refused_before_the_wire(r: Rig, door: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        r.locker.open_door(door)
    with pytest.raises(ValueError):
        r.locker.door_status(door)
    with pytest.raises(TypeError):
        r.locker.open_door(True)
    assert r.board.frames == []


def test_self_test_queries_and_opens_nothing(r: Rig) -> None:
    result = r.locker.self_test()
    assert result.ok and result.hint == ""
    assert f"{DOORS} doors" in result.detail
    assert len(r.board.frames) == 1 and r.board.unlocks() == []


def test_closed_locker_refuses_and_close_is_idempotent(r: Rig) -> None:
    r.locker.close()
    r.locker.close()
    with pytest.raises(DeviceOperationError, match="not open"):
        r.locker.open_door(1)
    with pytest.raises(DeviceOperationError, match="not open"):
        r.locker.all_status()
    assert not r.locker.self_test().ok
