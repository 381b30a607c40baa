"""The passage loop shared by relay-board gates: pulse, then count PASS edges until the window ends.

A board driver supplies two primitives, `_pulse(channel, ms)` and `_read_levels()`; this class
turns them into the Gate contract (drivers/gate/__init__.py).
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Sequence

from typing_extensions import override

from drivers.errors import DriverError
from drivers.gate import Direction, Gate, GateInputs, GateOptions, Passage

log = logging.getLogger(__name__)

CANCELLED = "cancelled before the passage window ended"
# A controller only sees a second unlock as such after the contact has opened again; LCUS boards
# also drop commands closer than ~100 ms (PROTOCOLS.md 2.2).
PULSE_GAP_S = 0.1


class PulseGate(Gate):
    """A gate whose unlock is a relay pulse and whose feedback is polled digital inputs."""

    has_inputs = True  # the board can read digital inputs (PASS, fire)

    def __init__(self, name: str, url: str, options: GateOptions) -> None:
        super().__init__(name, url, options)
        self._ready_at: dict[int, float] = {}

    @abstractmethod
    def _pulse(self, channel: int, pulse_ms: int) -> None:
        """Close relay `channel` (from 1) for `pulse_ms`; returns once the board has it."""

    @abstractmethod
    def _read_levels(self) -> Sequence[bool]:
        """Digital input levels, DI1 first."""

    def _level(self, levels: Sequence[bool], channel: int | None) -> bool | None:
        if channel is None or channel > len(levels):
            return None
        return levels[channel - 1]

    def _fire(self, levels: Sequence[bool] | None) -> bool:
        if levels is None or self.options.fire_input is None:
            return False
        level = self._level(levels, self.options.fire_input)
        return level is not None and level == bool(self.options.fire_level)

    def _needs_levels(self) -> bool:
        return self.options.pass_wired or self.options.fire_input is not None

    def _wait_ready(self, channel: int) -> None:
        delay = self._ready_at.get(channel, 0.0) - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _send_pulse(self, channel: int) -> None:
        self._wait_ready(channel)
        ms = self.options.pulse_ms
        self._pulse(channel, ms)
        self._ready_at[channel] = time.monotonic() + ms / 1000 + PULSE_GAP_S

    def _try_read(self) -> tuple[Sequence[bool] | None, str | None]:
        """(levels, None), or (None, why) when the board did not answer or answered wrongly."""
        try:
            return self._read_levels(), None
        except DriverError as err:
            return None, str(err)

    def _read_until(self, deadline: float) -> tuple[Sequence[bool] | None, str | None]:
        """Read the inputs, retrying lost replies (RS485 noise) until `deadline`."""
        while True:
            levels, why = self._try_read()
            left = deadline - time.monotonic()
            if levels is not None or left <= 0:
                return levels, why
            log.warning("gate inputs lost, retrying", extra={"device": self.name, "error": why})
            time.sleep(min(self.options.poll_ms / 1000, left))

    @override
    def _admit(self, direction: Direction, persons: int, window_s: float) -> Passage:
        opts = self.options
        relay = opts.relay_in if direction == "in" else opts.relay_out
        pass_input = opts.pass_in if direction == "in" else opts.pass_out
        poll = opts.poll_ms / 1000
        # Nothing has been sent yet: an error here raises, and the caller may simply retry.
        levels = self._read_levels() if self._needs_levels() else None
        passed = 0
        for n in range(persons):
            if self._cancel.is_set():
                return Passage(passed, persons, False, False, error=CANCELLED)
            if n and opts.fire_input is not None:
                # The alarm may have started since the last read: a lane without PASS has no
                # wait loop to notice it, so look again right before every further pulse.
                self._wait_ready(relay)
                levels, why = self._read_until(time.monotonic() + window_s)
                if levels is None:
                    return Passage(passed, persons, False, False, error=f"inputs lost: {why}")
            if self._fire(levels):
                return Passage(passed, persons, timed_out=False, fire=True)
            try:
                self._send_pulse(relay)
            except DriverError as err:
                if not n:
                    raise
                # Raising now would lose the count of persons already through, and a caller's
                # retry would pulse them again: report what is known instead.
                why = f"pulse {n + 1} may or may not have reached the gate: {err}"
                return Passage(passed, persons, False, False, error=why)
            if not opts.pass_wired:
                passed += 1  # the lane has no PASS feedback: the open is the passage
                continue
            assert levels is not None  # pass_wired implies levels were read
            before = bool(self._level(levels, pass_input))
            deadline = time.monotonic() + window_s
            lost: str | None = None  # a read failed in this window: its PASS may have been missed
            down = False  # log an outage once, not at every poll
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    error = f"inputs lost: {lost}" if lost else None
                    return Passage(passed, persons, timed_out=True, fire=False, error=error)
                if self._cancel.wait(min(poll, left)):
                    return Passage(passed, persons, False, False, error=CANCELLED)
                # A lost reply after the pulse went out must not abort: keep polling until the
                # window's deadline, keeping the last good levels for the edge detection.
                read, why = self._try_read()
                if read is None:
                    if not down:
                        log.warning("gate inputs lost", extra={"device": self.name, "error": why})
                    lost, down = why, True
                    continue
                down = False
                levels = read
                if self._fire(levels):
                    return Passage(passed, persons, timed_out=False, fire=True)
                now = bool(self._level(levels, pass_input))
                if now and not before:  # the controller's PASS relay closed: one person
                    passed += 1
                    break
                before = now
        return Passage(passed, persons, timed_out=False, fire=False)

    @override
    def _inputs(self) -> GateInputs:
        if not self.has_inputs:
            return GateInputs(None, None, None)
        levels = self._read_levels()
        opts = self.options
        fire = self._fire(levels) if opts.fire_input is not None else None
        if not opts.pass_wired:
            return GateInputs(None, None, fire)
        return GateInputs(
            self._level(levels, opts.pass_in), self._level(levels, opts.pass_out), fire
        )
