"""The broker's side of the trust model, against a real mosquitto: mTLS, per-identity ACL, CRL.

Plus the CA (sync/pki.py): what it refuses to sign, when a certificate is due for renewal.
"""

from __future__ import annotations

import os
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sync.pki import (
    Ca,
    CsrRefused,
    PkiError,
    cert_info,
    expires_within,
    key_matches_cert,
    make_key_and_csr,
    renew_due,
)
from tests.broker import (  # noqa: F401  (the *_fixture names register fixtures)
    Broker,
    CertFiles,
    ConnectRefused,
    Pki,
    Probes,
    broker_fixture,
    pki_fixture,
    probes_fixture,
)

A = "site-a.gate-1"
B = "site-a.gate-2"
DAY = 86400
T0 = 1_800_000_000.0
NOT_AUTHORIZED = 0x87


def test_box_event_reaches_hub(broker: Broker, pki: Pki, probes: Probes) -> None:
    hub = probes(broker, pki.hub)
    hub.subscribe("gw/+/up/#")
    box = probes(broker, pki.box(A))
    rc = box.publish(f"gw/{A}/up/events", b'{"v": 1, "events": []}')
    assert not rc.is_failure
    msg = hub.get()
    assert msg is not None
    assert (msg.topic, msg.payload) == (f"gw/{A}/up/events", b'{"v": 1, "events": []}')


@pytest.mark.parametrize(
    "topic",
    [f"gw/{B}/up/events", f"gw/{B}/down/msg", f"gw/{A}/down/msg", "gw/hub/up/events"],
    ids=["other-up", "other-down", "own-down", "hub-name"],
)
def test_forged_publish_denied_and_never_delivered(
    broker: Broker, pki: Pki, probes: Probes, topic: str
) -> None:
    hub = probes(broker, pki.hub)
    hub.subscribe("gw/#")
    box = probes(broker, pki.box(A))
    rc = box.publish(topic, b"forged")
    assert rc.is_failure and rc.value == NOT_AUTHORIZED
    # A legitimate publish right after: the broker keeps a client's order, so if the forged one
    # had been delivered it would arrive first.
    assert not box.publish(f"gw/{A}/up/events", b"marker").is_failure
    first = hub.get()
    assert first is not None and first.payload == b"marker"


def test_box_cannot_read_another_boxs_topics(broker: Broker, pki: Pki, probes: Probes) -> None:
    hub = probes(broker, pki.hub)
    box_a = probes(broker, pki.box(A))
    box_a.subscribe(f"gw/{A}/down/#")
    spy = probes(broker, pki.box(B))
    # mosquitto grants these: the read ACL is applied per message at delivery, not at SUBSCRIBE.
    for rcs in (spy.subscribe(f"gw/{A}/down/#"), spy.subscribe("gw/#")):
        assert not rcs[0].is_failure
    assert not hub.publish(f"gw/{A}/down/msg", b"for A only").is_failure
    assert not box_a.publish(f"gw/{A}/up/events", b"A's events").is_failure
    got = box_a.get()
    assert got is not None and got.payload == b"for A only"
    assert not hub.publish(f"gw/{B}/down/msg", b"marker for B").is_failure
    first = spy.get()
    assert first is not None and (first.topic, first.payload) == (
        f"gw/{B}/down/msg",
        b"marker for B",
    )


