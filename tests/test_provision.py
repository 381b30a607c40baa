"""Enrollment and certificate renewal with the real parts: mosquitto (mTLS + ACL), the reference
hub with its HTTPS enrollment endpoint, and the daemon provisioned by `edge provision`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.cli import main
from sync.hub.enroll import Enroller, EnrollServer, Signer, make_claim
from sync.hub.serve import HubServer
from sync.hub.store import HubStore, load_registry, register_box
from sync.pki import cert_info, key_matches_cert, make_key_and_csr
from sync.provision import ProvisionError, request_enrollment
from tests.broker import Broker, Pki, broker_fixture, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE, Running, Site, make_site, running

BOX = "box-e2e"  # the device make_site's config names


class ShortFirst(Signer):
    """Signs the first certificate (the enrollment's) for `lifetime_s` and the renewed ones for
    an hour: the renewal is due seconds after enrollment, and a test sees exactly one."""

    def sign(self, csr_pem: bytes, box: str) -> bytes:
        cert = super().sign(csr_pem, box)
        self.lifetime_s = 3600.0
        return cert


@contextmanager
def hub_side(
    site: Site, pki: Pki, broker: Broker, lifetime_s: float, *, sign: bool = True
) -> Iterator[tuple[HubServer, EnrollServer]]:
    signer = ShortFirst(pki.ca, lifetime_s)
    enroller = Enroller(site.hub, signer, pki.ca_file)
    server = HubServer(
        site.hub,
        host="127.0.0.1",
        port=broker.port,
        ca=pki.ca_file,
        cert=pki.hub.cert,
        key=pki.hub.key,
        db_path=site.root / "hub.db",
        signer=signer if sign else None,
    )
    with server, EnrollServer(enroller, "127.0.0.1", 0, pki.server.cert, pki.server.key) as enr:
        server.wait_ready()
        yield server, enr


def provision(
    site: Site, broker: Broker, enroll_port: int, claim: str, fp: str, *extra: str
) -> int:
    argv = ["provision", "--site", SITE, "--device", BOX, "--home", str(site.home)]
    argv += ["--broker", f"127.0.0.1:{broker.port}", "--anchor-fingerprint", fp]
    argv += ["--enroll", f"https://127.0.0.1:{enroll_port}", "--claim", claim, *extra]
    return main(argv)


def hub_events(site: Site) -> list[tuple[str, int, str, str]]:
    store = HubStore(site.root / "hub.db")
    try:
        return store.events(BOX)
    finally:
        store.close()


def fingerprint(site: Site) -> str:
    return site.hub.anchor.fingerprint


def test_enrollment_with_a_claim(
    tmp_path: Path, pki: Pki, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site(tmp_path)
    conf = site.home / "edge.toml"
    before = conf.read_text()
    with hub_side(site, pki, broker, 3600) as (_hub, enr):
        # A wrong fingerprint: the hub answered, the box refuses the anchor and writes nothing.
        wrong = "AB12 " * 16
        claim = make_claim(site.hub.dir, BOX, SITE)
        assert provision(site, broker, enr.port, claim, wrong) == 2
        assert "anchor_mismatch" in capsys.readouterr().out
        assert conf.read_text() == before and not (site.home / "tls").exists()
        # That claim is spent (the hub cannot know the box refused): a mismatch needs a new one.
        assert provision(site, broker, enr.port, claim, fingerprint(site)) == 2
        assert "claim_used" in capsys.readouterr().out
        # A claim made for another box id is refused, and so is an unknown or expired one.
        other = make_claim(site.hub.dir, "box-other", SITE)
        assert provision(site, broker, enr.port, other, fingerprint(site)) == 2
        assert "claim_mismatch" in capsys.readouterr().out
        assert provision(site, broker, enr.port, "not-a-claim", fingerprint(site)) == 2
        assert "unknown_claim" in capsys.readouterr().out
        short = make_claim(site.hub.dir, BOX, SITE, ttl_s=0.05)
        time.sleep(0.1)
        assert provision(site, broker, enr.port, short, fingerprint(site)) == 2
        assert "claim_expired" in capsys.readouterr().out
        assert conf.read_text() == before and not (site.home / "tls").exists()
        # A CSR for another identity than the claim's box: refused, the claim stays usable.
        good = make_claim(site.hub.dir, BOX, SITE)
        _key, csr = make_key_and_csr("box-intruder")
        body = {"v": 1, "box": BOX, "site": SITE, "claim": good, "csr": csr.decode()}
        with pytest.raises(ProvisionError) as refused:
            request_enrollment(f"https://127.0.0.1:{enr.port}", body)
        assert refused.value.reason == "cn_mismatch"

        assert provision(site, broker, enr.port, good, fingerprint(site)) == 0
        assert "PROVISIONED" in capsys.readouterr().out
        key = site.home / "tls" / "device.key"
        assert os.stat(key).st_mode & 0o777 == 0o600
        assert cert_info((site.home / "tls" / "device.crt").read_bytes()).cn == BOX
        assert load_registry(site.hub.dir) == {BOX: SITE}
        assert "[lanes.entry]" in conf.read_text()  # the rest of the config is kept
        # Used once: the same claim again is refused and changes nothing.
        after = conf.read_text(), key.read_bytes()
        assert provision(site, broker, enr.port, good, fingerprint(site)) == 2
        assert "claim_used" in capsys.readouterr().out
        assert (conf.read_text(), key.read_bytes()) == after

        with running(site, cloud=True) as d:
            assert d.scan("entry", site.ticket())["state"] == "confirmed"
            d.wait(
                lambda: {"redemption", "redemption_confirmed"} <= {t for *_, t in hub_events(site)},
                what="the box's events at the hub",
                timeout=20,
            )


def test_offline_provisioning_checks_the_fingerprint(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    site = make_site(tmp_path)
    stick = tmp_path / "stick"
    stick.mkdir()
    files = pki.issue(BOX, days=30)
    (stick / "device.crt").write_bytes(files.cert.read_bytes())
    (stick / "device.key").write_bytes(files.key.read_bytes())
    (stick / "broker-ca.crt").write_bytes(pki.ca_file.read_bytes())
    (stick / "trust-anchor.json").write_text((site.hub.dir / "trust-anchor.json").read_text())
    argv = ["provision", "--site", SITE, "--device", BOX, "--home", str(site.home)]
    argv += ["--broker", "127.0.0.1:8883", "--from", str(stick), "--anchor-fingerprint"]
    before = (site.home / "edge.toml").read_text()
    assert main([*argv, "0000" * 16]) == 2
    assert "anchor_mismatch" in capsys.readouterr().out
    assert (site.home / "edge.toml").read_text() == before and not (site.home / "tls").exists()
    # Another box's certificate on the stick is refused too.
    assert main([*argv[:4], "box-other", *argv[5:], fingerprint(site)]) == 2
    assert "cn_mismatch" in capsys.readouterr().out
    assert main([*argv, fingerprint(site)]) == 0
    text = (site.home / "edge.toml").read_text()
    assert text.count("[sync]") == 1 and 'broker = "127.0.0.1:8883"' in text
    assert main([*argv, fingerprint(site)]) == 0  # again: [sync] replaced, not doubled
    assert (site.home / "edge.toml").read_text().count("[sync]") == 1


def _scan_until(d: Running, site: Site, done: object, timeout: float) -> int:
    """Redeem tickets on the entry gate (traffic) until `done()`; returns how many."""
    n = 0
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out under traffic"
        assert d.scan("entry", site.ticket())["state"] == "confirmed"
        n += 1
        time.sleep(0.2)
    return n


def test_renewal_under_traffic(
    tmp_path: Path, pki: Pki, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """An enrollment certificate living 34 s (plus the minute of backdating): due for renewal
    at two thirds of its life, ~3 s after enrollment, and renewed at the daemon's next check
    (every 3 s) while tickets are redeemed; no event lost; the live files and connection are
    the new ones."""
    site = make_site(tmp_path)
    with hub_side(site, pki, broker, 34) as (hub, enr):
        claim = make_claim(site.hub.dir, BOX, SITE)
        assert provision(site, broker, enr.port, claim, fingerprint(site)) == 0
        cert_file, key_file = site.home / "tls" / "device.crt", site.home / "tls" / "device.key"
        first = cert_info(cert_file.read_bytes()).serial
        with running(site, cloud=True) as d:
            d.wait(lambda: (d.box.cloud_status or dict)().get("connected") is True, what="link")

            def renewed() -> bool:
                return any(e.get("state") == "renewed" for e in d.events("cert"))

            scans = _scan_until(d, site, renewed, timeout=60)
            new = cert_info(cert_file.read_bytes())
            assert new.serial != first and new.cn == BOX
            assert key_matches_cert(key_file.read_bytes(), cert_file.read_bytes())
            assert os.stat(key_file).st_mode & 0o777 == 0o600
            assert not list(site.home.glob("*.new"))
            # The old certificate is revoked and the broker restarted: only a connection with
            # the new one (in the live TLS context) can come back.
            pki.ca.revoke(first)
            broker.restart()
            more = [0]

            def back() -> bool:
                more[0] += 1
                return more[0] > 10 and (d.box.cloud_status or dict)().get("connected") is True

            scans += _scan_until(d, site, back, timeout=30)
            d.wait(
                lambda: d.api("GET", "/api/v1/status")[1]["ledger"]["outbox_depth"] == 0,
                what="outbox emptied by the hub's acks",
                timeout=30,
            )
            events = hub_events(site)
            redemptions = [i for *_, i, t in events if t == "redemption"]
            assert len(redemptions) == scans  # none lost
            assert len({i for _, _, i, _ in events}) == len(events)  # none stored twice
            seqs = [s for _, s, _, _ in events]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous
            assert hub.stats().get("certificates_issued", 0) >= 1
            assert d.box.cloud_status is not None
            assert d.box.cloud_status()["certificate"]["serial"] == format(new.serial, "x")


def test_expiry_without_renewal_raises_an_alert(
    tmp_path: Path, pki: Pki, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hub has no device CA: the box's CSR is refused, and a certificate in its last
    quarter of life raises a `cert` bus event and a `cert_expiring` event up to the hub."""
    site = make_site(tmp_path)
    with hub_side(site, pki, broker, 60, sign=False) as (hub, _enr):
        # A certificate for 20 s (+60 s backdated): in the last quarter of its life at once.
        enr_signer = Signer(pki.ca, 20)
        stick = tmp_path / "stick"
        key, csr = make_key_and_csr(BOX)
        stick.mkdir()
        (stick / "device.crt").write_bytes(enr_signer.sign(csr, BOX))
        (stick / "device.key").write_bytes(key)
        (stick / "broker-ca.crt").write_bytes(pki.ca_file.read_bytes())
        (stick / "trust-anchor.json").write_text((site.hub.dir / "trust-anchor.json").read_text())
        argv = ["provision", "--site", SITE, "--device", BOX, "--home", str(site.home)]
        argv += ["--broker", f"127.0.0.1:{broker.port}", "--from", str(stick)]
        assert main([*argv, "--anchor-fingerprint", fingerprint(site)]) == 0
        register_box(site.hub.dir, BOX, SITE)
        with running(site, cloud=True) as d:
            d.wait(
                lambda: any(e.get("state") == "expiring" for e in d.events("cert")),
                what="the expiry alert on the bus",
            )
            d.wait(
                lambda: "cert_expiring" in {t for *_, t in hub_events(site)},
                what="cert_expiring at the hub",
                timeout=20,
            )
            # The renewal CSR went up and was refused: this hub signs nothing.
            d.wait(lambda: hub.stats().get("refused_no_ca", 0) >= 1, what="the CSR refused")


def test_a_claim_token_never_starts_with_a_dash(tmp_path: Path) -> None:
    """`edge provision --claim -Xy...` would read the token as an option (a CI run met one)."""
    tokens = [make_claim(tmp_path, f"box-{i}", SITE) for i in range(300)]
    assert len(set(tokens)) == 300
    assert not [t for t in tokens if t.startswith("-")]
