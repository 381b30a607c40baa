"""The reference hub (`edge hub serve`) against a real mosquitto with mTLS and per-box ACLs.

Boxes are played by small paho clients holding their own certificates (CN = box id): they
publish protocol batches and read their down topics, as the box's link does.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.cli import main as edge_main
from sync import protocol
from sync.hub.issuer import Hub
from sync.hub.serve import HubServer
from sync.hub.store import HubStore, register_box
from tests.broker import (  # noqa: F401
    Broker,
    ConnectRefused,
    Probe,
    Probes,
    broker_fixture,
    pki_fixture,
    probes_fixture,
)

SITE = "site-a"
EPOCH = "5f0c0123456789ab"


@pytest.fixture(name="hub")
def hub_fixture(tmp_path: Path) -> Hub:
    hub = Hub.init(tmp_path / "hub", keys=1)
    register_box(hub.dir, "box-a", SITE)
    register_box(hub.dir, "box-b", SITE)
    register_box(hub.dir, "box-c", "site-b")
    return hub


def start_hub(hub: Hub, broker: Broker) -> HubServer:
    server = HubServer(
        hub,
        host=broker.host,
        port=broker.port,
        ca=broker.pki.ca_file,
        cert=broker.pki.hub.cert,
        key=broker.pki.hub.key,
    )
    try:
        server.start().wait_ready()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(name="server")
def server_fixture(hub: Hub, broker: Broker) -> Iterator[HubServer]:
    server = start_hub(hub, broker)
    try:
        yield server
    finally:
        server.close()


def wait(cond: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(0.02)
    return value


def read_db(hub: Hub, fn: Callable[[HubStore], Any]) -> Any:
    store = HubStore(hub.dir / "hub.db", create=False)
    try:
        return fn(store)
    finally:
        store.close()


def ev(seq: int, etype: str = "passage", body: dict[str, Any] | None = None) -> protocol.Event:
    return protocol.Event(seq, secrets.token_hex(16), etype, time.time(), body or {"lane": "g1"})


def redemption(seq: int, ticket: str, *, state: str = "confirmed") -> protocol.Event:
    rid = secrets.token_hex(16)
    body: dict[str, Any] = {"id": rid, "canonical_id": ticket, "list_id": "default"}
    body["direction"] = "entry"
    body |= {"kind": "signed", "persons": 1, "state": state, "forced": False}
    return protocol.Event(seq, secrets.token_hex(16), "redemption", time.time(), body, rid)


class SessionProbe(Probe):
    """A box with a persistent session (clean_start=False), like the box's link."""

    def connect(self, timeout: float = 5.0) -> Probe:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        self.client.connect(
            self.broker.host, self.broker.port, keepalive=10, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._looping = True
        if not self._connected.wait(timeout):
            raise ConnectRefused(f"no successful CONNACK (connack={self.connack})")
        return self


class FakeBox:
    def __init__(self, probe: Probe, cn: str, site: str = SITE, epoch: str = EPOCH) -> None:
        self.p, self.cn, self.site, self.epoch = probe, cn, site, epoch

    def send(
        self, events: list[protocol.Event], *, site: str | None = None, box: str | None = None
    ) -> ReasonCode:
        batch = protocol.Batch(box or self.cn, site or self.site, self.epoch, tuple(events))
        return self.p.publish(protocol.up_events(self.cn), batch.encode())

    def next(self, kind: str, timeout: float = 5.0) -> bytes | None:
        """The next payload on gw/ID/down/<kind>, skipping the other kind."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.p.get(left)
            if msg is not None and msg.topic == f"gw/{self.cn}/down/{kind}":
                return bytes(msg.payload)
        return None

    def ack(self, timeout: float = 5.0) -> int:
        payload = self.next("ack", timeout)
        assert payload is not None, f"{self.cn}: no ack within {timeout} s"
        return protocol.parse_ack(payload).acked_through


def box(probes: Probes, broker: Broker, cn: str, **kw: Any) -> FakeBox:
    probe = probes(broker, broker.pki.box(cn))
    probe.subscribe(f"gw/{cn}/down/#")
    return FakeBox(probe, cn, **kw)


def test_events_stored_once_and_ack_holds_at_a_gap(
    hub: Hub, server: HubServer, broker: Broker, probes: Probes
) -> None:
    a = box(probes, broker, "box-a")
    first = [ev(1), ev(2), ev(3)]
    assert not a.send(first).is_failure
    assert a.ack() == 3
    a.send(first)  # published twice (a lost ack, a resend): stored once
    assert a.ack() == 3
    later = [ev(5), ev(6)]
    a.send(later)
    assert a.ack() == 3, "seq 4 is missing: the ack must not pass the gap"
    a.send([ev(4)])
    assert a.ack() == 6
    stored = read_db(hub, lambda s: s.events("box-a"))
    assert [(e, seq) for e, seq, _, _ in stored] == [(EPOCH, n) for n in range(1, 7)]
    assert [i for *_, i, _ in stored][:3] == [e.id for e in first]
    assert server.stats()["events_duplicate"] == 3
    # A re-imaged box (new epoch) starting at seq 1 again is a new stream, not a replay.
    fresh = FakeBox(a.p, "box-a", epoch="0" * 16)
    fresh.send([ev(1)])
    assert a.ack() == 1
    assert len(read_db(hub, lambda s: s.events("box-a"))) == 7


def test_unknown_box_wrong_site_and_forged_batches_are_refused(
    hub: Hub, server: HubServer, broker: Broker, probes: Probes, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = box(probes, broker, "box-x")
    other_site = box(probes, broker, "box-c", site="site-b")
    a = box(probes, broker, "box-a")
    assert not stranger.send([ev(1)]).is_failure  # the broker takes it; the hub refuses it
    other_site.send([ev(1)], site=SITE)
    a.send([ev(1)], box="box-b")  # box-a's payload naming box-b on box-a's own topic
    forged = protocol.Batch("box-b", SITE, EPOCH, (ev(1),)).encode()
    assert a.p.publish(protocol.up_events("box-b"), forged).value == 0x87  # the broker's ACL
    a.send([ev(1)])
    assert a.ack() == 1  # processed after every refused batch (one session, broker order)
    stats = server.stats()
    assert stats["refused_unknown_box"] == 1
    assert stats["refused_wrong_site"] == 1
    assert stats["refused_wrong_box"] == 1
    assert stranger.next("ack", 0.2) is None and other_site.next("ack", 0.2) is None
    others = read_db(hub, lambda s: [s.events(cn) for cn in ("box-x", "box-c", "box-b")])
    assert others == [[], [], []]
    assert edge_main(["hub", "status", "--dir", str(hub.dir)]) == 0
    out = capsys.readouterr().out
    assert "refused 拒收 box-x unknown_box x1" in out
    assert "refused 拒收 box-c wrong_site x1" in out
    assert "box-a site=site-a" in out and "acked_through=1" in out


def test_conflict_recorded_and_both_boxes_get_a_signed_report(
    hub: Hub, server: HubServer, broker: Broker, probes: Probes, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = box(probes, broker, "box-a"), box(probes, broker, "box-b")
    ticket, other = secrets.token_hex(16), secrets.token_hex(16)
    a.send([redemption(1, ticket), redemption(2, other)])
    assert a.ack() == 2
    # box-b: the same ticket (a conflict), and `other` pending then voided (nobody passed).
    pending = redemption(2, other, state="pending")
    assert pending.redemption_id is not None
    void = ev(3, "redemption_voided", {"redemption_id": pending.redemption_id, "why": "no pass"})
    b.send([redemption(1, ticket), pending, void])
    assert b.ack() == 3
    conflicts = read_db(hub, lambda s: s.conflicts())
    assert len(conflicts) == 1
    c = conflicts[0]
    assert (c["canonical_id"], {c["box_a"], c["box_b"]}) == (ticket, {"box-a", "box-b"})
    assert c["resolved_at"] is None  # flagged; both redemptions stay in history
    assert len(read_db(hub, lambda s: s.events("box-a"))) == 2
    for fake in (a, b):
        payload = fake.next("msg")
        assert payload is not None, f"{fake.cn} got no conflict report"
        down = protocol.verify_down(payload, hub.anchor, SITE, time.time())
        assert down.type == "conflict"
        assert down.body["canonical_id"] == ticket
        assert {r["box"] for r in down.body["redemptions"]} == {"box-a", "box-b"}
    assert b.next("msg", 0.3) is None, "one report per conflict, not one per redemption"
    assert edge_main(["hub", "status", "--dir", str(hub.dir)]) == 0
    assert f"ticket={ticket} list=default box-a / box-b" in capsys.readouterr().out.replace(
        "box-b / box-a", "box-a / box-b"
    )
    # A later void of one side resolves the flag.
    b.send([ev(4, "redemption_voided", {"redemption_id": c["redemption_b"], "why": "refund"})])
    assert b.ack() == 4
    assert read_db(hub, lambda s: s.conflicts())[0]["resolved_at"] is not None


def test_downlink_queued_while_box_offline_arrives_once_it_connects(
    hub: Hub, server: HubServer, broker: Broker, probes: Probes
) -> None:
    # box-a never connected: the broker has no session for it ("no matching subscribers"), so
    # the hub keeps the message and publishes it again when box-a reports online.
    body = {"template": "kitchen", "target": "station:hot", "data": {"order": "A17"}}
    msg_id = server.send("box-a", "print", body, ttl_s=600)
    wait(lambda: _attempts(hub, msg_id) > 0, what="a first publish of the print job")
    assert server.stats().get("downlink_sent", 0) == 0
    a = box(probes, broker, "box-a")
    a.p.publish(protocol.up_status("box-a"), b'{"v":1,"state":"online"}', retain=True)
    payload = a.next("msg", 8.0)
    assert payload is not None, "the queued print job never reached the box"
    down = protocol.verify_down(payload, hub.anchor, SITE, time.time())
    assert (down.id, down.type, down.body) == (msg_id, "print", body)
    online = read_db(hub, lambda s: s.summary()["boxes"]["box-a"]["online"])
    assert online is True

    # box-b has a persistent session, then goes away: a command queued through
    # `edge hub send` (another process's way in) waits in the broker for it.
    cert = broker.pki.box("box-b")
    with SessionProbe(broker, cert) as first:
        first.connect()
        first.subscribe("gw/box-b/down/#")
    argv = ["hub", "send", "--dir", str(hub.dir), "--box", "box-b", "--id", "cmd-1"]
    assert edge_main([*argv, "command", "open_door", "--door", "3"]) == 0
    wait(lambda: server.stats().get("downlink_sent", 0) >= 2, what="broker accepted cmd-1")
    with SessionProbe(broker, cert) as back:
        back.connect()
        msg = back.get(5.0)
    assert msg is not None and msg.topic == "gw/box-b/down/msg"
    down = protocol.verify_down(bytes(msg.payload), hub.anchor, SITE, time.time())
    assert (down.id, down.body) == ("cmd-1", {"command": "open_door", "door": 3})


def _attempts(hub: Hub, msg_id: str) -> int:
    def q(s: HubStore) -> int:
        return int(
            s.conn.execute("SELECT attempts FROM outgoing WHERE id = ?", (msg_id,)).fetchone()[0]
        )

    return int(read_db(hub, q))


def test_hub_restart_loses_and_doubles_nothing(hub: Hub, broker: Broker, probes: Probes) -> None:
    a = box(probes, broker, "box-a")
    events = [ev(n) for n in range(1, 7)]
    server = start_hub(hub, broker)
    try:
        a.send(events[:3])
        assert a.ack() == 3
    finally:
        server.close()
    # The hub is down: its persistent session holds what the box publishes meanwhile.
    assert a.send(events[3:]).value == 0  # success, not "no matching subscribers"
    assert a.send(events[:3]).value == 0  # a resend of rows the hub already has
    server = start_hub(hub, broker)
    try:
        wait(lambda: a.ack(5.0) == 6, what="ack through 6 after the restart")
    finally:
        server.close()
    stored = read_db(hub, lambda s: s.events("box-a"))
    assert [(seq, i) for _, seq, i, _ in stored] == [(e.seq, e.id) for e in events]


def test_edge_hub_serve_runs_until_sigterm(hub: Hub, broker: Broker, probes: Probes) -> None:
    pki = broker.pki
    cmd = [sys.executable, "-m", "edge.cli", "hub", "serve", "--dir", str(hub.dir)]
    cmd += ["--broker", f"{broker.host}:{broker.port}", "--ca", str(pki.ca_file)]
    cmd += ["--cert", str(pki.hub.cert), "--key", str(pki.hub.key)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        a = box(probes, broker, "box-a")
        wait(lambda: "hub" in broker.log_text() and "Sending SUBACK to hub" in broker.log_text())
        a.send([ev(1), ev(2)])
        assert a.ack() == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "batch box=box-a" in err and "acked_through=2" in err
    assert json.loads(out or "{}") == {}
