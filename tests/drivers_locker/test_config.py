"""Configuration: URLs and options refused at start-up, the registry, open failures, hardware."""

from __future__ import annotations

import os

import pytest

from drivers import registry
from drivers.errors import DeviceConfigError, DeviceInitError
from drivers.locker import Locker
from drivers.locker.board8a import Board8A
from drivers.locker.kerong import KerongCU16, KerongCU48
from drivers.locker.sim import SimLocker


def test_registry_names_the_locker_drivers() -> None:
    assert registry.load("l", "locker", "8a") is Board8A
    assert registry.load("l", "locker", "cu16") is KerongCU16
    assert registry.load("l", "locker", "cu48") is KerongCU48
    assert registry.load("l", "locker", "sim") is SimLocker


def test_defaults_follow_each_board() -> None:
    a = Board8A("l", "/dev/ttyUSB0").options
    assert (a.board, a.doors, a.channel_base, a.baudrate, a.open_bit) == (1, 24, 1, 9600, 0)
    k = KerongCU16("l", "serial:///dev/ttyUSB0").options
    assert (k.board, k.doors, k.channel_base, k.baudrate) == (0, 16, 0, 19200)
    s = SimLocker("l", "sim://?dialect=cu16").options
    assert (s.board, s.doors, s.baudrate) == (0, 16, 19200)
    c = KerongCU48("l", "serial:///dev/ttyUSB0").options
    assert (c.board, c.doors, c.channel_base, c.baudrate, c.dialect) == (0, 48, 0, 19200, "auto")


def test_options_parse_from_the_url() -> None:
    o = Board8A("l", "socket://10.0.0.7:4001?board=0x05&doors=48&open_bit=1&local_echo=yes").options
    assert (o.board, o.doors, o.open_bit, o.local_echo) == (5, 48, 1, True)


@pytest.mark.parametrize(
    ("cls", "url", "param"),
    [
        (Board8A, "/dev/ttyUSB0?baud=9600", "baud"),  # unknown parameter
        (Board8A, "/dev/ttyUSB0?doors=many", "doors"),
        (Board8A, "/dev/ttyUSB0?open_bit=2", "open_bit"),
        (Board8A, "/dev/ttyUSB0?channel_base=0", "channel_base"),  # 0 unlocks every door
        (Board8A, "/dev/ttyUSB0?board=0", "board"),
        (Board8A, "/dev/ttyUSB0?timeout=0", "timeout"),
        (Board8A, "tcp://host:1", "url"),
        (KerongCU16, "/dev/ttyUSB0?board=16", "board"),
        (KerongCU16, "/dev/ttyUSB0?doors=17", "doors"),
        (KerongCU16, "/dev/ttyUSB0?channel_base=1&doors=16", "doors"),
        (SimLocker, "sim://?dialect=cu64", "dialect"),
        (SimLocker, "sim://?dialect=cu48&firmware=c", "firmware"),
        (KerongCU48, "/dev/ttyUSB0?dialect=c", "dialect"),
        (KerongCU48, "/dev/ttyUSB0?doors=49", "doors"),
        (KerongCU48, "/dev/ttyUSB0?channel_base=1&doors=48", "doors"),
        (SimLocker, "sim://?stuck=a,b", "stuck"),
        (SimLocker, "sim://?doors=8&items=9", "items"),
        (SimLocker, "sim://?dialect=cu16&board=20", "board"),
        (SimLocker, "sim://?door=3", "door"),
    ],
)
def test_bad_configuration_names_the_device_and_parameter(
    cls: type[Locker], url: str, param: str
) -> None:
    with pytest.raises(DeviceConfigError) as info:
        cls("front-lockers", url)
    assert info.value.device == "front-lockers" and info.value.param == param


def test_missing_port_is_an_init_error_with_a_hint() -> None:
    locker = Board8A("l", "/dev/does-not-exist-locker")
    with pytest.raises(DeviceInitError) as info:
        locker.open()
    assert "serial/by-id" in info.value.hint
    locker.close()  # safe after a failed open


def test_kerong_channel_base_one_skips_lock_index_zero() -> None:
    with SimLocker("l", "sim://?dialect=cu16&channel_base=1&doors=15") as locker:
        locker.open_door(1)
        assert locker.board.unlocks() == [bytes.fromhex("02 01 31 03 37")]


HW_URL = os.environ.get("EDGE_HW_LOCKER_URL", "")
HW_DRIVER = os.environ.get("EDGE_HW_LOCKER_DRIVER", "8a")


def test_real_board_status_query() -> None:
    """Opt-in: EDGE_HW_LOCKER_URL=/dev/ttyUSB0?board=1 [EDGE_HW_LOCKER_DRIVER=8a|cu16|cu48].
    Only queries status; no door opens."""
    if not HW_URL:
        pytest.skip("set EDGE_HW_LOCKER_URL to test a real lock board")
    cls = registry.load("hw-locker", "locker", HW_DRIVER)
    with cls("hw-locker", HW_URL) as locker:
        check = locker.self_test()
        assert check.ok, f"{check.detail}; {check.hint}"
