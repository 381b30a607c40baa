"""What is plugged into this box, read from /dev and /sys only: nothing is opened or probed.

`edge provision --interactive` lists these so a technician can say which port is the locker board
and which is the receipt printer. Opening a port to "see what answers" could pulse a relay or pop
a locker door, so discovery never touches the devices themselves: it reads symlinks, sysfs
attributes and the udev database (/run/udev/data), and runs `udevadm info` only as a last resort
on the real root.

Paths returned are the box's own paths (`/dev/serial/by-id/...`), whatever `root` is read from:
tests build a fake /dev + /sys tree in a temporary directory and pass it as `root`.

Stable names, most stable first: /dev/edge/* (our udev rules, systemd/udev/), /dev/serial/by-id/*,
/dev/v4l/by-id/*, /dev/input/by-id/*; a bare kernel name (/dev/ttyUSB1) may change at the next
replug or boot and is flagged.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERIAL, INPUT, VIDEO, PRINTER = "serial", "input", "video", "printer"
KIND_TEXT = {
    SERIAL: "串口 serial port",
    INPUT: "键盘式扫码枪 keyboard-wedge scanner",
    VIDEO: "摄像头 camera",
    PRINTER: "USB 打印机 USB printer",
}
_SERIAL_NODE = re.compile(r"tty(USB|ACM)\d+")
_MAX_HOPS = 16


@dataclass(frozen=True)
class Found:
    """One attached device. `path` is what goes into edge.toml (the most stable name)."""

    kind: str  # SERIAL, INPUT, VIDEO or PRINTER
    path: str  # box path, e.g. /dev/edge/locker0
    node: str  # the kernel node it resolves to, e.g. /dev/ttyUSB0
    label: str  # ID_SERIAL, the device's name, or ""
    stable: bool  # False: a kernel name only, may change at the next replug
    aliases: tuple[str, ...] = ()  # other names of the same node

    def describe(self) -> str:
        bits = [posixpath.basename(self.node)]
        if self.label:
            bits.append(self.label)
        if not self.stable:
            bits.append("no stable name: may change when replugged / 无固定名称，重插后可能变化")
        return f"{self.path}  ({', '.join(bits)})"


def _full(root: Path, box_path: str) -> Path:
    return root / box_path.lstrip("/")


def resolve(root: Path, box_path: str) -> str | None:
    """Follow symlinks inside `root` (absolute targets are re-rooted); the final box path, or
    None when it does not exist."""
    path = posixpath.normpath(box_path)
    for _ in range(_MAX_HOPS):
        full = _full(root, path)
        if not full.is_symlink():
            return path if full.exists() else None
        target = os.readlink(full)
        base = posixpath.dirname(path)
        path = posixpath.normpath(
            target if target.startswith("/") else posixpath.join(base, target)
        )
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _links(root: Path, directory: str, pattern: str = "*") -> list[str]:
    full = _full(root, directory)
    try:
        names = sorted(p.name for p in full.glob(pattern))
    except OSError:
        return []
    return [posixpath.join(directory, n) for n in names]


def _udev_db(root: Path, sys_dir: Path) -> dict[str, str]:
    """The udev properties of a device (E: lines of /run/udev/data/cMAJ:MIN), or {}."""
    dev = _read(sys_dir / "dev")
    if not dev:
        return {}
    props: dict[str, str] = {}
    for line in _read(root / "run/udev/data" / f"c{dev}").splitlines():
        if line.startswith("E:") and "=" in line:
            key, _, value = line[2:].partition("=")
            props[key] = value
    return props


def _usb_parent(sys_dir: Path) -> Path | None:
    """The USB device directory above a tty/lp interface (the one holding idVendor)."""
    try:
        here = (sys_dir / "device").resolve()
    except OSError:
        return None
    for _ in range(6):
        if (here / "idVendor").exists():
            return here
        if here.parent == here:
            break
        here = here.parent
    return None


def _clean(text: str) -> str:
    """As udev's usb_id: whitespace to '_', drop what is not printable ASCII."""
    return "".join(c if c.isascii() and c.isprintable() else "" for c in re.sub(r"\s+", "_", text))


