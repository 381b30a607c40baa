"""The sections of edge.toml that describe the site's equipment and the cloud link: each one's
typed value and its parser ([devices], [lanes], [printing], [zones], [lockers], [sync]).
edge/config.py reads the file and builds the BoxConfig with them. Errors name the file, the key
and what is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.registry import BACKENDS
from edge.errors import ConfigError
from edge.rules import Direction

_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")
LANE_KINDS = ("counter", "gate", "locker")


@dataclass(frozen=True)
class LaneConfig:
    """A lane binds an input (a scanner, or the kiosk) to an actuator and a check-in list."""

    name: str
    kind: str
    list_id: str
    direction: Direction
    scanner: str | None = None  # scanner device feeding this lane (None: kiosk/CLI only)
    gate: str | None = None  # gate device (gate lanes)
    gate_side: str = "in"  # which side of the gate this lane unlocks ("in"/"out")
    locker: str | None = None  # locker bank device (locker lanes)
    dedupe_s: float = 8.0  # the same ticket again within this window does nothing
    display: bool = True  # show a short line for the visitor on the reader's display hook


@dataclass(frozen=True)
class ZoneConfig:
    """Crowd thresholds (客流预警) for one zone: warn at `warn` persons, deny entries at `full`.
    None: the bundle's zone capacity is `full` and `warn` is 80 % of it."""

    name: str
    warn: int | None = None
    full: int | None = None


@dataclass(frozen=True)
class PrintingConfig:
    receipt: str | None = None  # the counter's receipt printer
    stations: dict[str, tuple[str, ...]] = field(default_factory=dict)  # station -> printers
    failover_after_s: float = 30.0  # a job held this long on its printer goes to the backup
    retry_max_s: float = 10.0  # backoff cap between attempts on one printer
    shop: str = "Edge Gateway"  # printed on receipts


@dataclass(frozen=True)
class LockerBankConfig:
    """Compartment sizes of one locker device: size name -> doors; pickup codes' lifetime."""

    device: str
    sizes: dict[str, tuple[int, ...]]
    pickup_hours: float = 48.0
    door_close_timeout_s: float = 120.0


@dataclass(frozen=True)
class DeviceConfig:
    """A device: its class (printer, scanner, locker, gate), driver name and transport URL.
    The driver itself validates the URL's parameters when it is constructed."""

    name: str
    device_class: str
    driver: str
    url: str


@dataclass(frozen=True)
class SyncConfig:
    """The cloud link (docs/sync.md): the broker and this box's TLS material."""

    host: str
    port: int
    ca: Path  # the broker's CA (pinned)
    cert: Path  # this box's client certificate (CN = [box] device)
    key: Path  # its key (made on the box, 0600)
    # A new or replacement box waits this long at start for the site's bundles and uses
    # (docs/sync.md "Catch-up") before READY; 0: never wait.
    catch_up_s: float = 30.0
    # Backpressure (edge/outbox_watch.py): the alarm rises when the outbox holds this many rows
    # or its oldest row is this old, and telemetry is then coalesced harder.
    outbox_alarm_rows: int = 50_000
    outbox_alarm_age_s: float = 6 * 3600.0
    telemetry_interval_s: float = 60.0  # at most one alert per source per interval
    telemetry_interval_alarm_s: float = 600.0  # the same while the outbox alarm is up


