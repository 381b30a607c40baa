"""The box's side of enrollment and certificate renewal (docs/sync.md "Enrollment and renewal").

Provisioning (`edge provision`): the key is made here and never leaves the box (0600). Online,
the CSR goes with a one-time claim token to the hub's enrollment endpoint; offline (`--from DIR`)
the technician brings the certificate, key, broker CA and trust anchor on a stick. Either way the
anchor is accepted only if its fingerprint is the one the technician was given (no trust on first
use), and everything is checked before the first file is written: a mismatch writes nothing.
Online, the hub's answer also carries the certificate and broker CA signed by an anchor-certified
key, so the unauthenticated HTTPS of enrollment cannot slip in another broker CA.

Renewal (`Renewal`): the daemon keeps the new key, CSR and certificate beside the live ones as
*.new (0600) until the new connection works, then replaces the live files (key, then
certificate). A crash between the two leaves a pair that `recover()` completes at the next start.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import config as cfgmod
from edge.errors import EdgeError
from edge.trust import ANCHOR_FORMAT, ANCHOR_VERSION, TrustAnchor, normalise_fingerprint
from sync import protocol
from sync.certs import (
    DAY,
    PkiError,
    cert_info,
    key_matches_cert,
    load_cert,
    make_key_and_csr,
    renew_due,
    write_atomic,
)

log = logging.getLogger(__name__)

TLS_DIR = "tls"
CERT_NAME = "device.crt"
KEY_NAME = "device.key"
BROKER_CA_NAME = "broker-ca.crt"
ANCHOR_NAME = "trust-anchor.json"
ALERT_DAYS = 7.0


class ProvisionError(EdgeError):
    """Provisioning refused; nothing was written. `reason` is short and stable."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Material:
    """What a provisioned box holds, checked in memory before anything is written."""

    cert: bytes
    key: bytes
    broker_ca: bytes
    anchor_text: str
    anchor: TrustAnchor


def parse_anchor(text: str) -> TrustAnchor:
    """A trust-anchor.json document (the checks of TrustAnchor.load, without a file)."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != ANCHOR_FORMAT:
            raise ValueError("not an edge trust anchor")
        if doc.get("version") != ANCHOR_VERSION:
            raise ValueError(f"unsupported version {doc.get('version')!r}")
        key = bytes.fromhex(str(doc["public_key"]))
        if len(key) != 32:
            raise ValueError("public_key must be 32 bytes")
    except (ValueError, KeyError) as err:
        raise ProvisionError("bad_anchor", f"trust anchor: {err}") from err
    return TrustAnchor(key, str(doc.get("label", "")))


def check_material(m: Material, device: str, fingerprint: str, now: float | None = None) -> None:
    """Raise ProvisionError unless the anchor is the expected one and the certificate is this
    box's, for its key, and currently valid."""
    want = normalise_fingerprint(fingerprint)
    if len(want) != 64:
        raise ProvisionError("bad_fingerprint", "--anchor-fingerprint: 64 hex digits")
    got = normalise_fingerprint(m.anchor.fingerprint)
    if got != want:
        raise ProvisionError(
            "anchor_mismatch",
            f"the trust anchor's fingerprint is {m.anchor.fingerprint}, not the one given; "
            "nothing was written / 信任根指纹不符，未写入任何文件",
        )
    try:
        info = cert_info(m.cert)
        load_cert(m.broker_ca)
        paired = key_matches_cert(m.key, m.cert)
    except PkiError as err:
        raise ProvisionError("bad_certificate", str(err)) from err
    if not paired:
        raise ProvisionError("key_mismatch", "the certificate is not for this box's key")
    if info.cn != device:
        raise ProvisionError("cn_mismatch", f"certificate is for {info.cn!r}, not {device!r}")
    t = time.time() if now is None else now
    if not info.not_before <= t < info.not_after:
        raise ProvisionError("cert_not_valid_now", "the certificate is expired or not yet valid")


# -- online: the hub's enrollment endpoint ---------------------------------------------------------


