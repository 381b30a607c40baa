"""Box configuration (TOML), validated once; errors name the file, the key and what is expected.
The sections of the site's equipment and the cloud link are parsed in edge/config_sections.py.

Lookup order: --config PATH, --home DIR (DIR/edge.toml, state in DIR), $EDGE_HOME,
$CONFIGURATION_DIRECTORY (set by systemd; state in $STATE_DIRECTORY), /etc/edge/edge.toml.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.clock import ClockPolicy
from edge.config_sections import (
    DeviceConfig,
    LaneConfig,
    LockerBankConfig,
    PrintingConfig,
    Section,
    SyncConfig,
    ZoneConfig,
    parse_devices,
    parse_lanes,
    parse_lockers,
    parse_printing,
    parse_sync,
    parse_zones,
)
from edge.errors import ConfigError
from edge.http_tls import TlsSettings
from edge.http_tls import settings as tls_settings

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
    root = Section(path, "", doc)
    box = Section(path, "box", root.get("box", dict, required=True))
    site = box.name("site")
    device = box.name("device", required=False, default="box-1")
    anchor = base / box.get("trust_anchor", str, required=True)
    state_s = box.get("state_dir", str)
    state_dir = base / state_s if state_s else (state_hint or base)
    box.done()
    pol = Section(src("policy"), "policy", root.get("policy", dict, {}))
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
    devices = parse_devices(src("devices"), root.get("devices", dict, {}))
    lanes = parse_lanes(src("lanes"), root.get("lanes", dict, {}), devices)
    http = Section(path, "http", root.get("http", dict, {}))
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
    printing = parse_printing(src("printing"), root.get("printing", dict, {}), devices)
    zones = parse_zones(src("zones"), root.get("zones", dict, {}))
    lockers = parse_lockers(src("lockers"), root.get("lockers", dict, {}), devices)
    sync = parse_sync(path, base, root.get("sync", dict))
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
