"""A real mosquitto with mutual TLS and the per-identity ACL of docs/sync.md, for tests and benches.

Import what you need (this is not a conftest). The fixtures are named `pki`, `broker` and
`probes`; import them as `pki_fixture, broker_fixture, probes_fixture` (with `# noqa: F401`), so
that a test's `broker` parameter does not shadow an imported name.

- `Pki(dir)`: a test device CA, the broker's server certificate (SAN localhost + 127.0.0.1), the
  hub's client certificate (CN `hub`) and box certificates on demand (`pki.box("site-a.gate-1")`).
- `Broker(pki, dir)`: mosquitto on 127.0.0.1 on a free port, configured as the research notes
  verified (../shared/design/SYNC_RESEARCH.md section 2); `start()`, `stop()`, `restart()` (same
  port), `reload()` (SIGHUP: re-reads the CRL), `log_text()`, `wait_log(text)`.
- `Probe(broker, cert)`: a plain paho 2.x client (MQTT v5, mTLS) that records messages and PUBACK
  reason codes, for tests that need a bare client rather than the box's link.
- fixtures `pki`, `broker` (a started broker with the CRL enabled, stopped at teardown) and
  `probes` (`probes(broker, cert)` opens a connected Probe, closed at teardown).

Readiness is the broker's own "running" log line, not a TCP probe (a bare connect makes mosquitto
log an OpenSSL error). Logs go to stderr, because stdout is block-buffered into a file.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from sync.hub.issuer import Hub
from sync.hub.serve import HubServer
from sync.pki import Ca, cert_info, tls_client_context, write_atomic

HUB_CN = "hub"
ACL = """\
pattern readwrite gw/%u/up/#
pattern read      gw/%u/down/#

user hub
topic readwrite gw/#
"""
START_TIMEOUT_S = 10.0
# paho sleeps out a reconnect delay uninterrupted, and a probe's close() waits for it (a probe
# whose broker went away, or that was refused, is between attempts): short, so teardown is too.
PROBE_RECONNECT_S = 0.2
INSTALL_HINT = (
    "mosquitto is not installed: the sync tests need a real broker. "
    "`make test` installs it (apt packages mosquitto, mosquitto-clients); "
    "or run `apt-get install -y mosquitto mosquitto-clients` as root."
)


def find_mosquitto() -> str | None:
    # Debian puts it in /usr/sbin, which is not on an ordinary user's PATH.
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )


def require_mosquitto(binary: str | None = None) -> str:
    """The broker's path, or a test failure (never a skip) that says how to install it."""
    path = binary if binary is not None else find_mosquitto()
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class CertFiles:
    cn: str
    cert: Path
    key: Path

    @property
    def serial(self) -> int:
        return cert_info(self.cert.read_bytes()).serial