class Section:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, path: Path, prefix: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, prefix, "expected a table")
        self.path, self.prefix, self.data, self.used = path, prefix, data, set[str]()

    def get(self, key: str, typ: type, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        name = f"{self.prefix}.{key}"
        if key not in self.data:
            if required:
                raise ConfigError(self.path, name, f"missing; expected a {typ.__name__}")
            return default
        value = self.data[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ConfigError(self.path, name, f"expected a {typ.__name__}, got {value!r}")
        if isinstance(value, int | float) and value < 0:
            raise ConfigError(self.path, name, "expected a value of 0 or more")
        return value

    def name(self, key: str, *, required: bool = True, default: str = "") -> str:
        value: str = self.get(key, str, default, required=required)
        if not _NAME.fullmatch(value):
            raise ConfigError(self.path, f"{self.prefix}.{key}", "1-32 of A-Z a-z 0-9 . _ -")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.path, f"{self.prefix}.{unknown[0]}", "unknown key")


def parse_sync(path: Path, base: Path, table: dict[str, Any] | None) -> SyncConfig | None:
    if table is None:
        return None
    sec = Section(path, "sync", table)
    broker = sec.get("broker", str, required=True)
    host, sep, port = broker.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(path, "sync.broker", "HOST:PORT, e.g. mqtt.example.com:8883")
    ca, cert, key = (base / sec.get(k, str, required=True) for k in ("ca", "cert", "key"))
    catch_up = sec.get("catch_up_s", float, 30.0)
    if catch_up > 60:  # READY waits for it: keep well inside systemd's start timeout
        raise ConfigError(path, "sync.catch_up_s", "seconds, 0 to 60")
    rows = sec.get("outbox_alarm_rows", int, 50_000)
    age = sec.get("outbox_alarm_age_s", float, 6 * 3600.0)
    every = sec.get("telemetry_interval_s", float, 60.0)
    every_alarm = sec.get("telemetry_interval_alarm_s", float, max(600.0, every))
    if rows < 1 or age <= 0:
        raise ConfigError(path, "sync.outbox_alarm_rows", "alarm thresholds above 0")
    sec.done()
    return SyncConfig(
        host.strip("[]"),
        int(port),
        ca,
        cert,
        key,
        catch_up_s=float(catch_up),
        outbox_alarm_rows=rows,
        outbox_alarm_age_s=age,
        telemetry_interval_s=every,
        telemetry_interval_alarm_s=every_alarm,
    )


def check_name(path: Path, key: str, name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(path, key, f"{what} names: 1-32 of A-Z a-z 0-9 . _ -")


def device_ref(
    path: Path, sec: Section, key: str, devices: dict[str, DeviceConfig], cls: str
) -> str | None:
    name: str | None = sec.get(key, str)
    if name is None:
        return None
    dev = devices.get(name)
    if dev is None:
        raise ConfigError(path, f"{sec.prefix}.{key}", f"the name of a [devices.X] {cls}")
    if dev.device_class != cls:
        raise ConfigError(
            path, f"{sec.prefix}.{key}", f"a {cls} device; {name} is a {dev.device_class}"
        )
    return name


def parse_devices(path: Path, tables: dict[str, Any]) -> dict[str, DeviceConfig]:
    devices: dict[str, DeviceConfig] = {}
    for dev_name, table in tables.items():
        sec = Section(path, f"devices.{dev_name}", table)
        check_name(path, f"devices.{dev_name}", dev_name, "device")
        cls = sec.get("class", str, required=True)
        drivers = BACKENDS.get(cls)
        if drivers is None:
            raise ConfigError(path, f"devices.{dev_name}.class", f"one of {', '.join(BACKENDS)}")
        drv = sec.get("driver", str, required=True)
        if drv not in drivers:
            raise ConfigError(path, f"devices.{dev_name}.driver", f"one of {', '.join(drivers)}")
        devices[dev_name] = DeviceConfig(dev_name, cls, drv, sec.get("url", str, required=True))
        sec.done()
    return devices


def parse_lanes(
    path: Path, tables: dict[str, Any], devices: dict[str, DeviceConfig]
) -> dict[str, LaneConfig]:
    lanes: dict[str, LaneConfig] = {}
    used: dict[str, str] = {}
    for lane_name, table in tables.items():
        sec = Section(path, f"lanes.{lane_name}", table)
        check_name(path, f"lanes.{lane_name}", lane_name, "lane")
        kind = sec.get("kind", str, "counter")
        if kind not in LANE_KINDS:
            raise ConfigError(path, f"lanes.{lane_name}.kind", f"one of {', '.join(LANE_KINDS)}")
        direction = sec.get("direction", str, "entry")
        if direction not in ("entry", "exit"):
            raise ConfigError(path, f"lanes.{lane_name}.direction", "entry or exit")
        scanner = device_ref(path, sec, "scanner", devices, "scanner")
        if scanner is not None:
            if scanner in used:
                raise ConfigError(
                    path, f"lanes.{lane_name}.scanner", f"{scanner} already feeds {used[scanner]}"
                )
            used[scanner] = lane_name
        gate = device_ref(path, sec, "gate", devices, "gate")
        locker = device_ref(path, sec, "locker", devices, "locker")
        side = sec.get("gate_side", str, "in" if direction == "entry" else "out")
        if side not in ("in", "out"):
            raise ConfigError(path, f"lanes.{lane_name}.gate_side", "in or out")
        dedupe = sec.get("dedupe_s", float, 8.0)
        display = sec.get("display", bool, True)
        lanes[lane_name] = LaneConfig(
            lane_name,
            kind,
            sec.name("list"),
            Direction(direction),
            scanner,
            gate,
            side,
            locker,
            dedupe,
            display,
        )
        sec.done()
    return lanes


def parse_printing(
    path: Path, table: dict[str, Any], devices: dict[str, DeviceConfig]
) -> PrintingConfig:
    sec = Section(path, "printing", table)
    receipt = device_ref(path, sec, "receipt", devices, "printer")
    stations: dict[str, tuple[str, ...]] = {}
    for station, names in sec.get("stations", dict, {}).items():
        key = f"printing.stations.{station}"
        check_name(path, key, station, "station")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(path, key, 'a list of printer names, primary first: ["a", "b"]')
        for n in names:
            dev = devices.get(n)
            if dev is None or dev.device_class != "printer":
                raise ConfigError(path, key, f"{n!r} is not a [devices.X] printer")
        stations[station] = tuple(names)
    cfg = PrintingConfig(
        receipt,
        stations,
        sec.get("failover_after_s", float, 30.0),
        sec.get("retry_max_s", float, 10.0),
        sec.get("shop", str, "Edge Gateway"),
    )
    sec.done()
    return cfg


def parse_zones(path: Path, tables: dict[str, Any]) -> dict[str, ZoneConfig]:
    zones: dict[str, ZoneConfig] = {}
    for name, table in tables.items():
        sec = Section(path, f"zones.{name}", table)
        check_name(path, f"zones.{name}", name, "zone")
        warn = sec.get("warn", int)
        full = sec.get("full", int)
        if warn is not None and full is not None and warn > full:
            raise ConfigError(path, f"zones.{name}.warn", f"at most full ({full})")
        zones[name] = ZoneConfig(name, warn, full)
        sec.done()
    return zones


def parse_lockers(
    path: Path, tables: dict[str, Any], devices: dict[str, DeviceConfig]
) -> dict[str, LockerBankConfig]:
    banks: dict[str, LockerBankConfig] = {}
    for name, table in tables.items():
        sec = Section(path, f"lockers.{name}", table)
        dev = devices.get(name)
        if dev is None or dev.device_class != "locker":
            raise ConfigError(path, f"lockers.{name}", "named after a [devices.X] locker")
        sizes: dict[str, tuple[int, ...]] = {}
        seen: set[int] = set()
        for size, spec in sec.get("sizes", dict, {"M": "1-24"}).items():
            key = f"lockers.{name}.sizes.{size}"
            doors = door_list(path, key, spec)
            if seen & set(doors):
                raise ConfigError(path, key, "a door belongs to one size only")
            seen |= set(doors)
            sizes[size] = doors
        banks[name] = LockerBankConfig(
            name,
            sizes,
            sec.get("pickup_hours", float, 48.0),
            sec.get("door_close_timeout_s", float, 120.0),
        )
        sec.done()
    return banks


def door_list(path: Path, key: str, spec: Any) -> tuple[int, ...]:
    """ "1-12,15" -> (1, ..., 12, 15)."""
    if not isinstance(spec, str):
        raise ConfigError(path, key, 'door numbers as a string, e.g. "1-12,15"')
    doors: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ConfigError(path, key, f'door numbers as a string, e.g. "1-12,15"; got {spec!r}')
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 512:
            raise ConfigError(path, key, f"doors from 1 to 512, low-high; got {part.strip()!r}")
        doors.extend(range(first, last + 1))
    return tuple(sorted(set(doors)))
