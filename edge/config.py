"""Box configuration (TOML), validated once; errors name the file, the key and what is expected.

Lookup order: --config PATH, --home DIR (DIR/edge.toml, state in DIR), $EDGE_HOME,
$CONFIGURATION_DIRECTORY (set by systemd; state in $STATE_DIRECTORY), /etc/edge/edge.toml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers.registry import BACKENDS
from edge.clock import ClockPolicy
from edge.errors import ConfigError
from edge.http_tls import TlsSettings
from edge.http_tls import settings as tls_settings
from edge.rules import Direction

log = logging.getLogger(__name__)
CONFIG_NAME = "edge.toml"
# The site-managed part of the config, as the cloud last sent it (edge/cloud_config.py writes it,
# keeping the one before): {"v": 1, "revision": N, "toml": "...", "id": msg id, "received_at"}.
# It lives in the state directory (writable under systemd, unlike /etc/edge), and each of its
# sections replaces the local file's section of the same name. Identity, the link and the local
# HTTP listener stay in edge.toml: a bad config from the cloud cannot cut the box off from it.
MANAGED_FILE = "cloud-config.json"
MANAGED_PREV = "cloud-config.prev.json"
MANAGED_SECTIONS = ("policy", "devices", "lanes", "printing", "zones", "lockers")
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
    void_window_s: int = 300  # a cashier may undo a counter redemption this long (kiosk)


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


@dataclass(frozen=True)
class Managed:
    """The cloud-managed config in effect: its revision, file and the sections it sets."""

    revision: int
    path: Path
    sha256: str  # of its TOML text
    sections: tuple[str, ...]
    msg_id: str = ""
    text: str = field(default="", repr=False)  # kept to put it back if a newer one fails


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
    http_listen: str = "127.0.0.1:8800"
    printing: PrintingConfig = field(default_factory=PrintingConfig)
    zones: dict[str, ZoneConfig] = field(default_factory=dict)
    lockers: dict[str, LockerBankConfig] = field(default_factory=dict)
    sync: SyncConfig | None = None
    managed: Managed | None = None
    managed_skipped: tuple[str, ...] = ()  # newer cloud configs that did not load, and why
    http_tls: TlsSettings = field(default_factory=TlsSettings)  # [http] tls (edge/http_tls.py)


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


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(path, "", "no such file; run `edge init` or pass --config") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", f"cannot read: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", f"not valid TOML: {err}") from err


def load(path: Path, state_hint: Path | None = None, *, managed: bool = True) -> BoxConfig:
    """The box's config: edge.toml with the cloud-managed sections over it. A managed config
    that no longer loads (the local file changed under it) is skipped for the one before it,
    then for none, and said loudly: the box must start and reach the cloud again."""
    doc = read_toml(path)
    skipped: list[str] = []
    if managed:
        for overlay in read_managed(state_dir_of(path, doc, state_hint), skipped):
            try:
                return replace(build(path, doc, state_hint, overlay), managed_skipped=(*skipped,))
            except ConfigError as err:
                log.error("cloud config revision %d does not load: %s", overlay[0].revision, err)
                skipped.append(f"revision {overlay[0].revision}: {err}")
    return replace(build(path, doc, state_hint), managed_skipped=(*skipped,))


def state_dir_of(path: Path, doc: dict[str, Any], state_hint: Path | None) -> Path:
    """Where [box] state_dir puts the state (the checks are build()'s)."""
    box = doc.get("box")
    state_s = box.get("state_dir") if isinstance(box, dict) else None
    if isinstance(state_s, str) and state_s:
        return path.parent / state_s
    return state_hint or path.parent


def read_managed(state_dir: Path, problems: list[str]) -> list[tuple[Managed, dict[str, Any]]]:
    """The stored cloud configs, newest first (current, then the one kept before it); a file
    that cannot be read is skipped and said in `problems`."""
    out: list[tuple[Managed, dict[str, Any]]] = []
    for name in (MANAGED_FILE, MANAGED_PREV):
        file = state_dir / name
        try:
            stored = json.loads(file.read_bytes())
            revision, text = stored["revision"], stored["toml"]
            if not isinstance(revision, int) or not isinstance(text, str):
                raise ValueError("revision or toml missing")
            doc = tomllib.loads(text)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:  # TOMLDecodeError: ValueError
            log.error("cloud config %s unreadable: %s", file, err)
            problems.append(f"{file.name}: {err}")
            continue
        sha = hashlib.sha256(text.encode()).hexdigest()
        msg_id = str(stored.get("id") or "")
        out.append((Managed(revision, file, sha, tuple(sorted(doc)), msg_id, text), doc))
    return out


def build(
    path: Path,
    local: dict[str, Any],
    state_hint: Path | None = None,
    overlay: tuple[Managed, dict[str, Any]] | None = None,
) -> BoxConfig:
    """Validate a parsed edge.toml (and the cloud's sections over it) into a BoxConfig.
    Errors name the file each section came from."""
    managed, mdoc = overlay if overlay is not None else (None, {})
    mpath = managed.path if managed is not None else path
    for section in mdoc:
        if section not in MANAGED_SECTIONS:
            raise ConfigError(
                mpath,
                section,
                "stays in the box's own edge.toml; the cloud sets only "
                + ", ".join(f"[{s}]" for s in MANAGED_SECTIONS),
            )
    doc = local | mdoc

    def src(section: str) -> Path:
        return mpath if section in mdoc else path

    base = path.parent
    root = _Section(path, "", doc)
    box = _Section(path, "box", root.get("box", dict, required=True))
    site = box.name("site")
    device = box.name("device", required=False, default="box-1")
    anchor = base / box.get("trust_anchor", str, required=True)
    state_s = box.get("state_dir", str)
    state_dir = base / state_s if state_s else (state_hint or base)
    box.done()
    pol = _Section(src("policy"), "policy", root.get("policy", dict, {}))
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
        void_window_s=pol.get("void_window_s", int, 300),
    )
    pol.done()
    devices = _devices(src("devices"), root.get("devices", dict, {}))
    lanes = _lanes(src("lanes"), root.get("lanes", dict, {}), devices)
    http = _Section(path, "http", root.get("http", dict, {}))
    listen = http.get("listen", str, "127.0.0.1:8800")
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(path, "http.listen", "HOST:PORT, e.g. 127.0.0.1:8800")
    tls = tls_settings(
        path,
        base,
        host,
        http.get("tls", object, "auto"),  # a string, or true/false
        http.get("tls_cert", str),
        http.get("tls_key", str),
    )
    http.done()
    printing = _printing(src("printing"), root.get("printing", dict, {}), devices)
    zones = _zones(src("zones"), root.get("zones", dict, {}))
    lockers = _lockers(src("lockers"), root.get("lockers", dict, {}), devices)
    sync = _sync(path, base, root.get("sync", dict))
    root.done()
    return BoxConfig(
        path,
        site,
        device,
        anchor,
        state_dir,
        policy,
        lanes,
        devices,
        listen,
        printing,
        zones,
        lockers,
        sync,
        managed,
        http_tls=tls,
    )


