"""Gate driver "sim": a simulated relay board and turnstile on a pty, driven by the real driver.

`sim://?board=modbus&pass_delay_ms=800&fire_input=3` starts a ModbusRelayBoard (or an LcusBoard with
`board=lcus`, which needs `pass_wired=false`) on a pty and opens the real ModbusRelayGate/LcusGate
on it, so the demo and the tests exercise the same bytes a real board sees. Gate parameters
(relay_in, pulse_ms, window_s, pass_wired, local_echo, ...) go to the real driver; the rest are
simulator knobs:

- pass_delay_ms, pass_pulse_ms: a person is through this long after the pulse, PASS held this long
  (a pass_delay_ms longer than the window is a late PASS);
- queue: persons waiting (-1: always someone); `queue=3` with `persons=4` is a partial group;
- pass_signal=false: persons walk but PASS never arrives (missing PASS);
- fire=true: the fire loop reports an alarm (needs fire_input);
- no_reply, bad_crc, split, delay_ms, echo: the board is silent, corrupts its CRC, answers in two
  pieces, answers late, or the adapter echoes the request (set local_echo=true to cope).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import urlencode

from typing_extensions import override

from drivers.base import SelfTest
from drivers.errors import DeviceConfigError, DeviceOperationError
from drivers.gate import Direction, Gate, GateInputs, GateOptions, Passage
from drivers.gate.lcus import LcusGate
from drivers.gate.modbus_relay import ModbusRelayGate
from drivers.gate.passage import PulseGate
from drivers.gate.simboard import LcusBoard, ModbusRelayBoard, Pulse, Turnstile
from drivers.url import options, parse_url

__all__ = ["LcusBoard", "ModbusRelayBoard", "Pulse", "SimGate", "SimOptions", "Turnstile"]

_GATE_PARAMS = frozenset(f.name for f in dataclasses.fields(GateOptions))


@dataclass(frozen=True)
class SimOptions(GateOptions):
    board: str = field(default="modbus", metadata={"choices": ("modbus", "lcus")})
    pass_delay_ms: int = 300
    pass_pulse_ms: int = 100
    queue: int = -1
    pass_signal: bool = True
    fire: bool = False
    no_reply: bool = False
    bad_crc: bool = False
    split: bool = False
    delay_ms: int = 0
    echo: bool = False


class SimGate(Gate):
    """A simulated relay board and turnstile on a pty, driven by the real protocol driver."""

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, ("sim",))
        opts = options(name, SimOptions, parsed.params)
        super().__init__(name, url, opts)
        self.sim_options = opts
        if opts.fire and opts.fire_input is None:
            raise DeviceConfigError(name, "fire", "needs fire_input=N (the input on the fire loop)")
        if opts.board == "lcus" and any((opts.bad_crc, opts.split, opts.delay_ms, opts.echo)):
            raise DeviceConfigError(name, "board", "the LCUS board never replies to commands")
        if opts.pass_delay_ms < 0 or opts.pass_pulse_ms <= 0 or opts.delay_ms < 0:
            raise DeviceConfigError(name, "pass_delay_ms", "times are >= 0 ms")
        self._gate_params = {k: v for k, v in parsed.params.items() if k in _GATE_PARAMS}
        self._make_driver("/dev/null")  # refuse a bad gate configuration now, not at open()
        self.board: ModbusRelayBoard | LcusBoard | None = None
        self._driver: PulseGate | None = None

    def _make_driver(self, path: str) -> PulseGate:
        url = f"serial://{path}?{urlencode(self._gate_params)}"
        driver: PulseGate = (
            LcusGate(self.name, url)
            if self.sim_options.board == "lcus"
            else ModbusRelayGate(self.name, url)
        )
        driver._cancel = self._cancel  # cancel() on the sim reaches the real driver's loop
        return driver

    def _start_board(self) -> ModbusRelayBoard | LcusBoard:
        o = self.sim_options
        turnstile = Turnstile(
            relay_in=o.relay_in,
            relay_out=o.relay_out,
            pass_in=o.pass_in,
            pass_out=o.pass_out,
            fire_input=o.fire_input,
            fire_level=o.fire_level,
            pass_delay_ms=o.pass_delay_ms,
            pass_pulse_ms=o.pass_pulse_ms,
            queue=o.queue,
            pass_signal=o.pass_signal,
            fire=o.fire,
        )
        if o.board == "lcus":
            board: ModbusRelayBoard | LcusBoard = LcusBoard(turnstile, channels=8)
            board.no_reply = o.no_reply
            return board
        return ModbusRelayBoard(
            turnstile,
            slave=o.slave,
            bad_crc=o.bad_crc,
            split=o.split,
            delay_ms=o.delay_ms,
            echo=o.echo,
            no_reply=o.no_reply,
        )

    @property
    def turnstile(self) -> Turnstile:
        if self.board is None:
            raise RuntimeError(f"{self.name}: not open")
        return self.board.turnstile

    @override
    def _acquire(self) -> None:
        if self._driver is not None:
            return
        self.board = self._start_board()
        try:
            driver = self._make_driver(self.board.path)
            driver.open()
        except BaseException:
            self.board.close()
            self.board = None
            raise
        self._driver = driver

    @override
    def close(self) -> None:
        driver, self._driver = self._driver, None
        board, self.board = self.board, None
        if driver is not None:
            driver.close()
        if board is not None:
            board.close()

    def _inner(self) -> PulseGate:
        if self._driver is None:
            raise DeviceOperationError(self.name, "not open")
        return self._driver

    @override
    def _admit(self, direction: Direction, persons: int, window_s: float) -> Passage:
        return self._inner()._admit(direction, persons, window_s)

    @override
    def _inputs(self) -> GateInputs:
        return self._inner()._inputs()

    @override
    def self_test(self) -> SelfTest:
        """The real driver's self-test against the simulated board."""
        if self._driver is None:
            return SelfTest(False, "not open", "the device is not open / 设备未打开")
        result = self._driver.self_test()
        return dataclasses.replace(
            result, detail=f"simulated {self.sim_options.board}: {result.detail}"
        )
