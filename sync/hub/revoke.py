"""Revoking a box, and the certificates a renewal superseded (docs/sync.md "Revoking a box").

`edge hub revoke` (revoke_box) closes every way in, in this order:
1. the registry (boxes.json): the box moves from `boxes` to `revoked` (site, reason, time,
   serials). A serving hub checks the registry before every message it handles, so from this
   moment it refuses the box's events, status and CSRs (`revoked`, counted per box), queues
   nothing more for it (no bundle, used delta, conflict report, command) and the enrollment
   endpoint refuses a claim for that id (`box_revoked`);
2. hub.db: the messages still queued for it expire unsent, and it is shown offline;
3. the CRL: every certificate known for the box (the hub's record in enroll.db and, with the
   device CA, what the CA issued to that CN) is revoked and crl.pem rewritten;
4. the broker re-reads the CRL (BrokerReload: SIGHUP to a pid file, or a command). mosquitto
   2.0.11 applies it to NEW connections only: a connection open before stays (verified, and
   tested in tests/test_hub_revoke.py);
5. so the hub cuts the live connection: it connects with the box's client id, from its own
   identity, with a clean start. MQTT lets one session per client id exist: the broker closes the
   box's connection ("Client ... already connected, closing old connection", MQTT 5 reason 0x8E
   session taken over) and drops its session and queued messages; the hub clears the box's
   retained status and disconnects. The box's reconnects then fail in the TLS handshake
   (certificate revoked). The box's link always uses its CN as client id; a connection made with a
   copy of its key under another client id is not cut, but it cannot come back, and the hub
   refuses whatever it publishes (step 1).

After a renewal (revoke_superseded): once the box reports `cert_renewed` (its body names the new
serial), the serving hub revokes every certificate of that box whose notBefore is earlier than
the new one's (all are backdated alike by the CA, so that is their order of issue), rewrites the
CRL and reloads the broker, so a stolen old key no longer connects. Idempotent: an event seen again
revokes nothing new and reloads nothing. It runs on the hub's worker thread: a SIGHUP takes no
time; a reload command may take up to RELOAD_TIMEOUT_S.

The broker must re-read the CRL after every change: a flag file in the hub directory
(registry.RELOAD_PENDING) is set before the CRL changes and cleared only once a reload has worked,
so a failed reload, a crash in between, or `edge hub revoke` without a way to the broker is
retried by the serving hub (RevocationUpkeep, with backoff). The upkeep also retries a failed
revocation after a renewal and keeps the CRL from expiring (its nextUpdate: see sync/pki.py); it
lives in sync/hub/crl_upkeep.py, with refresh_crl and reload_if_pending.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.errors import EdgeError
from edge.store import open_db, transaction
from sync import protocol
from sync.hub.enroll import ENROLL_DB, ENROLL_SCHEMA
from sync.hub.registry import (
    clear_reload_pending,
    load_registry,
    load_revoked,
    mark_reload_pending,
    mark_revoked,
)
from sync.hub.store import HUB_DB, HubStore
from sync.pki import CN_RE, Ca, tls_client_context

log = logging.getLogger(__name__)

HUB_CN = "hub"
# Between the broker's reload and the cut: mosquitto applies a SIGHUP at its next loop turn (the
# signal interrupts its wait), a reload command may take a moment longer. A box cut before the CRL
# is in force would simply reconnect.
SETTLE_S = 1.0
CUT_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 30.0


class RevokeError(EdgeError):
    """A step of a revocation failed (the steps before it stay done; run it again)."""


@dataclass(frozen=True)
class BrokerAccess:
    """The broker as the hub reaches it: its address, its CA and the hub's certificate (CN hub,
    which the ACL lets read and write gw/#)."""

    host: str
    port: int
    ca: Path
    cert: Path
    key: Path


