"""Site-managed configuration from the cloud (`config` messages) and config reloads
(the `reload_config` command, SIGHUP, `POST /api/v1/config/reload`); docs/sync.md "Config".

A `config` message carries `{"revision": N, "toml": "..."}`: the sections the cloud manages
(config.MANAGED_SECTIONS). Each replaces the section of the same name in the box's own edge.toml;
[box] (identity, trust anchor, state), [sync] (the link) and [http] stay local, and a message that
sets one of them is refused, so a bad config can never cut the box off from the cloud. Before
anything changes, the result is validated with the loader the daemon starts from (config.build)
and every device it names is constructed (which checks its driver and URL). A refusal goes to the
inbox result and up as `config_refused` with the reason. A valid one is written atomically to
STATE/cloud-config.json (the one before kept as cloud-config.prev.json), then the daemon reloads
(edge/daemon.py), and `config_applied` with the revision goes up once the box runs it. A revision
older than the applied one is ignored, the same one is "already applied".

A reload re-reads edge.toml (and the stored cloud config), validates it the same way, and restarts
the box in-process with it; it is refused, the running config kept, when the file does not load or
changes what only a restart may change ([box] identity, trust anchor or state, [sync]). If the new
config then fails to start, the box starts again with the config that ran, and the stored cloud
config is put back to it, so the next start does not try it again.

Refusal reasons: malformed, too_large, bad_toml, local_section, invalid, needs_restart,
superseded, did_not_load, start_failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError
from drivers.registry import load as load_driver
from edge.config import (
    MANAGED_FILE,
    MANAGED_PREV,
    MANAGED_SECTIONS,
    BoxConfig,
    Managed,
    build,
    load,
    read_toml,
)
from edge.errors import ConfigError, EdgeError
from edge.store import fsync_dir, transaction, write_atomic

if TYPE_CHECKING:
    from edge.box import Box

log = logging.getLogger(__name__)
MAX_TOML_BYTES = 256 * 1024
APPLIED_KEY = "config_applied"  # ledger meta: the cloud revision last reported applied
_files = threading.Lock()  # the two files change together (threads: asyncio.to_thread)
MarkDone = Callable[[str, str], Awaitable[None]]


class ConfigRefused(EdgeError):
    """A config or a reload refused; `reason` is one of the module doc's (stable, for the cloud)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass
class ReloadRequest:
    source: str  # cloud (a config message), command (reload_config), signal (SIGHUP), api
    msg_id: str = ""
    revision: int | None = None  # the cloud revision the reload must bring in (config message)
    wait: bool = True  # the caller waits for the outcome (never while the box is starting)


# -- validation (on a worker thread: it reads files and constructs drivers) --------------------


def parse_body(body: dict[str, Any]) -> tuple[int, str]:
    revision, text = body.get("revision"), body.get("toml")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 1:
        raise ConfigRefused("malformed", "revision: a whole number from 1")
    if not isinstance(text, str):
        raise ConfigRefused("malformed", "toml: the managed sections as TOML text")
    if len(text.encode()) > MAX_TOML_BYTES:
        raise ConfigRefused("too_large", f"{len(text.encode())} bytes; at most {MAX_TOML_BYTES}")
    return revision, text


def candidate(running: BoxConfig, revision: int, text: str, msg_id: str = "") -> BoxConfig:
    """What the box would run with this cloud config: edge.toml as it is on disk now, these
    sections over it. Raises ConfigRefused; changes nothing."""
    try:
        mdoc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigRefused("bad_toml", str(err)) from err
    local = [s for s in mdoc if s not in MANAGED_SECTIONS]
    if local:
        allowed = ", ".join(f"[{s}]" for s in MANAGED_SECTIONS)
        raise ConfigRefused(
            "local_section", f"[{local[0]}] stays in the box's edge.toml; the cloud sets {allowed}"
        )
    sha = hashlib.sha256(text.encode()).hexdigest()
    managed = Managed(
        revision, running.state_dir / MANAGED_FILE, sha, tuple(sorted(mdoc)), msg_id, text
    )
    try:
        new = build(running.path, read_toml(running.path), running.state_dir, (managed, mdoc))
    except ConfigError as err:
        raise ConfigRefused("invalid", str(err)) from err
    _check(running, new)
    return new


def from_disk(running: BoxConfig) -> BoxConfig:
    """The config a restart would load now, if a reload may switch to it. Raises ConfigRefused."""
    try:
        new = load(running.path, running.state_dir)
    except ConfigError as err:
        raise ConfigRefused("invalid", str(err)) from err
    _check(running, new)
    return new


def _check(running: BoxConfig, new: BoxConfig) -> None:
    for what, a, b in (
        ("[box] site", running.site, new.site),
        ("[box] device", running.device, new.device),
        ("[box] trust_anchor", running.trust_anchor, new.trust_anchor),
        ("[box] state_dir", running.state_dir, new.state_dir),
        ("[sync]", running.sync, new.sync),
    ):
        if a != b:
            raise ConfigRefused(
                "needs_restart",
                f"{what} changed in {running.path}: it applies at a restart "
                "(systemctl restart edge), never by a reload / 需重启生效",
            )
    for name, dev in new.devices.items():
        if running.devices.get(name) == dev:
            continue  # running now: its driver and URL were checked when it started
        try:  # constructing parses the URL (drivers open nothing before open())
            load_driver(name, dev.device_class, dev.driver)(name, dev.url)
        except (DriverError, ValueError) as err:
            raise ConfigRefused("invalid", f"[devices.{name}]: {err}") from err