def request_enrollment(
    url: str, body: dict[str, Any], cafile: Path | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """POST the request; the answer, or ProvisionError with the hub's reason."""
    if not url.startswith("https://"):
        raise ProvisionError("bad_url", f"--enroll {url!r}: an https:// URL")
    # Without --enroll-ca nothing is pinned: the box knows no CA yet. The anchor fingerprint is
    # the trust root and `signed` ties the answer to it; the claim token is one-time.
    ctx = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        url.rstrip("/") + "/enroll" if not url.rstrip("/").endswith("/enroll") else url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            doc = json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            refused = json.loads(err.read())
        except ValueError:
            refused = {}
        finally:
            err.close()
        reason = str(refused.get("reason", f"http_{err.code}"))
        raise ProvisionError(
            reason, f"the hub refused: {refused.get('detail', err.reason)}"
        ) from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ProvisionError("unreachable", f"enrollment at {url} failed: {err}") from err
    if not isinstance(doc, dict) or doc.get("v") != protocol.VERSION:
        raise ProvisionError("malformed", "the hub's answer is not protocol v1")
    return doc


def enroll(
    url: str,
    *,
    site: str,
    device: str,
    claim: str,
    fingerprint: str,
    cafile: Path | None = None,
) -> Material:
    """Make the key, send the CSR with the claim, check the answer against `fingerprint`."""
    key, csr = make_key_and_csr(device)
    body = {"v": 1, "box": device, "site": site, "claim": claim, "csr": csr.decode()}
    doc = request_enrollment(url, body, cafile)
    fields = [doc.get(k) for k in ("cert", "broker_ca", "anchor", "signed")]
    if not all(isinstance(f, str) for f in fields):
        raise ProvisionError("malformed", "the answer needs cert, broker_ca, anchor and signed")
    cert, broker_ca, anchor_text, signed = (str(f) for f in fields)
    m = Material(cert.encode(), key, broker_ca.encode(), anchor_text, parse_anchor(anchor_text))
    check_material(m, device, fingerprint)
    try:
        # Checked at its own issue time: the box's clock may still be wrong at provisioning,
        # and an old answer is useless anyway (its certificate is for this new key only).
        issued = float(protocol.load(signed.encode()).get("issued_at", 0))
        down = protocol.verify_down(signed.encode(), m.anchor, site, issued)
    except (protocol.ProtocolError, TypeError, ValueError) as err:
        raise ProvisionError("unsigned_answer", f"the answer's signature: {err}") from err
    b = down.body
    if (b.get("cert"), b.get("broker_ca"), b.get("box")) != (cert, broker_ca, device):
        raise ProvisionError("unsigned_answer", "the signed part differs from the answer")
    return m


def from_directory(src: Path, device: str, fingerprint: str) -> Material:
    """The offline variant: device.crt, device.key, broker-ca.crt, trust-anchor.json in `src`."""
    try:
        m = Material(
            (src / CERT_NAME).read_bytes(),
            (src / KEY_NAME).read_bytes(),
            (src / BROKER_CA_NAME).read_bytes(),
            (src / ANCHOR_NAME).read_text(encoding="utf-8"),
            parse_anchor((src / ANCHOR_NAME).read_text(encoding="utf-8")),
        )
    except OSError as err:
        names = ", ".join((CERT_NAME, KEY_NAME, BROKER_CA_NAME, ANCHOR_NAME))
        raise ProvisionError("missing_file", f"{err} (expected in {src}: {names})") from err
    check_material(m, device, fingerprint)
    return m


# -- writing ---------------------------------------------------------------------------------------


def _sync_section(broker: str, files: dict[str, str]) -> str:
    lines = ["[sync]", f'broker = "{broker}"'] + [f'{k} = "{v}"' for k, v in files.items()]
    return "\n".join(lines) + "\n"


def _without_sync(text: str) -> str:
    """The config without its [sync] table (and its sub-tables), the rest as written."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        head = line.strip()
        if head.startswith("[") and not head.startswith("[["):
            name = head.strip("[]").strip()
            skipping = name == "sync" or name.startswith("sync.")
        if not skipping:
            out.append(line)
    return "".join(out).rstrip("\n") + "\n"


def install(
    m: Material, *, config: Path, state_dir: Path, site: str, device: str, broker: str
) -> Path:
    """Write the material and the config; returns the config path. Refuses (writing nothing)
    an existing config for another site or device, or with another trust anchor."""
    host, sep, port = broker.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ProvisionError("bad_broker", f"--broker {broker!r}: HOST:PORT")
    existing = None
    anchor_path = config.parent / ANCHOR_NAME
    if config.exists():
        existing = config.read_text(encoding="utf-8")
        try:
            box = tomllib.loads(existing).get("box", {})
        except tomllib.TOMLDecodeError as err:
            raise ProvisionError("bad_config", f"{config}: not valid TOML: {err}") from err
        if (box.get("site"), box.get("device", "box-1")) != (site, device):
            raise ProvisionError(
                "config_mismatch",
                f"{config} is for site {box.get('site')!r} device {box.get('device')!r}; "
                "refusing to re-provision it as another box (move it aside first)",
            )
        anchor_path = config.parent / str(box.get("trust_anchor", ANCHOR_NAME))
        if anchor_path.exists() and anchor_path.read_text(encoding="utf-8") != m.anchor_text:
            raise ProvisionError(
                "anchor_differs",
                f"{anchor_path} holds another trust anchor; refusing to replace the trust root",
            )
    tls = state_dir / TLS_DIR
    paths = {"ca": tls / BROKER_CA_NAME, "cert": tls / CERT_NAME, "key": tls / KEY_NAME}
    write_atomic(paths["key"], m.key, 0o600)
    write_atomic(paths["cert"], m.cert)
    write_atomic(paths["ca"], m.broker_ca)
    if not anchor_path.exists():
        write_atomic(anchor_path, m.anchor_text.encode())
    base = config.parent.resolve()
    rel = {}
    for k, p in paths.items():
        full = p.resolve()
        rel[k] = str(full.relative_to(base)) if full.is_relative_to(base) else str(full)
    if existing is None:
        text = cfgmod.render_minimal(site, device, ANCHOR_NAME)
    else:
        text = _without_sync(existing)
    write_atomic(config, (text + "\n" + _sync_section(broker, rel)).encode())
    cfgmod.load(config, state_dir)  # what was written must load
    log.info("provisioned %s at %s: %s", device, site, config)
    return config


# -- renewal (the daemon) --------------------------------------------------------------------------


def alert_due(pem: bytes, now: float) -> bool:
    """Expiry close without a renewal: within ALERT_DAYS, or the last quarter of a short life
    (a certificate living minutes would otherwise alert from its first second)."""
    info = cert_info(pem)
    left = info.not_after - now
    return left <= min(ALERT_DAYS * DAY, (info.not_after - info.not_before) / 4)


class Renewal:
    """The live certificate and key (from [sync]) and their *.new successors in the state dir.
    One owner (the daemon's loop); file I/O only, small files."""

    def __init__(self, cert: Path, key: Path, state_dir: Path, device: str) -> None:
        self.cert, self.key, self.device = cert, key, device
        self.new_key = state_dir / f"{KEY_NAME}.new"
        self.new_csr = state_dir / "device.csr.new"
        self.new_cert = state_dir / f"{CERT_NAME}.new"

    def live_pem(self) -> bytes:
        return self.cert.read_bytes()

    def due(self, now: float) -> bool:
        return renew_due(self.live_pem(), now)

    def pending_csr(self) -> bytes | None:
        """The CSR of a renewal under way (its key kept), or None."""
        if self.new_key.exists() and self.new_csr.exists():
            return self.new_csr.read_bytes()
        return None

    def begin(self) -> bytes:
        """A new key (0600) and its CSR, kept until the certificate comes back."""
        key, csr = make_key_and_csr(self.device)
        write_atomic(self.new_key, key, 0o600)
        write_atomic(self.new_csr, csr, 0o600)
        self.new_cert.unlink(missing_ok=True)
        return csr

    def accept(self, cert_pem: bytes, now: float) -> str:
        """Check a signed certificate against the pending key and this box; keep it as *.new.
        Returns its serial (hex). Raises ProvisionError."""
        if not self.new_key.exists():
            raise ProvisionError("no_pending_key", "no renewal is under way on this box")
        try:
            info = cert_info(cert_pem)
            paired = key_matches_cert(self.new_key.read_bytes(), cert_pem)
        except PkiError as err:
            raise ProvisionError("bad_certificate", str(err)) from err
        if not paired:
            raise ProvisionError("key_mismatch", "the certificate is not for the pending key")
        if info.cn != self.device:
            raise ProvisionError("cn_mismatch", f"certificate for {info.cn!r}")
        if not info.not_before <= now < info.not_after:
            raise ProvisionError("cert_not_valid_now", "expired or not yet valid")
        write_atomic(self.new_cert, cert_pem, 0o600)
        return format(info.serial, "x")

    def commit(self) -> None:
        """The new pair worked: it becomes the live one (key first; see recover())."""
        write_atomic(self.key, self.new_key.read_bytes(), 0o600)
        write_atomic(self.cert, self.new_cert.read_bytes())
        self.discard()

    def discard(self) -> None:
        for p in (self.new_cert, self.new_csr, self.new_key):
            p.unlink(missing_ok=True)

    def recover(self) -> bool:
        """At start: a crash inside commit() left the live key and certificate unpaired while
        the *.new pair is complete: finish the commit. True when it did."""
        try:
            if key_matches_cert(self.key.read_bytes(), self.cert.read_bytes()):
                return False
            if not (self.new_key.exists() and self.new_cert.exists()):
                return False
            if not key_matches_cert(self.new_key.read_bytes(), self.new_cert.read_bytes()):
                return False
        except (OSError, PkiError):
            return False
        log.warning("completing an interrupted certificate swap")
        self.commit()
        return True
