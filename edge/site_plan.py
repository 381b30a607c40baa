"""A box's devices and lanes from roles: "this port is the locker board", rendered as edge.toml.

Both provisioning forms build on it: the interactive wizard (edge/provision_wizard.py) and the
flags of a mass roll-out (`edge provision --device-map locker-board=/dev/edge/locker0 ...`). A role
fixes the device's class, its name in the config, the drivers it may use and the lane it feeds,
so a technician never writes TOML on a ladder. The rendered text is validated with the same
loader the daemon starts from (and every device URL by its driver) before it is written.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from edge import config as cfgmod
from edge.devscan import INPUT, KIND_TEXT, PRINTER, SERIAL, VIDEO, kind_of, resolve
from edge.doctor import config_problems
from edge.errors import ConfigError, EdgeError
from edge.store import write_atomic

log = logging.getLogger(__name__)

NETWORK = "network"  # a tcp:// or socket:// target typed in by the technician


@dataclass(frozen=True)
class Role:
    key: str  # as typed in --device-map
    zh: str
    en: str
    device_class: str
    name: str  # the [devices.NAME] it gets (kitchen printers are numbered)
    kinds: tuple[str, ...]  # what it may be plugged in as
    drivers: tuple[str, ...]  # first = default (for a scanner: chosen by kind)
    many: bool = False

    @property
    def label(self) -> str:
        return f"{self.zh} {self.en}"


ROLES: tuple[Role, ...] = (
    Role("gate-in-scanner", "入口闸机扫码器", "gate entry scanner", "scanner", "scanner-in",
         (SERIAL, INPUT, VIDEO, NETWORK), ("serial", "evdev", "camera")),
    Role("gate-out-scanner", "出口闸机扫码器", "gate exit scanner", "scanner", "scanner-out",
         (SERIAL, INPUT, VIDEO, NETWORK), ("serial", "evdev", "camera")),
    Role("gate-board", "闸机继电器板（双向）", "gate relay board, both directions", "gate", "gate",
         (SERIAL, NETWORK), ("modbus-relay", "lcus")),
    Role("gate-in-board", "入口闸机继电器板", "entry gate relay board", "gate", "gate-in",
         (SERIAL, NETWORK), ("modbus-relay", "lcus")),
    Role("gate-out-board", "出口闸机继电器板", "exit gate relay board", "gate", "gate-out",
         (SERIAL, NETWORK), ("modbus-relay", "lcus")),
    Role("locker-board", "储物柜锁控板", "locker board", "locker", "locker0",
         (SERIAL, NETWORK), ("8a", "cu16", "cu48")),
    Role("locker-scanner", "储物柜扫码器", "locker scanner", "scanner", "locker-scanner",
         (SERIAL, INPUT, VIDEO, NETWORK), ("serial", "evdev", "camera")),
    Role("counter-scanner", "柜台扫码枪", "counter scanner", "scanner", "counter-scanner",
         (SERIAL, INPUT, VIDEO, NETWORK), ("serial", "evdev", "camera")),
    Role("receipt-printer", "小票打印机", "receipt printer", "printer", "receipt",
         (PRINTER, SERIAL, NETWORK), ("escpos",)),
    Role("kitchen-printer", "厨房打印机", "kitchen printer", "printer", "kitchen",
         (PRINTER, SERIAL, NETWORK), ("escpos",), many=True),
)  # fmt: skip
ROLE_BY_KEY = {r.key: r for r in ROLES}
SCANNER_DRIVER = {SERIAL: "serial", INPUT: "evdev", VIDEO: "camera", NETWORK: "serial"}
# URL parameters a technician is asked for (or may give in --device-map), with their defaults.
DEFAULT_PARAMS: dict[str, dict[str, str]] = {
    "modbus-relay": {"slave": "1"},
    "lcus": {"pass_wired": "false"},  # the LCUS board has no inputs to read PASS from
    "8a": {"board": "1", "doors": "24"},
    "cu16": {"board": "0", "doors": "16"},
    "cu48": {"board": "0", "doors": "48"},
    "escpos": {"profile": "generic-80"},
}


class PlanError(EdgeError):
    """A role assignment or device map that cannot work; `detail` says what to change."""


@dataclass(frozen=True)
class Assignment:
    role: Role
    driver: str
    target: str  # a box path (/dev/edge/locker0) or a URL with a scheme (tcp://...)
    params: dict[str, str] = field(default_factory=dict)
    kind: str = SERIAL


def not_for(kind: str, role: Role) -> str:
    """Why a device of `kind` cannot take `role` (bilingual)."""
    what = KIND_TEXT.get(kind, "网络设备 network device")
    return f"a {what} cannot be a {role.en} / 该设备不能用作{role.zh}"


# A URL scheme that names the kind of device by itself (a USB printer not plugged in yet cannot
# be told from a serial port by its /dev/edge name: `file:///dev/edge/receipt` says it).
SCHEME_KIND = {"tcp": NETWORK, "socket": NETWORK, "rfc2217": NETWORK, "file": PRINTER}
SCHEME_KIND |= {"evdev": INPUT, "camera": VIDEO}
LOCAL_SCHEMES = ("serial", "file", "evdev", "camera")


def local_path(target: str) -> str | None:
    """The device path of a target (a path, or a URL with a local scheme); None for a network
    address."""
    if "://" not in target:
        return target
    parts = urlsplit(target)
    return parts.path if parts.scheme in LOCAL_SCHEMES and parts.path else None


def target_kind(target: str, root: Path) -> str:
    """SERIAL/INPUT/VIDEO/PRINTER/NETWORK: by a URL's scheme, else by the node a path resolves to,
    else by the path's name; a name that says nothing (/dev/edge/x not plugged in) is serial."""
    scheme = urlsplit(target).scheme if "://" in target else ""
    if scheme in SCHEME_KIND:
        return SCHEME_KIND[scheme]
    path = local_path(target) or target
    node = resolve(root, path) or path
    for p in (node, path):
        kind = kind_of(p)
        if kind is not None:
            return kind
        if p.startswith("/dev/v4l/"):
            return VIDEO
        if p.startswith("/dev/input/"):
            return INPUT
    return SERIAL


