"""Enrollment (docs/sync.md "Enrollment and renewal"): one-time claims and the HTTPS endpoint.

`edge hub claim` makes a claim token for one box id and site; only its SHA-256 is stored
(enroll.db in the hub directory: its own file, because hub.db's schema version belongs to
sync/hub/store.py). The box sends `POST /enroll {v, box, site, claim, csr}`; the hub checks the
claim (known, for this box and site, unused, unexpired), signs the CSR with the device CA (CN must
be the box id), registers the box for the site (boxes.json) and marks the claim used, all or
nothing. The answer carries the certificate, the broker's CA and the trust anchor, plus `signed`:
the same certificate and broker CA in a downlink message signed by an anchor-certified hub key.
The box accepts the anchor only if its fingerprint is the one the technician was given, and then
checks `signed` against it, so a man in the middle of this HTTPS connection (the box does not know
any CA yet) can neither plant an anchor nor a broker CA.

Signer is the one owner of the device CA in a hub process (the CA is not thread-safe): the
enrollment server and the MQTT hub (renewals) share it.

enroll.db also records every certificate the hub issues (`certificates`: box, serial, validity,
when, at enrollment or renewal, and when it was revoked), which `edge hub revoke` and the
revocation of superseded certificates after a renewal read (sync/hub/revoke.py). A revoked box id
gets no claim and no enrollment: its replacement enrolls under a new id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge.store import Schema, open_db, transaction
from sync import protocol
from sync.hub.issuer import Hub
from sync.hub.registry import load_revoked, register_box
from sync.pki import CN_RE, Ca, CsrRefused, cert_info

log = logging.getLogger(__name__)

DAY = 86400
ENROLL_DB = "enroll.db"
DEFAULT_LIFETIME_S = 30 * DAY
MAX_BODY = 64 * 1024
SIGNED_TTL_S = 3600.0

ENROLL_SCHEMA = Schema(
    "hub-enroll",
    [
        """
        CREATE TABLE claims (
            token_hash TEXT PRIMARY KEY, box TEXT NOT NULL, site TEXT NOT NULL,
            created_at REAL NOT NULL, expires_at REAL NOT NULL,
            used_at REAL, serial TEXT
        ) WITHOUT ROWID;
        """,
        """
        CREATE TABLE certificates (
            serial TEXT PRIMARY KEY, box TEXT NOT NULL,
            not_before REAL NOT NULL, not_after REAL NOT NULL,
            issued_at REAL NOT NULL, via TEXT NOT NULL,
            revoked_at REAL, reason TEXT
        ) WITHOUT ROWID;
        CREATE INDEX certificates_by_box ON certificates (box, not_before);
        """,
    ],
)


class EnrollRefused(Exception):
    """An enrollment request refused: HTTP `status`, a stable `reason`, a human `detail`."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(f"{reason}: {detail}")


class Signer:
    """The device CA behind a lock, with the hub's device-certificate lifetime."""

    def __init__(self, ca: Ca, lifetime_s: float = DEFAULT_LIFETIME_S) -> None:
        if lifetime_s <= 0:
            raise ValueError("certificate lifetime must be positive")
        self.ca = ca
        self.lifetime_s = lifetime_s
        self._lock = threading.Lock()

    def sign(self, csr_pem: bytes, box: str) -> bytes:
        """Raises sync.pki.CsrRefused for a request the CA will not sign."""
        with self._lock:
            return self.ca.sign_csr(csr_pem, expected_cn=box, lifetime_s=self.lifetime_s)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def record_certificate(
    conn: sqlite3.Connection, box: str, cert_pem: bytes, via: str, now: float
) -> str:
    """Remember a certificate the hub issued (inside the caller's transaction on enroll.db);
    returns its serial (hex)."""
    info = cert_info(cert_pem)
    serial = format(info.serial, "x")
    conn.execute(
        "INSERT INTO certificates (serial, box, not_before, not_after, issued_at, via) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (serial, box, info.not_before, info.not_after, now, via),
    )
    return serial


def record_issued(hub_dir: Path, box: str, cert_pem: bytes, via: str, now: float) -> str:
    """record_certificate in a transaction of its own (the renewal path of a serving hub)."""
    conn = open_db(hub_dir / ENROLL_DB, ENROLL_SCHEMA, create=True, check=False)
    try:
        with transaction(conn):
            return record_certificate(conn, box, cert_pem, via, now)
    finally:
        conn.close()


def make_claim(hub_dir: Path, box: str, site: str, ttl_s: float = DAY) -> str:
    """A new one-time claim token for `box` at `site`; only its hash is kept."""
    if not CN_RE.fullmatch(box):
        raise ValueError(f"box id {box!r}: letters, digits, '.', '_', '-' (at most 64)")
    if not site or "/" in site:
        raise ValueError(f"site {site!r}: a non-empty name without '/'")
    if ttl_s <= 0:
        raise ValueError("claim lifetime must be positive")
    if box in load_revoked(hub_dir):
        raise ValueError(
            f"box {box!r} was revoked: give its replacement a new box id / 该设备已吊销"
        )
    token = secrets.token_urlsafe(24)
    while token.startswith("-"):  # `edge provision --claim -x...` would read it as an option
        token = secrets.token_urlsafe(24)
    now = time.time()
    conn = open_db(hub_dir / ENROLL_DB, ENROLL_SCHEMA, create=True)
    try:
        with transaction(conn):
            conn.execute(
                "INSERT INTO claims (token_hash, box, site, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (_hash(token), box, site, now, now + ttl_s),
            )
    finally:
        conn.close()
    log.info("claim made for %s at %s (valid %.0f s)", box, site, ttl_s)
    return token


