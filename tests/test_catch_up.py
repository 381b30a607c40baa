"""Catch-up (docs/sync.md): a new or replacement box learns the site's bundles and the uses made
on the site's other boxes before READY, and a snapshot repeats every use the hub holds. Real
mosquitto (mTLS, ACLs), the real reference hub and real daemons on simulated devices."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from edge.cli import main
from edge.cloud import CloudLink
from edge.config import load
from edge.daemon import Daemon
from edge.notify import Notifier
from sync.hub.catchup import Archived, plan
from tests.broker import Broker, Pki, broker_fixture, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE, Site, running
from tests.daemon_kit import make_site as _make_site
from tests.test_bundle_downlink import _cache_seq, _hub, _link, _online, _second_box

BOX_A, BOX_B, BOX_C = "box-e2e", "box-e2e-b", "box-e2e-c"
NOW = 1_800_000_000.0


def _a(seq: int, base: int | None, expires: float = NOW + 100) -> Archived:
    return Archived(Path(f"{seq}.bundle"), seq, base, int(expires))


def seqs(todo: list[Archived]) -> list[int]:
    return [b.seq for b in todo]


def test_the_plan_follows_the_delta_chain_or_falls_back_to_the_newest_snapshot() -> None:
    archive = [_a(1, None), _a(2, 1), _a(3, 2), _a(4, None), _a(5, 4)]
    todo, reach = plan(archive, 2, NOW)
    assert (seqs(todo), reach) == ([4, 5], 5)  # 3 does not lead to 5: the snapshot does
    todo, reach = plan(archive, 4, NOW)
    assert (seqs(todo), reach) == ([5], 5)
    todo, reach = plan(archive, None, NOW)  # no cache at all
    assert (seqs(todo), reach) == ([4, 5], 5)
    assert plan(archive, 5, NOW) == ([], 5)  # up to date
    assert plan(archive, 9, NOW) == ([], 9)  # ahead of this archive (a restored hub): nothing
    gone = [_a(1, None, expires=NOW - 1), _a(2, 1)]
    assert plan(gone, None, NOW) == ([], 0)  # an expired snapshot is never sent
    chain = [_a(1, None), _a(2, 1), _a(3, 2)]
    assert seqs(plan(chain, 1, NOW)[0]) == [2, 3]


def _bundle_input(path: Path) -> Path:
    doc = {
        "site": {"timezone": "Asia/Shanghai", "rollover_hour": 4},
        "products": [{"id": "adult", "name": "成人票 Adult"}],
        "zones": [{"id": "main"}],
        "lists": [
            {"id": "main-gate", "zone": "main", "products": ["adult"], "anti_passback": "hard"},
            {"id": "default", "products": ["*"]},
        ],
    }
    path.write_text(json.dumps(doc))
    return path


def test_a_replacement_box_knows_the_sites_uses_before_its_first_scan(
    tmp_path: Path, pki: Pki, broker: Broker
) -> None:
    site_a = _make_site(tmp_path)
    site_b = _second_box(site_a, BOX_B)
    site_c = _second_box(site_a, BOX_C)
    for s, box in ((site_a, BOX_A), (site_b, BOX_B), (site_c, BOX_C)):
        _link(s, pki, broker, box)
    code = site_a.ticket()
    boxes = {BOX_A: SITE, BOX_B: SITE, BOX_C: SITE}
    with ExitStack() as stack:
        stack.enter_context(_hub(site_a, pki, broker, boxes))
        a = stack.enter_context(running(site_a, cloud=True))
        _online(a)
        assert a.scan("entry", code)["state"] == "confirmed"
        a.wait(lambda: _cache_seq(a) == 2, timeout=20, what="the site's used delta (seq 2)")
        # B replaces a broken box: new identity, same site, only the factory snapshot (seq 1).
        # When `running` returns it is READY: the catch-up is already done.
        b = stack.enter_context(running(site_b, cloud=True))
        assert _cache_seq(b) == 2
        first = b.scan("entry", code)
        assert first["decision"] != "admit" and first["reason"] == "used_elsewhere", first
        assert any(e.get("type") == "caught_up" for e in b.events("cloud"))

        # The operator issues a new snapshot with the CLI: it repeats every use the hub holds
        # (a snapshot replaces the cache; without them the ticket would be good again).
        out = site_a.root / "snap-cli.bundle"
        argv = ["hub", "bundle", "--dir", str(site_a.hub.dir), "--site", SITE, "--out", str(out)]
        argv += ["--input", str(_bundle_input(site_a.root / "in.json"))]
        argv += ["--db", str(site_a.root / "hub.db")]
        assert main(argv) == 0
        # C has no cache at all (not even the factory snapshot): the hub's archive gives it the
        # CLI snapshot before READY.
        c = stack.enter_context(running(site_c, cloud=True, bundle=False))
        assert _cache_seq(c) == 3
        refused = c.scan("entry", code)
        assert refused["reason"] == "used_elsewhere", refused
        assert c.scan("entry", site_a.ticket())["decision"] == "admit"


def test_the_cli_snapshot_alone_carries_the_uses(tmp_path: Path, pki: Pki, broker: Broker) -> None:
    """Offline delivery (a USB stick): the snapshot file itself refuses the used ticket."""
    site_a = _make_site(tmp_path)
    _link(site_a, pki, broker, BOX_A)
    code = site_a.ticket()
    with _hub(site_a, pki, broker, {BOX_A: SITE}), running(site_a, cloud=True) as a:
        _online(a)
        assert a.scan("entry", code)["state"] == "confirmed"
        a.wait(lambda: _cache_seq(a) == 2, timeout=20, what="used delta")
    out = site_a.root / "snap-usb.bundle"
    argv = ["hub", "bundle", "--dir", str(site_a.hub.dir), "--site", SITE, "--out", str(out)]
    argv += ["--input", str(_bundle_input(site_a.root / "in.json"))]
    argv += ["--db", str(site_a.root / "hub.db")]
    assert main(argv) == 0
    site_d = _second_box(site_a, "box-e2e-d")
    offline = Site(site_d.root, site_d.hub, site_d.home, out, site_d.now, site_d.vouchers)
    with running(offline) as d:  # no [sync]: the file is all it has
        assert _cache_seq(d) == 3
        assert d.scan("entry", code)["reason"] == "used_elsewhere"


def _no_hub_sync(site: Site, pki: Pki, port: int, catch_up_s: float) -> None:
    certs = pki.box(BOX_A)
    with (site.home / "edge.toml").open("a") as f:
        f.write(
            f'\n[sync]\nbroker = "127.0.0.1:{port}"\nca = "{pki.ca_file}"\n'
            f'cert = "{certs.cert}"\nkey = "{certs.key}"\ncatch_up_s = {catch_up_s}\n'
        )


def catching_up(caplog: pytest.LogCaptureFixture) -> int:
    """How many times a daemon said it waits for its catch-up before READY."""
    return sum("catching up with the site" in r.getMessage() for r in caplog.records)


def test_a_stop_ends_the_wait_for_the_catch_up(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """A new box whose cloud is unreachable waits for its catch-up; SIGTERM still stops it
    within the daemon's 5 s."""
    caplog.set_level(logging.INFO, logger="edge.cloud")
    site = _make_site(tmp_path)
    _no_hub_sync(site, pki, 1, 25)  # nothing listens on port 1
    config = load(site.home / "edge.toml", site.home)
    assert config.sync is not None
    daemon = Daemon(
        config, notifier=Notifier({}), bundle=site.bundle, extensions=[CloudLink(config.sync)]
    )

    async def main() -> float:
        task = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 20
        while not catching_up(caplog):  # the wait has begun
            assert time.monotonic() < deadline and not task.done(), "no catch-up wait"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert not daemon.ready.is_set() and not task.done()  # still waiting for the cloud
        t0 = time.monotonic()
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
        return time.monotonic() - t0

    took = asyncio.run(main())
    assert took < 5.0, f"stop took {took:.1f} s"


def test_a_reload_does_not_wait_for_the_catch_up_again(
    tmp_path: Path, pki: Pki, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A cloud that sends no caught_up (a hub mid-integration): the box waits once, at start,
    not at every reload (its lanes are down while it waits)."""
    caplog.set_level(logging.INFO, logger="edge.cloud")
    site = _make_site(tmp_path)
    _no_hub_sync(site, pki, broker.port, 3)
    with running(site, cloud=True) as d:
        assert d.daemon.ready_after_s is not None and d.daemon.ready_after_s >= 3
        assert catching_up(caplog) == 1
        t0 = time.monotonic()
        assert d.api("POST", "/api/v1/config/reload")[0] == 202
        d.wait(lambda: d.daemon.reloads == 1, timeout=20, what="reload")
        assert time.monotonic() - t0 < 3.0  # a second wait alone would take 3 s
        assert catching_up(caplog) == 1  # said (and waited) once: at start
