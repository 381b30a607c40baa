"""Gates: turnstiles, flap barriers and tripods driven by dry contacts.

Contract, written once for every gate driver:

- A gate has two directions, "in" (the controller's A side) and "out" (B); "A"/"B" are accepted
  as aliases. Relay channels and digital inputs are numbered from 1, as printed on the boards
  (CH1..CH8, DI1..DI8).
- `open(direction, persons=1, window_s=None) -> Passage` sends one unlock pulse per person and
  returns when all persons have passed or the passage window expired, saying how many passed.
  The window (default `window_s` option, 5-8 s per PROTOCOLS.md 2.1) runs per person: it restarts
  after each passage, as group tickets need. A passage is a rising edge of the direction's PASS
  input. A lane with no PASS signal wired (`pass_wired=false`) counts each pulse as a passage.
- Fire mode: when the fire input reports an alarm, `open()` sends no pulse and returns
  `fire=True`; if the alarm starts while waiting, it returns at once with `fire=True`. The fire
  loop acts in hardware (the controller unblocks the gate); software only mirrors it and never
  pretends to be the safety path.
- `inputs() -> GateInputs` reads PASS A, PASS B and fire (None for an input that is not wired or
  that the board cannot read); `fire_active()` is True only when a wired fire input says so.
- Fire is checked before every pulse (the inputs are read again when a fire input is wired), so
  an alarm starting mid-group stops further pulses also on a lane without PASS.
- Failures before the first pulse went out raise: DeviceTimeout when the board does not answer,
  DeviceOperationError when it answers wrongly (bad CRC, exception reply). After an error from
  `open()` the pulse may or may not have reached the gate: never retry blindly, ask the visitor
  or read the PASS inputs. Once a pulse went out, `open()` never raises a board error: lost
  input replies are retried until the window's deadline, and if the inputs do not come back (or
  a later pulse gets no reply) it returns the persons counted so far with `Passage.error` set
  (and `timed_out=True` when the window ran out). Do not retry such a Passage blindly either.
- `cancel()` (from any thread) ends a running `open()` early: no further pulse, and it returns
  the persons counted so far with `Passage.error` saying it was cancelled (a daemon stopping).
- `open()` with no arguments forces the gate's relays off, so a relay left energised by a crashed
  process does not keep the gate unlocked after a restart (PROTOCOLS.md 1.5).
- Public methods validate and log, then call one abstract hook: `open()` -> `_acquire` or
  `_admit`, `inputs()` and `fire_active()` -> `_inputs`.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Literal, overload

from drivers.base import Device, check_ttl
from drivers.errors import DeviceConfigError

Direction = Literal["in", "out"]
_ALIASES: dict[str, Direction] = {"in": "in", "a": "in", "out": "out", "b": "out"}
MAX_PERSONS = 100  # a group ticket larger than this is a configuration mistake upstream
MAX_WINDOW_S = 120.0

log = logging.getLogger(__name__)
COMMAND_TTL_S = 5.0  # an open decided longer ago than this is dropped: the visitor has gone


@dataclass(frozen=True)
class Passage:
    passed: int  # persons who went through (PASS edges, or pulses on a lane without PASS)
    requested: int
    timed_out: bool  # the window expired before everyone passed
    fire: bool  # fire mode was active: free passage, no (further) pulse was sent
    # Set when the run stopped early on a board error after a pulse had gone out (inputs lost
    # for the rest of a window, or a later pulse got no reply): `passed` is still what is known.
    error: str | None = None


@dataclass(frozen=True)
class GateInputs:
    pass_a: bool | None  # None: not wired / not readable on this board
    pass_b: bool | None
    fire: bool | None  # True: the fire input reports an alarm (free passage)

    def describe(self) -> str:
        """One line for `edge doctor`."""

        def show(value: bool | None) -> str:
            return "not wired" if value is None else ("on" if value else "off")

        fire = "not wired" if self.fire is None else ("ALARM" if self.fire else "normal")
        return f"PASS A {show(self.pass_a)}, PASS B {show(self.pass_b)}, fire {fire}"


@dataclass(frozen=True)
class GateOptions:
    """URL parameters shared by every gate driver (`?relay_in=1&pulse_ms=200&...`)."""

    relay_in: int = 1  # relay channel wired to the controller's Unlock A
    relay_out: int = 2  # relay channel wired to Unlock B
    pulse_ms: int = 200  # >= 100 ms (PERCo pulse mode); Modbus flash works in 100 ms steps
    window_s: float = 6.0  # per-person passage window
    pass_in: int = 1  # digital input wired to the controller's PASS A output
    pass_out: int = 2  # digital input wired to PASS B
    fire_input: int | None = None  # digital input on the fire loop; None = not wired
    fire_level: int = field(default=0, metadata={"choices": (0, 1)})  # input level meaning fire
    pass_wired: bool = True  # false: count each pulse as a passage (no PASS feedback)
    poll_ms: int = 20  # PASS polling interval; keep well below the PASS pulse width
    slave: int = 1  # Modbus slave address (board DIP switches)
    baudrate: int = 9600
    timeout: float = 0.3  # per transaction
    local_echo: bool = False  # the RS485 adapter echoes what it sends


def check_options(device: str, opts: GateOptions) -> None:
    """Range checks common to every gate driver; raises DeviceConfigError."""
    for name in ("relay_in", "relay_out", "pass_in", "pass_out", "fire_input"):
        value = getattr(opts, name)
        if value is not None and not 1 <= value <= 32:
            raise DeviceConfigError(device, name, "a channel number from 1 to 32")
    if opts.relay_in == opts.relay_out:
        raise DeviceConfigError(device, "relay_out", "must differ from relay_in")
    if not 100 <= opts.pulse_ms <= 5000:
        raise DeviceConfigError(device, "pulse_ms", "100..5000 (controllers need >= 100 ms)")
    if not 0 < opts.window_s <= MAX_WINDOW_S:
        raise DeviceConfigError(device, "window_s", f"seconds, > 0 and <= {MAX_WINDOW_S:g}")
    if not 1 <= opts.poll_ms <= 1000:
        raise DeviceConfigError(device, "poll_ms", "1..1000")
    if not 1 <= opts.slave <= 247:
        raise DeviceConfigError(device, "slave", "a Modbus address from 1 to 247")
    if not 0 < opts.timeout <= 10:
        raise DeviceConfigError(device, "timeout", "seconds, > 0 and <= 10")


class Gate(Device):
    """A gate lane. `open()` with no arguments acquires the device (the Device lifecycle, as
    `with gate:` and `edge doctor` use it); `open(direction, ...)` lets persons through."""

    device_class = "gate"

    def __init__(self, name: str, url: str, options: GateOptions) -> None:
        super().__init__(name, url)
        check_options(name, options)
        self.options = options
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """End a running `open()` early (thread-safe); see the module docstring."""
        self._cancel.set()

    @overload
    def open(self) -> None: ...

    @overload
    def open(
        self,
        direction: str,
        persons: int = 1,
        window_s: float | None = None,
        *,
        issued_at: float | None = None,
        ttl: float = COMMAND_TTL_S,
    ) -> Passage: ...

    def open(
        self,
        direction: str | None = None,
        persons: int = 1,
        window_s: float | None = None,
        *,
        issued_at: float | None = None,
        ttl: float = COMMAND_TTL_S,
    ) -> Passage | None:
        """Acquire the device (no arguments), or unlock `direction` for `persons` and wait.

        Raises ValueError for a bad direction, person count or window; StaleCommand (nothing
        sent) when the open was decided more than `ttl` seconds before (`issued_at`, a
        time.monotonic() stamp); DeviceTimeout and DeviceOperationError as described in the
        module docstring.
        """
        if direction is None:
            self._acquire()
            return None
        side = _ALIASES.get(direction.lower()) if isinstance(direction, str) else None
        if side is None:
            raise ValueError(f"{self.name}: direction must be 'in'/'out' (A/B), not {direction!r}")
        if isinstance(persons, bool) or not isinstance(persons, int):
            raise ValueError(f"{self.name}: persons must be an integer")
        if not 1 <= persons <= MAX_PERSONS:
            raise ValueError(f"{self.name}: persons must be 1..{MAX_PERSONS}, not {persons}")
        window = self.options.window_s if window_s is None else float(window_s)
        if not 0 < window <= MAX_WINDOW_S:
            raise ValueError(f"{self.name}: window_s must be > 0 and <= {MAX_WINDOW_S:g}")
        check_ttl(self.name, f"open {side}", issued_at, ttl)
        self._cancel.clear()
        log.info("gate open", extra={"device": self.name, "direction": side, "persons": persons})
        passage = self._admit(side, persons, window)
        log.log(
            logging.WARNING if passage.error else logging.INFO,
            "gate passage",
            extra={
                "device": self.name,
                "direction": side,
                "passed": passage.passed,
                "requested": passage.requested,
                "timed_out": passage.timed_out,
                "fire": passage.fire,
                "error": passage.error,
            },
        )
        return passage

    def inputs(self) -> GateInputs:
        """Read PASS A, PASS B and the fire input. Moves nothing."""
        inputs = self._inputs()
        log.debug("gate inputs", extra={"device": self.name, "inputs": inputs})
        return inputs

    def fire_active(self) -> bool:
        """True when a wired fire input reports an alarm (the gate is in free passage)."""
        fire = self._inputs().fire is True
        if fire:
            log.warning("gate fire mode", extra={"device": self.name})
        return fire

    @abstractmethod
    def _acquire(self) -> None:
        """Open the port. Raises DeviceInitError."""

    @abstractmethod
    def _admit(self, direction: Direction, persons: int, window_s: float) -> Passage:
        """Pulse and wait for the passages; arguments already validated."""

    @abstractmethod
    def _inputs(self) -> GateInputs:
        """Read the inputs."""
