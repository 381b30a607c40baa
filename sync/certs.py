"""X.509 as the box handles it: its key and CSR, reading certificates, renewal timing, the TLS
client context of the MQTT link, and atomic file writes. The device CA is sync/pki.py.

Identity is the certificate's CN (`SITE.DEVICE` for a box, `hub` for the hub); CN_RE is the small
alphabet the CA accepts (sync/pki.py says why). Every key is EC P-256. The box makes its key and
CSR itself (`make_key_and_csr`): the key never leaves it; the CA only ever sees the CSR.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.errors import EdgeError

DAY = 86400
RENEW_AT = 2 / 3
CN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PkiError(EdgeError):
    """A CA directory, certificate or key is missing or unusable."""


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho 2.2 does not close its socket when the TLS handshake fails (connect() raises, the
    socket is left to the garbage collector: a ResourceWarning, an fd held until then)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_client_context(
    ca_file: Path, cert_file: Path | None, key_file: Path | None, *, tls12: bool = True
) -> ssl.SSLContext:
    """The client side of the link: the broker's CA pinned (and nothing else trusted), the
    hostname checked, our certificate loaded (None: no client certificate, for tests).

    `tls12` caps the version at TLS 1.2. Under TLS 1.3 the server checks the client certificate
    after the handshake, so an expired, revoked or unknown certificate shows up as a silent
    disconnect; under TLS 1.2 connect() raises an SSLError naming the cause. (mosquitto's
    `tls_version tlsv1.2` is a minimum: it still accepts TLS 1.3.) To rotate, call
    `ctx.load_cert_chain(new_cert, new_key)` on the live context and reconnect."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    ctx.sslsocket_class = _ClosingSSLSocket
    return ctx


class CertInfo(NamedTuple):
    cn: str
    not_before: float  # epoch seconds
    not_after: float
    issuer: str  # the issuer's CN
    serial: int


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` in one step: a temporary file created with `mode` (so a key is never
    readable by others, not even for an instant), fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; a cert must stay readable
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_cn(cn: str) -> str:
    if not CN_RE.fullmatch(cn):
        raise ValueError(
            f"bad certificate CN {cn!r}: 1-64 of A-Z a-z 0-9 . _ - (letter or digit first)"
        )
    return cn


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as err:
        raise PkiError(f"not a PEM certificate: {err}") from err


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise PkiError(f"not an unencrypted PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError("private key is not EC P-256")
    return key


def _cn_of(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return ""
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def cert_info(pem: bytes) -> CertInfo:
    cert = load_cert(pem)
    return CertInfo(
        cn=_cn_of(cert.subject),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        issuer=_cn_of(cert.issuer),
        serial=cert.serial_number,
    )


def renew_due(pem: bytes, now: float) -> bool:
    """True once two thirds of the certificate's life have passed (step-ca's rule)."""
    info = cert_info(pem)
    return now >= info.not_before + (info.not_after - info.not_before) * RENEW_AT


def expires_within(pem: bytes, now: float, days: float) -> bool:
    return cert_info(pem).not_after - now <= days * DAY


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether the key belongs to the certificate (to pair files during a renewal swap)."""
    pub = (
        load_key(key_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pub == load_cert(cert_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_key_and_csr(cn: str) -> tuple[bytes, bytes]:
    """The box's side of enrollment and renewal: a fresh key (store it 0600, never send it) and a
    CSR carrying only the CN; the CA decides every extension."""
    key = _new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(check_cn(cn)))
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)
