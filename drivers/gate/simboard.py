"""Simulated relay boards on a pty, with a simulated turnstile behind the relays.

`ModbusRelayBoard` speaks Modbus RTU (FC02 inputs, FC05 on/off and flash) and `LcusBoard` the LCUS
frames, through the same codecs as the drivers, so the real drivers are what tests exercise: open
`board.path` like a serial port. Timing is driven by the clock, not by threads: an unlock schedules
a passage `pass_delay_ms` later, and the PASS input reads high for `pass_pulse_ms` from then.
Fault knobs are plain attributes, changeable while the board runs.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from drivers.gate import lcus
from drivers.gate import modbus as mb
from drivers.pty import PtyDevice


@dataclass(frozen=True)
class Pulse:
    at: float  # time.monotonic() when the command bytes were read
    channel: int  # from 1
    ms: int


@dataclass
class Turnstile:
    """A pulse-mode controller (PROTOCOLS.md 2.1): each unlock lets one waiting person through."""

    relay_in: int = 1
    relay_out: int = 2
    pass_in: int = 1
    pass_out: int = 2
    fire_input: int | None = None
    fire_level: int = 0
    pass_delay_ms: int = 300  # unlock -> the person is through and PASS closes
    pass_pulse_ms: int = 100  # how long the controller's PASS relay stays closed
    queue: int = -1  # persons waiting to walk through; -1: always someone
    pass_signal: bool = True  # false: persons walk, but PASS never reaches the board
    fire: bool = False  # the fire loop is open: free passage
    fire_after: int | None = None  # the alarm starts right after this many unlock commands
    unlocks: int = 0  # unlock commands seen (also those the controller ignored)
    passages: list[tuple[str, float]] = field(default_factory=list)
    _events: list[tuple[int, float, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def unlock(self, channel: int, now: float) -> None:
        direction = {self.relay_in: "in", self.relay_out: "out"}.get(channel)
        if direction is None:
            return
        self.unlocks += 1
        fire_now = self.fire
        if self.fire_after is not None and self.unlocks >= self.fire_after:
            self.fire = True  # takes effect after this unlock: the person already walks
        if fire_now:
            return  # in fire mode the controller ignores every command
        with self._lock:
            if self.queue == 0:
                return
            if self.queue > 0:
                self.queue -= 1
            through = now + self.pass_delay_ms / 1000
            self.passages.append((direction, through))
            if self.pass_signal:
                pin = self.pass_in if direction == "in" else self.pass_out
                self._events.append((pin, through, through + self.pass_pulse_ms / 1000))

    def levels(self, now: float, count: int) -> list[bool]:
        """Digital input levels DI1..DIcount at `now`."""
        out = [False] * count
        with self._lock:
            # PASS pulses already over can never be seen again: drop them, or a long demo slows.
            self._events = [ev for ev in self._events if ev[2] > now - 1.0]
            for pin, start, end in self._events:
                if start <= now < end and pin <= count:
                    out[pin - 1] = True
        if self.fire_input is not None and self.fire_input <= count:
            # The fire loop is normally closed: the level is `fire_level` only in an alarm.
            out[self.fire_input - 1] = (self.fire_level == 1) == self.fire
        return out


class _Board(ABC):
    """Common to both boards: the pty, the turnstile, the record of what came over the wire."""

    def __init__(self, turnstile: Turnstile | None, name: str) -> None:
        self.turnstile = turnstile or Turnstile()
        self.no_reply = False  # the board is silent and does nothing (wrong address, no power)
        self.frames: list[tuple[float, bytes]] = []  # every valid command, as read
        self.pulses: list[Pulse] = []
        self._buf = bytearray()
        self.dev = PtyDevice(self._on_bytes, name=name)
        self.path = self.dev.path

    @abstractmethod
    def _on_bytes(self, data: bytes) -> bytes:
        """Handle bytes from the driver; return the reply to write back."""

    def close(self) -> None:
        self.dev.close()

    def __enter__(self) -> _Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ModbusRelayBoard(_Board):
    """A Waveshare-style Modbus RTU relay board: 8 relays, 8 digital inputs."""

    def __init__(
        self,
        turnstile: Turnstile | None = None,
        *,
        slave: int = 1,
        channels: int = 8,
        bad_crc: bool = False,
        split: bool = False,
        delay_ms: int = 0,
        echo: bool = False,
        no_reply: bool = False,
    ) -> None:
        self.slave = slave
        self.channels = channels
        self.bad_crc = bad_crc  # replies carry a wrong CRC (the command is still carried out)
        self.split = split  # replies come in two writes, 20 ms apart
        self.delay_ms = delay_ms  # replies come this late
        self.echo = echo  # the adapter echoes the request before the reply
        self.coils = [False] * channels  # relay states set by plain FC05 on/off
        # Silence for `mute_ms` after the `mute_after`-th flash pulse (noise on the RS485 line
        # mid-window); the flash itself is still answered.
        self.mute_after: int | None = None
        self.mute_ms = 0
        self._mute_until = 0.0
        super().__init__(turnstile, "modbus-board")
        self.no_reply = no_reply

    def _on_bytes(self, data: bytes) -> bytes:
        now = time.monotonic()
        self._buf += data
        out = bytearray()
        while len(self._buf) >= mb.REQUEST_LEN:
            frame = bytes(self._buf[: mb.REQUEST_LEN])
            if not mb.crc_ok(frame):
                self._buf.clear()  # garbled: a real slave waits for the line to go quiet
                break
            del self._buf[: mb.REQUEST_LEN]
            if self.no_reply or now < self._mute_until or frame[0] != self.slave:
                continue
            self.frames.append((now, frame))
            reply = self._handle(mb.decode_request(frame), now)
            if self.echo:
                out += frame
            if self.bad_crc:
                reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
            out += reply
        if out and self.delay_ms:
            time.sleep(self.delay_ms / 1000)
        if out and self.split:
            half = len(out) // 2
            self.dev.send(bytes(out[:half]))
            time.sleep(0.02)
            return bytes(out[half:])
        return bytes(out)

    def _handle(self, req: mb.Request, now: float) -> bytes:
        frame = mb.with_crc(
            bytes([req.slave, req.function])
            + req.address.to_bytes(2, "big")
            + req.value.to_bytes(2, "big")
        )
        if req.function == mb.READ_INPUTS:
            if req.value < 1 or req.address + req.value > self.channels:
                return mb.encode_exception(self.slave, req.function, 2)
            levels = self.turnstile.levels(now, self.channels)
            return mb.encode_bits_reply(
                self.slave, req.function, levels[req.address :][: req.value]
            )
        if req.function != mb.WRITE_COIL:
            return mb.encode_exception(self.slave, req.function, 1)
        relay = req.address & 0xFF
        kind = req.address & 0xFF00
        if kind == mb.FLASH_ON_BASE and relay < self.channels and 0 < req.value <= 0x7FFF:
            ms = req.value * mb.FLASH_STEP_MS
            self.pulses.append(Pulse(now, relay + 1, ms))
            self.turnstile.unlock(relay + 1, now)
            if len(self.pulses) == self.mute_after:
                self._mute_until = now + self.mute_ms / 1000
            return frame
        if kind == 0 and (relay < self.channels or relay == 0xFF) and req.value in (mb.ON, 0):
            on = req.value == mb.ON
            if on and relay < self.channels and not self.coils[relay]:
                self.turnstile.unlock(relay + 1, now)
            for i in range(self.channels) if relay == 0xFF else [relay]:
                self.coils[i] = on
            return frame
        return mb.encode_exception(self.slave, req.function, 2)


class LcusBoard(_Board):
    """An LCUS-n USB relay: `A0 CH OP SUM` switches a relay (no reply), `FF` asks the states."""

    def __init__(self, turnstile: Turnstile | None = None, *, channels: int = 4) -> None:
        self.channels = channels
        self.states = [False] * channels
        self._on_since: dict[int, float] = {}
        super().__init__(turnstile, "lcus-board")

    def _on_bytes(self, data: bytes) -> bytes:
        now = time.monotonic()
        self._buf += data
        out = bytearray()
        while self._buf:
            if self._buf[0] == lcus.STATUS_QUERY[0]:
                del self._buf[0]
                if not self.no_reply:
                    out += lcus.encode_status(self.states)
                continue
            if self._buf[0] != lcus.HEAD:
                del self._buf[0]  # resynchronise on the next A0
                continue
            if len(self._buf) < 4:
                break
            frame = bytes(self._buf[:4])
            del self._buf[:4]
            try:
                channel, on = lcus.decode_switch(frame)
            except ValueError:
                continue
            if self.no_reply or not 1 <= channel <= self.channels:
                continue
            self.frames.append((now, frame))
            self._switch(channel, on, now)
        return bytes(out)

    def _switch(self, channel: int, on: bool, now: float) -> None:
        was = self.states[channel - 1]
        self.states[channel - 1] = on
        if on and not was:
            self._on_since[channel] = now
            self.turnstile.unlock(channel, now)
        elif was and not on:
            since = self._on_since.pop(channel, now)
            self.pulses.append(Pulse(since, channel, round((now - since) * 1000)))
