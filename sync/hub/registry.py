"""The reference hub's box registry (boxes.json) and its broker-reload flag file.

boxes.json: `{"v": 1, "boxes": {box id: site}, "revoked": {box id: {site, reason, at, serials}}}`,
changed under a lock (`.boxes.lock`: enrollments and `edge hub revoke` may write at once) and
replaced atomically. A revoked box is not in `boxes`, so whatever lists a site's boxes skips it.

The flag file (RELOAD_PENDING) is set while the CRL has changed and the broker may not have
re-read it (sync/hub/revoke.py); it has its own lock (`.reload.lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sync.pki import CN_RE, write_atomic

REGISTRY = "boxes.json"
# Set while the CRL has changed and the broker may not have re-read it (sync/hub/revoke.py).
RELOAD_PENDING = "broker-reload.pending"


def _registry_doc(hub_dir: Path) -> dict[str, Any]:
    path = hub_dir / REGISTRY
    if not path.exists():
        return {"v": 1, "boxes": {}}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {"v": 1, "boxes": {}}


def load_registry(hub_dir: Path) -> dict[str, str]:
    """box id -> site, from hub_dir/boxes.json (empty when absent). Revoked boxes are not in it:
    whatever reads the registry (events, bundles, used deltas) leaves them out."""
    return {str(k): str(v) for k, v in _registry_doc(hub_dir).get("boxes", {}).items()}


def load_revoked(hub_dir: Path) -> dict[str, dict[str, Any]]:
    """Revoked box id -> {site, reason, at, serials} (sync/hub/revoke.py)."""
    revoked = _registry_doc(hub_dir).get("revoked", {})
    return {str(k): dict(v) for k, v in revoked.items()}


@contextlib.contextmanager
def _registry_locked(hub_dir: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write of boxes.json under a lock: enrollments (threads of a serving hub) and
    `edge hub revoke` (another process) must not lose each other's change."""
    hub_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(hub_dir / ".boxes.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        doc = _registry_doc(hub_dir)
        yield doc
        doc["boxes"] = dict(sorted(doc.get("boxes", {}).items()))
        write_atomic(hub_dir / REGISTRY, json.dumps(doc, indent=1).encode())
    finally:
        os.close(fd)


def register_box(hub_dir: Path, box: str, site: str) -> None:
    """Bind a box identity (its certificate CN) to its site; a serving hub picks it up.
    A revoked identity stays revoked: its replacement enrolls under a new box id."""
    if not CN_RE.fullmatch(box):
        raise ValueError(f"box id {box!r}: letters, digits, '.', '_', '-' (at most 64)")
    if not site or "/" in site:
        raise ValueError(f"site {site!r}: a non-empty name without '/'")
    with _registry_locked(hub_dir) as doc:
        if box in doc.get("revoked", {}):
            raise ValueError(
                f"box {box!r} was revoked: give its replacement a new box id / 该设备已吊销"
            )
        doc.setdefault("boxes", {})[box] = site


def mark_revoked(
    hub_dir: Path, box: str, reason: str, at: float, serials: list[str]
) -> tuple[dict[str, Any], bool]:
    """Move `box` from the registry's boxes to its revoked ones; (its entry, whether it was
    revoked already). Revoking again keeps the first time and reason and adds serials."""
    with _registry_locked(hub_dir) as doc:
        boxes, revoked = doc.setdefault("boxes", {}), doc.setdefault("revoked", {})
        already = box in revoked
        entry = revoked.get(box) or {"site": boxes.get(box, ""), "reason": reason, "at": at}
        entry["serials"] = sorted(set(entry.get("serials", [])) | set(serials))
        revoked[box] = entry
        boxes.pop(box, None)
        doc["revoked"] = dict(sorted(revoked.items()))
    return dict(entry), already


def registry_mtime(hub_dir: Path) -> float:
    try:
        return os.stat(hub_dir / REGISTRY).st_mtime
    except FileNotFoundError:
        return 0.0


def registry_stamp(hub_dir: Path) -> tuple[int, int]:
    """(inode, mtime ns): boxes.json is replaced by a rename, so a change gives a new inode even
    within one tick of the file system's clock."""
    try:
        st = os.stat(hub_dir / REGISTRY)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


@contextlib.contextmanager
def _flag_locked(hub_dir: Path) -> Iterator[Path]:
    hub_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(hub_dir / ".reload.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield hub_dir / RELOAD_PENDING
    finally:
        os.close(fd)


def mark_reload_pending(hub_dir: Path, why: str) -> str:
    """Before the CRL changes: a file that stays until the broker has re-read it, so a failed
    reload (or a crash) is retried by a serving hub. Returns this change's token."""
    token = f"{secrets.token_hex(8)} {time.time():.0f} {why[:200]}"
    with _flag_locked(hub_dir) as path:
        write_atomic(path, token.encode(), 0o600)
    return token


def reload_pending(hub_dir: Path) -> str | None:
    """The token of the last CRL change the broker may not have read yet (None: none)."""
    try:
        return (hub_dir / RELOAD_PENDING).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def clear_reload_pending(hub_dir: Path, token: str) -> bool:
    """After a reload begun once `token` was read: clear the flag, unless a later change set it
    again meanwhile (that one needs a reload of its own). True when cleared."""
    with _flag_locked(hub_dir) as path:
        if reload_pending(hub_dir) != token:
            return False
        path.unlink()
    return True
