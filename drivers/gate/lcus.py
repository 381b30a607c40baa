"""LCUS-1/2/4/8 USB relay (CH340, 1A86:7523) as a gate: codec and driver.

PROTOCOLS.md 2.2: 9600 8N1, frame `A0 CH OP SUM` with SUM = low byte of A0+CH+OP; a status
query `FF` is answered by multi-channel boards with lines such as `CH1: OFF\\r\\n`.
The board has no inputs, so a gate on it cannot see PASS or the fire loop: it requires
`pass_wired=false` (each pulse counts as the passage) and no `fire_input`. A pulse is ON, sleep,
OFF: unlike the Modbus flash, a process killed in between leaves the relay energised until the
next open() forces the gate's relays off, so prefer the Modbus board where the controller is in
potential (level) mode.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from typing_extensions import override

from drivers.base import SelfTest
from drivers.errors import DeviceConfigError, DeviceOperationError, DeviceTimeout, DriverError
from drivers.gate import GateOptions
from drivers.gate.passage import PULSE_GAP_S, PulseGate
from drivers.port import SerialPort
from drivers.url import options, parse_url

log = logging.getLogger(__name__)

HEAD = 0xA0
STATUS_QUERY = b"\xff"
MAX_CHANNEL = 8
_STATUS_LINE = re.compile(rb"CH(\d+):\s*(ON|OFF)", re.IGNORECASE)
SCHEMES = ("serial", "socket", "loop", "spy")
HINT_NO_STATUS = (
    "no status reply: check the USB cable and `ls /dev/serial/by-id/` (CH340); 1-channel LCUS "
    "boards never answer, listen for the relay click instead / 无状态应答：检查 USB 线；"
    "单路 LCUS 板不应答，开闸时听继电器声音"
)


def encode_switch(channel: int, on: bool) -> bytes:
    """`A0 CH OP SUM`: relay `channel` (from 1) on or off."""
    if not 1 <= channel <= 0xFF:
        raise ValueError(f"LCUS channel {channel} out of range")
    body = bytes([HEAD, channel, 1 if on else 0])
    return body + bytes([sum(body) & 0xFF])


def decode_switch(frame: bytes) -> tuple[int, bool]:
    """(channel, on) from a 4-byte frame; raises ValueError on a bad head, op or checksum."""
    if len(frame) != 4 or frame[0] != HEAD:
        raise ValueError(f"not an LCUS frame: {frame.hex(' ')}")
    if frame[3] != sum(frame[:3]) & 0xFF:
        raise ValueError(f"bad LCUS checksum: {frame.hex(' ')}")
    if frame[2] not in (0, 1):
        raise ValueError(f"unknown LCUS operation {frame[2]:#04x}")
    return frame[1], frame[2] == 1


def encode_status(states: Sequence[bool]) -> bytes:
    """A multi-channel board's answer to `FF`: one `CHn: ON|OFF` line per relay."""
    return b"".join(
        f"CH{i}: {'ON' if on else 'OFF'}\r\n".encode() for i, on in enumerate(states, 1)
    )


def decode_status(text: bytes) -> dict[int, bool]:
    """Relay states by channel from a status answer (lines it cannot read are skipped)."""
    return {int(m[1]): m[2].upper() == b"ON" for m in _STATUS_LINE.finditer(text)}


class LcusGate(PulseGate):
    """LCUS USB relay: ON/OFF pulses, no inputs (each pulse counts as the passage)."""

    has_inputs = False

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, SCHEMES)
        opts = options(name, GateOptions, parsed.params)
        super().__init__(name, url, opts)
        if opts.pass_wired:
            raise DeviceConfigError(
                name, "pass_wired", "must be false: the LCUS board has no inputs to read PASS"
            )
        if opts.fire_input is not None:
            raise DeviceConfigError(name, "fire_input", "the LCUS board has no inputs")
        for param in ("relay_in", "relay_out"):
            if getattr(opts, param) > MAX_CHANNEL:
                raise DeviceConfigError(name, param, f"an LCUS channel from 1 to {MAX_CHANNEL}")
        self.serial_url = parsed.serial_url
        self._port: SerialPort | None = None

    @override
    def _acquire(self) -> None:
        if self._port is not None:
            return
        self._port = SerialPort(
            self.name,
            self.serial_url,
            baudrate=self.options.baudrate,
            timeout=self.options.timeout,
        )
        self._force_off()

    def _force_off(self) -> None:
        """Switch the gate's relays off: a process killed mid-pulse leaves its relay energised
        (the gate unlocked), and only the next start can undo that (PROTOCOLS.md 1.5/2.2)."""
        channels = (self.options.relay_in, self.options.relay_out)
        try:
            for i, channel in enumerate(channels):
                if i:
                    time.sleep(PULSE_GAP_S)  # the board drops commands closer than ~100 ms
                self._write(encode_switch(channel, False))
        except DriverError as err:
            # Not fatal here: self_test() asks the relay states and says which one is held on.
            log.warning("gate relays not reset", extra={"device": self.name, "error": str(err)})
        ready = time.monotonic() + PULSE_GAP_S
        for channel in channels:
            self._ready_at[channel] = ready  # the first pulse keeps the gap after these writes

    @override
    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _write(self, frame: bytes) -> None:
        if self._port is None:
            raise DeviceOperationError(self.name, "not open")
        self._port.transact(frame, None)

    @override
    def _pulse(self, channel: int, pulse_ms: int) -> None:
        self._write(encode_switch(channel, True))
        try:
            time.sleep(pulse_ms / 1000)
        finally:
            # Also on KeyboardInterrupt/cancel: an energised relay holds the gate unlocked.
            self._write(encode_switch(channel, False))

    @override
    def _read_levels(self) -> Sequence[bool]:
        raise DeviceOperationError(self.name, "the LCUS board has no inputs")

    def relay_states(self) -> dict[int, bool]:
        """Ask the board for its relay states (`FF`); multi-channel boards only."""
        if self._port is None:
            raise DeviceOperationError(self.name, "not open")
        need = max(self.options.relay_in, self.options.relay_out)

        def complete(buf: bytearray) -> int | None:
            return len(buf) if len(decode_status(bytes(buf))) >= need else None

        return decode_status(self._port.transact(STATUS_QUERY, complete))

    @override
    def self_test(self) -> SelfTest:
        """Asks the relay states; no relay moves."""
        try:
            states = self.relay_states()
        except DeviceTimeout as err:
            return SelfTest(False, f"status query: {err}", HINT_NO_STATUS)
        except DriverError as err:
            return SelfTest(False, f"status query: {err}", HINT_NO_STATUS)
        shown = ", ".join(f"CH{ch} {'ON' if on else 'off'}" for ch, on in sorted(states.items()))
        stuck = [ch for ch in (self.options.relay_in, self.options.relay_out) if states.get(ch)]
        if stuck:
            return SelfTest(
                False,
                f"relays: {shown}",
                f"relay CH{stuck[0]} is held on: the gate is unlocked; power-cycle the board / "
                "继电器常吸合，闸门未锁：重新上电",
            )
        return SelfTest(True, f"relays: {shown}; no PASS/fire inputs on this board")
