"""Box configuration (TOML), validated once; errors name the file, the key and what is expected.

Lookup order: --config PATH, --home DIR (DIR/edge.toml, state in DIR), $EDGE_HOME,
$CONFIGURATION_DIRECTORY (set by systemd; state in $STATE_DIRECTORY), /etc/edge/edge.toml.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.registry import BACKENDS
from edge.clock import ClockPolicy
from edge.errors import ConfigError
from edge.rules import Direction

CONFIG_NAME = "edge.toml"
SYSTEM_CONFIG = Path("/etc/edge/edge.toml")
SYSTEM_STATE = Path("/var/lib/edge")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")
LANE_KINDS = ("counter", "gate", "locker")


@dataclass(frozen=True)
class Policy:
    stale_cache_s: float = 48 * 3600.0
    clock: ClockPolicy = field(default_factory=ClockPolicy)
    rotating_max_age_s: int = 30
    rotating_max_skew_s: int = 15
    short_code_max_failures: int = 10
    short_code_failure_window_s: float = 60.0
    retention_days: int = 30


@dataclass(frozen=True)
class LaneConfig:
    name: str
    kind: str
    list_id: str
    direction: Direction


@dataclass(frozen=True)
class DeviceConfig:
    """A device: its class (printer, scanner, locker, gate), driver name and transport URL.
    The driver itself validates the URL's parameters when it is constructed."""

    name: str
    device_class: str
    driver: str
    url: str


@dataclass(frozen=True)
class BoxConfig:
    path: Path
    site: str
    device: str
    trust_anchor: Path
    state_dir: Path
    policy: Policy
    lanes: dict[str, LaneConfig]
    devices: dict[str, DeviceConfig] = field(default_factory=dict)


def locate(config: str | None, home: str | None) -> tuple[Path, Path | None]:
    """Find the config file; returns (config path, state dir implied by the lookup or None)."""
    if config:
        return Path(config), None
    if home:
        return Path(home) / CONFIG_NAME, Path(home)
    if env_home := os.environ.get("EDGE_HOME"):
        return Path(env_home) / CONFIG_NAME, Path(env_home)
    if conf_dir := os.environ.get("CONFIGURATION_DIRECTORY"):
        state = os.environ.get("STATE_DIRECTORY")
        return Path(conf_dir.split(":")[0]) / CONFIG_NAME, Path(state) if state else SYSTEM_STATE
    return SYSTEM_CONFIG, SYSTEM_STATE


class _Section:
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


def load(path: Path, state_hint: Path | None = None) -> BoxConfig:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(path, "", "no such file; run `edge init` or pass --config") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", f"not valid TOML: {err}") from err
    base = path.parent
    root = _Section(path, "", doc)
    box = _Section(path, "box", root.get("box", dict, required=True))
    site = box.name("site")
    device = box.name("device", required=False, default="box-1")
    anchor = base / box.get("trust_anchor", str, required=True)
    state_s = box.get("state_dir", str)
    state_dir = base / state_s if state_s else (state_hint or base)
    box.done()
    pol = _Section(path, "policy", root.get("policy", dict, {}))
    policy = Policy(
        stale_cache_s=pol.get("stale_cache_hours", float, 48.0) * 3600,
        clock=ClockPolicy(
            backwards_tolerance_s=pol.get("clock_backwards_tolerance_s", float, 120.0),
            max_offset_s=pol.get("clock_max_offset_s", float, 300.0),
            max_unsynced_s=pol.get("clock_max_unsynced_hours", float, 168.0) * 3600,
        ),
        rotating_max_age_s=pol.get("rotating_max_age_s", int, 30),
        rotating_max_skew_s=pol.get("rotating_max_skew_s", int, 15),
        short_code_max_failures=pol.get("short_code_max_failures", int, 10),
        short_code_failure_window_s=pol.get("short_code_failure_window_s", float, 60.0),
        retention_days=pol.get("retention_days", int, 30),
    )
    pol.done()
    lanes: dict[str, LaneConfig] = {}
    for lane_name, table in root.get("lanes", dict, {}).items():
        sec = _Section(path, f"lanes.{lane_name}", table)
        if not _NAME.fullmatch(lane_name):
            raise ConfigError(path, f"lanes.{lane_name}", "lane names: 1-32 of A-Z a-z 0-9 . _ -")
        kind = sec.get("kind", str, "counter")
        if kind not in LANE_KINDS:
            raise ConfigError(path, f"lanes.{lane_name}.kind", f"one of {', '.join(LANE_KINDS)}")
        direction = sec.get("direction", str, "entry")
        if direction not in ("entry", "exit"):
            raise ConfigError(path, f"lanes.{lane_name}.direction", "entry or exit")
        lanes[lane_name] = LaneConfig(lane_name, kind, sec.name("list"), Direction(direction))
        sec.done()
    devices: dict[str, DeviceConfig] = {}
    for dev_name, table in root.get("devices", dict, {}).items():
        sec = _Section(path, f"devices.{dev_name}", table)
        if not _NAME.fullmatch(dev_name):
            raise ConfigError(
                path, f"devices.{dev_name}", "device names: 1-32 of A-Z a-z 0-9 . _ -"
            )
        cls = sec.get("class", str, required=True)
        drivers = BACKENDS.get(cls)
        if drivers is None:
            raise ConfigError(path, f"devices.{dev_name}.class", f"one of {', '.join(BACKENDS)}")
        drv = sec.get("driver", str, required=True)
        if drv not in drivers:
            raise ConfigError(path, f"devices.{dev_name}.driver", f"one of {', '.join(drivers)}")
        devices[dev_name] = DeviceConfig(dev_name, cls, drv, sec.get("url", str, required=True))
        sec.done()
    root.done()
    return BoxConfig(path, site, device, anchor, state_dir, policy, lanes, devices)


def render_minimal(site: str, device: str, anchor_name: str) -> str:
    """The config `edge init` writes: one counter lane on the bundle's default list."""
    return (
        "# Edge gateway box configuration. Keys: docs/configuration in README.md.\n"
        "[box]\n"
        f'site = "{site}"\n'
        f'device = "{device}"\n'
        f'trust_anchor = "{anchor_name}"\n\n'
        "[policy]\n"
        "stale_cache_hours = 48\n"
        "rotating_max_age_s = 30\n\n"
        "[lanes.counter]\n"
        'kind = "counter"\n'
        'list = "default"\n'
        'direction = "entry"\n'
    )
