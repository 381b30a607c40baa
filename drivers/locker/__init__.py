"""Lockers: lock-control boards (锁控板) on RS485, one board per configured device.

Contract (every locker driver):
- Doors are numbered from 1 to `doors` on each board, whatever the board's wire numbering
  (`channel_base` 0 or 1 maps door 1 to the first channel). A door outside 1..doors raises
  ValueError (a caller bug, never sent to the board).
- `open_door(door)` sends ONE unlock, then confirms by status queries for up to
  `confirm_timeout` seconds, and returns a DoorResult saying whether the door was seen open.
  The unlock is never resent: a lost reply does not mean the lock stayed shut, and a second
  pulse could open a door that a visitor has just closed. If the unlock exchange fails (no reply,
  garbled reply) the door's status is still queried and the result says `acked=False`. If a
  status query fails the call raises; the unlock went out once and must not be resent blindly.
- `door_status(door)` -> DoorState; `all_status()` -> {door: DoorState} for 1..doors.
- Boards sharing one RS485 bus (same port, different addresses) share one port object, so only
  one transaction is on the wire at a time; they must agree on baudrate and local_echo.
- Raises DeviceTimeout (the board did not answer within `timeout`: wrong address, baud, wiring),
  DeviceOperationError (a garbled or unexpected reply: checksum, echo, another board) or
  DeviceOperationError before `open()`. The port is held for one exchange at a time and released
  after every failure, so the next call starts clean.
- `door sensor polarity` (`open_bit`): the status bit value that means "open" varies with the
  lock's switch type (normally open/closed); it is configured per board, never guessed.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, field

from drivers.base import Device, SelfTest, check_ttl
from drivers.errors import DeviceOperationError, DeviceTimeout, DriverError

log = logging.getLogger(__name__)
COMMAND_TTL_S = 10.0  # an unlock decided longer ago than this is dropped, never sent

NO_REPLY_HINT = (
    "no reply: check the board address DIP switches, the baud rate and the A/B wiring "
    "/ 无应答：检查锁控板地址拨码、波特率和485 A/B接线"
)
BAD_REPLY_HINT = (
    "garbled reply: check the baud rate, that only one board has this address, and local_echo "
    "for adapters that echo / 应答错误：检查波特率、地址是否重复、回显设置"
)


class FrameError(ValueError):
    """A frame that does not decode (checksum, length, header). Codecs raise it; drivers wrap it
    into DeviceOperationError with the device's name."""


@dataclass(frozen=True)
class LockerOptions:
    """Options every lock board shares (URL parameters)."""

    board: int = 1  # address set by the board's DIP switches
    doors: int = 24  # doors wired to this board
    channel_base: int = field(default=1, metadata={"choices": (0, 1)})  # wire number of door 1
    open_bit: int = field(default=0, metadata={"choices": (0, 1)})  # status bit value for "open"
    baudrate: int = 9600
    timeout: float = 1.0  # seconds to wait for one reply
    local_echo: bool = False  # the RS485 adapter echoes what it sends
    confirm_timeout: float = 1.0  # seconds to poll the door sensor after an unlock
    confirm_interval: float = 0.1  # seconds between confirming status queries
    settle: float = 0.0  # seconds between an unlock and the first status query


@dataclass(frozen=True)
class DoorState:
    door: int
    open: bool
    item: bool | None = None  # an item inside (IR sensor), None where the board cannot tell

    @property
    def closed(self) -> bool:
        return not self.open


@dataclass(frozen=True)
class DoorResult:
    door: int
    opened: bool  # the door sensor was seen open after the unlock
    state: DoorState  # the last status seen
    # The unlock exchange completed: the board's acknowledgement was read where the protocol has
    # one (8A); False when it was lost or garbled and only the status query tells the truth.
    acked: bool
    queries: int  # status queries made to confirm
    elapsed: float  # seconds from the call to the result


class Locker(Device):
    device_class = "locker"
    options: LockerOptions

    def open_door(
        self, door: int, *, issued_at: float | None = None, ttl: float = COMMAND_TTL_S
    ) -> DoorResult:
        """Unlock `door` once and confirm by status queries (see the module docstring).
        A command older than `ttl` (from `issued_at`, a time.monotonic() stamp) raises
        StaleCommand and sends nothing."""
        self._check_door(door)
        check_ttl(self.name, f"unlock door {door}", issued_at, ttl)
        log.info("%s: unlock door %d", self.name, door)
        start = time.monotonic()
        acked = True
        unlock_error: DriverError | None = None
        try:
            self._open_door(door)
        except (DeviceTimeout, DeviceOperationError) as err:
            # The board may have fired the lock even though its reply was lost: look, never resend.
            log.warning("%s: unlock door %d: %s; confirming by status", self.name, door, err)
            acked = False
            unlock_error = err
        if self.options.settle:
            time.sleep(self.options.settle)
        deadline = time.monotonic() + self.options.confirm_timeout
        queries = 0
        while True:
            try:
                state = self._door_status(door)
            except DriverError:
                if unlock_error is not None:
                    raise unlock_error from None
                raise
            queries += 1
            if state.open or time.monotonic() >= deadline:
                break
            time.sleep(max(0.0, min(self.options.confirm_interval, deadline - time.monotonic())))
        result = DoorResult(door, state.open, state, acked, queries, time.monotonic() - start)
        if not result.opened:
            log.warning(
                "%s: door %d not seen open after unlock (%d queries)", self.name, door, queries
            )
        return result

    def door_status(self, door: int) -> DoorState:
        """The state of one door."""
        self._check_door(door)
        state = self._door_status(door)
        log.debug("%s: %s", self.name, state)
        return state

    def all_status(self) -> dict[int, DoorState]:
        """The state of every door on the board, keyed 1..doors."""
        self._check_open()
        states = self._all_status()
        log.debug(
            "%s: %d doors, open: %s",
            self.name,
            len(states),
            [d for d, s in states.items() if s.open],
        )
        return states

    def self_test(self) -> SelfTest:
        """One status query of the whole board; no door moves."""
        if not self.is_open:
            return SelfTest(False, "not open", "open the device first (see the open error)")
        try:
            states = self.all_status()
        except DeviceTimeout as err:
            return SelfTest(False, f"status query: {err}", NO_REPLY_HINT)
        except DriverError as err:
            return SelfTest(False, f"status query: {err}", BAD_REPLY_HINT)
        opened = [d for d, s in states.items() if s.open]
        return SelfTest(True, f"board {self.options.board}: {len(states)} doors, open: {opened}")

    def _check_door(self, door: int) -> None:
        if isinstance(door, bool) or not isinstance(door, int):
            raise TypeError(f"{self.name}: door must be an int, got {door!r}")
        if not 1 <= door <= self.options.doors:
            raise ValueError(f"{self.name}: door {door} outside 1..{self.options.doors}")
        self._check_open()

    def _check_open(self) -> None:
        if not self.is_open:
            raise DeviceOperationError(self.name, "not open")

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """open() succeeded and close() has not been called."""

    @abstractmethod
    def _open_door(self, door: int) -> None:
        """Send one unlock for `door` (and read the board's acknowledgement where it sends one).
        Raises DeviceTimeout / DeviceOperationError; never retries."""

    @abstractmethod
    def _door_status(self, door: int) -> DoorState:
        """Query one door's state."""

    @abstractmethod
    def _all_status(self) -> dict[int, DoorState]:
        """Query every door's state."""
