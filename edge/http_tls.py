"""HTTPS for the box's own HTTP server (issue 6 "Security").

The API listens on 127.0.0.1 by default. Listening on the LAN is a config choice, and then the
server speaks TLS only: with the certificate the site's provisioning installed ([http] tls_cert
and tls_key), or with one the box makes for itself once (ECDSA P-256, self-signed, its device
name, host name and addresses as SANs) and keeps in its state directory. A self-made certificate
is trusted on a tablet by comparing its SHA-256 fingerprint with the one on the kiosk's status
screen or printed by `edge status`.

[http] keys (edge.toml only; the cloud never sets them):
    listen   = "127.0.0.1:8800"        HOST:PORT
    tls      = "auto" | "on" | "off"   auto: on when listen is not a loopback address
    tls_cert = "path/to/cert.pem"      provisioned certificate (chain allowed, leaf first)
    tls_key  = "path/to/key.pem"       its private key
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.errors import ConfigError
from edge.store import write_atomic

if TYPE_CHECKING:
    from edge.config import BoxConfig

log = logging.getLogger(__name__)
CERT_NAME = "http-tls.crt"
KEY_NAME = "http-tls.key"
MODES = ("auto", "on", "off")
VALID_DAYS = 5 * 365
# A self-made certificate this close to its end is made again at the next start (its fingerprint
# then changes, and tablets must trust the new one): better than a sudden browser error.
RENEW_BEFORE = dt.timedelta(days=30)
# Forward secrecy and AEAD only for TLS 1.2 (TLS 1.3 suites are not affected by this string).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TlsSettings:
    """[http] TLS as validated at config load. cert/key: provisioned files, or None (the box
    makes its own when enabled)."""

    mode: str = "auto"
    enabled: bool = False
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Material:
    """The files the server loads and where they came from."""

    cert: Path
    key: Path
    source: str  # "provisioned" | "self-signed"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to the LAN


def settings(
    path: Path, base: Path, host: str, mode: object, cert: str | None, key: str | None
) -> TlsSettings:
    """Validate [http] tls/tls_cert/tls_key for a server listening on `host` (config load)."""
    if isinstance(mode, bool):  # `tls = true` reads naturally too
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ConfigError(path, "http.tls", '"auto", "on" or "off" / 取值为 auto、on 或 off')
    enabled = mode == "on" or (mode == "auto" and not is_loopback(host))
    if mode == "off" and not is_loopback(host):
        raise ConfigError(
            path,
            "http.tls",
            f"listening on {host} is reachable from the LAN, which needs TLS: remove "
            'tls = "off" (or set "auto"/"on"), or listen on 127.0.0.1 / '
            f'监听 {host} 可从局域网访问，必须启用 TLS：删除 tls = "off"，或只监听 127.0.0.1',
        )
    if (cert is None) != (key is None):
        have, need = ("tls_cert", "tls_key") if key is None else ("tls_key", "tls_cert")
        raise ConfigError(
            path,
            f"http.{need}",
            f"{have} is set: also set {need} (a certificate needs its private key) / "
            f"已设置 {have}，还需设置 {need}（证书与私钥须成对提供）",
        )
    if cert is None or key is None:
        return TlsSettings(str(mode), enabled)
    cert_p, key_p = base / cert, base / key
    for name, file in (("tls_cert", cert_p), ("tls_key", key_p)):
        try:
            with open(file, "rb") as f:
                f.read(1)
        except OSError as err:
            raise ConfigError(
                path,
                f"http.{name}",
                f"cannot read {file}: {err.strerror} / 无法读取文件 {file}",
            ) from err
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_p, key_p)
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(
            path,
            "http.tls_cert",
            f"{cert_p} and {key_p} are not a PEM certificate and its private key ({err}) / "
            "证书与私钥格式错误或不匹配",
        ) from err
    return TlsSettings(str(mode), enabled, cert_p, key_p)


# -- the certificate -------------------------------------------------------------------------


def material(config: BoxConfig, *, create: bool = True) -> Material | None:
    """The certificate and key to serve, or None when TLS is off. Without provisioned files
    the box's own pair in the state directory (made when missing, unless create=False; then
    None while there is none)."""
    tls = config.http_tls
    if not tls.enabled:
        return None
    if tls.cert is not None and tls.key is not None:
        return Material(tls.cert, tls.key, "provisioned")
    cert, key = config.state_dir / CERT_NAME, config.state_dir / KEY_NAME
    if create:
        try:
            ensure_self_signed(config.state_dir, config.device, config.site, _listen_host(config))
        except OSError as err:
            raise ConfigError(
                config.path,
                "http.tls",
                f"cannot write the box's certificate in {config.state_dir}: {err.strerror} / "
                "无法在状态目录中生成本机证书",
            ) from err
    elif not (cert.exists() and key.exists()):
        return None
    return Material(cert, key, "self-signed")


def ensure_self_signed(
    state_dir: Path, device: str, site: str, listen_host: str = "", *, now: float | None = None
) -> None:
    """Make the box's certificate unless a usable one is there: made once and reused (its
    fingerprint is what tablets trust). Made again only when it is damaged, no longer
    matches its key, is not for this device name, or nears its end."""
    cert_p, key_p = state_dir / CERT_NAME, state_dir / KEY_NAME
    at = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    why = _unusable(cert_p, key_p, device, at)
    if why is None:
        if key_p.stat().st_mode & 0o077:
            log.warning("%s was readable by others: made owner-only again", key_p)
            os.chmod(key_p, 0o600)
        return
    if why != "missing":
        log.warning("the HTTPS certificate in %s is made again: %s", state_dir, why)
    key_pem, cert_pem = make_self_signed(device, site, names_and_addresses(listen_host), at)
    state_dir.mkdir(parents=True, exist_ok=True)
    # Key first: a crash in between leaves a key without its certificate, which is made again.
    write_atomic(key_p, key_pem, 0o600)
    write_atomic(cert_p, cert_pem, 0o644)
    log.info("made the box's HTTPS certificate %s (SHA-256 %s)", cert_p, fingerprint(cert_pem))


def _unusable(cert_p: Path, key_p: Path, device: str, at: dt.datetime) -> str | None:
    try:
        cert_pem, key_pem = cert_p.read_bytes(), key_p.read_bytes()
    except FileNotFoundError:
        return "missing"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as err:
        return f"unreadable ({err})"
    if cert.public_key() != key.public_key():
        return "the certificate does not match the key"
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    if device not in dns.get_values_for_type(x509.DNSName):
        return f"made for another device name (not {device})"
    if cert.not_valid_after_utc - RENEW_BEFORE < at:
        return f"it ends {cert.not_valid_after_utc.isoformat()}"
    return None


def names_and_addresses(listen_host: str = "") -> tuple[list[str], list[Address]]:
    """DNS names and IPs a browser may use to reach this box: its host name (and .local for
    mDNS), localhost, the loopback addresses, every interface's address and the listen host."""
    host = socket.gethostname()
    names = [host, f"{host}.local", "localhost"] if host else ["localhost"]
    addrs: list[Address] = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    addrs += lan_addresses()
    listen_host = listen_host.strip("[]")
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(listen_host)
        if not ip.is_unspecified:
            addrs.append(ip)
    return names, list(dict.fromkeys(addrs))


