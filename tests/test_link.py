"""The box's cloud link (sync/link.py) against a real mosquitto with mTLS and the per-box ACL.

The hub is a stand-in written here: a real paho client with the hub's certificate that stores
events by (epoch, seq), acks its contiguous high-water mark with its own time, and publishes
downlink messages signed with a real issuer's key. The box side is a real ledger.db.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge.errors import StoreError
from edge.ledger import Ledger, acked_through
from edge.ledger_schema import LEDGER_SCHEMA
from edge.store import open_db, transaction
from sync import protocol
from sync.hub.issuer import Hub
from sync.link import Link, backoff_delay
from sync.link_store import LedgerLinkStore, inbox_done, inbox_unhandled
from sync.pki import tls_client_context
from sync.protocol import Down, Event
from tests.broker import (  # noqa: F401  (the *_fixture names register fixtures)
    Broker,
    Pki,
    Probes,
    broker_fixture,
    pki_fixture,
    probes_fixture,
)

BOX = "wl-gate-01"
SITE = "west-lake"
SKEW = 5.0  # the stand-in hub's clock runs this far ahead of the box's


def wait(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class HubStandIn:
    """Stores events by (epoch, seq), acks the contiguous high-water mark, signs downlink."""

    def __init__(self, broker: Broker, pki: Pki, issuer: Hub) -> None:
        self.issuer = issuer
        self.events: dict[tuple[str, int], Event] = {}
        self.order: list[int] = []  # seqs in order of first arrival
        self.copies: Counter[int] = Counter()
        self.high: dict[str, int] = {}
        self.acking = True
        self.lock = threading.Lock()
        self.connected = threading.Event()
        c = self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="hub", protocol=MQTTProtocolVersion.MQTTv5
        )
        c.tls_set_context(tls_client_context(pki.ca_file, pki.hub.cert, pki.hub.key))
        c.reconnect_delay_set(1, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *_a: self.connected.clear()
        c.on_message = self._on_message
        c.connect_async(broker.host, broker.port, keepalive=10)
        c.loop_start()
        assert self.connected.wait(10), "hub stand-in did not connect"

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        c.subscribe("gw/+/up/events", qos=1)
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        box = protocol.box_of(msg.topic)
        batch = protocol.parse_batch(bytes(msg.payload), box)
        with self.lock:
            for e in batch.events:
                self.copies[e.seq] += 1
                if (batch.epoch, e.seq) not in self.events:
                    self.events[(batch.epoch, e.seq)] = e
                    self.order.append(e.seq)
            hw = self.high.get(batch.epoch, 0)
            while (batch.epoch, hw + 1) in self.events:
                hw += 1
            self.high[batch.epoch] = hw
        if self.acking:
            self.ack(box, batch.epoch)

    def ack(self, box: str, epoch: str) -> None:
        payload = protocol.encode_ack(epoch, self.high.get(epoch, 0), time.time() + SKEW)
        self.client.publish(protocol.down_ack(box), payload, qos=1)

    def signed(self, msg_type: str, body: dict[str, Any], msg_id: str, **kw: Any) -> bytes:
        kid = self.issuer.active_kid()
        return protocol.sign_down(
            msg_type,
            body,
            msg_id=msg_id,
            issued_at=kw.get("issued_at", time.time()),
            ttl_s=kw.get("ttl_s", 600),
            key=self.issuer.signing_key(kid),
            cert_hex=self.issuer.cert_hex(kid),
        )

    def down(self, payload: bytes) -> None:
        self.client.publish(protocol.down_msg(BOX), payload, qos=1).wait_for_publish(5)

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def issuer(tmp_path: Path) -> Hub:
    return Hub.init(tmp_path / "issuer")


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.db")
    try:
        yield led
    finally:
        led.close()


@pytest.fixture
def hub(broker: Broker, pki: Pki, issuer: Hub) -> Iterator[HubStandIn]:
    h = HubStandIn(broker, pki, issuer)
    try:
        yield h
    finally:
        h.close()


class Links:
    def __init__(self, broker: Broker, pki: Pki, issuer: Hub, ledger: Ledger) -> None:
        self.broker, self.pki, self.issuer, self.ledger = broker, pki, issuer, ledger
        self.downs: list[Down] = []
        self.open: list[Link] = []

    def __call__(
        self, store: LedgerLinkStore | None = None, *, connect: bool = True, **kw: Any
    ) -> Link:
        cert = self.pki.box(BOX)
        link = Link(
            store or LedgerLinkStore(self.ledger.path, box=BOX, site=SITE),
            host=self.broker.host,
            port=self.broker.port,
            ca=self.pki.ca_file,
            cert=cert.cert,
            key=cert.key,
            anchor=self.issuer.anchor,
            on_down=kw.pop("on_down", self.downs.append),
            **kw,
        )
        self.open.append(link)
        link.start()
        if connect:
            wait(lambda: link.status()["connected"], what="the link to connect")
        return link


@pytest.fixture
def links(broker: Broker, pki: Pki, issuer: Hub, ledger: Ledger) -> Iterator[Links]:
    made = Links(broker, pki, issuer, ledger)
    try:
        yield made
    finally:
        for link in made.open:
            link.stop()


def append(ledger: Ledger, n: int, pad: int = 0) -> list[str]:
    """n outbox events in one transaction, as the service writes them; their ids."""
    with transaction(ledger.conn):
        ids = [
            ledger.append_event("passage", {"i": i, "pad": "x" * pad}, time.time()).hex()
            for i in range(n)
        ]
    return ids


def kill_connection(link: Link) -> None:
    """Drop the TCP connection under the link without an MQTT DISCONNECT (a pulled cable)."""
    sock = link._client.socket()
    assert sock is not None
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.shutdown(socket.SHUT_RDWR)
    dup.close()


def inbox_rows(path: Path) -> list[tuple[str, str]]:
    conn = open_db(path, LEDGER_SCHEMA, create=False, check=False)
    try:
        return [(str(i), str(t)) for i, t in conn.execute("SELECT id, type FROM inbox")]
    finally:
        conn.close()


# -- uplink ----------------------------------------------------------------------------------------


def test_events_arrive_in_order_and_leave_the_outbox_only_on_the_hub_ack(
    hub: HubStandIn, links: Links, ledger: Ledger
) -> None:
    hub.acking = False
    link = links()
    ids: list[str] = []
    for _ in range(5):  # written while the link runs, as lanes would
        ids += append(ledger, 100)
        link.notify()
    wait(lambda: hub.count() == 500, what="500 events at the hub")
    assert hub.order == list(range(1, 501))
    assert [hub.events[(ledger.meta("epoch") or "", s)].id for s in range(1, 501)] == ids
    # The broker has them all (PUBACK) but the hub has not acked: nothing left the outbox.
    time.sleep(0.3)
    assert ledger.outbox_depth() == 500
    hub.acking = True
    hub.ack(BOX, ledger.meta("epoch") or "")
    wait(lambda: ledger.outbox_depth() == 0, what="the outbox to empty")
    st = link.status()
    assert st["acked_through"] == 500 and st["pending_acks"] == 0 and st["connected"]
    assert abs(st["clock_offset_s"] - SKEW) < 1.0
    assert abs(float(ledger.meta("clock_offset_s") or 0) - SKEW) < 1.0
    # Later rows continue the stream.
    append(ledger, 3)
    link.notify()
    wait(lambda: ledger.outbox_depth() == 0 and hub.count() == 503, what="3 more events")


def rows(ledger: Ledger) -> int:
    """Rows physically in the outbox (acked ones included, until the link sweeps them)."""
    return int(ledger.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def test_acked_rows_stay_for_the_daemon_and_a_restart_does_not_resend_them(
    hub: HubStandIn, links: Links, ledger: Ledger
) -> None:
    """The link records the hub's ack mark; the rows through it stay in the outbox until the
    daemon sweeps them (edge/outbox_sweep.py, tests/test_outbox_sweep.py). A new link goes on
    after the mark and does not send them again."""
    link = links()
    append(ledger, 200)
    link.notify()
    wait(lambda: hub.count() == 200 and ledger.outbox_depth() == 0, what="200 events acked")
    link.stop()
    assert rows(ledger) == 200 and acked_through(ledger.conn) == max_seq(ledger)
    again = links()
    wait(lambda: again.status()["connected"], what="the new link to connect")
    append(ledger, 1)
    again.notify()
    wait(lambda: hub.count() == 201 and ledger.outbox_depth() == 0, what="one more event")
    assert max(hub.copies.values()) == 1, "an acked event was sent again after the restart"


def max_seq(ledger: Ledger) -> int:
    return int(ledger.conn.execute("SELECT max(seq) FROM outbox").fetchone()[0])


def test_unacked_rows_are_sent_again_and_the_hub_dedupes(
    hub: HubStandIn, links: Links, ledger: Ledger
) -> None:
    hub.acking = False  # the ack is never sent (lost, or the hub is behind)
    append(ledger, 300)
    link = links(resend_after=0.5)
    wait(
        lambda: hub.count() == 300 and min(hub.copies.values()) >= 2,
        what="every event sent twice",
    )
    assert ledger.outbox_depth() == 300
    assert link.status()["resent_batches"] >= 1
    hub.acking = True  # acks the next copy that arrives
    wait(lambda: ledger.outbox_depth() == 0, what="the outbox to empty")
    assert hub.count() == 300 and hub.high[ledger.meta("epoch") or ""] == 300


def test_broker_restart_mid_stream_loses_nothing(
    hub: HubStandIn, links: Links, ledger: Ledger, broker: Broker
) -> None:
    link = links(resend_after=1.0)
    hub.acking = False  # the restart comes before the hub's acks: all 750 are outstanding
    ids = append(ledger, 750, pad=600)  # about 0.5 MB: several 128 KB batches
    link.notify()
    wait(lambda: hub.count() == 750, what="the first events")
    assert ledger.outbox_depth() == 750
    broker.restart()  # no persistence: the box's session and the hub's subscription are gone
    hub.acking = True
    ids += append(ledger, 750, pad=600)  # written while the link is down
    link.notify()
    wait(lambda: ledger.outbox_depth() == 0, timeout=30, what="the outbox to empty")
    epoch = ledger.meta("epoch") or ""
    assert hub.high[epoch] == 1500
    assert [hub.events[(epoch, s)].id for s in range(1, 1501)] == ids
    st = link.status()
    # What was sent but not acked went again after the reconnect (the session was gone).
    assert st["connected"] and st["resent_batches"] >= 1


# -- downlink --------------------------------------------------------------------------------------


def test_a_print_job_is_stored_before_it_is_handled_and_handled_once(
    hub: HubStandIn, links: Links, ledger: Ledger
) -> None:
    seen_in_inbox: list[bool] = []

    def on_down(down: Down) -> None:
        seen_in_inbox.append((down.id, down.type) in inbox_rows(ledger.path))
        links.downs.append(down)

    link = links(on_down=on_down)
    body = {"template": "kitchen", "target": "station:hot", "data": {"table": "A3"}}
    job = hub.signed("print", body, "job-1")
    hub.down(job)
    wait(lambda: len(links.downs) == 1, what="the print job")
    assert links.downs[0].id == "job-1" and links.downs[0].body == body
    hub.down(job)  # the broker delivers it again (e.g. its PUBACK was lost)
    hub.down(hub.signed("print", body, "job-2"))
    wait(lambda: len(links.downs) == 2, what="the second job")
    assert [d.id for d in links.downs] == ["job-1", "job-2"]
    assert seen_in_inbox == [True, True]
    assert link.status()["duplicates"] == 1 and link.status()["received"] == 2
    assert sorted(r.id for r in inbox_unhandled(ledger.conn)) == ["job-1", "job-2"]
    with transaction(ledger.conn):
        inbox_done(ledger.conn, "job-1", "printed", time.time())
    assert [r.id for r in inbox_unhandled(ledger.conn)] == ["job-2"]


class FailingOnce(LedgerLinkStore):
    """A ledger whose first inbox write fails (disk full, locked too long)."""

    failed = False

    def accept(self, down: Down, raw: bytes) -> bool:
        if not self.failed:
            self.failed = True
            raise StoreError(self.path, "disk I/O error", "free some space")
        return super().accept(down, raw)


def test_a_message_not_stored_is_not_acked_and_comes_back_after_a_reconnect(
    hub: HubStandIn, links: Links, ledger: Ledger
) -> None:
    link = links(FailingOnce(ledger.path, box=BOX, site=SITE))
    hub.down(hub.signed("command", {"command": "open_door", "door": 3}, "cmd-1"))
    wait(lambda: (link.status()["last_error"] or {}).get("error", "").startswith("inbox"))
    time.sleep(0.2)
    assert links.downs == [] and inbox_rows(ledger.path) == []
    kill_connection(link)
    wait(lambda: len(links.downs) == 1, what="the redelivered command")
    assert links.downs[0].id == "cmd-1" and inbox_rows(ledger.path) == [("cmd-1", "command")]


def test_bad_downlink_is_refused_counted_and_the_link_stays_up(
    hub: HubStandIn, links: Links, tmp_path: Path
) -> None:
    link = links()
    good = json.loads(hub.signed("print", {"template": "kitchen"}, "ok-0"))
    unsigned = {k: v for k, v in good.items() if k != "sig"}
    tampered = good | {"body": {"template": "receipt"}}
    expired = hub.signed("print", {}, "old-1", issued_at=time.time() - 3600, ttl_s=60)
    foreign = Hub.init(tmp_path / "rogue")
    rogue = protocol.sign_down(
        "command",
        {"command": "open_door", "door": 1},
        msg_id="rogue-1",
        issued_at=time.time(),
        ttl_s=600,
        key=foreign.signing_key(1),
        cert_hex=foreign.cert_hex(1),
    )
    for payload in (
        json.dumps(unsigned).encode(),
        json.dumps(tampered).encode(),
        expired,
        json.dumps(good | {"v": 2}).encode(),
        b"\xff not json",
        rogue,
    ):
        hub.down(payload)
    hub.down(hub.signed("print", {"template": "kitchen"}, "ok-1"))
    wait(lambda: len(links.downs) == 1, what="the good message after the bad ones")
    refused = {
        "unsigned": 1,
        "bad_signature": 1,
        "expired": 1,
        "unknown_version": 1,
        "malformed": 1,
        "untrusted_key": 1,
    }
    assert link.status()["refused"] == refused
    assert [d.id for d in links.downs] == ["ok-1"] and link.status()["connected"]
    # Refused messages were acked: after a reconnect the broker does not deliver them again.
    kill_connection(link)
    wait(lambda: not link.status()["connected"], what="the drop to be seen")
    wait(lambda: link.status()["connected"], what="the reconnect")
    hub.down(hub.signed("print", {"template": "kitchen"}, "ok-2"))
    wait(lambda: len(links.downs) == 2, what="a message after the reconnect")
    assert link.status()["refused"] == refused


# -- status and last will --------------------------------------------------------------------------


def test_last_will_offline_when_the_connection_dies_and_online_after_reconnect(
    broker: Broker, pki: Pki, probes: Probes, links: Links, ledger: Ledger
) -> None:
    watcher = probes(broker, pki.hub)
    opts = SubscribeOptions(qos=1, retainAsPublished=True)
    watcher.client.subscribe(protocol.up_status(BOX), options=opts)
    time.sleep(0.2)

    def next_status() -> tuple[dict[str, Any], bool]:
        msg = watcher.get(10)
        assert msg is not None, "no status message"
        return json.loads(msg.payload), msg.retain

    append(ledger, 2)
    link = links()
    doc, retained = next_status()
    assert doc["state"] == "online" and doc["outbox"] == 2 and retained
    kill_connection(link)
    doc, retained = next_status()
    assert doc == {"v": 1, "state": "offline"} and retained  # the broker's last will
    doc, retained = next_status()
    assert doc["state"] == "online" and retained
    link.stop()
    doc, _ = next_status()
    assert doc == {"v": 1, "state": "offline", "clean": True}
    # What a dashboard connecting later sees: the retained clean offline, and no last will.
    late = probes(broker, pki.hub)
    late.subscribe(protocol.up_status(BOX))
    msg = late.get(5)
    assert msg is not None and msg.retain
    assert json.loads(msg.payload)["clean"] is True
    assert watcher.get(0.5) is None
    link.stop()  # idempotent


def test_a_link_that_never_reached_the_broker_keeps_the_rows_and_stops_promptly(
    broker: Broker, links: Links, ledger: Ledger
) -> None:
    broker.stop()
    append(ledger, 5)
    link = links(connect=False)
    time.sleep(1.5)  # a few refused connection attempts
    st = link.status()
    assert not st["connected"] and st["sent_batches"] == 0
    assert ledger.outbox_depth() == 5
    t0 = time.monotonic()
    link.stop()
    assert time.monotonic() - t0 < 3.0


def test_reconnect_delays_are_jittered_and_capped() -> None:
    """100 boxes dropped by the same outage do not come back in the same second."""
    first = [backoff_delay(0, 60) for _ in range(100)]
    assert all(0 <= d <= 1 for d in first) and len({round(d, 2) for d in first}) > 20
    late = [backoff_delay(12, 60) for _ in range(100)]
    assert all(0 <= d <= 60 for d in late) and max(late) - min(late) > 20