@pytest.mark.parametrize("tls12", [True, False], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize(
    ("kind", "alert"),
    [("expired", "CERTIFICATE_EXPIRED"), ("foreign", "UNKNOWN_CA"), ("none", "HANDSHAKE_FAILURE")],
)
def test_bad_client_certificate_refused(
    broker: Broker, pki: Pki, probes: Probes, kind: str, alert: str, tls12: bool
) -> None:
    cert: CertFiles | None = None
    if kind == "expired":
        cert = pki.issue(A, seconds=600, not_before=time.time() - 3600)
    elif kind == "foreign":
        cert = pki.foreign("hub")  # a rogue CA minting the most powerful identity
    probe = probes(broker, cert, connect=False, tls12=tls12, client_id=f"bad-{kind}")
    if tls12:
        with pytest.raises(ssl.SSLError, match=alert):
            probe.connect()
    else:
        # TLS 1.3 (which mosquitto's `tls_version tlsv1.2` still allows): connect() returns and
        # the refusal is only a disconnect with no CONNACK.
        with pytest.raises(ConnectRefused):
            probe.connect(timeout=3)
    assert probe.connack is None
    # The broker is still serving good clients.
    assert not probes(broker, pki.box(B)).publish(f"gw/{B}/up/events", b"x").is_failure


def test_revoked_certificate_refused_after_reload(broker: Broker, pki: Pki, probes: Probes) -> None:
    old = pki.box(A)
    probes(broker, old).close()  # connects today
    assert old.serial in pki.ca.serials_for(A)
    pki.ca.revoke(old.serial)
    pki.ca.revoke(old.serial)  # twice is harmless
    assert pki.ca.revoked_serials() == {old.serial}
    broker.reload()
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
        probes(broker, old, client_id="revoked")
    # Revocation is per certificate: the same box with a new certificate, and other boxes, connect.
    renewed = pki.issue(A, days=1)
    assert not probes(broker, renewed).publish(f"gw/{A}/up/events", b"x").is_failure
    assert not probes(broker, pki.box(B)).publish(f"gw/{B}/up/events", b"x").is_failure


def test_restart_same_port_keeps_persisted_retained_status(
    pki: Pki, probes: Probes, tmp_path: Path
) -> None:
    b = Broker(pki, tmp_path / "persist", persistence=True).start()
    try:
        box = probes(b, pki.box(A))
        status = b'{"v": 1, "state": "online"}'
        assert not box.publish(f"gw/{A}/up/status", status, retain=True).is_failure
        box.close()
        port = b.port
        b.restart()
        assert b.port == port
        hub = probes(b, pki.hub)
        hub.subscribe("gw/+/up/status")
        msg = hub.get()
        assert msg is not None and msg.retain and msg.payload == status
    finally:
        b.stop()
    assert b.proc is None


def test_missing_mosquitto_fails_with_install_hint(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="make test"):
        Broker(pki, tmp_path / "nobroker", binary=str(tmp_path / "no-such-mosquitto"))


# -- the CA ---------------------------------------------------------------------------------------


def test_box_key_and_csr_signed_then_accepted_by_broker(
    broker: Broker, pki: Pki, probes: Probes
) -> None:
    key_pem, csr_pem = make_key_and_csr(A)
    assert b"PRIVATE KEY" not in csr_pem
    cert_pem = pki.ca.sign_csr(csr_pem, expected_cn=A, lifetime_s=600)
    info = cert_info(cert_pem)
    assert (info.cn, info.issuer) == (A, pki.ca.name)
    assert 600 <= info.not_after - info.not_before <= 600 + 120
    assert key_matches_cert(key_pem, cert_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(pki.ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    files = pki.store(A, cert_pem, key_pem)
    assert not probes(broker, files).publish(f"gw/{A}/up/events", b"x").is_failure


def _csr(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, cn: str, ca: bool) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM)


def _tampered(csr_pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: make_key_and_csr(B)[1], "cn_mismatch"),
        (lambda: _csr(ec.generate_private_key(ec.SECP256R1()), A, ca=True), "ca_requested"),
        (lambda: _csr(ec.generate_private_key(ec.SECP384R1()), A, ca=False), "bad_key"),
        (lambda: _csr(ed25519.Ed25519PrivateKey.generate(), A, ca=False), "bad_key"),
        (lambda: _tampered(make_key_and_csr(A)[1]), "bad_signature"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "malformed"),
    ],
    ids=["other-cn", "ca", "p384", "ed25519", "tampered", "garbage"],
)
def test_sign_csr_refuses(tmp_path: Path, make: Callable[[], bytes], reason: str) -> None:
    ca = Ca.create(tmp_path / "ca", "csr-ca")
    with pytest.raises(CsrRefused) as err:
        ca.sign_csr(make(), expected_cn=A, lifetime_s=3600)
    assert err.value.reason == reason
    assert ca.serials_for(A) == []


def test_identity_alphabet_keeps_acl_patterns_closed(tmp_path: Path) -> None:
    ca = Ca.create(tmp_path / "ca", "cn-ca")
    for cn in ("#", "site-a/+", "a/up/#", "", "x" * 65):
        with pytest.raises(ValueError):
            ca.issue_client(cn)
        with pytest.raises(ValueError):
            make_key_and_csr(cn)


def test_renewal_due_at_two_thirds_and_expiry_warning(tmp_path: Path) -> None:
    ca = Ca.create(tmp_path / "ca", "renew-ca", now=T0)
    cert, _key = ca.issue_client(A, days=90, now=T0)
    info = cert_info(cert)
    two_thirds = info.not_before + (info.not_after - info.not_before) * 2 / 3
    assert not renew_due(cert, two_thirds - 60)
    assert renew_due(cert, two_thirds + 60)
    assert abs(two_thirds - (T0 + 60 * DAY)) < 120
    assert not expires_within(cert, info.not_after - 7 * DAY - 60, 7)
    assert expires_within(cert, info.not_after - 7 * DAY + 60, 7)
    short, _key = ca.issue_client(A, seconds=300, now=T0)
    assert renew_due(short, T0 + 200) and not renew_due(short, T0 + 100)


def test_ca_files_private_key_and_reload(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    ca = Ca.create(d, "files-ca")
    assert stat.S_IMODE(os.stat(d / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "ca.crt").st_mode) & 0o044  # pinned by others: readable
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
    with pytest.raises(PkiError, match="already exists"):
        Ca.create(d, "files-ca")
    again = Ca.load(d)
    cert = x509.load_pem_x509_certificate(again.issue_client(A, days=1)[0])
    cert.verify_directly_issued_by(ca.cert)  # raises if the reloaded key is not the CA's
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(Ca.create(tmp_path / "other", "files-ca").cert)
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (bc.ca, bc.path_length) == (True, 0)
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.key.public_key()) and len(crl) == 0
    with pytest.raises(PkiError):
        Ca.load(tmp_path / "missing")