def assign(
    role: Role,
    target: str,
    root: Path,
    driver: str | None = None,
    params: dict[str, str] | None = None,
) -> Assignment:
    """Check that `target` can carry `role` (and `driver`); raises PlanError with the reason."""
    kind = target_kind(target, root)
    if kind not in role.kinds:
        raise PlanError(f"{role.key}: {not_for(kind, role)}")
    if driver is None:
        driver = SCANNER_DRIVER[kind] if role.device_class == "scanner" else role.drivers[0]
    if driver not in role.drivers:
        raise PlanError(f"{role.key}: driver {driver!r}: one of {', '.join(role.drivers)}")
    if role.device_class == "scanner" and kind != NETWORK and SCANNER_DRIVER[kind] != driver:
        raise PlanError(f"{role.key}: a {kind} device is read with driver {SCANNER_DRIVER[kind]}")
    base, given = _split_params(target)
    merged = DEFAULT_PARAMS.get(driver, {}) | given | (params or {})
    return Assignment(role, driver, base, merged, kind)


def _split_params(target: str) -> tuple[str, dict[str, str]]:
    head, sep, query = target.partition("?")
    if not sep:
        return target, {}
    try:
        return head, dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True))
    except ValueError as err:
        raise PlanError(f"{target!r}: bad parameters: {err}") from err


def parse_device_map(spec: str, root: Path) -> Assignment:
    """`ROLE[:DRIVER]=TARGET[?k=v&...]`, e.g. `locker-board:cu16=/dev/edge/locker0?board=2`."""
    left, sep, target = spec.partition("=")
    role_key, _, driver = left.partition(":")
    role = ROLE_BY_KEY.get(role_key.strip())
    if not sep or not target or role is None:
        roles = ", ".join(ROLE_BY_KEY)
        raise PlanError(f"--device-map {spec!r}: ROLE[:DRIVER]=PATH, ROLE one of {roles}")
    return assign(role, target.strip(), root, driver.strip() or None)


