"""Revoking a box, and the old certificate after a renewal (docs/sync.md "Revoking a box").

Real parts: mosquitto with mTLS, the ACL and a CRL (tests/broker.py, plus a pid file for the
hub's SIGHUP), the reference hub (HubServer), the box's real Link over a real ledger, the daemon
provisioned by `edge provision` for the renewal, and `edge hub revoke` as an operator runs it.
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main as edge_main
from edge.ledger import Ledger
from edge.store import transaction
from sync import protocol
from sync.hub import revoke as revoke_mod
from sync.hub.enroll import (
    Enroller,
    EnrollRefused,
    EnrollRequest,
    EnrollServer,
    Signer,
    make_claim,
    record_issued,
)
from sync.hub.issuer import Hub
from sync.hub.revoke import BrokerReload, revoke_box, revoke_superseded
from sync.hub.serve import HubServer
from sync.hub.store import HubStore, load_registry, load_revoked, register_box, reload_pending
from sync.hub.store import mark_revoked as store_mark_revoked
from sync.link import Link
from sync.link_store import LedgerLinkStore
from sync.pki import DAY, cert_info, crl_next_update, make_key_and_csr
from tests.broker import (  # noqa: F401
    Broker,
    CertFiles,
    Pki,
    Probe,
    Probes,
    pki_fixture,
    probes_fixture,
)
from tests.daemon_kit import SITE as DAEMON_SITE
from tests.daemon_kit import make_site, running
from tests.test_provision import ShortFirst

SITE = "site-a"


def wait(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(name="broker")
def broker_fixture(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """The broker writes its pid, as a packaged mosquitto does: the hub SIGHUPs it."""
    d = tmp_path / "broker"
    b = Broker(pki, d, extra_conf=f"pid_file {d / 'mosquitto.pid'}\n").start()
    try:
        yield b
    finally:
        b.stop()


def reload_of(broker: Broker) -> BrokerReload:
    return BrokerReload(pid_file=broker.dir / "mosquitto.pid")


def hub_server(
    hub: Hub,
    broker: Broker,
    signer: Signer,
    reload: BrokerReload | None = None,
    crl_check_s: float = 3600.0,
) -> HubServer:
    pki = broker.pki
    server = HubServer(
        hub,
        host=broker.host,
        port=broker.port,
        ca=pki.ca_file,
        cert=pki.hub.cert,
        key=pki.hub.key,
        signer=signer,
        broker_reload=reload,
        crl_check_s=crl_check_s,
    )
    try:
        server.start().wait_ready()
    except BaseException:
        server.close()
        raise
    return server


def revoke_argv(hub: Hub, box: str, *extra: str) -> list[str]:
    return ["hub", "revoke", "--dir", str(hub.dir), "--box", box, *extra]


def full_revoke_argv(
    hub: Hub, broker: Broker, box: str, reason: str, *, command: bool = False
) -> list[str]:
    """Everything: the CA, the broker as the hub, and its reload by pid file (or a command)."""
    pki = broker.pki
    assert broker.proc is not None
    how = ["--broker-pid", str(broker.dir / "mosquitto.pid")]
    if command:
        how = ["--broker-reload", f"kill -HUP {broker.proc.pid}"]
    return revoke_argv(
        hub,
        box,
        *("--reason", reason, "--device-ca", str(pki.ca.dir)),
        *("--broker", f"{broker.host}:{broker.port}", "--ca", str(pki.ca_file)),
        *("--cert", str(pki.hub.cert), "--key", str(pki.hub.key)),
        *how,
    )


def refused_revoked(server: HubServer) -> int:
    return server.stats().get("refused_revoked", 0)


def connect_refused(broker: Broker, cert: CertFiles, client_id: str) -> str:
    """The TLS error a new connection with `cert` gets (fails the test if it connects)."""
    probe = Probe(broker, cert, client_id=client_id)
    try:
        with pytest.raises(ssl.SSLError) as refused:
            probe.connect()
    finally:
        probe.close()
    return str(refused.value)


class Box:
    """A box's real cloud link over its own ledger."""

    def __init__(self, stack: ExitStack, root: Path, broker: Broker, hub: Hub, cn: str) -> None:
        self.cn = cn
        self.cert = broker.pki.box(cn)
        self.ledger = Ledger(root / cn / "ledger.db")
        stack.callback(self.ledger.close)
        self.link = Link(
            LedgerLinkStore(self.ledger.path, box=cn, site=SITE),
            host=broker.host,
            port=broker.port,
            ca=broker.pki.ca_file,
            cert=self.cert.cert,
            key=self.cert.key,
            anchor=hub.anchor,
            on_down=lambda _d: None,
            resend_after=1.0,  # unacked batches go again every second: refused every time
            backoff_max=1.0,  # and reconnects are tried often
        )
        stack.callback(self.link.stop)
        self.link.start()
        wait(lambda: self.link.status()["connected"], what=f"{cn} connected")

    def append(self, n: int) -> None:
        with transaction(self.ledger.conn):
            for i in range(n):
                self.ledger.append_event("passage", {"lane": "g1", "i": i}, time.time())
        self.link.notify()

    def outbox(self) -> int:
        """Events the hub has not acked (acked rows wait for the link's sweep in a quiet
        moment: counting rows would wait for that too)."""
        return self.ledger.outbox_depth()