class Pki:
    """A throw-away PKI in `root`: CA, server certificate, hub certificate, box certificates."""

    def __init__(self, root: Path, *, days: float = 30) -> None:
        self.root = root
        self.ca = Ca.create(root / "ca", "edge-test-device-ca", days=days + 1)
        cert, key = self.ca.issue_server("localhost", ["localhost", "127.0.0.1"], days=days)
        self.server = self._write("server", "localhost", cert, key)
        self._boxes: dict[str, CertFiles] = {}
        self._foreign: Ca | None = None
        self._n = 0
        self.hub = self.box(HUB_CN)

    @property
    def ca_file(self) -> Path:
        return self.ca.cert_path

    @property
    def crl_file(self) -> Path:
        return self.ca.crl_path

    def _write(self, stem: str, cn: str, cert: bytes, key: bytes) -> CertFiles:
        files = CertFiles(
            cn, self.root / "certs" / f"{stem}.crt", self.root / "certs" / f"{stem}.key"
        )
        write_atomic(files.cert, cert)
        write_atomic(files.key, key, 0o600)
        return files

    def box(self, cn: str) -> CertFiles:
        """The (cached) client certificate for identity `cn`, valid for a day."""
        if cn not in self._boxes:
            self._boxes[cn] = self.issue(cn, days=1)
        return self._boxes[cn]

    def issue(
        self,
        cn: str,
        *,
        days: float | None = None,
        seconds: float | None = None,
        not_before: float | None = None,
        ca: Ca | None = None,
    ) -> CertFiles:
        """A fresh client certificate in new files (expired ones: `not_before` in the past)."""
        cert, key = (ca or self.ca).issue_client(
            cn, days=days, seconds=seconds, not_before=not_before
        )
        self._n += 1
        return self._write(f"{cn}-{self._n}", cn, cert, key)

    def foreign(self, cn: str) -> CertFiles:
        """A client certificate for `cn` signed by another CA the broker does not trust."""
        if self._foreign is None:
            self._foreign = Ca.create(self.root / "foreign-ca", "rogue-ca", days=30)
        return self.issue(cn, days=1, ca=self._foreign)

    def store(self, cn: str, cert: bytes, key: bytes) -> CertFiles:
        """Write a certificate made elsewhere (e.g. from a CSR) to files a client can load."""
        self._n += 1
        return self._write(f"{cn}-{self._n}", cn, cert, key)


class Broker:
    """One mosquitto process; its config, log and persistence live in `dir`."""

    def __init__(
        self,
        pki: Pki,
        directory: Path,
        *,
        crl: bool = True,
        persistence: bool = False,
        verbose: bool = True,
        extra_conf: str = "",
        binary: str | None = None,
    ) -> None:
        self.pki = pki
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = require_mosquitto(binary)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self._write_conf(crl, persistence, verbose, extra_conf)

    def _write_conf(self, crl: bool, persistence: bool, verbose: bool, extra: str) -> None:
        acl = self.dir / "acl"
        acl.write_text(ACL)
        lines = ["per_listener_settings false"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/"]
        else:
            lines.append("persistence false")
        lines += ["log_dest stderr", "connection_messages true"]
        # "all" includes every PUBLISH (and "Denied PUBLISH"); a bench turns it down.
        # Not verbose still logs information: start() waits for its " running" line.
        quiet = ["log_type error", "log_type warning", "log_type information"]
        lines += ["log_type all"] if verbose else quiet
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user `mosquitto` before reading the 0600 key.
            lines.append("user root")
        lines += [
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_file}",
            f"certfile {self.pki.server.cert}",
            f"keyfile {self.pki.server.key}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"acl_file {acl}",
            "max_inflight_messages 20",
            "max_queued_messages 10000",
        ]
        if crl:
            lines.append(f"crlfile {self.pki.crl_file}")
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Broker:
        if self.proc is not None:
            raise RuntimeError("broker already running")
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_log(" running", START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL, for a teardown that needs nothing a clean stop does (mosquitto takes ~0.1 s
        to act on a SIGTERM, at each of the suite's ~60 broker teardowns)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port (clients see the connection drop)."""
        self.stop()
        self.start()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its config, ACL and CRL before the next connection."""
        if self.proc is None:
            raise RuntimeError("broker not running")
        mark = self.log_size()
        self.proc.send_signal(signal.SIGHUP)
        self.wait_log("Reloading config", START_TIMEOUT_S, since=mark)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- log ------------------------------------------------------------------------------------

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self, since: int | None = None) -> str:
        """The log of this run (or from byte offset `since`)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start if since is None else since)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, text: str, timeout: float = 5.0, *, since: int | None = None) -> str:
        """Wait until `text` appears in the log; return the log. Fails with the log's tail if
        the broker exits or the time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text(since)
            if text in log:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}):\n{log[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {text!r} in the mosquitto log after {timeout} s:\n{log[-2000:]}"
                )
            time.sleep(0.02)


def start_broker(pki: Pki, directory: Path, **kw: Any) -> Broker:
    return Broker(pki, directory, **kw).start()


def make_hub(
    issuer: Hub, broker: Broker, db: Path, registry: dict[str, str], **kw: Any
) -> HubServer:
    """The reference hub on this broker with the test PKI's hub certificate (not started)."""
    pki = broker.pki
    return HubServer(
        issuer,
        host=broker.host,
        port=broker.port,
        ca=pki.ca_file,
        cert=pki.hub.cert,
        key=pki.hub.key,
        db_path=db,
        registry=registry,
        **kw,
    )