class BrokerReload:
    """Makes the broker re-read its CRL: SIGHUP to the pid written in `pid_file` (mosquitto's
    `pid_file` option), or `command` (e.g. "systemctl reload mosquitto", run without a shell)."""

    def __init__(self, *, pid_file: Path | None = None, command: str | None = None) -> None:
        if (pid_file is None) == (command is None):
            raise ValueError("give the broker's pid file or a reload command (one of them)")
        self.pid_file = pid_file
        self.argv = shlex.split(command) if command is not None else None
        if self.argv == []:
            raise ValueError("the broker reload command is empty")

    def check(self) -> None:
        """Raise RevokeError now if the reload cannot work (before anything is changed)."""
        if self.pid_file is not None:
            self._pid()
        elif self.argv and shutil.which(self.argv[0]) is None:
            raise RevokeError(f"broker reload command not found: {self.argv[0]}")

    def _pid(self) -> int:
        assert self.pid_file is not None
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as err:
            raise RevokeError(f"no broker pid in {self.pid_file}: {err}") from err

    def __call__(self) -> None:
        if self.pid_file is not None:
            pid = self._pid()
            try:
                os.kill(pid, signal.SIGHUP)
            except OSError as err:
                raise RevokeError(f"cannot signal the broker (pid {pid}): {err}") from err
            log.info("sent SIGHUP to the broker (pid %d)", pid)
            return
        assert self.argv is not None
        try:
            done = subprocess.run(
                self.argv, capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RevokeError(f"broker reload command failed: {err}") from err
        if done.returncode != 0:
            raise RevokeError(
                f"broker reload command exited {done.returncode}: {done.stderr.strip()[:200]}"
            )
        log.info("broker reloaded (%s)", shlex.join(self.argv))


@dataclass(frozen=True)
class Certificate:
    serial: str  # hex, as sync/pki.py writes it
    not_before: float
    not_after: float
    via: str  # enroll, renewal (the hub's record) or ca (only in the CA's issued.jsonl)
    revoked: bool


def _hex(serial: str) -> str | None:
    try:
        return format(int(serial, 16), "x")
    except ValueError:
        return None


def certificates_of(hub_dir: Path, box: str, ca: Ca | None) -> list[Certificate]:
    """Every certificate known for `box`, oldest first: the hub's record (enroll.db) and, with
    the CA, what it issued to that CN (an offline-provisioned box's certificate, say)."""
    conn = open_db(hub_dir / ENROLL_DB, ENROLL_SCHEMA, create=True, check=False)
    try:
        rows = conn.execute(
            "SELECT serial, not_before, not_after, via, revoked_at FROM certificates WHERE box = ?",
            (box,),
        ).fetchall()
    finally:
        conn.close()
    revoked = {format(s, "x") for s in ca.revoked_serials()} if ca is not None else set()
    found: dict[str, Certificate] = {}
    for serial, nb, na, via, at in rows:
        found[serial] = Certificate(serial, nb, na, via, at is not None or serial in revoked)
    for info in ca.issued_to(box) if ca is not None else []:
        serial = format(info.serial, "x")
        if serial not in found:
            found[serial] = Certificate(
                serial, info.not_before, info.not_after, "ca", serial in revoked
            )
    return sorted(found.values(), key=lambda c: (c.not_before, c.serial))


def _note_revoked(hub_dir: Path, box: str, serials: list[str], at: float, reason: str) -> None:
    """Mark the hub's record (what `edge hub status` shows); the CA's revoked.json is the CRL's."""
    if not serials:
        return
    conn = open_db(hub_dir / ENROLL_DB, ENROLL_SCHEMA, create=True, check=False)
    try:
        with transaction(conn):
            conn.executemany(
                "UPDATE certificates SET revoked_at = ?, reason = ? "
                "WHERE serial = ? AND box = ? AND revoked_at IS NULL",
                [(at, reason[:200], s, box) for s in serials],
            )
    finally:
        conn.close()


@dataclass
class Revocation:
    """What revoke_box did. `reloaded`/`cut` are False when no way to the broker was given."""

    box: str
    site: str
    reason: str
    at: float
    already: bool
    serials: list[str]  # every certificate known for the box (on the CRL when `crl`)
    newly: list[str]  # revoked by this call
    dropped: int  # queued downlink messages that will never be sent
    crl: bool = False
    reloaded: bool = False
    cut: bool = False
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> list[str]:
        """What `edge hub revoke` prints."""
        yes = {True: "yes", False: "no"}
        again = " (again 再次)" if self.already else ""
        return [
            f"revoked 已吊销 {self.box}{again} site={self.site or '-'} reason={self.reason}",
            f"  certificates 证书: {len(self.serials)} known, {len(self.newly)} newly revoked; "
            f"crl={yes[self.crl]} broker reloaded={yes[self.reloaded]} "
            f"live session cut 已断开={yes[self.cut]} queued messages dropped={self.dropped}",
            *(f"  warning 警告: {w}" for w in self.warnings),
            "  a replacement box enrolls under a NEW box id / 替换设备请使用新的设备编号",
        ]


def revoke_box(
    hub_dir: Path,
    box: str,
    *,
    reason: str,
    ca: Ca | None,
    reload: BrokerReload | None,
    broker: BrokerAccess | None,
    db_path: Path | None = None,
    now: float | None = None,
    settle_s: float = SETTLE_S,
) -> Revocation:
    """Revoke `box` (see the module docstring for the order). Running it again is harmless: it
    revokes what is new (a certificate issued since), reloads and cuts again."""
    if not CN_RE.fullmatch(box):
        raise ValueError(f"box id {box!r}: letters, digits, '.', '_', '-' (at most 64)")
    if box == HUB_CN:
        raise ValueError("`hub` is the hub's own identity, not a box")
    # What could fail for a bad option fails before anything is changed.
    ctx = tls_client_context(broker.ca, broker.cert, broker.key) if broker else None
    if reload is not None:
        reload.check()
    t = time.time() if now is None else now
    certs = certificates_of(hub_dir, box, ca)
    if box not in load_registry(hub_dir) and box not in load_revoked(hub_dir) and not certs:
        raise ValueError(f"unknown box {box!r}: not registered and no certificate issued to it")
    serials = [c.serial for c in certs]
    entry, already = mark_revoked(hub_dir, box, reason, t, serials)
    # A renewal signed between the first read and the registry change shows up in this second
    # read; one signed after it finds the box revoked and revokes itself (HubServer._on_csr).
    late = [c.serial for c in certificates_of(hub_dir, box, ca) if c.serial not in serials]
    if late:
        log.warning("box %s: certificate %s issued during the revocation", box, ", ".join(late))
        entry, _ = mark_revoked(hub_dir, box, reason, t, late)
        serials += late
    log.warning("box %s revoked: %s", box, entry["reason"])
    res = Revocation(
        box, str(entry["site"]), str(entry["reason"]), float(entry["at"]), already, serials, [], 0
    )
    db = db_path or hub_dir / HUB_DB
    if db.exists():
        store = HubStore(db, create=False)
        try:
            with transaction(store.conn):
                res.dropped = store.retire(box, t)
        finally:
            store.close()
    if ca is None:
        res.warnings.append(
            "no --device-ca: no certificate revoked; the box can still connect to the broker "
            "(the hub refuses what it sends)"
        )
    else:
        token = mark_reload_pending(hub_dir, f"box {box} revoked")
        res.newly = [format(s, "x") for s in ca.revoke_many(int(s, 16) for s in serials)]
        res.crl = True
        _note_revoked(hub_dir, box, serials, t, f"box revoked: {res.reason}")
        res.reloaded = _told(hub_dir, reload, token)
    if res.crl and reload is None:
        res.warnings.append(
            "the broker was not told (--broker-pid or --broker-reload): it accepts new "
            "connections with these certificates until its next SIGHUP (a serving hub given "
            "--broker-pid/--broker-reload sends it soon)"
        )
    elif res.reloaded:
        time.sleep(settle_s)
    if broker is None:
        res.warnings.append("no --broker: a live connection of the box was not cut")
    else:
        cut_session(broker, box, ctx=ctx)
        res.cut = True
    return res


def revoke_superseded(
    hub_dir: Path,
    box: str,
    keep: str | None,
    *,
    ca: Ca,
    reload: BrokerReload | None,
    now: float | None = None,
) -> list[str]:
    """After a renewal: revoke the box's certificates older than `keep` (the serial its
    `cert_renewed` event names; None: the newest known). Returns the serials revoked now."""
    certs = certificates_of(hub_dir, box, ca)
    if keep is None:
        kept = certs[-1] if certs else None
    else:
        wanted = _hex(keep)
        kept = next((c for c in certs if c.serial == wanted), None)
    if kept is None:
        log.warning("cert_renewed from %s names serial %r, which this hub never issued", box, keep)
        return []
    old = [c.serial for c in certs if c.not_before < kept.not_before and not c.revoked]
    if not old:
        return []  # a resend: nothing new (a reload still owed is the pending flag's)
    at = time.time() if now is None else now
    newly = revoke_serials(
        hub_dir, box, old, ca=ca, reload=reload, reason=f"superseded by {kept.serial}", at=at
    )
    log.info("revoked %s of %s: superseded by %s", ", ".join(newly), box, kept.serial)
    return newly


def revoke_serials(
    hub_dir: Path,
    box: str,
    serials: list[str],
    *,
    ca: Ca,
    reload: BrokerReload | None,
    reason: str,
    at: float,
) -> list[str]:
    """Put `serials` of `box` on the CRL and reload the broker (the pending flag spans both);
    returns those revoked now. Raises when the reload fails: the flag stays set."""
    token = mark_reload_pending(hub_dir, f"{box}: {reason}")
    newly = [format(s, "x") for s in ca.revoke_many(int(s, 16) for s in serials)]
    _note_revoked(hub_dir, box, serials, at, reason)
    if not _told(hub_dir, reload, token):
        log.warning(
            "CRL updated for %s but the broker was not told (no --broker-pid/--broker-reload): "
            "the revoked certificates connect until its next SIGHUP",
            box,
        )
    return newly


def _told(hub_dir: Path, reload: BrokerReload | None, token: str) -> bool:
    """After a CRL change marked with `token`: reload the broker, then clear the flag. Without a
    reload, or when it fails, the flag is set again: a serving hub's retry may have cleared it
    between the mark and the change, and the change still needs a reload."""
    if reload is None:
        mark_reload_pending(hub_dir, "CRL changed; the broker was not told")
        return False
    try:
        reload()
    except Exception:
        mark_reload_pending(hub_dir, "CRL changed; the broker reload failed")
        raise
    clear_reload_pending(hub_dir, token)
    return True


def cut_session(
    broker: BrokerAccess,
    box: str,
    timeout: float = CUT_TIMEOUT_S,
    *,
    ctx: ssl.SSLContext | None = None,
) -> None:
    """Take over the session of client id `box` from the hub's identity (clean start), clear the
    box's retained status, disconnect. Raises RevokeError when the broker does not let us in."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=box, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.tls_set_context(ctx or tls_client_context(broker.ca, broker.cert, broker.key))
    done = threading.Event()
    connack: list[ReasonCode] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        connack.append(rc)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_a: done.set()
    try:
        client.connect(broker.host, broker.port, keepalive=10, clean_start=True)
    except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
        client.disconnect()  # drops a socket a failed connect() left behind
        raise RevokeError(f"cannot reach the broker to cut {box}'s session: {err}") from err
    client.loop_start()
    try:
        if not done.wait(timeout) or not connack or connack[0].is_failure:
            raise RevokeError(f"the broker did not accept the takeover of {box} ({connack})")
        info = client.publish(protocol.up_status(box), b"", qos=1, retain=True)
        info.wait_for_publish(timeout)
        log.info("cut the live session of %s (taken over and closed)", box)
    except (RuntimeError, ValueError) as err:  # wait_for_publish after a disconnect
        raise RevokeError(f"cutting {box}'s session: {err}") from err
    finally:
        client.disconnect()
        client.loop_stop()
