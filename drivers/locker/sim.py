"""The `sim` locker: a simulated board on a pty, driven by the real protocol driver.

`sim://?dialect=8a&doors=24&stuck=3` starts a SimBoard8A (or SimKerongCU16 with `dialect=cu16`)
on a pty at open() and drives it with Board8A (KerongCU16), so the demo and the daemon exercise
the real codec and the real port handling. Driver options (board, doors, channel_base, open_bit,
timeout, local_echo, confirm_timeout, confirm_interval, settle) pass through; the rest are the
board's knobs: `sim_board` (the address the board answers to, default `board`: set it apart to see a
wrong DIP address), `no_reply`, `bad_checksum`, `split`, `delay_ms`, `echo`, `stuck` and `items`
(comma-separated doors), `auto_close` (seconds until an opened door shuts by itself: the demo).
With `dialect=cu48` the board is a SimKerongCU48 driven by KerongCU48:
`firmware=a|b` picks the board's firmware dialect (default a) and the driver detects it at open();
`detect=false` tells the driver the firmware's dialect instead (no detection queries).
8A only: `channels` passes through to the driver; `sim_channels` is the board's own channel
count (default: what the driver is told; set it above to see a board with more channels than
`channels`/`doors` says); `report_door` makes the board send its unsolicited `82` report of that
door ahead of every reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from typing_extensions import override

from drivers.errors import DeviceConfigError, DeviceOperationError
from drivers.locker import DoorState, Locker, LockerOptions
from drivers.locker.board8a import Board8A
from drivers.locker.kerong import KerongCU16, KerongCU48
from drivers.locker.serial_board import SerialBoard
from drivers.locker.sim_boards import (
    Faults,
    SimBoard,
    SimBoard8A,
    SimKerongCU16,
    SimKerongCU48,
)
from drivers.url import options, parse_url

__all__ = ["SimBoard", "SimBoard8A", "SimKerongCU16", "SimKerongCU48", "SimLocker"]

DIALECTS: dict[str, tuple[type[SerialBoard], type[SimBoard]]] = {
    "8a": (Board8A, SimBoard8A),
    "cu16": (KerongCU16, SimKerongCU16),
    "cu48": (KerongCU48, SimKerongCU48),
}
PASS_THROUGH = (
    "board",
    "doors",
    "channel_base",
    "open_bit",
    "timeout",
    "local_echo",
    "confirm_timeout",
    "confirm_interval",
    "settle",
    "channels",
)


@dataclass(frozen=True)
class SimOptions:
    dialect: str = field(default="8a", metadata={"choices": tuple(DIALECTS)})
    # None: the dialect's default.
    board: int | None = None
    doors: int | None = None
    channel_base: int | None = None
    open_bit: int = field(default=0, metadata={"choices": (0, 1)})
    timeout: float = 0.5
    local_echo: bool = False
    confirm_timeout: float = 1.0
    confirm_interval: float = 0.05
    settle: float | None = None
    channels: int | None = None  # 8a only
    sim_board: int | None = None
    sim_channels: int | None = None  # 8a only
    report_door: int | None = None  # 8a only
    no_reply: bool = False
    bad_checksum: bool = False
    split: bool = False
    delay_ms: float = 0.0
    echo: bool = False
    auto_close: float = 0.0  # seconds until an opened door shuts by itself (the demo)
    stuck: str = ""
    items: str = ""
    firmware: str = field(default="a", metadata={"choices": ("a", "b")})  # cu48 only
    detect: bool = True  # cu48 only: False passes dialect=<firmware> to the driver


def _doors(device: str, param: str, text: str, doors: int) -> tuple[int, ...]:
    expected = f"comma-separated door numbers in 1..{doors}"
    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise DeviceConfigError(device, param, expected) from err
    if any(not 1 <= d <= doors for d in found):
        raise DeviceConfigError(device, param, expected)
    return found


class SimLocker(Locker):
    """A simulated lock board on a pty, driven by the real protocol driver."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        parsed = parse_url(name, url, ("sim",))
        self.sim = options(name, SimOptions, parsed.params)
        driver_cls, self._board_cls = DIALECTS[self.sim.dialect]
        given = {k: getattr(self.sim, k) for k in PASS_THROUGH if getattr(self.sim, k) is not None}
        if driver_cls is KerongCU48 and not self.sim.detect:
            given["dialect"] = self.sim.firmware
        self._query = urlencode(
            {k: str(v).lower() if isinstance(v, bool) else v for k, v in given.items()}
        )
        # Validate now (a bad option fails at start-up), open the real driver later on the pty.
        self._driver_cls = driver_cls
        probe = driver_cls(name, f"loop://?{self._query}")
        self.options: LockerOptions = probe.options
        self._stuck = _doors(name, "stuck", self.sim.stuck, self.options.doors)
        self._items = _doors(name, "items", self.sim.items, self.options.doors)
        self._board_knobs: dict[str, Any] = {}
        if isinstance(probe, Board8A):
            board_channels = self.sim.sim_channels
            if board_channels is None:
                board_channels = probe.channels
            last = probe.wire(self.options.doors)
            if not last <= board_channels <= probe.max_channel:
                raise DeviceConfigError(name, "sim_channels", f"{last}..{probe.max_channel}")
            self._board_knobs["channels"] = board_channels
            if self.sim.report_door is not None:
                self._board_knobs["report_door"] = _doors(
                    name, "report_door", str(self.sim.report_door), self.options.doors
                )[0]
        elif self.sim.sim_channels is not None or self.sim.report_door is not None:
            raise DeviceConfigError(name, "sim_channels/report_door", "only with dialect=8a")
        self._board: SimBoard | None = None
        self._driver: SerialBoard | None = None

    @override
    def open(self) -> None:
        if self._driver is not None:
            return
        o, s = self.options, self.sim
        faults = Faults(s.no_reply, s.bad_checksum, s.split, s.delay_ms, s.echo, s.auto_close)
        knobs: dict[str, Any] = {
            "board": o.board if s.sim_board is None else s.sim_board,
            "doors": o.doors,
            "channel_base": o.channel_base,
            "open_bit": o.open_bit,
            "faults": faults,
            "stuck": self._stuck,
            "items": self._items,
            **self._board_knobs,
        }
        if self._board_cls is SimKerongCU48:
            self._board = SimKerongCU48(firmware=s.firmware, **knobs)
        else:
            self._board = self._board_cls(**knobs)
        try:
            driver = self._driver_cls(self.name, f"serial://{self._board.path}?{self._query}")
            driver.open()
        except BaseException:
            self.close()
            raise
        self._driver = driver

    @override
    def close(self) -> None:
        driver, self._driver = self._driver, None
        board, self._board = self._board, None
        if driver is not None:
            driver.close()
        if board is not None:
            board.close()

    @property
    @override
    def is_open(self) -> bool:
        return self._driver is not None

    @property
    def board(self) -> SimBoard:
        """The simulated board, for tests and the demo (close a door, make one stick)."""
        if self._board is None:
            raise DeviceOperationError(self.name, "not open")
        return self._board

    @property
    def driver(self) -> SerialBoard:
        if self._driver is None:
            raise DeviceOperationError(self.name, "not open")
        return self._driver

    @override
    def _open_door(self, door: int) -> None:
        self.driver._open_door(door)

    @override
    def _door_status(self, door: int) -> DoorState:
        return self.driver._door_status(door)

    @override
    def _all_status(self) -> dict[int, DoorState]:
        return self.driver._all_status()
