"""Sync under network faults: the real link and the real hub, a fault proxy between box and broker.

The box's side is sync/link.py over a real ledger.db; the hub is `edge hub serve`'s HubServer,
connected to the broker directly; mosquitto runs with mTLS, the per-box ACL and persistence. A
writer thread appends outbox events in small transactions (as the lanes do) WHILE the proxy
drops PUBACKs and acks, resets connections, blackholes the link or the broker restarts. After
each run: the outbox drains to 0, the hub holds seqs 1..N of the box's epoch exactly once each
with every event id once, and stored them in seq order (received_at never goes back as seq
grows). Mixed runs take their seed from FAULT_SEED (logged) so a failure can be replayed.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from drivers.printer.sim import SimPrinter
from edge.ledger import Ledger
from edge.ledger import outbox_depth as ledger_outbox_depth
from edge.ledger_schema import LEDGER_SCHEMA
from edge.store import open_db, transaction
from sync.hub.issuer import Hub
from sync.hub.serve import HubServer
from sync.hub.store import HUB_SCHEMA
from sync.link import LedgerLinkStore, Link
from sync.protocol import Down
from tests.broker import Broker, Pki, make_hub, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE as KIT_SITE
from tests.daemon_kit import Running, make_site, running
from tests.faultproxy import FaultProxy

log = logging.getLogger(__name__)

BOX = "wl-gate-07"
SITE = "west-lake"
KEEPALIVE = 2  # seconds: a blackhole is noticed after about two of these
RESEND_AFTER = 1.5
BACKOFF_MAX = 0.5  # the jitter on top of paho's fixed pause between reconnects
RECONNECT_S = 0.2  # that pause (1 s in the box): see Rig.link
SETTLE_S = 45.0


def wait(cond: Callable[[], Any], timeout: float, what: str) -> float:
    """Until cond() is true; returns the seconds it took."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def query(db: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from hub.db or ledger.db, on a connection of the test's own (WAL: beside the
    owners' connections)."""
    schema = HUB_SCHEMA if db.name == "hub.db" else LEDGER_SCHEMA
    conn = open_db(db, schema, create=False, check=False)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def hub_rows(db: Path, box: str) -> list[tuple[str, int, str, float]]:
    """(epoch, seq, id, received_at) of a box's events at the hub, in stream order."""
    sql = "SELECT epoch, seq, id, received_at FROM events WHERE box = ? ORDER BY epoch, seq"
    return [(str(e), int(s), str(i), float(r)) for e, s, i, r in query(db, sql, box)]


def hub_count(db: Path, box: str) -> int:
    """How many of a box's events the hub has stored."""
    return int(query(db, "SELECT count(*) FROM events WHERE box = ?", box)[0][0])


def hub_acked(db: Path, box: str, epoch: str) -> int | None:
    sql = "SELECT acked_through FROM streams WHERE box = ? AND epoch = ?"
    rows = query(db, sql, box, epoch)
    return int(rows[0][0]) if rows else None


def accepted(db: Path, msg_id: str) -> bool:
    """The broker accepted the hub's downlink message `msg_id` (for a box's session)."""
    rows = query(db, "SELECT accepted_at FROM outgoing WHERE id = ?", msg_id)
    return bool(rows) and rows[0][0] is not None


def outbox_depth(ledger: Path) -> int:
    """Events the hub has not acked (acked rows may wait for the link's sweep)."""
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=10)
    try:
        return ledger_outbox_depth(conn)
    finally:
        conn.close()


def assert_exactly_once(db: Path, box: str, epoch: str, ids: list[str]) -> None:
    """The hub holds seqs 1..N of `epoch` once each, with the box's ids in order, stored in seq
    order, and acks through N."""
    rows = hub_rows(db, box)
    assert {e for e, *_ in rows} == {epoch}, "events of another epoch at the hub"
    seqs = [s for _, s, _, _ in rows]
    assert seqs == list(range(1, len(ids) + 1)), f"gap or surplus: {len(seqs)} vs {len(ids)}"
    stored = [i for _, _, i, _ in rows]
    assert len(set(stored)) == len(stored)
    assert stored == ids, "the hub holds other events than the box committed"
    back = [s for (_, s, _, a), (_, _, _, b) in itertools.pairwise(rows) if b < a]
    assert not back, f"seqs stored after a later seq: {back[:10]}"
    assert hub_acked(db, box, epoch) == len(ids)


def prints(downs: list[Down]) -> list[str]:
    """Ids of the print jobs the link handed over (the hub sends other messages too)."""
    return [d.id for d in downs if d.type == "print"]