def _sysfs_serial(sys_dir: Path) -> str:
    """ID_SERIAL as udev builds it (vendor_model_serial) from the USB device's attributes."""
    usb = _usb_parent(sys_dir)
    if usb is None:
        return ""
    vendor = _read(usb / "manufacturer") or _read(usb / "idVendor")
    model = _read(usb / "product") or _read(usb / "idProduct")
    parts = [_clean(vendor), _clean(model)]
    serial = _clean(_read(usb / "serial"))
    if serial:
        parts.append(serial)
    return "_".join(p for p in parts if p)


def _udevadm_serial(node: str) -> str:
    """`udevadm info` on the real root only (a subprocess: last resort)."""
    exe = shutil.which("udevadm")
    if exe is None:
        return ""
    try:
        out = subprocess.run(
            [exe, "info", "--query=property", f"--name={node}"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.info("udevadm info %s: %s", node, err)
        return ""
    for line in out.splitlines():
        if line.startswith("ID_SERIAL="):
            return line.partition("=")[2]
    return ""


def id_serial(root: Path, node: str, sys_class: str) -> str:
    """A node's ID_SERIAL: the udev database, else sysfs, else `udevadm info` (real root)."""
    sys_dir = root / "sys/class" / sys_class / posixpath.basename(node)
    value = _udev_db(root, sys_dir).get("ID_SERIAL", "") or _sysfs_serial(sys_dir)
    if not value and root == Path("/"):
        value = _udevadm_serial(node)
    return value


def kind_of(node: str) -> str | None:
    """The kind of a kernel node by its name (None: not a kind we configure)."""
    name = posixpath.basename(node)
    if node.startswith("/dev/tty") or node.startswith("/dev/pts/"):
        return SERIAL
    if node.startswith("/dev/input/event"):
        return INPUT
    if name.startswith("video"):
        return VIDEO
    if node.startswith("/dev/usb/lp"):
        return PRINTER
    return None


def _video_index(root: Path, node: str) -> int:
    text = _read(root / "sys/class/video4linux" / posixpath.basename(node) / "index")
    return int(text) if text.isdigit() else 0


def discover(root: Path = Path("/")) -> list[Found]:
    """Every serial port, keyboard-wedge scanner, camera and USB printer under `root`, one entry
    per device node, named by its most stable path."""
    names: dict[str, list[str]] = {}  # node -> names, most stable first

    def add(link: str) -> None:
        node = resolve(root, link)
        if node is not None and kind_of(node) is not None:
            names.setdefault(node, [])
            if link not in names[node]:
                names[node].append(link)

    for link in _links(root, "/dev/edge"):
        add(link)
    for link in _links(root, "/dev/serial/by-id"):
        add(link)
    for link in _links(root, "/dev/input/by-id", "*-event-kbd"):
        add(link)
    for link in _links(root, "/dev/v4l/by-id"):
        add(link)
    for pattern in ("ttyUSB*", "ttyACM*", "video*"):
        for node in _links(root, "/dev", pattern):
            add(node)
    for node in _links(root, "/dev/usb", "lp*"):
        add(node)

    found: list[Found] = []
    for node, paths in names.items():
        kind = kind_of(node)
        assert kind is not None
        ours = any(p.startswith("/dev/edge/") for p in paths)
        if kind == SERIAL and not ours and not _SERIAL_NODE.fullmatch(posixpath.basename(node)):
            continue  # a built-in UART or a pty: only when our udev rules name it
        if kind == VIDEO and _video_index(root, node) != 0:
            continue  # a UVC camera's metadata node: it has no picture
        label = _label(root, kind, node, paths)
        stable = [p for p in paths if p != node]
        path = stable[0] if stable else node
        others = tuple(p for p in paths if p != path)
        found.append(Found(kind, path, node, label, bool(stable), others))
    order = (SERIAL, INPUT, VIDEO, PRINTER)
    return sorted(found, key=lambda f: (order.index(f.kind), f.path))


def _label(root: Path, kind: str, node: str, paths: list[str]) -> str:
    name = posixpath.basename(node)
    if kind == SERIAL:
        return id_serial(root, node, "tty")
    if kind == VIDEO:
        return _read(root / "sys/class/video4linux" / name / "name")
    if kind == INPUT:
        text = _read(root / "sys/class/input" / name / "device/name")
        by_id = [p for p in paths if p.startswith("/dev/input/by-id/")]
        return text or (posixpath.basename(by_id[0]) if by_id else "")
    return id_serial(root, node, "usbmisc")