def _sync(path: Path, base: Path, table: dict[str, Any] | None) -> SyncConfig | None:
    if table is None:
        return None
    sec = _Section(path, "sync", table)
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


def _check_name(path: Path, key: str, name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(path, key, f"{what} names: 1-32 of A-Z a-z 0-9 . _ -")


def _device_ref(
    path: Path, sec: _Section, key: str, devices: dict[str, DeviceConfig], cls: str
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


def _devices(path: Path, tables: dict[str, Any]) -> dict[str, DeviceConfig]:
    devices: dict[str, DeviceConfig] = {}
    for dev_name, table in tables.items():
        sec = _Section(path, f"devices.{dev_name}", table)
        _check_name(path, f"devices.{dev_name}", dev_name, "device")
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


def _lanes(
    path: Path, tables: dict[str, Any], devices: dict[str, DeviceConfig]
) -> dict[str, LaneConfig]:
    lanes: dict[str, LaneConfig] = {}
    used: dict[str, str] = {}
    for lane_name, table in tables.items():
        sec = _Section(path, f"lanes.{lane_name}", table)
        _check_name(path, f"lanes.{lane_name}", lane_name, "lane")
        kind = sec.get("kind", str, "counter")
        if kind not in LANE_KINDS:
            raise ConfigError(path, f"lanes.{lane_name}.kind", f"one of {', '.join(LANE_KINDS)}")
        direction = sec.get("direction", str, "entry")
        if direction not in ("entry", "exit"):
            raise ConfigError(path, f"lanes.{lane_name}.direction", "entry or exit")
        scanner = _device_ref(path, sec, "scanner", devices, "scanner")
        if scanner is not None:
            if scanner in used:
                raise ConfigError(
                    path, f"lanes.{lane_name}.scanner", f"{scanner} already feeds {used[scanner]}"
                )
            used[scanner] = lane_name
        gate = _device_ref(path, sec, "gate", devices, "gate")
        locker = _device_ref(path, sec, "locker", devices, "locker")
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


def _printing(
    path: Path, table: dict[str, Any], devices: dict[str, DeviceConfig]
) -> PrintingConfig:
    sec = _Section(path, "printing", table)
    receipt = _device_ref(path, sec, "receipt", devices, "printer")
    stations: dict[str, tuple[str, ...]] = {}
    for station, names in sec.get("stations", dict, {}).items():
        key = f"printing.stations.{station}"
        _check_name(path, key, station, "station")
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


def _zones(path: Path, tables: dict[str, Any]) -> dict[str, ZoneConfig]:
    zones: dict[str, ZoneConfig] = {}
    for name, table in tables.items():
        sec = _Section(path, f"zones.{name}", table)
        _check_name(path, f"zones.{name}", name, "zone")
        warn = sec.get("warn", int)
        full = sec.get("full", int)
        if warn is not None and full is not None and warn > full:
            raise ConfigError(path, f"zones.{name}.warn", f"at most full ({full})")
        zones[name] = ZoneConfig(name, warn, full)
        sec.done()
    return zones


def _lockers(
    path: Path, tables: dict[str, Any], devices: dict[str, DeviceConfig]
) -> dict[str, LockerBankConfig]:
    banks: dict[str, LockerBankConfig] = {}
    for name, table in tables.items():
        sec = _Section(path, f"lockers.{name}", table)
        dev = devices.get(name)
        if dev is None or dev.device_class != "locker":
            raise ConfigError(path, f"lockers.{name}", "named after a [devices.X] locker")
        sizes: dict[str, tuple[int, ...]] = {}
        seen: set[int] = set()
        for size, spec in sec.get("sizes", dict, {"M": "1-24"}).items():
            key = f"lockers.{name}.sizes.{size}"
            doors = _door_list(path, key, spec)
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


def _door_list(path: Path, key: str, spec: Any) -> tuple[int, ...]:
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
