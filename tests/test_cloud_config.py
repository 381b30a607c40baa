"""Config from the cloud and config reloads (docs/sync.md "Config"), on the real daemon with
simulated devices: a `config` message from the reference hub through a real mosquitto (mTLS, ACLs)
is validated, stored, applied by an in-process reload (the link and the HTTP API come back) and
reported; a bad one is refused with the reason and changes nothing; a reload lets the visitor in
the gate pass, loses nothing, and a new config that cannot start gives way to the one that ran."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge.cloud_config import ConfigRefused, restore, store
from edge.config import MANAGED_FILE, MANAGED_PREV, load
from sync.hub.serve import HubServer
from sync.hub.store import HubStore
from tests.broker import Broker, Pki, broker_fixture, make_hub, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE, Running, Site, make_site, running, scanner
from tests.test_cli import edge_main

BOX = "box-e2e"
FULL_AT_2 = "[zones.main]\nwarn = 1\nfull = 2\n"
# A visitor who needs 2.5 s to walk through: more than the SIGTERM grace, less than a reload's.
SLOW_WALKER = "sim://?board=modbus&pass_delay_ms=2500&window_s=5"


def link(site: Site, pki: Pki, broker: Broker) -> None:
    certs = pki.box(BOX)
    with (site.home / "edge.toml").open("a") as f:
        f.write(
            f'\n[sync]\nbroker = "127.0.0.1:{broker.port}"\nca = "{pki.ca_file}"\n'
            f'cert = "{certs.cert}"\nkey = "{certs.key}"\ncatch_up_s = 0\n'
        )


def hub_server(site: Site, pki: Pki, broker: Broker) -> HubServer:
    return make_hub(site.hub, broker, site.root / "hub.db", {BOX: SITE})


def hub_events(site: Site, etype: str) -> list[dict[str, Any]]:
    store = HubStore(site.root / "hub.db")
    try:
        rows = store.conn.execute(
            "SELECT body FROM events WHERE box = ? AND type = ? ORDER BY seq", (BOX, etype)
        ).fetchall()
    finally:
        store.close()
    return [json.loads(body) for (body,) in rows]


def inbox_result(d: Running, msg_id: str) -> str | None:
    svc = d.box.svc
    assert svc is not None
    conn = svc.ledger.conn

    def read() -> str | None:
        row = conn.execute("SELECT result FROM inbox WHERE id = ?", (msg_id,)).fetchone()
        return None if row is None else row[0]

    return d.run(d.box.db.call(read))


def connected(d: Running) -> bool:
    return (d.box.cloud_status or dict)().get("connected") is True


def outbox_of(d: Running, etype: str) -> list[dict[str, Any]]:
    return [e["body"] for e in d.outbox() if e["type"] == etype]


def test_a_config_from_the_hub_is_applied_reported_and_bad_ones_are_refused(
    tmp_path: Path, pki: Pki, broker: Broker
) -> None:
    site = make_site(tmp_path)
    link(site, pki, broker)
    with hub_server(site, pki, broker) as hub:
        hub.wait_ready()
        with running(site, cloud=True) as d:
            d.wait(lambda: connected(d), what="link up")
            url = d.daemon.url
            assert d.scan("entry", site.ticket())["state"] == "confirmed"
            hub.send(BOX, "config", {"revision": 3, "toml": FULL_AT_2}, 600, msg_id="cfg-3")
            d.wait(lambda: d.daemon.reloads == 1, timeout=20, what="reload")
            managed = d.box.config.managed
            assert managed is not None and managed.revision == 3
            assert d.daemon.url == url  # the same port: the kiosk's page keeps working
            # The cloud's zone threshold is in force: one more visitor fits, the next does not.
            assert d.scan("entry", site.ticket())["state"] == "confirmed"
            assert d.scan("entry", site.ticket())["reason"] == "capacity_full"
            d.wait(lambda: inbox_result(d, "cfg-3") == "applied: revision 3", what="result")
            d.wait(lambda: connected(d), what="link up again")
            d.wait(lambda: bool(hub_events(site, "config_applied")), timeout=15, what="report")
            report = hub_events(site, "config_applied")
            assert [(r["revision"], r["id"], r["source"]) for r in report] == [
                (3, "cfg-3", "cloud")
            ]
            assert report[0]["sections"] == ["zones"]

            # An older revision is ignored; one that touches the link is refused: nothing moves.
            hub.send(BOX, "config", {"revision": 2, "toml": "[zones.main]\nfull = 9\n"}, 600, "c2")
            evil = '[sync]\nbroker = "mqtt.evil.example:8883"\n'
            hub.send(BOX, "config", {"revision": 4, "toml": evil}, 600, msg_id="cfg-4")
            bad_lane = '[lanes.entry]\nkind = "gate"\nlist = "main-gate"\ngate = "no-such-gate"\n'
            hub.send(BOX, "config", {"revision": 5, "toml": bad_lane}, 600, msg_id="cfg-5")
            d.wait(lambda: inbox_result(d, "cfg-5") is not None, timeout=15, what="three results")
            assert (inbox_result(d, "c2") or "").startswith("ignored: revision 2 is older")
            assert (inbox_result(d, "cfg-4") or "").startswith("refused: local_section: [sync]")
            result5 = inbox_result(d, "cfg-5") or ""
            assert result5.startswith("refused: invalid:") and "lanes.entry.gate" in result5
            d.wait(lambda: len(hub_events(site, "config_refused")) == 2, timeout=15, what="up")
            reasons = [(r["revision"], r["reason"]) for r in hub_events(site, "config_refused")]
            assert reasons == [(4, "local_section"), (5, "invalid")]
            assert d.daemon.reloads == 1
            assert d.box.config.managed is not None and d.box.config.managed.revision == 3
            assert json.loads((site.home / MANAGED_FILE).read_text())["revision"] == 3

            # reload_config: edge.toml edited by a technician is read again, the cloud's
            # sections still over it.
            with (site.home / "edge.toml").open("a") as f:
                f.write('\n[lanes.counter2]\nkind = "counter"\nlist = "default"\n')
            hub.send(BOX, "command", {"command": "reload_config"}, 600, msg_id="reload-1")
            d.wait(lambda: d.daemon.reloads == 2, timeout=20, what="second reload")
            assert "counter2" in d.api("GET", "/api/v1/lanes")[1]
            assert d.box.config.zones["main"].full == 2
            d.wait(lambda: inbox_result(d, "reload-1") == "applied: revision 3", what="result")
            d.wait(lambda: connected(d), what="link up after the command")
            d.wait(lambda: len(hub_events(site, "config_applied")) == 2, timeout=15, what="2nd")
            assert hub_events(site, "config_applied")[1]["source"] == "command"


def test_a_reload_lets_the_visitor_pass_loses_nothing_and_refuses_a_bad_file(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path, devices={"gate-in": ("gate", SLOW_WALKER)})
    toml = site.home / "edge.toml"
    with running(site) as d:
        first = site.ticket()
        assert d.scan("counter", first)["state"] == "confirmed"
        url = d.daemon.url
        walker = site.ticket()
        scanner(d, "scanner-in").present(walker)
        d.wait(lambda: d.box.lanes["entry"].state.busy, what="the gate open")
        status, doc = d.api("POST", "/api/v1/config/reload")
        assert (status, doc) == (202, {"result": "reload queued"})
        d.wait(lambda: d.daemon.reloads == 1, timeout=20, what="reload")
        assert d.daemon.url == url
        # The visitor walked through during the reload: confirmed, not voided.
        confirmed = outbox_of(d, "redemption_confirmed")
        assert [c.get("passed") for c in confirmed] == [1], confirmed
        assert not outbox_of(d, "redemption_voided")
        # Nothing recorded was lost, and the ledger still knows both tickets.
        assert len(outbox_of(d, "redemption")) == 2
        assert d.scan("counter", first)["reason"] == "already_used"
        assert d.api("GET", "/healthz")[1]["status"] == "ok"

        # A file that does not load: 409 with the reason, the running config stays.
        good = toml.read_text()
        toml.write_text(good + '\n[lanes.extra]\nkind = "gate"\nlist = "x"\ngate = "nowhere"\n')
        status, doc = d.api("POST", "/api/v1/config/reload")
        assert status == 409 and "lanes.extra.gate" in doc["detail"], doc
        # A device URL the driver refuses: checked before anything stops.
        toml.write_text(good.replace("profile=xp-58", "profile=xp-58&nonsense=1"))
        status, doc = d.api("POST", "/api/v1/config/reload")
        assert status == 409 and "[devices.bar]" in doc["detail"], doc
        assert "nonsense: unknown parameter" in doc["detail"]
        # [sync] added by hand: a restart, never a reload, may change the link.
        toml.write_text(good + '\n[sync]\nbroker = "h:8883"\nca = "a"\ncert = "b"\nkey = "c"\n')
        status, doc = d.api("POST", "/api/v1/config/reload")
        assert status == 409 and "needs_restart" in doc["detail"], doc
        assert d.daemon.reloads == 1
        reasons = [r["reason"] for r in outbox_of(d, "config_refused")]
        assert reasons == ["invalid", "invalid", "needs_restart"]
        # Still serving (the lane beside the slow walker's: his gate takes 2.5 s a visitor).
        assert d.scan("entry2", site.ticket())["state"] == "confirmed"

        # A config that loads but cannot start (its HTTP port is taken): the one that ran comes
        # back, and says why.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            toml.write_text(good.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
            status, _ = d.api("POST", "/api/v1/config/reload")
            assert status == 202
            d.wait(lambda: d.daemon.reloads == 2, timeout=20, what="reload that failed")
        assert d.box.config.http_listen == "127.0.0.1:0"
        refusals = outbox_of(d, "config_refused")
        assert refusals[-1]["reason"] == "start_failed" and str(port) in refusals[-1]["detail"]
        assert d.api("GET", "/healthz")[1]["status"] == "ok"


def test_stored_cloud_config_survives_a_crash_and_a_local_change_that_breaks_it(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path)
    state = site.home
    # As if the box crashed between storing revision 7 and reloading.
    store(state, 6, '[lanes.kiosk6]\nkind = "counter"\nlist = "default"\n', "m6", time.time())
    gate7 = '[lanes.gate7]\nkind = "gate"\nlist = "main-gate"\nscanner = "scanner-in2"\n'
    store(state, 7, gate7 + 'gate = "gate-in2"\n', "m7", time.time())
    with pytest.raises(ConfigRefused, match="superseded"):
        store(state, 7, "", "again", time.time())
    with running(site) as d:
        assert d.box.config.managed is not None and d.box.config.managed.revision == 7
        assert list(d.box.lanes) == ["gate7"]  # the cloud's [lanes] replaces the local ones
        applied = outbox_of(d, "config_applied")
        assert [(a["revision"], a["source"], a["id"]) for a in applied] == [(7, "start", "m7")]
    with running(site, bundle=False) as d:  # reported once, not at every start
        assert len(outbox_of(d, "config_applied")) == 1
    # The technician renames the gate in edge.toml: revision 7 no longer loads; the box starts
    # on revision 6 rather than not at all, and says why.
    text = (state / "edge.toml").read_text()
    (state / "edge.toml").write_text(text.replace("[devices.gate-in2]", "[devices.gate-in9]"))
    with running(site, bundle=False) as d:
        cfg = d.box.config
        assert cfg.managed is not None and cfg.managed.revision == 6
        assert cfg.managed.path.name == MANAGED_PREV
        assert (
            "revision 7" in cfg.managed_skipped[0] and "lanes.gate7.gate" in cfg.managed_skipped[0]
        )
        assert list(d.box.lanes) == ["kiosk6"]
        report = outbox_of(d, "config_applied")[-1]
        assert report["revision"] == 6 and "revision 7" in report["skipped"][0]
        assert d.api("GET", "/api/v1/status")[1]["config"]["managed"]["revision"] == 6
    # restore() puts back what runs, only over the revision that failed.
    cfg = load(state / "edge.toml", state)
    restore(state, cfg.managed, 99)
    assert json.loads((state / MANAGED_FILE).read_text())["revision"] == 7
    restore(state, cfg.managed, 7)
    assert json.loads((state / MANAGED_FILE).read_text())["revision"] == 6


def test_edge_hub_send_config_queues_a_signed_config(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    cfg = tmp_path / "site-config.toml"
    cfg.write_text(FULL_AT_2)
    base = ["hub", "send", "--dir", str(site.hub.dir), "--box", BOX, "--id", "cfg-cli"]
    run = edge_main(*base, "config", "--config-file", str(cfg), "--revision", "4")
    assert run.returncode == 0, run.stderr
    assert "queued config cfg-cli" in run.stdout and "604800" in run.stdout
    with sqlite3.connect(site.hub.dir / "hub.db") as conn:
        (payload,) = conn.execute("SELECT payload FROM outgoing WHERE id = 'cfg-cli'").fetchone()
    msg = json.loads(payload)
    assert (msg["type"], msg["body"]) == ("config", {"revision": 4, "toml": FULL_AT_2})
    cfg.write_text('[box]\nsite = "elsewhere"\n')
    run = edge_main(*base, "config", "--config-file", str(cfg), "--revision", "5")
    assert run.returncode != 0 and "[box] stays in the box's own edge.toml" in run.stderr


def test_sighup_reloads_with_reloading_then_ready_to_systemd(tmp_path: Path) -> None:
    from tests.test_daemon_process import Proc

    site = make_site(tmp_path)
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        p = Proc(site, {"NOTIFY_SOCKET": path})
        try:
            url = p.wait_ready()
            while not notify.recv(4096).startswith(b"READY=1"):
                pass
            with (site.home / "edge.toml").open("a") as f:
                f.write('\n[lanes.counter2]\nkind = "counter"\nlist = "default"\n')
            p.p.send_signal(signal.SIGHUP)
            messages: list[bytes] = []
            while not (messages and messages[-1].startswith(b"READY=1")):
                messages.append(notify.recv(4096))
            reloading = next(m for m in messages if m.startswith(b"RELOADING=1"))
            assert b"MONOTONIC_USEC=" in reloading  # Type=notify-reload wants it
            assert "counter2" in p.api("GET", "/api/v1/lanes")
            assert json.loads((site.home / "daemon.json").read_text())["url"] == url
            assert p.stop() < 5.0 and p.p.returncode == 0
        finally:
            if p.p.poll() is None:
                p.p.kill()
                p.p.wait(10)
            p.log.close()