def device_url(a: Assignment) -> str:
    if "://" in a.target:
        base = a.target
    else:
        scheme = {INPUT: "evdev", VIDEO: "camera", PRINTER: "file"}.get(a.kind, "serial")
        base = f"{scheme}://{a.target}"
    query = urlencode(a.params, safe="/:,")
    return f"{base}?{query}" if query else base


def names(assignments: list[Assignment]) -> list[str]:
    """The [devices.NAME] of each assignment, in order (kitchen printers numbered)."""
    out: list[str] = []
    kitchen = 0
    for a in assignments:
        if a.role.many:
            kitchen += 1
            out.append(f"{a.role.name}{kitchen}")  # kitchen1, as systemd/udev names them
        else:
            out.append(a.role.name)
    return out


def problems(assignments: list[Assignment]) -> list[str]:
    """What keeps a set of assignments from making a working box (bilingual, one per line)."""
    out: list[str] = []
    keys = [a.role.key for a in assignments]
    for role in ROLES:
        if not role.many and keys.count(role.key) > 1:
            out.append(f"{role.key}: assigned {keys.count(role.key)} times / 重复指定{role.zh}")
    targets = [a.target for a in assignments]
    for t in sorted({t for t in targets if targets.count(t) > 1}):
        out.append(f"{t}: one device, one role / 一个设备只能有一个用途")
    if "gate-board" in keys and {"gate-in-board", "gate-out-board"} & set(keys):
        out.append(
            "one gate board for both directions (gate-board) or one per direction "
            "(gate-in-board, gate-out-board), not both / 双向继电器板与单向继电器板不能同时使用"
        )
    for side in ("in", "out"):
        if f"gate-{side}-scanner" in keys and not {"gate-board", f"gate-{side}-board"} & set(keys):
            out.append(
                f"gate-{side}-scanner needs a gate board (gate-board or gate-{side}-board) / "
                "闸机扫码器需要闸机继电器板"
            )
    if "locker-scanner" in keys and "locker-board" not in keys:
        out.append("a locker scanner needs a locker board (locker-board) / 需要储物柜锁控板")
    return out


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def render(
    site: str, device: str, assignments: list[Assignment], gate_list: str = "default"
) -> str:
    """The edge.toml for these assignments: [box], devices, lanes, printing, lockers. No [sync]:
    enrollment adds it."""
    named = dict(zip(names(assignments), assignments, strict=True))
    by_role = {a.role.key: n for n, a in named.items()}
    out = [
        "# Edge gateway box configuration, written by `edge provision` "
        f"on {time.strftime('%Y-%m-%d %H:%M')}.",
        "# Keys: docs/daemon.md and README.md. Technician guide: docs/technician.md.",
        "[box]",
        f"site = {_q(site)}",
        f"device = {_q(device)}",
        'trust_anchor = "trust-anchor.json"',
        "",
        "[policy]",
        "stale_cache_hours = 48",
        "",
    ]
    for n, a in named.items():
        out += [f"# {a.role.label}", f"[devices.{n}]", f'class = "{a.role.device_class}"']
        out += [f"driver = {_q(a.driver)}", f"url = {_q(device_url(a))}", ""]
    both = by_role.get("gate-board")
    gate_scanners = {"gate-in-scanner", "gate-out-scanner"} & set(by_role)
    for lane, side in (("entry", "in"), ("exit", "out")):
        scanner = by_role.get(f"gate-{side}-scanner")
        own = by_role.get(f"gate-{side}-board")
        if own is not None:
            # A board per direction: its first relay and input (relay_in, pass_in) do the work.
            gate, gate_side = own, "in"
        elif both is not None and (scanner is not None or (not gate_scanners and side == "in")):
            gate, gate_side = both, side  # a gate board without scanners: entry for the kiosk
        else:
            continue
        out += [f"[lanes.{lane}]", 'kind = "gate"', f'direction = "{lane}"']
        out += [f"list = {_q(gate_list)}", f'gate = "{gate}"', f'gate_side = "{gate_side}"']
        if scanner is not None:
            out.append(f'scanner = "{scanner}"')
        out.append("")
    out += ["[lanes.counter]", 'kind = "counter"', 'list = "default"']
    if "counter-scanner" in by_role:
        out.append(f'scanner = "{by_role["counter-scanner"]}"')
    out.append("")
    locker = by_role.get("locker-board")
    if locker is not None:
        out += ["[lanes.lockers]", 'kind = "locker"', 'list = "default"', f'locker = "{locker}"']
        if "locker-scanner" in by_role:
            out.append(f'scanner = "{by_role["locker-scanner"]}"')
        doors = named[locker].params.get("doors", "24")
        out += ["", f"[lockers.{locker}]", f'sizes = {{ M = "1-{doors}" }}', ""]
    kitchens = [n for n, a in named.items() if a.role.many]
    if "receipt-printer" in by_role or kitchens:
        out.append("[printing]")
        if "receipt-printer" in by_role:
            out.append(f'receipt = "{by_role["receipt-printer"]}"')
        if kitchens:
            listed = ", ".join(_q(k) for k in kitchens)
            out.append(f"stations = {{ kitchen = [{listed}] }}  # primary first, then backups")
        out.append("")
    return "\n".join(out)


