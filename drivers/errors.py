"""Driver exceptions. drivers/ imports nothing of ours, so this is its own root.

The daemon wraps these into its own error types; every exception names the device it concerns.
"""

from __future__ import annotations


class DriverError(Exception):
    """Root of every driver error."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class DriverUnavailable(DriverError):
    """The driver's module or a library it needs cannot be imported."""


class DeviceConfigError(DriverError):
    """A device's configuration (driver name, URL, parameter) is wrong; refused at start-up."""

    def __init__(self, device: str, param: str, expected: str) -> None:
        self.param = param
        self.expected = expected
        super().__init__(device, f"{param}: {expected}" if param else expected)


class DeviceInitError(DriverError):
    """The device could not be opened (missing port, permission, nothing listening)."""

    def __init__(self, device: str, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(device, f"{message}{'; ' + hint if hint else ''}")


class DeviceOperationError(DriverError):
    """The device answered, but not with success (bad checksum, refused command, paper out)."""


class StaleCommand(DeviceOperationError):
    """An actuator command (unlock, gate open) reached the device after its time to live:
    dropped, never replayed, so a door or gate never moves for a visitor who has gone."""


class DeviceTimeout(DriverError, TimeoutError):
    """The device did not answer within its timeout."""
