"""X.509 for the MQTT link, the hub side: the device CA and its CRL. Box keys and CSRs, renewal
timing and the TLS client context are sync/certs.py (importable from here too).

Identity is the certificate's CN (`SITE.DEVICE` for a box, `hub` for the hub): mosquitto runs
with `use_identity_as_username`, so the CN is what its ACL substitutes for `%u`. That is why the
CA refuses CNs outside a small alphabet: an MQTT wildcard (`+`, `#`) or a `/` in a CN would widen
the ACL pattern.

Every key is EC P-256 (what the lab verified with mosquitto 2.0.11 and Python's ssl). The box
makes its key and CSR itself (`make_key_and_csr`): the key never leaves it; the CA only ever sees
the CSR (`Ca.sign_csr`). `issue_client`/`issue_server` make key and certificate together and are
for tools and tests.

CA directory layout (`Ca.create`):
    ca.crt        the CA certificate (what brokers and boxes pin)
    ca.key        its private key, mode 0600
    crl.pem       the current CRL (mosquitto `crlfile`; send the broker SIGHUP after a change)
    revoked.json  revoked serials and the CRL number
    issued.jsonl  one line per certificate issued (serial, CN, validity), to revoke a box by name
    ca.lock       held (flock) while revoked.json and crl.pem change: the serving hub (renewals)
                  and `edge hub revoke` may revoke at the same time

A CRL has a nextUpdate; OpenSSL refuses every client once it has passed (the handshake fails with
"certificate expired"), so it must be rewritten well before `CRL_VALID_S` runs out and the broker
SIGHUPed: `refresh_crl()` does it when fewer than CRL_REFRESH_S remain; a serving hub with the CA
checks hourly, `edge hub crl` does it from cron (sync/hub/crl_upkeep.py).
A CA object is not thread-safe: one owner (the hub) issues and revokes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from sync.certs import (
    CN_RE,
    DAY,
    RENEW_AT,
    CertInfo,
    PkiError,
    _cn_of,
    _key_pem,
    _name,
    _new_key,
    cert_info,
    check_cn,
    expires_within,
    key_matches_cert,
    load_cert,
    load_key,
    make_key_and_csr,
    renew_due,
    tls_client_context,
    write_atomic,
)

log = logging.getLogger(__name__)

# Clocks on boxes without a battery drift: a certificate valid from "now" would be refused by a
# peer a few seconds behind. One minute of backdating is what step-ca does.
BACKDATE_S = 60
CRL_VALID_S = 30 * DAY
CRL_REFRESH_S = 7 * DAY  # rewrite the CRL when less than this is left

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"
REVOKED_FILE = "revoked.json"
ISSUED_FILE = "issued.jsonl"
LOCK_FILE = "ca.lock"


class CsrRefused(PkiError):
    """The CA will not sign this request. `reason` is one of CSR_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