class Writer:
    """Appends outbox events in small transactions on its own thread (its own Ledger
    connection, as the daemon's db thread has), and wakes the link after each commit."""

    def __init__(self, path: Path, link: Link, seed: int) -> None:
        self.path, self.link = path, link
        self.rng = random.Random(seed)
        self.ids: list[str] = []  # committed, in seq order
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-writer")

    def _run(self) -> None:
        ledger = Ledger(self.path)
        try:
            k = 0
            while not self._stop.is_set():
                n = self.rng.randint(1, 12)
                with transaction(ledger.conn):
                    ids = [
                        ledger.append_event("passage", {"lane": "g1", "n": k + i}, time.time())
                        for i in range(n)
                    ]
                k += n
                self.ids += [i.hex() for i in ids]
                self.link.notify()
                self._stop.wait(self.rng.uniform(0.01, 0.05))
        except BaseException as err:
            self.error = err
        finally:
            ledger.close()

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, f"writer failed: {self.error!r}"


@dataclass
class Rig:
    tmp: Path
    pki: Pki
    broker: Broker
    issuer: Hub
    server: HubServer
    proxy: FaultProxy
    ledger: Path
    epoch: str
    downs: list[Down] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)

    def link(self) -> Link:
        cert = self.pki.box(BOX)
        link = Link(
            LedgerLinkStore(self.ledger, box=BOX, site=SITE),
            host=self.proxy.host,
            port=self.proxy.port,
            ca=self.pki.ca_file,
            cert=cert.cert,
            key=cert.key,
            anchor=self.issuer.anchor,
            on_down=self.downs.append,
            keepalive=KEEPALIVE,
            resend_after=RESEND_AFTER,
            backoff_max=BACKOFF_MAX,
            # paho's fixed pause between reconnect attempts is 1 s in the box (the jittered
            # backoff comes on top, unchanged). These tests reconnect ~20 times and check what
            # arrives, not how soon.
            reconnect_pause_s=RECONNECT_S,
        )
        self.links.append(link)
        link.start()
        wait(lambda: link.status()["connected"], 15, "the link to connect")
        return link

    def settle(self, ids: list[str]) -> float:
        """Until the outbox is empty and the hub acked every event; the seconds it took."""
        took = wait(
            lambda: (
                outbox_depth(self.ledger) == 0
                and hub_acked(self.server.db_path, BOX, self.epoch) == len(ids)
            ),
            SETTLE_S,
            f"the outbox to drain ({len(ids)} events)",
        )
        assert_exactly_once(self.server.db_path, BOX, self.epoch, ids)
        return took

    def duplicates(self) -> int:
        return self.server.stats().get("events_duplicate", 0)

    def stored(self) -> int:
        return hub_count(self.server.db_path, BOX)

    def flowing(self, link: Link, what: str) -> None:
        """Until the hub stores events again (a batch went up and was stored since now): what
        the tests waited a fixed while for, which a slow machine may not give."""
        n = self.stored()
        wait(lambda: link.status()["connected"] and self.stored() > n, 20, what)


@pytest.fixture
def rig(tmp_path: Path, pki: Pki) -> Iterator[Rig]:
    issuer = Hub.init(tmp_path / "issuer", keys=1)
    ledger = Ledger(tmp_path / "ledger.db")
    epoch = ledger.meta("epoch") or ""
    ledger.close()
    broker = Broker(pki, tmp_path / "broker", persistence=True).start()
    server = proxy = None
    links: list[Link] = []
    try:
        server = make_hub(issuer, broker, tmp_path / "hub.db", {BOX: SITE}, keepalive=5)
        server.start().wait_ready()
        proxy = FaultProxy(broker.host, broker.port).start()
        r = Rig(tmp_path, pki, broker, issuer, server, proxy, ledger.path, epoch, links=links)
        yield r
    finally:
        if proxy is not None:
            proxy.set_mode("pass")  # a clean stop says "offline" through it
        for link in links:
            link.stop()
        if proxy is not None:
            proxy.close()
        if server is not None:
            server.close()
        broker.stop()


