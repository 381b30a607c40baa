"""Driver registry: device class -> driver name -> "module:Class", imported lazily.

A failed import becomes DriverUnavailable with what to install, so a box without a camera never
imports OpenCV and a missing library is a clear start-up error, not a traceback.
"""

from __future__ import annotations

import importlib

from drivers.errors import DeviceConfigError, DriverUnavailable

BACKENDS: dict[str, dict[str, str]] = {
    "printer": {
        "escpos": "drivers.printer.escpos:EscposPrinter",
        "sim": "drivers.printer.sim:SimPrinter",
    },
    "scanner": {
        "serial": "drivers.scanner.serial_scanner:SerialScanner",
        "evdev": "drivers.scanner.wedge:WedgeScanner",
        "camera": "drivers.scanner.camera:CameraScanner",
        "sim": "drivers.scanner.sim:SimScanner",
    },
    "locker": {
        "8a": "drivers.locker.board8a:Board8A",
        "cu16": "drivers.locker.kerong:KerongCU16",
        "cu48": "drivers.locker.kerong:KerongCU48",
        "sim": "drivers.locker.sim:SimLocker",
    },
    "gate": {
        "modbus-relay": "drivers.gate.modbus_relay:ModbusRelayGate",
        "lcus": "drivers.gate.lcus:LcusGate",
        "sim": "drivers.gate.sim:SimGate",
    },
}

EXTRAS = {
    "evdev": "the wedge extra (pip install 'edge-gateway[wedge]')",
    "camera": "opencv-python-headless and pyzbar (and the libzbar0 system package)",
    "usb": "the usb extra (pip install 'edge-gateway[usb]')",
}


def load(device: str, device_class: str, driver: str) -> type:
    """The driver class for `device_class`/`driver`; raises DeviceConfigError/DriverUnavailable."""
    drivers = BACKENDS.get(device_class)
    if drivers is None:
        raise DeviceConfigError(device, "class", f"one of {', '.join(BACKENDS)}")
    target = drivers.get(driver)
    if target is None:
        raise DeviceConfigError(device, "driver", f"one of {', '.join(drivers)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        need = EXTRAS.get(driver, str(err.name or err))
        raise DriverUnavailable(device, f"driver {driver} unavailable: install {need}") from err
    cls: type = getattr(module, class_name)
    return cls
