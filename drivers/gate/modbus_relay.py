"""Gate on a Modbus RTU relay board (Waveshare "Modbus RTU Relay (D)" style) over RS485.

Unlock pulses are the board-timed FC05 "flash" (PROTOCOLS.md 2.2), so a crashed daemon cannot
leave the gate held open; PASS A/B and the fire loop are read as FC02 discrete inputs.
URL: `serial:///dev/serial/by-id/...?slave=1&baudrate=9600&relay_in=1&pass_in=1&fire_input=3`,
or `socket://host:port?...` for an Ethernet-serial server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from typing_extensions import override

from drivers.base import SelfTest
from drivers.errors import (
    DeviceConfigError,
    DeviceOperationError,
    DeviceTimeout,
    DriverError,
)
from drivers.gate import GateOptions
from drivers.gate import modbus as mb
from drivers.gate.passage import PulseGate
from drivers.port import SerialPort
from drivers.url import options, parse_url

log = logging.getLogger(__name__)

SCHEMES = ("serial", "socket", "loop", "spy")
HINT_NO_REPLY = (
    "no reply: check the Modbus slave address (DIP switches) and baud rate, and the RS485 A/B "
    "wiring / 无应答：检查继电器板地址（拨码开关）、波特率和 RS485 A/B 接线"
)
HINT_BAD_REPLY = (
    "garbled reply: check the baud rate, A/B wiring and termination; if the adapter echoes what "
    "it sends, set local_echo=true / 应答错误：检查波特率、A/B 接线和终端电阻；"
    "适配器回显时设 local_echo=true"
)
HINT_NOT_OPEN = "the device is not open / 设备未打开"
HINT_EXCEPTION = (
    "the board refused the command: check relay_in/relay_out/inputs fit this board's channel "
    "count / 继电器板拒绝命令：检查通道号是否超出板子路数"
)


class ModbusRelayGate(PulseGate):
    """Modbus RTU relay board: FC05 flash pulses, FC02 PASS/fire inputs."""

    def __init__(self, name: str, url: str) -> None:
        parsed = parse_url(name, url, SCHEMES)
        opts = options(name, GateOptions, parsed.params)
        super().__init__(name, url, opts)
        if opts.pulse_ms % mb.FLASH_STEP_MS:
            raise DeviceConfigError(name, "pulse_ms", "a multiple of 100 (the board's flash step)")
        self.serial_url = parsed.serial_url
        wired = [opts.pass_in, opts.pass_out, opts.fire_input or 0]
        self._input_count = max(8, *wired)  # one FC02 read covers every wired input
        self._port: SerialPort | None = None

    @override
    def _acquire(self) -> None:
        if self._port is not None:
            return
        opts = self.options
        self._port = SerialPort(
            self.name,
            self.serial_url,
            baudrate=opts.baudrate,
            timeout=opts.timeout,
            local_echo=opts.local_echo,
        )
        log.info("gate board opened", extra={"device": self.name, "url": self.serial_url})
        self._force_off()

    def _force_off(self) -> None:
        """FC05 OFF for the gate's relays, as PROTOCOLS.md 1.5 asks at start-up: pulses are
        board-timed flashes, but a relay switched on by other software (or a level-mode setup)
        would hold the gate unlocked. Only the gate's two coils: others may serve something else."""
        for channel in (self.options.relay_in, self.options.relay_out):
            request = mb.encode_write_coil(self.options.slave, channel - 1, False)
            try:
                mb.decode_write_coil_reply(request, self._transact(request))
            except (DriverError, mb.ModbusError) as err:
                # Not fatal: a deaf or refusing board shows in self_test() and the first open();
                # stop after the first failure so a dead board costs one timeout, not two.
                log.warning("gate relays not reset", extra={"device": self.name, "error": str(err)})
                return

    @override
    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _transact(self, request: bytes) -> bytes:
        if self._port is None:
            raise DeviceOperationError(self.name, "not open")
        try:
            return self._port.transact(request, mb.reply_length)
        except DeviceTimeout as err:
            raise DeviceTimeout(self.name, f"{err}; {HINT_NO_REPLY}") from err

    @override
    def _pulse(self, channel: int, pulse_ms: int) -> None:
        request = mb.encode_flash(self.options.slave, channel - 1, pulse_ms)
        reply = self._transact(request)
        try:
            mb.decode_write_coil_reply(request, reply)
        except mb.ModbusException as err:
            raise DeviceOperationError(self.name, f"{err}; {HINT_EXCEPTION}") from err
        except mb.ModbusError as err:
            raise DeviceOperationError(self.name, f"{err}; {HINT_BAD_REPLY}") from err

    @override
    def _read_levels(self) -> Sequence[bool]:
        slave, count = self.options.slave, self._input_count
        reply = self._transact(mb.encode_read_inputs(slave, 0, count))
        try:
            return mb.decode_read_inputs(slave, count, reply)
        except mb.ModbusException as err:
            raise DeviceOperationError(self.name, f"{err}; {HINT_EXCEPTION}") from err
        except mb.ModbusError as err:
            raise DeviceOperationError(self.name, f"{err}; {HINT_BAD_REPLY}") from err

    @override
    def self_test(self) -> SelfTest:
        """Reads the inputs; no relay moves."""
        try:
            inputs = self.inputs()
        except DeviceTimeout as err:
            return SelfTest(False, f"reading inputs: {err}", HINT_NO_REPLY)
        except DriverError as err:
            hint = HINT_BAD_REPLY
            if isinstance(err.__cause__, mb.ModbusException):
                hint = HINT_EXCEPTION
            elif self._port is None:
                hint = HINT_NOT_OPEN
            return SelfTest(False, f"reading inputs: {err}", hint)
        return SelfTest(True, inputs.describe())
