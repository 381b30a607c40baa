"""HTTPS for the box's HTTP server (issue 6 "Security"): [http] tls in edge.toml, the certificate
the box makes for itself (or the site's provisioned one), and the real daemon serving over TLS."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge import client
from edge.cli import main as edge_main
from edge.config import load, render_minimal
from edge.errors import ConfigError
from edge.http_tls import (
    CERT_NAME,
    KEY_NAME,
    VALID_DAYS,
    ensure_self_signed,
    make_self_signed,
    names_and_addresses,
    tls_info,
)
from kiosk_ui.users import Role, UserStore, open_kiosk_db
from sync.pki import Ca
from tests.daemon_kit import Site, make_site, running

CJK = re.compile(r"[\u4e00-\u9fff]")


def write_config(home: Path, http: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "edge.toml"
    path.write_text(render_minimal("site-a", "box-1", "trust-anchor.json") + "\n[http]\n" + http)
    return path


def pem_pair(tmp: Path, name: str) -> tuple[str, str]:
    """A certificate and its key written as <name>.crt / <name>.key (a self-made one will do)."""
    key_pem, cert_pem = make_self_signed(
        "box-1", "site-a", (["localhost"], []), dt.datetime.now(dt.UTC)
    )
    (tmp / f"{name}.crt").write_bytes(cert_pem)
    (tmp / f"{name}.key").write_bytes(key_pem)
    return f"{name}.crt", f"{name}.key"


def sha256_colons(pem: str) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest())


# -- config: what edge.toml may say -----------------------------------------------------------


@pytest.mark.parametrize(
    ("http", "enabled"),
    [
        ("", False),  # the default: 127.0.0.1:8800, plain HTTP on loopback
        ('listen = "0.0.0.0:8800"\n', True),  # auto: the LAN gets TLS
        ('listen = "192.168.1.20:8800"\n', True),
        ('listen = "box.local:8800"\n', True),
        ('listen = "[::1]:8800"\n', False),
        ('listen = "localhost:8800"\n', False),
        ('listen = "127.0.0.1:8800"\ntls = "on"\n', True),
        ('listen = "0.0.0.0:8800"\ntls = true\n', True),
    ],
)
def test_tls_follows_the_listen_address(tmp_path: Path, http: str, enabled: bool) -> None:
    config = load(write_config(tmp_path, http), tmp_path)
    assert config.http_tls.enabled is enabled
    assert config.http_tls.cert is None  # nothing provisioned: the box would make its own


@pytest.mark.parametrize(
    ("http", "key", "says"),
    [
        ('listen = "0.0.0.0:8800"\ntls = "off"\n', "http.tls", "needs TLS"),
        ('listen = "192.168.1.20:8800"\ntls = false\n', "http.tls", "needs TLS"),
        ('tls = "maybe"\n', "http.tls", '"auto", "on" or "off"'),
        ('tls = "on"\ntls_cert = "box.crt"\n', "http.tls_key", "also set tls_key"),
        ('tls = "on"\ntls_key = "box.key"\n', "http.tls_cert", "also set tls_cert"),
        ('tls_cert = "nope.crt"\ntls_key = "nope.key"\n', "http.tls_cert", "cannot read"),
        ('tls_cert = "."\ntls_key = "box.key"\n', "http.tls_cert", "cannot read"),
        ('tls_cert = "box.crt"\ntls_key = "nope.key"\n', "http.tls_key", "cannot read"),
        ('tls_cert = "junk.crt"\ntls_key = "junk.key"\n', "http.tls_cert", "not a PEM"),
        ('tls_cert = "box.crt"\ntls_key = "other.key"\n', "http.tls_cert", "not a PEM"),
    ],
)
def test_bad_tls_settings_are_refused_at_load(
    tmp_path: Path, http: str, key: str, says: str
) -> None:
    pem_pair(tmp_path, "box")
    pem_pair(tmp_path, "other")  # a valid key, but not box.crt's
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    (tmp_path / "junk.key").write_text("not a key\n")
    with pytest.raises(ConfigError) as err:
        load(write_config(tmp_path, http), tmp_path)
    assert err.value.key == key
    assert says in str(err.value)
    assert CJK.search(str(err.value)), f"no Chinese in: {err.value}"


def test_a_provisioned_pair_is_accepted(tmp_path: Path) -> None:
    crt, key = pem_pair(tmp_path, "box")
    http = f'listen = "0.0.0.0:8800"\ntls_cert = "{crt}"\ntls_key = "{key}"\n'
    config = load(write_config(tmp_path, http), tmp_path)
    assert config.http_tls.enabled
    assert config.http_tls.cert == tmp_path / crt and config.http_tls.key == tmp_path / key
    info = tls_info(config)
    assert info["source"] == "provisioned"
    assert info["fingerprint"] == sha256_colons((tmp_path / crt).read_text())
    assert not (tmp_path / CERT_NAME).exists()  # nothing made when one is provisioned


# -- the box's own certificate ----------------------------------------------------------------


def test_own_certificate_names_the_box_and_is_made_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load(write_config(tmp_path, 'listen = "0.0.0.0:8800"\n'), tmp_path)
    assert tls_info(config, create=False)["fingerprint"] is None  # `edge status` makes nothing
    info = tls_info(config)
    crt, key = tmp_path / CERT_NAME, tmp_path / KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names, addrs = names_and_addresses()
    assert "box-1" in sans.get_values_for_type(x509.DNSName)
    assert set(names) <= set(sans.get_values_for_type(x509.DNSName))
    assert set(addrs) <= set(sans.get_values_for_type(x509.IPAddress))  # LAN IPs + loopback
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    years = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days / 365
    assert 4.9 < years <= 5.0
    assert info["not_after"] == cert.not_valid_after_utc.isoformat().replace("+00:00", "Z")
    # Reused: the fingerprint a tablet trusts does not change at the next start.
    key.chmod(0o644)
    assert tls_info(config)["fingerprint"] == info["fingerprint"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600  # made owner-only again
    # Damaged: made again, and said.
    crt.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    with caplog.at_level(logging.WARNING, logger="edge.http_tls"):
        again = tls_info(config)
    assert again["fingerprint"] not in (None, info["fingerprint"])
    assert "made again" in caplog.text
    # Near its end (30 days before): made again before browsers start refusing it.
    near = cert.not_valid_after_utc.timestamp() - 10 * 86400
    ensure_self_signed(tmp_path, "box-1", "site-a", now=near)
    renewed = x509.load_pem_x509_certificate(crt.read_bytes())
    assert renewed.not_valid_after_utc.timestamp() > near + (VALID_DAYS - 1) * 86400
    # Renamed box: the certificate follows the device name.
    ensure_self_signed(tmp_path, "box-2", "site-a")
    renamed = x509.load_pem_x509_certificate(crt.read_bytes())
    san = renamed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "box-2" in san.get_values_for_type(x509.DNSName)


# -- the daemon over HTTPS ---------------------------------------------------------------------


def tls_site(tmp_path: Path, http: str) -> Site:
    site = make_site(tmp_path)
    toml = site.home / "edge.toml"
    listen = 'listen = "127.0.0.1:0"\n'
    toml.write_text(toml.read_text().replace(listen, listen + http, 1))
    return site


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.scheme == "https", url
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def healthz(addr: tuple[str, int], ctx: ssl.SSLContext | None) -> int:
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(*addr, timeout=10)
    else:
        conn = http.client.HTTPSConnection(*addr, timeout=10, context=ctx)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def login_cookie(addr: tuple[str, int], ctx: ssl.SSLContext) -> str:
    conn = http.client.HTTPSConnection(*addr, timeout=10, context=ctx)
    try:
        body = json.dumps({"name": "cashier1", "pin": "2580"})
        conn.request("POST", "/api/v1/session", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        return resp.getheader("set-cookie") or ""
    finally:
        conn.close()


def test_the_key_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """A link planted where the key's temporary file goes (a stale one, or one guessed from the
    process id) is never followed: the key is written only into a new owner-only file."""
    state, victim = tmp_path / "state", tmp_path / "victim"
    state.mkdir()
    victim.write_bytes(b"someone else's file")
    for name in (f".{KEY_NAME}.tmp", f".{KEY_NAME}.{os.getpid()}.tmp"):
        (state / name).symlink_to(victim)
    ensure_self_signed(state, "box-1", "site-a")
    assert victim.read_bytes() == b"someone else's file"
    assert stat.S_IMODE((state / KEY_NAME).stat().st_mode) == 0o600
    assert not (state / KEY_NAME).is_symlink()
    assert not (state / f".{KEY_NAME}.tmp").exists()  # the stale one is gone


def test_daemon_serves_https_with_its_own_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tls_site(tmp_path, 'tls = "on"\n')
    crt, key = site.home / CERT_NAME, site.home / KEY_NAME
    conn = open_kiosk_db(site.home)
    try:
        UserStore(conn).add("cashier1", Role.CASHIER, "2580")
    finally:
        conn.close()
    with running(site, kiosk=True) as d:
        addr = address(d.daemon.url)
        # A client that trusts exactly this certificate (and checks the name 127.0.0.1 in it).
        assert healthz(addr, ssl.create_default_context(cafile=crt)) == 200
        with pytest.raises(ssl.SSLCertVerificationError):  # it is in no CA store
            healthz(addr, ssl.create_default_context())
        t0 = time.monotonic()
        with pytest.raises((http.client.HTTPException, ConnectionError)):  # plain HTTP: no
            healthz(addr, None)
        assert time.monotonic() - t0 < 5  # refused at once, not left hanging
        served = ssl.get_server_certificate(addr)
        info = d.box.tls_info()
        assert info["enabled"] and info["source"] == "self-signed"
        assert info["fingerprint"] == sha256_colons(served)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        # The CLI reaches its daemon over HTTPS (pinned to the served certificate) ...
        daemon_json = json.loads((site.home / "daemon.json").read_text())
        assert daemon_json["url"] == d.daemon.url and daemon_json["tls_cert"] == str(crt)
        assert client.call(site.home, "GET", "/api/v1/status")["devices"]
        # ... and `edge status` prints the fingerprint for the technician.
        assert edge_main(["status", "--home", str(site.home)]) == 0
        assert info["fingerprint"] in capsys.readouterr().out
        # The kiosk's session cookie is Secure over HTTPS: a browser never sends it in clear.
        assert "secure" in login_cookie(addr, ssl.create_default_context(cafile=crt)).lower()
    first = crt.read_bytes()
    with running(site, bundle=False) as d:  # a restart serves the same certificate
        assert d.box.tls_info()["fingerprint"] == info["fingerprint"]
        assert (
            sha256_colons(ssl.get_server_certificate(address(d.daemon.url)))
            == (info["fingerprint"])
        )
    assert crt.read_bytes() == first


def test_daemon_serves_the_provisioned_certificate(tmp_path: Path) -> None:
    ca = Ca.create(tmp_path / "site-ca", "site-ca")
    cert_pem, key_pem = ca.issue_server("box-e2e", ["127.0.0.1", "localhost"])
    site = tls_site(tmp_path, 'tls = "on"\ntls_cert = "tls/box.pem"\ntls_key = "tls/box.key"\n')
    (site.home / "tls").mkdir()
    (site.home / "tls" / "box.pem").write_bytes(cert_pem + ca.cert_pem)  # leaf, then its CA
    (site.home / "tls" / "box.key").write_bytes(key_pem)
    with running(site) as d:
        addr = address(d.daemon.url)
        # A tablet that was given the site's CA trusts the box by name, with no exception.
        assert healthz(addr, ssl.create_default_context(cafile=ca.cert_path)) == 200
        served = ssl.get_server_certificate(addr)
        leaf = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.PEM)
        assert sha256_colons(served) == sha256_colons(leaf.decode())
        info = d.box.tls_info()
        assert info["source"] == "provisioned" and info["fingerprint"] == sha256_colons(served)
        assert client.call(site.home, "GET", "/api/v1/status")["devices"]  # pinned to the leaf
    assert not (site.home / CERT_NAME).exists()