@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture(name="broker")
def broker_fixture(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    b = start_broker(pki, tmp_path / "broker")
    try:
        yield b
    finally:
        b.kill()  # no persistence: nothing to save


# -- a bare client --------------------------------------------------------------------------------


class ConnectRefused(Exception):
    """The TLS handshake passed (or was not reported) but no successful CONNACK came."""


class Probe:
    """paho 2.x, MQTT v5, mTLS. Messages go to a queue, PUBACK reasons to a dict; close() always."""

    def __init__(
        self,
        broker: Broker,
        cert: CertFiles | None,
        *,
        client_id: str | None = None,
        tls12: bool = True,
    ) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or (cert.cn if cert else "anonymous"),
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.tls_set_context(
            tls_client_context(
                broker.pki.ca_file,
                cert.cert if cert else None,
                cert.key if cert else None,
                tls12=tls12,
            )
        )
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._cond = threading.Condition()
        self._looping = False
        c = self.client
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, _rc: ReasonCode, _p: Any) -> None:
        self.disconnected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = rc
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._cond:
            self._subacks[mid] = rcs
            self._cond.notify_all()

    def connect(self, timeout: float = 5.0) -> Probe:
        """Connect and wait for a successful CONNACK. Raises ssl.SSLError when the handshake is
        refused (TLS 1.2), ConnectRefused when no successful CONNACK arrives."""
        self.client.reconnect_delay_set(PROBE_RECONNECT_S, PROBE_RECONNECT_S)  # type: ignore[arg-type]
        self.client.connect(self.broker.host, self.broker.port, keepalive=10)
        self.client.loop_start()
        self._looping = True
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self.disconnected.is_set() or time.monotonic() > deadline:
                raise ConnectRefused(f"no successful CONNACK (connack={self.connack})")
        return self

    def _wait(self, table: dict[int, Any], mid: int, timeout: float) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in table, timeout):
                raise TimeoutError(f"no acknowledgement for mid {mid} within {timeout} s")
            return table.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 5.0,
    ) -> ReasonCode:
        """Publish and return the broker's PUBACK reason code (0x87 when the ACL denies it)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        rc: ReasonCode = self._wait(self._acks, info.mid, timeout)
        return rc

    def subscribe(self, topic: str, *, qos: int = 1, timeout: float = 5.0) -> list[ReasonCode]:
        """Subscribe and return the SUBACK codes (which prove nothing about the read ACL)."""
        _rc, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        rcs: list[ReasonCode] = self._wait(self._subacks, mid, timeout)
        return rcs

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Idempotent: disconnect, stop the network thread, drop the socket."""
        if self._looping:
            self.client.disconnect()
            self.client.loop_stop()
            self._looping = False
        self.client.disconnect()  # closes a socket left by a failed connect()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Probes:
    """Opens probes and closes every one of them at teardown (the thread-leak guard checks)."""

    def __init__(self) -> None:
        self._open: list[Probe] = []

    def __call__(
        self, broker: Broker, cert: CertFiles | None, *, connect: bool = True, **kw: Any
    ) -> Probe:
        probe = Probe(broker, cert, **kw)
        self._open.append(probe)
        return probe.connect() if connect else probe

    def close(self) -> None:
        for probe in self._open:
            probe.close()
        self._open.clear()


@pytest.fixture(name="probes")
def probes_fixture() -> Iterator[Probes]:
    p = Probes()
    try:
        yield p
    finally:
        p.close()