@dataclass(frozen=True)
class EnrollRequest:
    box: str
    site: str
    claim: str
    csr: bytes

    @classmethod
    def parse(cls, raw: bytes) -> EnrollRequest:
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise EnrollRefused(400, "malformed", f"not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise EnrollRefused(400, "malformed", "a JSON object is expected")
        if doc.get("v") != protocol.VERSION:
            raise EnrollRefused(400, "unknown_version", f"v={doc.get('v')!r}; this hub speaks 1")
        fields = {k: doc.get(k) for k in ("box", "site", "claim", "csr")}
        missing = [k for k, v in fields.items() if not isinstance(v, str) or not v]
        if missing:
            raise EnrollRefused(400, "malformed", f"missing or not text: {', '.join(missing)}")
        return cls(
            str(fields["box"]),
            str(fields["site"]),
            str(fields["claim"]),
            str(fields["csr"]).encode(),
        )


class Enroller:
    """The enrollment logic, apart from HTTP. Thread-safe: each call opens its own connection
    (SQLite connections belong to their thread) and holds the claim row's write lock."""

    def __init__(self, hub: Hub, signer: Signer, broker_ca: Path) -> None:
        self.hub = hub
        self.signer = signer
        self.broker_ca = broker_ca
        self.db_path = hub.dir / ENROLL_DB
        open_db(self.db_path, ENROLL_SCHEMA, create=True).close()  # made and migrated now

    def enroll(self, req: EnrollRequest, now: float | None = None) -> dict[str, Any]:
        t = time.time() if now is None else now
        conn = open_db(self.db_path, ENROLL_SCHEMA, create=False, check=False)
        try:
            with transaction(conn):
                row = conn.execute(
                    "SELECT box, site, expires_at, used_at FROM claims WHERE token_hash = ?",
                    (_hash(req.claim),),
                ).fetchone()
                if row is None:
                    raise EnrollRefused(403, "unknown_claim", "no such claim token")
                box, site, expires_at, used_at = row
                if used_at is not None:
                    raise EnrollRefused(409, "claim_used", "this claim token was already used")
                if t > expires_at:
                    raise EnrollRefused(410, "claim_expired", "this claim token has expired")
                if (req.box, req.site) != (box, site):
                    raise EnrollRefused(
                        403,
                        "claim_mismatch",
                        f"the claim is for box {box!r} at site {site!r}, "
                        f"not {req.box!r} at {req.site!r}",
                    )
                if box in load_revoked(self.hub.dir):  # a claim made before the revocation
                    raise EnrollRefused(
                        403, "box_revoked", f"box {box!r} was revoked; enroll under a new id"
                    )
                try:
                    cert = self.signer.sign(req.csr, box)
                except CsrRefused as err:
                    raise EnrollRefused(400, err.reason, err.detail) from err
                serial = record_certificate(conn, box, cert, "enroll", t)
                register_box(self.hub.dir, box, site)
                conn.execute(
                    "UPDATE claims SET used_at = ?, serial = ? WHERE token_hash = ?",
                    (t, serial, _hash(req.claim)),
                )
        finally:
            conn.close()
        log.info("enrolled %s at %s (certificate %s)", box, site, serial)
        return self._answer(box, site, cert, serial, t)

    def _answer(self, box: str, site: str, cert: bytes, serial: str, now: float) -> dict[str, Any]:
        from sync.hub.signing import sign_message

        broker_ca = self.broker_ca.read_text(encoding="ascii")
        body = {"box": box, "site": site, "cert": cert.decode("ascii"), "broker_ca": broker_ca}
        signed = sign_message(self.hub, "certificate", body, SIGNED_TTL_S, f"enroll-{serial}", now)
        return {
            "v": protocol.VERSION,
            "cert": body["cert"],
            "broker_ca": broker_ca,
            "anchor": (self.hub.dir / "trust-anchor.json").read_text(encoding="utf-8"),
            "signed": signed.decode(),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 15  # a client that stalls (or never finishes its handshake) lets go of a thread

    def do_POST(self) -> None:
        if self.path != "/enroll":
            self._send(404, {"v": 1, "reason": "not_found", "detail": "POST /enroll"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise EnrollRefused(413, "too_large", f"a body of 1 to {MAX_BODY} bytes")
            req = EnrollRequest.parse(self.rfile.read(length))
            self._send(200, self.server.enroller.enroll(req))
        except EnrollRefused as err:
            log.warning("enrollment refused: %s", err)
            self._send(err.status, {"v": 1, "reason": err.reason, "detail": err.detail})
        except Exception:
            log.exception("enrollment failed")
            self._send(500, {"v": 1, "reason": "internal", "detail": "see the hub's log"})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("enroll %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    enroller: Enroller


class EnrollServer:
    """HTTPS on host:port with the given server certificate. start() then close()."""

    def __init__(self, enroller: Enroller, host: str, port: int, cert: Path, key: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        self._httpd = _Server((host, port), _Handler)
        self._httpd.enroller = enroller
        # The handshake happens on the handler's thread, not in accept(): one slow client
        # must not hold up the others.
        self._httpd.socket = ctx.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> EnrollServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.2,), name="hub-enroll"
        )
        self._thread.start()
        log.info("enrollment endpoint on port %d", self.port)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> EnrollServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