def test_lost_pubacks_and_acks_are_resent_and_stored_once(rig: Rig) -> None:
    link = rig.link()
    with Writer(rig.ledger, link, seed=1) as w:
        for _ in range(3):
            rig.flowing(link, "events stored through the link (back after a window)")
            before, dropped = rig.duplicates(), rig.proxy.dropped_down
            sent = link.status()["sent_batches"]
            rig.proxy.set_mode("drop_down")  # the hub stores, but its acks and PUBACKs are lost
            # The window lasts until a batch published inside it was stored (its PUBACK and the
            # hub's ack went down into the void) and the proxy discarded bytes.

            def published(n: int = sent) -> bool:
                return int(link.status()["sent_batches"]) > n

            wait(published, 20, "a batch in the window")

            def lost(n: int = rig.stored(), d: int = dropped) -> bool:
                return rig.stored() > n and rig.proxy.dropped_down > d

            wait(lost, 20, "the hub to store events whose acks are lost")
            rig.proxy.set_mode("pass")  # the broken TLS streams are reset

            def doubled(n: int = before) -> bool:  # what went up in the window comes again
                return rig.duplicates() > n

            wait(doubled, 20, "duplicates at the hub after a drop_down window")
    took = rig.settle(w.ids)
    st = link.status()
    log.info(
        "drop_down x3: %d events, %d duplicates at the hub, %d bytes dropped, resent %d batches, "
        "drained in %.1f s",
        *(len(w.ids), rig.duplicates(), rig.proxy.dropped_down, st["resent_batches"], took),
    )
    assert rig.proxy.dropped_down > 0


def test_repeated_resets_under_traffic_lose_and_double_nothing(rig: Rig) -> None:
    link = rig.link()
    rng = random.Random(2)
    with Writer(rig.ledger, link, seed=2) as w:
        for i in range(6):
            rig.flowing(link, "events stored through the link")
            time.sleep(rng.uniform(0.0, 0.3))  # batches in flight, acks on their way
            seen = rig.proxy.accepted
            rig.proxy.reset_all()
            if i == 3:  # and once the link stays refused for a while
                rig.proxy.set_mode("reset")
                time.sleep(1.0)
                rig.proxy.set_mode("pass")

            def back(n: int = seen) -> bool:  # on a new, live connection before the next cut
                live = rig.proxy.accepted > n and rig.proxy.connections > 0
                return live and bool(link.status()["connected"])

            wait(back, 20, "the link back after a reset")
        time.sleep(0.5)
    took = rig.settle(w.ids)
    log.info(
        "resets: %d events, %d connections accepted, %d duplicates, drained in %.1f s",
        *(len(w.ids), rig.proxy.accepted, rig.duplicates(), took),
    )


def test_blackhole_longer_than_keepalive_is_detected_and_healed(rig: Rig) -> None:
    link = rig.link()
    with Writer(rig.ledger, link, seed=3) as w:
        rig.flowing(link, "events stored through the link")
        t0, tried = time.monotonic(), rig.proxy.accepted
        rig.proxy.set_mode("blackhole")
        detect = wait(lambda: not link.status()["connected"], 10 * KEEPALIVE, "the drop")
        held = rig.stored()
        # The link tries again, and the attempt goes nowhere (accepted, never forwarded).
        wait(lambda: rig.proxy.accepted > tried, 20, "a reconnect attempt into the blackhole")
        time.sleep(0.3)
        assert rig.stored() == held, "events crossed the blackhole"
        assert outbox_depth(rig.ledger) > 0
        t1 = time.monotonic()
        rig.proxy.set_mode("pass")
        back = wait(lambda: link.status()["connected"], 30, "the reconnect after the heal")
        time.sleep(0.5)
    catchup = rig.settle(w.ids)
    log.info(
        "blackhole %.1f s (keepalive %d s): detected after %.1f s, reconnected %.1f s after the "
        "heal, outbox empty %.1f s after that; %d events, %d duplicates",
        *(t1 - t0, KEEPALIVE, detect, back, catchup, len(w.ids), rig.duplicates()),
    )


def test_broker_restart_with_persistence_loses_nothing(rig: Rig) -> None:
    link = rig.link()
    with Writer(rig.ledger, link, seed=4) as w:
        rig.flowing(link, "events stored through the link")
        rig.broker.stop()
        # Queued at the hub while the broker is away: delivered once after it is back.
        job = rig.server.send(BOX, "print", {"template": "kitchen", "data": {}}, 600, "job-r1")
        time.sleep(0.5)
        rig.broker.start()
        rig.flowing(link, "events stored through the restarted broker")
    took = rig.settle(w.ids)
    wait(lambda: prints(rig.downs), 20, "the print job queued during the restart")
    time.sleep(0.5)
    assert prints(rig.downs) == [job]
    dups = rig.duplicates()
    log.info("broker restart: %d events, %d duplicates, drained in %.1f s", len(w.ids), dups, took)


