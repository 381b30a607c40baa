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

from drivers.gate import Direction, Gate, GateInputs, GateOptions, Passage

log = logging.getLogger(__name__)

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

    @override
    def _admit(self, direction: Direction, persons: int, window_s: float) -> Passage:
        opts = self.options
        relay = opts.relay_in if direction == "in" else opts.relay_out
        pass_input = opts.pass_in if direction == "in" else opts.pass_out
        poll = opts.poll_ms / 1000
        levels = self._read_levels() if self._needs_levels() else None
        passed = 0
        for _ in range(persons):
            if self._fire(levels):
                return Passage(passed, persons, timed_out=False, fire=True)
            self._send_pulse(relay)
            if not opts.pass_wired:
                passed += 1  # the lane has no PASS feedback: the open is the passage
                continue
            assert levels is not None  # pass_wired implies levels were read
            before = bool(self._level(levels, pass_input))
            deadline = time.monotonic() + window_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Passage(passed, persons, timed_out=True, fire=False)
                time.sleep(min(poll, left))
                levels = self._read_levels()
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