def stored(hub: Hub, box: str) -> tuple[int, float]:
    """(events stored for the box, when the last one was received)."""
    store = HubStore(hub.dir / "hub.db", create=False)
    try:
        n, last = store.conn.execute(
            "SELECT count(*), max(received_at) FROM events WHERE box = ?", (box,)
        ).fetchone()
    finally:
        store.close()
    return int(n), float(last or 0.0)


def test_a_sighup_alone_does_not_cut_a_live_connection(broker: Broker, probes: Probes) -> None:
    """mosquitto 2.0.11 reads the new CRL on SIGHUP for new connections only: why the hub also
    takes over the box's session."""
    cert = broker.pki.box("box-a")
    live = probes(broker, cert)
    broker.pki.ca.revoke(cert.serial)
    broker.reload()
    assert "revoked" in connect_refused(broker, cert, "box-a-again")
    assert not live.publish(protocol.up_status("box-a"), b"").is_failure  # still in
    assert not live.disconnected.is_set()


def test_revoked_box_is_cut_and_refused_while_the_site_keeps_syncing(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = Hub.init(tmp_path / "hub", keys=1)
    for cn in ("box-a", "box-b"):
        register_box(hub.dir, cn, SITE)
    with ExitStack() as stack:
        server = hub_server(hub, broker, Signer(broker.pki.ca, 3600))
        stack.callback(server.close)
        a, b = (Box(stack, tmp_path, broker, hub, cn) for cn in ("box-a", "box-b"))
        a.append(5)
        b.append(5)
        wait(lambda: a.outbox() == b.outbox() == 0, what="both boxes synced")
        b_since = b.link.status()["since"]

        # 1. The registry first (no CA, no broker given): the box is still connected, but
        # what it publishes from now on is refused, never stored, never acked.
        assert edge_main(revoke_argv(hub, "box-a", "--reason", "stolen 被盗")) == 0
        out = capsys.readouterr().out
        assert "revoked 已吊销 box-a" in out and "no --broker" in out
        revoked_at = load_revoked(hub.dir)["box-a"]["at"]
        assert a.link.status()["connected"]
        a.append(3)
        wait(lambda: refused_revoked(server) >= 2, what="box-a's batch refused (and resent)")
        assert a.outbox() == 3
        assert stored(hub, "box-a")[0] == 5
        with pytest.raises(ValueError, match="revoked"):
            server.send("box-a", "command", {"command": "request_status"}, ttl_s=60)

        # 2. Again, all of it: CRL, SIGHUP through the pid file, the live session taken over.
        mark = broker.log_size()
        assert edge_main(full_revoke_argv(hub, broker, "box-a", "ignored: first reason stays")) == 0
        out = capsys.readouterr().out
        assert "(again 再次)" in out and "reason=stolen 被盗" in out
        assert "broker reloaded=yes live session cut 已断开=yes" in out
        wait(lambda: not a.link.status()["connected"], what="box-a cut", timeout=5)
        log = broker.wait_log("Reloading config", since=mark)
        assert "Client box-a already connected, closing old connection" in log
        # It tries to come back (backoff 1 s) and the broker refuses its certificate each time.
        broker.wait_log("certificate verify failed", timeout=10, since=mark)
        assert not a.link.status()["connected"]
        assert "revoked" in connect_refused(broker, a.cert, "box-a")

        # The site's other box never noticed, and keeps syncing.
        b.append(4)
        wait(lambda: b.outbox() == 0, what="box-b synced after the revocation")
        assert stored(hub, "box-b")[0] == 9
        assert b.link.status()["connected"] and b.link.status()["since"] == b_since
        # Nothing box-a sent after its revocation was stored.
        n, last = stored(hub, "box-a")
        assert n == 5 and last < revoked_at
        assert a.outbox() == 3

        assert edge_main(["hub", "status", "--dir", str(hub.dir)]) == 0
        out = capsys.readouterr().out
        assert "REVOKED 已吊销" in out and "refused 拒收 box-a revoked" in out
        assert "revoked 已吊销 box-a site=site-a" in out and "reason=stolen 被盗" in out
        assert "box-b site=site-a online" in out
        # Nothing is queued for it any more, through any door.
        argv = ["hub", "send", "--dir", str(hub.dir), "--box", "box-a"]
        assert edge_main([*argv, "command", "request_status"]) == 2
        assert "is revoked: nothing is queued for it" in capsys.readouterr().err


def test_revoked_box_gets_no_certificate_and_no_enrollment(
    tmp_path: Path, broker: Broker, probes: Probes, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = broker.pki
    hub = Hub.init(tmp_path / "hub", keys=1)
    register_box(hub.dir, "box-a", SITE)
    signer = Signer(pki.ca, 3600)
    claim = make_claim(hub.dir, "box-a", SITE)  # made before the revocation
    first = pki.box("box-a")
    server = hub_server(hub, broker, signer, reload_of(broker))
    try:
        assert edge_main(full_revoke_argv(hub, broker, "box-a", "decommissioned")) == 0
        capsys.readouterr()
        assert first.serial in pki.ca.revoked_serials()
        assert "box-a" not in load_registry(hub.dir)

        # A certificate the CA issued afterwards (outside the hub) still gets the box nothing:
        # its CSR is refused, no certificate comes down.
        later = pki.issue("box-a", days=1)
        probe = probes(broker, later, client_id="box-a-later")
        probe.subscribe("gw/box-a/down/#")
        _key, csr = make_key_and_csr("box-a")
        before = refused_revoked(server)
        doc = {"v": 1, "box": "box-a", "csr": csr.decode()}
        assert not probe.publish(protocol.up_csr("box-a"), json.dumps(doc)).is_failure
        wait(lambda: refused_revoked(server) > before, what="the CSR refused")
        assert probe.get(1.0) is None
        assert server.stats().get("certificates_issued", 0) == 0
        probe.close()
        # Revoking again finds that certificate too (the CA's record) and refuses it.
        mark = broker.log_size()
        argv = full_revoke_argv(hub, broker, "box-a", "again", command=True)
        assert edge_main([*argv, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["newly"] == [format(later.serial, "x")] and res["reloaded"] and res["cut"]
        broker.wait_log("Reloading config", since=mark)
        assert "revoked" in connect_refused(broker, later, "box-a-later")
    finally:
        server.close()

    # The claim made before is refused, no new claim is made, the id cannot be registered.
    enroller = Enroller(hub, signer, pki.ca_file)
    with pytest.raises(EnrollRefused) as refused:
        enroller.enroll(EnrollRequest("box-a", SITE, claim, make_key_and_csr("box-a")[1]))
    assert (refused.value.status, refused.value.reason) == (403, "box_revoked")
    argv = ["hub", "claim", "--dir", str(hub.dir), "--box", "box-a", "--site", SITE]
    assert edge_main(argv) == 2
    assert "give its replacement a new box id" in capsys.readouterr().err
    with pytest.raises(ValueError, match="revoked"):
        register_box(hub.dir, "box-a", SITE)
    assert "box-a" not in load_registry(hub.dir)
    make_claim(hub.dir, "box-a2", SITE)  # the replacement: a new identity at the same site


def test_after_a_renewal_the_old_certificate_no_longer_connects(
    tmp_path: Path, pki: Pki, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """An enrollment certificate for 34 s (+60 s backdated): the daemon renews it a few seconds
    after enrollment, reports cert_renewed, and the hub revokes the enrollment certificate and
    SIGHUPs the broker. (Renewed certificates live an hour: one renewal in the test.)"""
    site = make_site(tmp_path)
    signer = ShortFirst(pki.ca, 34)
    hub = site.hub
    with ExitStack() as stack:
        server = HubServer(
            hub,
            host=broker.host,
            port=broker.port,
            ca=pki.ca_file,
            cert=pki.hub.cert,
            key=pki.hub.key,
            db_path=site.root / "hub.db",
            signer=signer,
            broker_reload=reload_of(broker),
        )
        stack.enter_context(server)
        server.wait_ready()
        enroll = EnrollServer(Enroller(hub, signer, pki.ca_file), "127.0.0.1", 0, *tls(pki))
        stack.enter_context(enroll)
        argv = ["provision", "--site", DAEMON_SITE, "--device", "box-e2e"]
        argv += ["--home", str(site.home), "--broker", f"127.0.0.1:{broker.port}"]
        argv += ["--enroll", f"https://127.0.0.1:{enroll.port}", "--claim"]
        argv += [make_claim(hub.dir, "box-e2e", DAEMON_SITE)]
        assert edge_main([*argv, "--anchor-fingerprint", hub.anchor.fingerprint]) == 0
        tls_dir = site.home / "tls"
        stolen = CertFiles("box-e2e", tmp_path / "stolen.crt", tmp_path / "stolen.key")
        shutil.copy(tls_dir / "device.crt", stolen.cert)
        shutil.copy(tls_dir / "device.key", stolen.key)
        mark = broker.log_size()
        with running(site, cloud=True) as d:
            wait(
                lambda: stolen.serial in pki.ca.revoked_serials(),
                timeout=45,
                what="the enrollment certificate revoked after the renewal",
            )
            assert any(e.get("state") == "renewed" for e in d.events("cert"))
            broker.wait_log("Reloading config", since=mark)
        live = CertFiles("box-e2e", tls_dir / "device.crt", tls_dir / "device.key")
        assert live.serial != stolen.serial
        assert "revoked" in connect_refused(broker, stolen, "thief")
        with Probe(broker, live, client_id="box-e2e-check") as probe:
            probe.connect()
        assert server.stats().get("certificates_revoked", 0) >= 1
        # The same event again (a resend) revokes nothing and does not reload the broker.
        mark = broker.log_size()
        again = revoke_superseded(
            hub.dir, "box-e2e", format(live.serial, "x"), ca=pki.ca, reload=reload_of(broker)
        )
        assert again == [] and "Reloading" not in broker.log_text(mark)
        assert live.serial not in pki.ca.revoked_serials()


def tls(pki: Pki) -> tuple[Path, Path]:
    return pki.server.cert, pki.server.key


# -- the CRL's nextUpdate, retried reloads, renewals racing a revocation -------------------------


def reloads(broker: Broker, since: int) -> int:
    return broker.log_text(since).count("Reloading config")


def test_the_serving_hub_rewrites_a_crl_about_to_expire(tmp_path: Path, broker: Broker) -> None:
    """A CRL past its nextUpdate locks every box out; the hub rewrites it with 7 days left."""
    pki = broker.pki
    hub = Hub.init(tmp_path / "hub", keys=1)
    mark = broker.log_size()
    server = hub_server(hub, broker, Signer(pki.ca, 3600), reload_of(broker), crl_check_s=0.3)
    try:
        fresh = crl_next_update(pki.crl_file)
        time.sleep(1.0)  # several checks: a CRL with 30 days left is left alone
        assert crl_next_update(pki.crl_file) == fresh and reloads(broker, mark) == 0
        pki.ca.write_crl(now=time.time() - 24 * DAY)  # signed long ago: 6 days left
        assert crl_next_update(pki.crl_file) < time.time() + 7 * DAY
        wait(lambda: crl_next_update(pki.crl_file) > time.time() + 29 * DAY, what="CRL rewritten")
        broker.wait_log("Reloading config", since=mark)
        wait(lambda: reload_pending(hub.dir) is None, what="the reload flag cleared")
        assert server.stats().get("crl_refreshed") == 1
        with Probe(broker, pki.box("box-a")) as probe:
            probe.connect()
    finally:
        server.close()


def test_edge_hub_crl_brings_the_fleet_back_after_the_crl_expired(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = broker.pki
    hub_dir = tmp_path / "hub"
    cert = pki.box("box-a")
    pki.ca.write_crl(now=time.time() - 31 * DAY)
    broker.reload()
    assert "certificate expired" in connect_refused(broker, cert, "box-a").lower()

    argv = ["hub", "crl", "--dir", str(hub_dir), "--device-ca", str(pki.ca.dir)]
    pid = ["--broker-pid", str(broker.dir / "mosquitto.pid")]
    mark = broker.log_size()
    assert edge_main([*argv, *pid]) == 0
    out = capsys.readouterr().out
    assert "nextUpdate" in out and "(30.0 days left" in out
    assert "rewritten 已更新=yes broker reloaded=yes" in out
    broker.wait_log("Reloading config", since=mark)
    with Probe(broker, cert) as probe:
        probe.connect()
    # From cron: nothing to do with 30 days left.
    assert edge_main([*argv, *pid]) == 0
    assert "rewritten 已更新=no broker reloaded=no" in capsys.readouterr().out
    # Forced without a way to the broker: the reload stays owed, the next run with one sends it.
    assert edge_main([*argv, "--force"]) == 0
    out, err = capsys.readouterr()
    assert "rewritten 已更新=yes broker reloaded=no" in out and "not told" in err
    assert reload_pending(hub_dir) is not None
    assert edge_main([*argv, *pid]) == 0
    assert "rewritten 已更新=no broker reloaded=yes" in capsys.readouterr().out
    assert reload_pending(hub_dir) is None


def test_a_failed_reload_after_a_renewal_is_retried(tmp_path: Path, broker: Broker) -> None:
    """The cert_renewed batch is acked before the revocation: a broker reload that fails once
    is retried by the hub until the old certificate is refused."""
    pki = broker.pki
    hub = Hub.init(tmp_path / "hub", keys=1)
    register_box(hub.dir, "box-r", SITE)
    old = pki.issue("box-r", days=1, not_before=time.time() - 3600)  # the enrollment cert
    assert broker.proc is not None
    flaky = tmp_path / "reload-failed-once"
    script = f"if [ -e {flaky} ]; then kill -HUP {broker.proc.pid}; else touch {flaky}; exit 1; fi"
    reload = BrokerReload(command=f"sh -c '{script}'")
    with ExitStack() as stack:
        server = hub_server(hub, broker, Signer(pki.ca, 3600), reload)
        stack.callback(server.close)
        box = Box(stack, tmp_path, broker, hub, "box-r")  # connects with its renewed cert
        with Probe(broker, old, client_id="box-r-old") as probe:
            probe.connect()
        mark = broker.log_size()
        body = {"serial": format(box.cert.serial, "x"), "not_after": time.time() + DAY}
        with transaction(box.ledger.conn):
            box.ledger.append_event("cert_renewed", body, time.time())
        box.link.notify()
        wait(lambda: box.outbox() == 0, what="the cert_renewed batch acked")
        wait(lambda: flaky.exists(), what="the first reload failed")
        wait(lambda: reload_pending(hub.dir) is None, what="the reload retried", timeout=20)
        broker.wait_log("Reloading config", since=mark)
        assert old.serial in pki.ca.revoked_serials()
        assert "revoked" in connect_refused(broker, old, "box-r-old")
        stats = server.stats()
        assert stats.get("revoke_failed") == 1 and "revoke_retry_failed" not in stats
        assert box.link.status()["connected"]  # the renewed certificate is untouched


def test_a_certificate_signed_while_revoke_box_runs_is_revoked_too(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`edge hub revoke` reads the box's certificates, then changes the registry: a renewal
    signed in between is found by its second read."""
    hub_dir = tmp_path / "hub"
    register_box(hub_dir, "box-a", SITE)
    first = pki.box("box-a")
    signer = Signer(pki.ca, 3600)
    late: list[str] = []
    real_mark = store_mark_revoked

    def renewal_in_between(*args: Any, **kw: Any) -> tuple[dict[str, Any], bool]:
        if not late:
            cert = signer.sign(make_key_and_csr("box-a")[1], "box-a")
            late.append(record_issued(hub_dir, "box-a", cert, "renewal", time.time()))
        return real_mark(*args, **kw)

    monkeypatch.setattr(revoke_mod, "mark_revoked", renewal_in_between)
    res = revoke_box(hub_dir, "box-a", reason="stolen", ca=pki.ca, reload=None, broker=None)
    assert late and late[0] in res.newly and format(first.serial, "x") in res.newly
    assert int(late[0], 16) in pki.ca.revoked_serials()
    assert late[0] in load_revoked(hub_dir)["box-a"]["serials"]
    assert reload_pending(hub_dir) is not None  # no broker given: a serving hub reloads it


class RevokedWhileSigning(Signer):
    """The operator's `edge hub revoke` (registry step) lands while the hub signs the CSR."""

    def __init__(self, ca: Any, hub_dir: Path) -> None:
        super().__init__(ca, 3600)
        self.hub_dir = hub_dir
        self.signed: list[int] = []

    def sign(self, csr_pem: bytes, box: str) -> bytes:
        cert = super().sign(csr_pem, box)
        self.signed.append(cert_info(cert).serial)
        revoke_box(self.hub_dir, box, reason="stolen", ca=None, reload=None, broker=None)
        return cert


def test_a_csr_signed_while_its_box_is_revoked_gets_no_certificate(
    tmp_path: Path, broker: Broker, probes: Probes
) -> None:
    pki = broker.pki
    hub = Hub.init(tmp_path / "hub", keys=1)
    register_box(hub.dir, "box-a", SITE)
    signer = RevokedWhileSigning(pki.ca, hub.dir)
    server = hub_server(hub, broker, signer, reload_of(broker))
    try:
        probe = probes(broker, pki.box("box-a"))
        probe.subscribe("gw/box-a/down/#")
        mark = broker.log_size()
        doc = {"v": 1, "box": "box-a", "csr": make_key_and_csr("box-a")[1].decode()}
        assert not probe.publish(protocol.up_csr("box-a"), json.dumps(doc)).is_failure
        wait(lambda: refused_revoked(server) == 1, what="the CSR refused as revoked")
        assert len(signer.signed) == 1 and signer.signed[0] in pki.ca.revoked_serials()
        broker.wait_log("Reloading config", since=mark)
        assert probe.get(1.0) is None  # no certificate message
        assert server.stats().get("certificates_issued", 0) == 0
        store = HubStore(hub.dir / "hub.db", create=False)
        try:
            n = store.conn.execute("SELECT count(*) FROM outgoing WHERE box = 'box-a'").fetchone()
        finally:
            store.close()
        assert n[0] == 0
    finally:
        server.close()