def test_mixed_faults_with_downlink_deliver_everything_once(rig: Rig) -> None:
    seed = int(os.environ.get("FAULT_SEED", random.randrange(1 << 32)))
    log.info("mixed faults: FAULT_SEED=%d", seed)
    rng = random.Random(seed)
    link = rig.link()
    sent: list[str] = []
    steps: Counter[str] = Counter()
    with Writer(rig.ledger, link, seed=seed) as w:
        for n in range(9):
            fault = rng.choice(["drop_down", "reset", "refuse", "short_blackhole", "shaped"])
            if n == 4:
                fault = "broker_restart"
            steps[fault] += 1
            if rng.random() < 0.5:
                body = {"template": "kitchen", "data": {"n": n}}
                sent.append(rig.server.send(BOX, "print", body, 600, f"job-m{n}"))
            if fault == "drop_down":
                rig.proxy.set_mode("drop_down")
                time.sleep(rng.uniform(0.5, 2.0))
            elif fault == "reset":
                rig.proxy.reset_all()
            elif fault == "refuse":
                rig.proxy.set_mode("reset")
                time.sleep(rng.uniform(0.3, 1.0))
            elif fault == "short_blackhole":  # shorter than the keepalive: held, then delivered
                rig.proxy.set_mode("blackhole")
                time.sleep(rng.uniform(0.3, 1.2))
            elif fault == "shaped":
                rig.proxy.shape(rtt_ms=100, rate_bps=2_000_000)
                time.sleep(1.5)
                rig.proxy.shape()
            else:
                rig.broker.restart()
            rig.proxy.set_mode("pass")
            time.sleep(rng.uniform(0.3, 1.0))
    took = rig.settle(w.ids)
    wait(lambda: len(prints(rig.downs)) >= len(sent), 30, "every print job")
    time.sleep(0.5)
    assert sorted(prints(rig.downs)) == sorted(sent), f"seed {seed}"
    log.info(
        "mixed (seed %d, %s): %d events, %d duplicates, %d downlink, drained in %.1f s",
        *(seed, dict(steps), len(w.ids), rig.duplicates(), len(sent), took),
    )


# -- the daemon: a print job sent while the box is offline -------------------------------------

DAEMON_BOX = "box-e2e"  # tests/daemon_kit.py's [box] device


def test_print_job_sent_while_box_offline_prints_once_after_reconnect(
    tmp_path: Path, pki: Pki
) -> None:
    """The daemon (tests/daemon_kit.py) through the proxy: a print job queued at the hub while
    the box is cut off (proxy refusing), then while the daemon is stopped, each prints once."""
    site = make_site(tmp_path)
    broker = Broker(pki, tmp_path / "broker").start()
    certs = pki.box(DAEMON_BOX)
    hub = make_hub(site.hub, broker, tmp_path / "hub.db", {DAEMON_BOX: KIT_SITE})
    proxy = FaultProxy(broker.host, broker.port)
    try:
        proxy.start()
        with (site.home / "edge.toml").open("a") as f:
            f.write(
                f'\n[sync]\nbroker = "127.0.0.1:{proxy.port}"\nca = "{pki.ca_file}"\n'
                f'cert = "{certs.cert}"\nkey = "{certs.key}"\n'
            )
        hub.start().wait_ready()
        body = {"template": "test_page", "data": {}, "target": "receipt"}
        with running(site, cloud=True) as d:
            d.wait(lambda: _link(d).get("connected") is True, 20, "the link")
            proxy.set_mode("reset")  # the cable is cut: live connection reset, none accepted
            d.wait(lambda: _link(d).get("connected") is False, 20, "the box to see it")
            hub.send(DAEMON_BOX, "print", body, 600, msg_id="offline-job-1")
            # The broker holds it in the box's persistent session.
            wait(lambda: accepted(hub.db_path, "offline-job-1"), 20, "the broker to take it")
            assert _test_pages(d) == 0
            proxy.set_mode("pass")
            d.wait(lambda: _test_pages(d) >= 1, 40, "the job after the reconnect")
            time.sleep(1.5)  # a second copy would print meanwhile
            assert _test_pages(d) == 1
        # The box is off: the next job waits in the broker, prints once at the next start, and
        # the first one is not printed again.
        hub.send(DAEMON_BOX, "print", body, 600, msg_id="offline-job-2")
        wait(lambda: accepted(hub.db_path, "offline-job-2"), 20, "the broker to take job 2")
        with running(site, cloud=True, bundle=False) as d:
            d.wait(lambda: _test_pages(d) >= 1, 40, "job 2 after the restart")
            time.sleep(1.5)
            assert _test_pages(d) == 1
            done = d.events("cloud")
            assert [e["id"] for e in done if e["type"] == "print"] == ["offline-job-2"]
    finally:
        proxy.close()
        hub.close()
        broker.stop()


def _link(d: Running) -> dict[str, Any]:
    status = d.box.cloud_status
    return status() if status is not None else {}


def _test_pages(d: Running) -> int:
    dev = d.box.slots["receipt"].device
    assert isinstance(dev, SimPrinter) and dev.server is not None
    return sum("TEST PAGE" in line for line in dev.server.machine.text)
