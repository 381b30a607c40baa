"""The daemon's devices: each one in a slot with its own worker thread, opened at start, reopened
with backoff when it fails, and reported up or down on the event bus.

A missing or faulty device makes the box degraded, never stuck: the slot stays down with the
driver's error and hint (what a technician should check) and keeps retrying in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from drivers.base import Device
from drivers.errors import (
    DeviceInitError,
    DeviceOperationError,
    DeviceTimeout,
    DriverError,
    StaleCommand,
)
from drivers.printer import Printer, PrinterNotReady
from drivers.registry import load as load_driver
from edge.bus import EventBus
from edge.config_sections import DeviceConfig
from edge.runner import Runner

log = logging.getLogger(__name__)
T = TypeVar("T")
REOPEN_MIN_S, REOPEN_MAX_S = 1.0, 30.0
DOWN_AFTER = 3  # operations failing in a row that mark a device down


class DeviceDown(Exception):
    """The device is not open (missing, unplugged, failed); `hint` says what to check."""

    def __init__(self, name: str, error: str, hint: str = "") -> None:
        self.name, self.error, self.hint = name, error, hint
        super().__init__(f"{name} is down: {error}")


@dataclass
class DeviceSlot:
    cfg: DeviceConfig
    device: Device | None
    runner: Runner
    bus: EventBus
    up: bool = False
    error: str = "not opened yet"
    hint: str = ""
    since: float = field(default_factory=time.time)
    failures: int = 0  # operations that failed in a row
    opened_once: bool = False

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def device_class(self) -> str:
        return self.cfg.device_class

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(device, *args)` on the device's thread. Raises DeviceDown when it is not
        open; a driver error that means the device went away marks it down."""
        if not self.up or self.device is None:
            raise DeviceDown(self.name, self.error, self.hint)
        try:
            result = await self.runner.call(fn, self.device, *args, **kwargs)
        except (DeviceTimeout, DeviceOperationError) as err:
            if isinstance(err, PrinterNotReady):
                # Paper out, cover open: the printer answered (the link works; the spool holds
                # its jobs). Any other failure (silence, "serial port gone") is the link.
                self.failures = 0
                raise
            self.failures += 1
            gone = self.failures >= DOWN_AFTER
            if gone and not isinstance(err, StaleCommand):
                # Gone (unplugged, powered off): down until the supervisor reopens it.
                self.mark_down(str(err), getattr(err, "hint", "") or "check power and cable")
            raise
        self.failures = 0
        return result

    async def open(self) -> bool:
        """Open the device on its thread; True when up. Never raises for a device fault."""
        if self.device is None:
            return False
        if self.opened_once:  # a reopen: release the dead port first, or open() is a no-op
            with contextlib.suppress(Exception):
                await self.runner.call(self.device.close)
        self.opened_once = True
        try:
            await self.runner.call(self.device.open)
            if self.device_class in ("gate", "locker"):  # harmless: an inputs/status read
                check = await self.runner.call(self.device.self_test)
                if not check.ok:
                    raise DeviceInitError(self.name, check.detail, check.hint)
            elif isinstance(self.device, Printer):  # it must answer a status query (paper out
                await self.runner.call(self.device.status)  # is fine: the spool holds jobs)
        except DriverError as err:
            hint = err.hint if isinstance(err, DeviceInitError) else ""
            self.mark_down(str(err), hint)
            with contextlib.suppress(DriverError):
                await self.runner.call(self.device.close)
            return False
        self.mark_up()
        return True

    def mark_up(self) -> None:
        changed = not self.up
        self.up, self.error, self.hint, self.failures = True, "", "", 0
        if changed:
            self.since = time.time()
            log.info("device up", extra={"device": self.name})
            self.bus.publish("device", device=self.name, up=True, error="", hint="")

    def mark_down(self, error: str, hint: str = "") -> None:
        changed = self.up or self.error != error
        self.up, self.error, self.hint = False, error, hint
        if changed:
            self.since = time.time()
            log.warning("device down: %s", error, extra={"device": self.name, "hint": hint})
            self.bus.publish("device", device=self.name, up=False, error=error, hint=hint)

    async def keep_open(self, stop: asyncio.Event) -> None:
        """Supervisor loop: reopen a down device with backoff until `stop`."""
        delay = REOPEN_MIN_S
        while not stop.is_set():
            if not self.up and self.device is not None:
                delay = REOPEN_MIN_S if await self.open() else min(delay * 2, REOPEN_MAX_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay if not self.up else REOPEN_MAX_S)

    async def close(self) -> None:
        if self.device is not None:
            try:
                await self.runner.call(self.device.close)
            except Exception:  # closing must go on for every other device
                log.exception("closing %s failed", self.name)
        self.up = False
        self.runner.close()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": self.device_class,
            "driver": self.cfg.driver,
            "up": self.up,
            "error": self.error,
            "hint": self.hint,
            "since": self.since,
        }


def make_slot(cfg: DeviceConfig, bus: EventBus) -> DeviceSlot:
    """Construct the driver (parsing its URL: a config error raises here, at start-up)."""
    cls = load_driver(cfg.name, cfg.device_class, cfg.driver)
    device: Device = cls(cfg.name, cfg.url)
    return DeviceSlot(cfg, device, Runner(f"dev-{cfg.name}"), bus)
