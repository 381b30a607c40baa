"""`edge doctor`: open each configured device, run its harmless self-test, and say what to do.

A technician on a ladder reads one line per device: pass or fail, what was seen, and a hint
(permission on /dev/ttyUSB0 -> add the service user to dialout; no reply -> check the board
address DIP switches and the baud rate). Nothing here moves an actuator or uses paper.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from drivers.base import Device, SelfTest
from drivers.errors import DeviceConfigError, DeviceInitError, DriverError, DriverUnavailable
from drivers.printer import Printer
from drivers.registry import load
from edge.config import BoxConfig
from edge.config_sections import DeviceConfig
from edge.errors import TrustError
from edge.trust import TrustAnchor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceCheck:
    name: str
    device_class: str
    driver: str
    url: str
    ok: bool
    detail: str
    hint: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_device(dev: DeviceConfig, test_page: bool = False) -> DeviceCheck:
    """Construct, open, self-test and close one device; never raises for a device fault.
    With `test_page`, a printer that passes also prints its test page (uses paper)."""
    start = time.monotonic()
    result: SelfTest
    try:
        cls = load(dev.name, dev.device_class, dev.driver)
        device: Device = cls(dev.name, dev.url)
        try:
            device.open()
            result = device.self_test()
            if result.ok and test_page and isinstance(device, Printer):
                printed = device.test_page()
                result = SelfTest(True, f"{result.detail}; test page printed ({printed})")
        finally:
            device.close()
    except DeviceConfigError as err:
        result = SelfTest(False, str(err), f"fix `{err.param}` of devices.{dev.name} in edge.toml")
    except DriverUnavailable as err:
        result = SelfTest(False, str(err), "install the missing package, then run doctor again")
    except DeviceInitError as err:
        result = SelfTest(False, err.message, err.hint or "check the device's cable and address")
    except DriverError as err:
        result = SelfTest(False, str(err), "the device answered wrongly: check model and driver")
    except Exception as err:
        log.exception("doctor: %s", dev.name)
        result = SelfTest(False, f"{type(err).__name__}: {err}", "report this to support")
    return DeviceCheck(
        dev.name,
        dev.device_class,
        dev.driver,
        dev.url,
        result.ok,
        result.detail,
        result.hint,
        round(time.monotonic() - start, 3),
    )


def config_problems(config: BoxConfig) -> list[str]:
    """What `edge check` reports beyond the TOML itself: the trust anchor must load and every
    device's driver must accept its URL (parsed only; nothing is opened)."""
    problems: list[str] = []
    try:
        TrustAnchor.load(config.trust_anchor)
    except TrustError as err:
        problems.append(f"box.trust_anchor: {err}")
    for lane in config.lanes.values():
        if lane.kind == "gate" and lane.gate is None:
            problems.append(f"lanes.{lane.name}.gate: a gate lane needs its gate device")
        if lane.kind == "locker" and lane.locker is None:
            problems.append(f"lanes.{lane.name}.locker: a locker lane needs its locker device")
    for dev in config.devices.values():
        try:
            load(dev.name, dev.device_class, dev.driver)(dev.name, dev.url)
        except DeviceConfigError as err:
            problems.append(f"devices.{dev.name}.url: {err.param}: {err.expected}")
        except DriverError as err:
            problems.append(f"devices.{dev.name}: {err}")
    return problems


def run_doctor(devices: dict[str, DeviceConfig], test_page: bool = False) -> list[DeviceCheck]:
    return [check_device(dev, test_page) for dev in devices.values()]


def render_table(checks: list[DeviceCheck]) -> str:
    if not checks:
        return "no devices configured / 未配置设备 ([devices.NAME] in edge.toml)"
    lines = [f"{'DEVICE 设备':<18} {'CLASS':<8} {'DRIVER':<13} {'RESULT 结果':<11} DETAIL"]
    for c in checks:
        verdict = "PASS 正常" if c.ok else "FAIL 故障"
        lines.append(f"{c.name:<18} {c.device_class:<8} {c.driver:<13} {verdict:<11} {c.detail}")
        if c.hint:
            lines.append(f"{'':<52}-> {c.hint}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed}/{len(checks)} devices pass / 设备正常")
    return "\n".join(lines)
