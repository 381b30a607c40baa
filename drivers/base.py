"""What every device driver shares: construction from a name and a URL, open/close, self-test.

Lifecycle contract (all device classes):
- `__init__(name, url)` parses and validates the configuration only (no I/O); a bad URL or
  parameter raises DeviceConfigError naming the device and the parameter.
- `open()` acquires the port/socket/device; failures raise DeviceInitError with a hint.
- `close()` releases everything; idempotent; safe after a failed `open()`. Never in `__del__`.
- `self_test()` is harmless (no actuator moves, no paper used unless asked) and never raises for a
  device fault: it returns a SelfTest with a hint a technician can act on.
- Methods are called from one worker thread per device; drivers need not be thread-safe
  beyond that, but must never block forever (every wait has a timeout).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from drivers.errors import StaleCommand


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    detail: str  # what was checked and what was seen
    hint: str = ""  # what to do about it, for a technician (empty when ok)


def check_ttl(device: str, what: str, issued_at: float | None, ttl: float) -> None:
    """Refuse an actuator command older than `ttl` seconds. `issued_at` is a time.monotonic()
    stamp taken when the command was decided (None: issued just now)."""
    if issued_at is not None and time.monotonic() - issued_at > ttl:
        age = time.monotonic() - issued_at
        raise StaleCommand(device, f"{what} dropped: issued {age:.1f} s ago, TTL {ttl:g} s")


class Device(ABC):
    device_class: str = ""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url

    @abstractmethod
    def open(self) -> None:
        """Acquire the device. Raises DeviceInitError."""

    @abstractmethod
    def close(self) -> None:
        """Release the device. Idempotent."""

    @abstractmethod
    def self_test(self) -> SelfTest:
        """A harmless check of the opened device, for `edge doctor`."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
