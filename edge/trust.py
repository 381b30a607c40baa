"""Trust: the root anchor installed on the box, and signing-key certificates it issues.

The root key certifies signing keys (kid, public key, validity, usage, site scope). Signing keys
sign tickets and bundles. A key certificate travels inside bundles; the box accepts it only if the
root anchor's signature on it verifies.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.codes import SIG_LEN, verify_ed25519
from edge.errors import TrustError

ANCHOR_FORMAT = "edge-trust-anchor"
ANCHOR_VERSION = 1
TAG_KEYCERT_V1 = 0x31
CTX_KEYCERT = b"EDGE-KEY1"
USAGE_TICKETS = 0x01
USAGE_BUNDLES = 0x02
ALL_SITES = "*"


def fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte public key, upper-case hex in groups of four."""
    digest = hashlib.sha256(public_key).hexdigest().upper()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def normalise_fingerprint(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch in "0123456789ABCDEF")


@dataclass(frozen=True)
class TrustAnchor:
    public_key: bytes
    label: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def to_json(self) -> str:
        doc = {
            "format": ANCHOR_FORMAT,
            "version": ANCHOR_VERSION,
            "label": self.label,
            "public_key": self.public_key.hex(),
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> TrustAnchor:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TrustError(f"{path}: cannot read trust anchor: {err}") from err
        if not isinstance(doc, dict) or doc.get("format") != ANCHOR_FORMAT:
            raise TrustError(f"{path}: not an edge trust anchor file")
        if doc.get("version") != ANCHOR_VERSION:
            raise TrustError(f"{path}: unsupported trust anchor version {doc.get('version')!r}")
        try:
            key = bytes.fromhex(str(doc["public_key"]))
        except (KeyError, ValueError) as err:
            raise TrustError(f"{path}: public_key must be 64 hex digits") from err
        if len(key) != 32:
            raise TrustError(f"{path}: public_key must be 32 bytes")
        return cls(public_key=key, label=str(doc.get("label", "")))


@dataclass(frozen=True)
class KeyCert:
    kid: int
    public_key: bytes
    not_before: int
    not_after: int
    usage: int
    site: str
    raw: bytes

    def allows(self, usage: int, site: str, at: float) -> bool:
        return (
            bool(self.usage & usage)
            and self.site in (ALL_SITES, site)
            and self.not_before <= at < self.not_after
        )

    @property
    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


def _cert_body(kid: int, public_key: bytes, nb: int, na: int, usage: int, site: str) -> bytes:
    site_b = site.encode("ascii")
    return (
        struct.pack(">BI", TAG_KEYCERT_V1, kid)
        + public_key
        + struct.pack(">IIB", nb, na, usage)
        + bytes([len(site_b)])
        + site_b
    )


def issue_key_cert(
    root: Ed25519PrivateKey,
    kid: int,
    public_key: bytes,
    not_before: int,
    not_after: int,
    usage: int = USAGE_TICKETS | USAGE_BUNDLES,
    site: str = ALL_SITES,
) -> bytes:
    if not not_before < not_after or not usage or usage & ~(USAGE_TICKETS | USAGE_BUNDLES):
        raise ValueError("key certificate needs not_before < not_after and known usage bits")
    body = _cert_body(kid, public_key, not_before, not_after, usage, site)
    return body + root.sign(CTX_KEYCERT + body)


def parse_key_cert(raw: bytes, anchor: TrustAnchor) -> KeyCert:
    """Parse and verify a key certificate against the root anchor. Raises TrustError."""
    if len(raw) < 47 + SIG_LEN or raw[0] != TAG_KEYCERT_V1:
        raise TrustError("not a version 1 key certificate")
    body, sig = raw[:-SIG_LEN], raw[-SIG_LEN:]
    (_tag, kid) = struct.unpack(">BI", body[:5])
    public_key = body[5:37]
    nb, na, usage = struct.unpack(">IIB", body[37:46])
    site_len = body[46]
    if len(body) != 47 + site_len:
        raise TrustError("key certificate length does not match its site field")
    try:
        site = body[47:].decode("ascii")
    except UnicodeDecodeError as err:
        raise TrustError("key certificate site is not ASCII") from err
    if _cert_body(kid, public_key, nb, na, usage, site) != body:
        raise TrustError("key certificate is not canonical")
    if not verify_ed25519(anchor.key, sig, CTX_KEYCERT + body):
        raise TrustError(f"key {kid}: certificate not signed by the installed trust anchor")
    return KeyCert(kid, public_key, nb, na, usage, site, raw)


@dataclass
class Keyring:
    """Signing keys the box currently trusts, by kid (several certs may share a kid)."""

    certs: dict[int, list[KeyCert]]

    def candidates(self, kid: int, usage: int, site: str, at: float) -> list[KeyCert]:
        return [c for c in self.certs.get(kid, ()) if c.allows(usage, site, at)]