def validate(text: str, path: Path, state_dir: Path) -> cfgmod.BoxConfig:
    """Load `text` as the daemon would (and construct every device, which checks its URL) without
    writing it; raises ConfigError naming the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", f"not valid TOML: {err}") from err
    config = cfgmod.build(path, doc, state_dir)
    found = [p for p in config_problems(config) if not p.startswith("box.trust_anchor")]
    if found:
        raise ConfigError(path, found[0].partition(":")[0], found[0].partition(": ")[2])
    return config


def missing(assignments: list[Assignment], root: Path) -> list[tuple[Assignment, str]]:
    """Assigned devices whose path is not on this box now, with that path (network addresses
    are not checked: doctor does)."""
    out = []
    for a in assignments:
        path = local_path(a.target)
        if path is not None and resolve(root, path) is None:
            out.append((a, path))
    return out


def backup_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")


def write_config(path: Path, text: str) -> Path | None:
    """Write `text` to `path` atomically (temp file, fsync, rename, fsync of the directory). An
    existing file is first copied aside; returns that copy's path (None: there was none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = None
    if path.exists():
        kept = backup_name(path)
        _atomic(kept, path.read_bytes())
    _atomic(path, text.encode())
    log.info("config written: %s (previous kept as %s)", path, kept)
    return kept


def restore(path: Path, kept: Path | None) -> None:
    """Undo write_config(): put the kept copy back, or remove the new file."""
    if kept is None:
        path.unlink(missing_ok=True)
    else:
        _atomic(path, kept.read_bytes())
        kept.unlink(missing_ok=True)


def _atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o644)  # the service user reads it; it holds no secret


def command_line(
    site: str, device: str, broker: str, assignments: list[Assignment], gate_list: str
) -> str:
    """The non-interactive command for the same box (a template for the next ones)."""
    parts = ["edge provision", f"--site {site}", f"--device {device}", f"--broker {broker}"]
    parts += ["--anchor-fingerprint FP", "--enroll https://HUB:PORT --claim TOKEN"]
    for a in assignments:
        query = urlencode(a.params, safe="/:,")
        target = f"{a.target}?{query}" if query else a.target
        parts.append(f"--device-map '{a.role.key}:{a.driver}={target}'")
    if gate_list != "default":
        parts.append(f"--gate-list {gate_list}")
    return " \\\n    ".join(parts)