CSR_REASONS = ("malformed", "bad_signature", "bad_key", "cn_mismatch", "ca_requested")


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Ca:
    """The device CA: signs box and hub client certificates and the broker's server certificate."""

    def __init__(
        self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.dir = directory
        self.cert = cert
        self.key = key

    @property
    def name(self) -> str:
        return _cn_of(self.cert.subject)

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.dir / CRL_FILE

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    @classmethod
    def create(
        cls, directory: Path, name: str, days: float = 3650, *, now: float | None = None
    ) -> Ca:
        if (directory / CA_KEY).exists():
            raise PkiError(f"{directory}: a CA already exists here; refusing to replace it")
        t = _now(now)
        key = _new_key()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(check_cn(name)))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(t - BACKDATE_S))
            .not_valid_after(_utc(t + days * DAY))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / CA_KEY, _key_pem(key), 0o600)
        write_atomic(directory / CA_CERT, _cert_pem(cert))
        ca = cls(directory, cert, key)
        ca.write_crl(now=t)
        log.info("created CA %r in %s", name, directory)
        return ca

    @classmethod
    def load(cls, directory: Path) -> Ca:
        try:
            cert = load_cert((directory / CA_CERT).read_bytes())
            key = load_key((directory / CA_KEY).read_bytes())
        except OSError as err:
            raise PkiError(f"{directory}: no usable CA ({err})") from err
        ca = cls(directory, cert, key)
        if not key_matches_cert(_key_pem(key), _cert_pem(cert)):
            raise PkiError(f"{directory}: {CA_KEY} does not belong to {CA_CERT}")
        return ca

    # -- issuing --------------------------------------------------------------------------------

    def _sign(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        not_before: float,
        not_after: float,
        eku: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName] = (),
    ) -> bytes:
        ca_end = self.cert.not_valid_after_utc.timestamp()
        if not_after > ca_end:
            # A leaf outliving its CA would be refused anyway: say so now, not at the broker.
            log.warning("certificate for %s clipped to the CA's expiry", cn)
            not_after = ca_end
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(check_cn(cn)))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        self._record_issued(cn, cert)
        return _cert_pem(cert)

    def _record_issued(self, cn: str, cert: x509.Certificate) -> None:
        line = {
            "serial": format(cert.serial_number, "x"),
            "cn": cn,
            "not_before": cert.not_valid_before_utc.timestamp(),
            "not_after": cert.not_valid_after_utc.timestamp(),
        }
        with (self.dir / ISSUED_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def serials_for(self, cn: str) -> list[int]:
        """Serials of every certificate this CA issued to `cn` (to revoke a box by name)."""
        return [c.serial for c in self.issued_to(cn)]

    def issued_to(self, cn: str) -> list[CertInfo]:
        """Every certificate this CA issued to `cn`, in the order it issued them."""
        path = self.dir / ISSUED_FILE
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # blank, or a line being appended right now
            if row["cn"] == cn:
                serial = int(row["serial"], 16)
                nb, na = float(row["not_before"]), float(row["not_after"])
                out.append(CertInfo(cn, nb, na, self.name, serial))
        return out

    def issue_server(
        self, cn: str, hosts: Sequence[str], days: float = 825, *, now: float | None = None
    ) -> tuple[bytes, bytes]:
        """A broker certificate: (cert PEM, key PEM). `hosts` are DNS names or IP addresses."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        t = _now(now)
        key = _new_key()
        cert = self._sign(
            cn,
            key.public_key(),
            t - BACKDATE_S,
            t + days * DAY,
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans,
        )
        return cert, _key_pem(key)

    def issue_client(
        self,
        cn: str,
        days: float | None = None,
        seconds: float | None = None,
        *,
        not_before: float | None = None,
        now: float | None = None,
    ) -> tuple[bytes, bytes]:
        """A client certificate with its key: (cert PEM, key PEM). Lifetime is `days` or
        `seconds` (365 days when neither), counted from `not_before` when given (a test's
        expired certificate), else from now."""
        if days is not None and seconds is not None:
            raise ValueError("give days or seconds, not both")
        life = seconds if seconds is not None else (365 if days is None else days) * DAY
        if life <= 0:
            raise ValueError("certificate lifetime must be positive")
        start = _now(now) if not_before is None else not_before
        nb = start - BACKDATE_S if not_before is None else start
        key = _new_key()
        cert = self._sign(cn, key.public_key(), nb, start + life, ExtendedKeyUsageOID.CLIENT_AUTH)
        return cert, _key_pem(key)

    def sign_csr(
        self, csr_pem: bytes, *, expected_cn: str, lifetime_s: float, now: float | None = None
    ) -> bytes:
        """Sign a box's CSR as a client certificate for `expected_cn` (the identity the caller has
        already authenticated: a claim token, or the CN of the connection that sent the CSR).
        Only the public key and CN come from the request; every extension is the CA's own."""
        check_cn(expected_cn)
        if lifetime_s <= 0:
            raise ValueError("certificate lifetime must be positive")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise CsrRefused("malformed", f"not a PEM certificate request: {err}") from err
        if not csr.is_signature_valid:
            raise CsrRefused("bad_signature", "the request's signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise CsrRefused(
                "bad_key", f"only EC P-256 keys are accepted, got {type(public_key).__name__}"
            )
        cn = _cn_of(csr.subject)
        if cn != expected_cn:
            raise CsrRefused("cn_mismatch", f"request is for {cn!r}, expected {expected_cn!r}")
        try:
            requested = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            requested = None
        except ValueError as err:  # an extension cryptography cannot parse
            raise CsrRefused("malformed", f"unreadable extensions: {err}") from err
        if requested is not None and requested.ca:
            raise CsrRefused("ca_requested", "a device may not request a CA certificate")
        t = _now(now)
        cert = self._sign(
            cn, public_key, t - BACKDATE_S, t + lifetime_s, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        log.info("signed a certificate for %s (%.0f s)", cn, lifetime_s)
        return cert

    # -- revocation -----------------------------------------------------------------------------

    def _state(self) -> tuple[int, dict[str, float]]:
        """(CRL number, {serial hex: revocation time})."""
        path = self.dir / REVOKED_FILE
        if not path.exists():
            return 0, {}
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data["crl_number"]), {str(k): float(v) for k, v in data["revoked"].items()}

    def _save_state(self, number: int, revoked: dict[str, float]) -> None:
        doc = {"crl_number": number, "revoked": revoked}
        write_atomic(self.dir / REVOKED_FILE, json.dumps(doc, indent=1).encode())

    def revoked_serials(self) -> set[int]:
        return {int(s, 16) for s in self._state()[1]}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Across processes and threads (each call opens its own file description)."""
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def revoke(self, serial: int, *, now: float | None = None) -> None:
        """Add `serial` to the CRL and rewrite crl.pem. The broker applies it after SIGHUP, and
        only to new connections: a revoked box already connected stays until it reconnects."""
        self.revoke_many([serial], now=now)

    def revoke_many(self, serials: Iterable[int], *, now: float | None = None) -> list[int]:
        """Revoke several serials with one new CRL; returns those that were not revoked yet
        (none: crl.pem is left as it is)."""
        with self._locked():
            number, revoked = self._state()
            new = [s for s in dict.fromkeys(serials) if format(s, "x") not in revoked]
            if not new:
                return []
            for s in new:
                revoked[format(s, "x")] = _now(now)
            self._save_state(number, revoked)
            self._write_crl(now)
        log.info("revoked serials %s", ", ".join(format(s, "x") for s in new))
        return new

    def crl_pem(self, *, now: float | None = None) -> bytes:
        """The CRL as it stands (current CRL number), signed now and valid for CRL_VALID_S."""
        number, revoked = self._state()
        t = _now(now)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(_utc(t - BACKDATE_S))
            .next_update(_utc(t + CRL_VALID_S))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        for serial_hex, at in sorted(revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial_hex, 16))
                .revocation_date(_utc(at))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def write_crl(self, *, now: float | None = None) -> Path:
        """Sign a fresh CRL (next CRL number) into crl.pem. Call again before it expires."""
        with self._locked():
            return self._write_crl(now)

    def _write_crl(self, now: float | None) -> Path:
        number, revoked = self._state()
        self._save_state(number + 1, revoked)
        write_atomic(self.crl_path, self.crl_pem(now=now))
        return self.crl_path

    def refresh_crl(
        self, *, min_left_s: float = CRL_REFRESH_S, force: bool = False, now: float | None = None
    ) -> bool:
        """Rewrite crl.pem when its nextUpdate is less than `min_left_s` away (or it is missing or
        unreadable, or `force`); True when rewritten (the broker needs a SIGHUP then)."""
        t = _now(now)
        with self._locked():  # decided and written under the lock: a revocation may be running
            if not force:
                try:
                    if crl_next_update(self.crl_path) - t >= min_left_s:
                        return False
                except PkiError as err:
                    log.warning("%s; writing a new one", err)
            self._write_crl(t)
        log.info("CRL rewritten: valid until %s", _utc(t + CRL_VALID_S).isoformat())
        return True


def crl_next_update(path: Path) -> float:
    """The nextUpdate of the CRL in `path` (epoch seconds): OpenSSL refuses every client after it.
    Raises PkiError when the file is missing or is not a CRL with a nextUpdate."""
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError) as err:
        raise PkiError(f"cannot read the CRL {path}: {err}") from err
    if crl.next_update_utc is None:
        raise PkiError(f"the CRL {path} has no nextUpdate")
    return crl.next_update_utc.timestamp()


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


__all__ = [
    "BACKDATE_S",
    "CA_CERT",
    "CA_KEY",
    "CN_RE",
    "CRL_FILE",
    "CRL_REFRESH_S",
    "CRL_VALID_S",
    "CSR_REASONS",
    "DAY",
    "ISSUED_FILE",
    "LOCK_FILE",
    "RENEW_AT",
    "REVOKED_FILE",
    "Ca",
    "CertInfo",
    "CsrRefused",
    "PkiError",
    "cert_info",
    "check_cn",
    "crl_next_update",
    "expires_within",
    "key_matches_cert",
    "load_cert",
    "load_key",
    "make_key_and_csr",
    "renew_due",
    "tls_client_context",
    "write_atomic",
]