def config_status(cfg: BoxConfig) -> dict[str, Any]:
    """For GET /api/v1/status: where the config came from, the cloud revision in effect."""
    m = cfg.managed
    return {
        "path": str(cfg.path),
        "managed": None
        if m is None
        else {"revision": m.revision, "sha256": m.sha256, "sections": list(m.sections)},
        "managed_skipped": list(cfg.managed_skipped),
    }


# -- the stored cloud config ------------------------------------------------------------------


def store(state_dir: Path, revision: int, text: str, msg_id: str, at: float) -> None:
    """Write it as the current cloud config, the one before kept; refused if a newer one was
    stored meanwhile (two messages handled at once)."""
    doc = {"v": 1, "revision": revision, "toml": text, "id": msg_id, "received_at": at}
    current = state_dir / MANAGED_FILE
    with _files:
        stored = _stored_revision(current)
        if stored is not None and stored >= revision:
            raise ConfigRefused("superseded", f"revision {stored} is stored already")
        if stored is not None:
            _write_atomic(state_dir / MANAGED_PREV, current.read_bytes())
        _write_atomic(current, json.dumps(doc, ensure_ascii=False).encode())


def restore(state_dir: Path, running: Managed | None, failed: int) -> None:
    """Put back the cloud config that runs, if revision `failed` is the stored one."""
    current = state_dir / MANAGED_FILE
    with _files:
        if _stored_revision(current) != failed:
            return
        if running is None:
            current.unlink(missing_ok=True)
            fsync_dir(state_dir)
        else:
            doc = {"v": 1, "revision": running.revision, "toml": running.text, "id": running.msg_id}
            _write_atomic(current, json.dumps(doc | {"restored_at": time.time()}).encode())
        log.warning("cloud config revision %d put back to the running one", failed)


def _stored_revision(path: Path) -> int | None:
    try:
        revision = json.loads(path.read_bytes()).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return revision if isinstance(revision, int) else None


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o640)


# -- handlers (on the loop) ---------------------------------------------------------------------


async def on_config(box: Box, msg_id: str, body: dict[str, Any], mark_done: MarkDone) -> str:
    """A `config` message (edge/cloud.py): ignored, refused, or stored and applied."""
    req = ReloadRequest("cloud", msg_id)
    try:
        revision, text = parse_body(body)
    except ConfigRefused as err:
        await refused(box, req, err)
        return f"refused: {err}"
    req.revision = revision
    running = box.config.managed
    now = running.revision if running is not None else 0
    if revision < now:
        log.info("cloud config revision %d ignored: %d is applied", revision, now)
        return f"ignored: revision {revision} is older than the applied {now}"
    if revision == now:
        return f"already applied: revision {now}"
    state = box.config.state_dir
    try:
        await asyncio.to_thread(candidate, box.config, revision, text, msg_id)
        await asyncio.to_thread(store, state, revision, text, msg_id, time.time())
    except ConfigRefused as err:
        if err.reason != "superseded":
            await refused(box, req, err)
        return f"refused: {err}"
    log.info("cloud config revision %d stored; reloading", revision)
    if box.reload is None:  # no daemon around this box (a tool): the next start applies it
        return f"stored revision {revision}; applies at the next start"
    # Done before the reload: the restarted link must not handle this message a second time.
    await mark_done(msg_id, f"stored revision {revision}; reloading")
    return await box.reload(req)


async def on_reload_command(box: Box, msg_id: str, expired: bool, mark_done: MarkDone) -> str:
    if expired:
        return "dropped: the command's TTL has passed"
    if box.reload is None:
        return "refused: no daemon to reload"
    await mark_done(msg_id, "reloading")
    return await box.reload(ReloadRequest("command", msg_id))


async def refused(box: Box, req: ReloadRequest, err: ConfigRefused) -> None:
    body = {
        "revision": req.revision,
        "source": req.source,
        "id": req.msg_id,
        "reason": err.reason,
        "detail": err.detail[:500],
    }
    log.warning("config refused (%s): %s", req.source, err)
    box.bus.publish("config", state="refused", **body)
    await box.record("config_refused", body)


async def applied(box: Box, req: ReloadRequest | None, reload_s: float | None = None) -> None:
    """After a (re)start: `config_applied` when a reload asked for it, or when the cloud
    revision in effect is not the one last reported (a crash between storing and reloading,
    or a stored one that no longer loads)."""
    svc = box.svc
    assert svc is not None
    m, cfg = box.config.managed, box.config
    revision = m.revision if m is not None else None
    body: dict[str, Any] = {
        "revision": revision,
        "sha256": m.sha256 if m is not None else None,
        "sections": list(m.sections) if m is not None else [],
        "source": req.source if req is not None else "start",
        "id": req.msg_id if req is not None else (m.msg_id if m is not None else ""),
    }
    if reload_s is not None:
        body["reload_s"] = round(reload_s, 3)
    if cfg.managed_skipped:
        body["skipped"] = list(cfg.managed_skipped)
    ledger = svc.ledger

    def write() -> bool:
        if req is None and ledger.meta(APPLIED_KEY) == str(revision):
            return False
        if req is None and revision is None and ledger.meta(APPLIED_KEY) is None:
            return False  # never had a cloud config: nothing to say
        with transaction(ledger.conn):
            ledger.append_event("config_applied", body, time.time())
            ledger.set_meta(APPLIED_KEY, str(revision))
        return True

    if await box.db.call(write):
        log.info("config applied (%s): cloud revision %s", body["source"], revision)
        box.bus.publish("config", state="applied", **body)