def lan_addresses() -> list[Address]:
    """This host's interface addresses (Linux: IPv4 by ioctl, global IPv6 from /proc)."""
    out: list[Address] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                continue  # no IPv4 address on this interface
            out.append(ipaddress.IPv4Address(res[20:24]))
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[3] == "00":  # scope global
                out.append(ipaddress.IPv6Address(bytes.fromhex(parts[0])))
    return out


def make_self_signed(
    device: str, site: str, sans: tuple[list[str], list[Address]], at: dt.datetime
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): ECDSA P-256, SHA-256, VALID_DAYS from a day before `at`
    (a box without a battery clock may be a little behind)."""
    names, addrs = sans
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, device),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Edge gateway {site}"[:64]),
        ]
    )
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([device, *names])]
    general += [x509.IPAddress(a) for a in addrs]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - dt.timedelta(days=1))
        .not_valid_after(at + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(general), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# -- what the server, the CLI and the status screen use ---------------------------------------


def fingerprint(cert: bytes) -> str:
    """SHA-256 of the certificate (DER, or the first PEM block) as browsers show it: AB:CD:..."""
    if cert.lstrip().startswith(b"-----"):
        cert = _leaf(cert).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(cert).digest())


def _leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)  # the first certificate of a chain: the leaf


def tls_info(config: BoxConfig, *, create: bool = True) -> dict[str, Any]:
    """{"enabled", "fingerprint", "not_after" (ISO 8601 UTC), "source"} of the served certificate
    (None values when TLS is off, or the certificate is not made yet and create=False)."""
    info: dict[str, Any] = {
        "enabled": config.http_tls.enabled,
        "fingerprint": None,
        "not_after": None,
        "source": None,
    }
    mat = material(config, create=create)
    if mat is None:
        return info
    try:
        cert = _leaf(mat.cert.read_bytes())
    except (OSError, ValueError) as err:
        log.error("cannot read the HTTPS certificate %s: %s", mat.cert, err)
        return info | {"source": mat.source}
    der = cert.public_bytes(serialization.Encoding.DER)
    return info | {
        "fingerprint": fingerprint(der),
        "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "source": mat.source,
    }


def ssl_options(config: BoxConfig) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config: {} when TLS is off."""
    mat = material(config)
    if mat is None:
        return {}
    return {
        "ssl_certfile": str(mat.cert),
        "ssl_keyfile": str(mat.key),
        "ssl_ciphers": CIPHERS,
        "ssl_context_factory": _tls12_or_newer,
    }


def _tls12_or_newer(_config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the certificate in `cert` (its leaf; the name it
    was reached by does not matter): the CLI talking to its own daemon."""
    leaf = _leaf(cert.read_bytes()).public_bytes(serialization.Encoding.PEM).decode()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # pinned to this one certificate instead
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a provisioned leaf is its own anchor
    ctx.load_verify_locations(cadata=leaf)
    return ctx


def _listen_host(config: BoxConfig) -> str:
    return config.http_listen.rpartition(":")[0]
