"""The parts `bench sync` is made of: a real mosquitto with mTLS and the per-box ACL
(tests/broker.py), the reference hub as its own process (`edge hub serve`, as a cloud would run
it), box ledgers with a filled outbox, and the box's real Link (sync/link.py).

Outbox events are what a gate lane writes for each admission (edge/service.py): a `redemption`
(the Redemption row as JSON, state pending, with warnings and entries) and its
`redemption_confirmed`, each with its redemption id, both through Ledger.append_event inside
transactions. The hub stores them, tracks the redemptions for conflict detection and writes the
site's "used" delta from them (signed bundle chunks down to the site's boxes): the whole work a
real drain causes.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.ledger import Ledger, Redemption
from edge.store import transaction
from sync.hub.issuer import BundleContent, Hub
from sync.hub.store import register_box
from sync.link import LedgerLinkStore, Link
from sync.protocol import Down, batches
from tests.broker import Broker, Pki

SITE = "bench-site"
LIST_ID = "default"
PER_TX = 500  # outbox rows per fill transaction (the fill is not timed)
LANES = 8


@dataclass(frozen=True)
class SyncSizes:
    drain: int  # events per drain (drain_100k_s)
    drain_repeats: int
    drain_timeout_s: float
    unpatched_cap_s: float  # one drain on the hub's schema as is (when it lacks the index)
    shaped: int
    shaped_timeout_s: float
    catchup: int
    catchup_repeats: int
    partition_s: float
    daemon_drain: int
    daemon_repeats: int
    idle_scans: int
    daemon_codes: int  # short codes in the daemon's snapshot
    fleet_boxes: int
    fleet_events: int  # per box
    fleet_workers: int  # processes the boxes are spread over
    boxes_per_site: int
    fleet_timeout_s: float
    quiet_s: float

    @classmethod
    def full(cls) -> SyncSizes:
        return cls(
            drain=100_000,
            drain_repeats=3,
            drain_timeout_s=120.0,
            unpatched_cap_s=40.0,
            shaped=100_000,
            shaped_timeout_s=300.0,
            catchup=10_000,
            catchup_repeats=3,
            partition_s=8.0,
            daemon_drain=100_000,
            daemon_repeats=4,
            idle_scans=800,
            daemon_codes=20_000,
            fleet_boxes=100,
            fleet_events=1000,
            fleet_workers=4,
            boxes_per_site=10,
            fleet_timeout_s=180.0,
            quiet_s=20.0,
        )

    @classmethod
    def quick(cls) -> SyncSizes:
        return cls(
            drain=2000,
            drain_repeats=2,
            drain_timeout_s=60.0,
            unpatched_cap_s=0.0,
            shaped=2000,
            shaped_timeout_s=60.0,
            catchup=1000,
            catchup_repeats=1,
            partition_s=2.0,
            daemon_drain=3000,
            daemon_repeats=1,
            idle_scans=60,
            daemon_codes=20_000,
            fleet_boxes=10,
            fleet_events=100,
            fleet_workers=2,
            boxes_per_site=5,
            fleet_timeout_s=60.0,
            quiet_s=0.0,
        )


def redemption_events(n: int, now: float) -> list[tuple[str, dict[str, Any], bytes]]:
    """n outbox events (type, body, redemption id): admissions at a gate, each a pending
    `redemption` followed by its `redemption_confirmed`, as RedemptionService writes them."""
    out: list[tuple[str, dict[str, Any], bytes]] = []
    day = datetime.date.fromtimestamp(now).isoformat()
    i = 0
    while len(out) < n:
        rid = secrets.token_bytes(16)
        at = now + i * 0.01
        r = Redemption(
            id=rid,
            canonical_id=secrets.token_hex(16),
            list_id=LIST_ID,
            direction="entry",
            kind=("signed", "rotating", "short")[i % 3],
            product=("adult", "child", "senior")[i % 3],
            zone=None,
            persons=1,
            passed=None,
            state="pending",
            forced=False,
            note="",
            lane=f"gate-{i % LANES + 1}",
            created_at=at,
            updated_at=at,
            business_day=day,
            valid_until=int(now) + 2 * 86400,
            cache_seq=1,
            clock_suspect=False,
        )
        out.append(("redemption", r.as_json() | {"warnings": [], "entries": 1}, rid))
        out.append(("redemption_confirmed", {"redemption_id": rid.hex(), "passed": 1}, rid))
        i += 1
    return out[:n]


def fill_outbox(path: Path, n: int, now: float | None = None) -> tuple[int, set[str]]:
    """Append n events to the ledger's outbox (creating the ledger); (last seq, event ids)."""
    t = time.time() if now is None else now
    events = redemption_events(n, t)
    ids: set[str] = set()
    led = Ledger(path)
    try:
        for start in range(0, n, PER_TX):
            with transaction(led.conn):
                for etype, body, rid in events[start : start + PER_TX]:
                    ids.add(led.append_event(etype, body, t, rid).hex())
        last = int(led.conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])
    finally:
        led.close()
    return last, ids


def outbox_bytes(path: Path) -> tuple[int, int]:
    """(rows, bytes of their JSON documents) in a ledger's outbox."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox")
        rows, size = row.fetchone()
        return int(rows), int(size)
    finally:
        conn.close()


@dataclass
class Lab:
    """PKI, broker and issuer, made once for the whole run."""

    work: Path
    pki: Pki
    broker: Broker
    hub: Hub
    sites: set[str] = field(default_factory=set)

    @classmethod
    def make(cls, work: Path) -> Lab:
        pki = Pki(work / "pki")
        # verbose=False alone drops the " running" line (information) that start() waits for.
        broker = Broker(pki, work / "broker", verbose=False, extra_conf="log_type information\n")
        hub = Hub.init(work / "issuer", keys=1)
        lab = cls(work, pki, broker, hub)
        lab.site(SITE)
        broker.start()
        return lab

    def site(self, site: str) -> None:
        """A snapshot for the site, so the hub's used deltas have a sequence to follow."""
        if site in self.sites:
            return
        content = BundleContent(
            site_info={"timezone": "Asia/Shanghai", "rollover_hour": 4},
            products=[{"id": "adult", "name": "Adult"}],
            lists=[{"id": LIST_ID, "name": "Main gate", "products": ["*"]}],
        )
        out = self.work / "issuer-bundles" / f"{site}-snapshot.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        self.hub.write_bundle(site, out, content, snapshot=True)
        self.sites.add(site)

    def register(self, box: str, site: str = SITE) -> None:
        self.site(site)
        register_box(self.hub.dir, box, site)

    def link(
        self,
        ledger: Path,
        box: str,
        *,
        site: str = SITE,
        host: str | None = None,
        port: int | None = None,
        on_down: Callable[[Down], None] | None = None,
    ) -> Link:
        cert = self.pki.box(box)
        return Link(
            LedgerLinkStore(ledger, box=box, site=site),
            host=host or self.broker.host,
            port=port or self.broker.port,
            ca=self.pki.ca_file,
            cert=cert.cert,
            key=cert.key,
            anchor=self.hub.anchor,
            on_down=on_down or (lambda _down: None),  # stored in the inbox by the link
        )

    def close(self) -> None:
        self.broker.stop()


def epoch_of(ledger: Path) -> str:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])
    finally:
        conn.close()


def wait_acked(link: Link, last: int, timeout: float, every: float = 0.005) -> float | None:
    """monotonic time when the hub's ack named `last` (the link then empties the outbox);
    None after `timeout`."""
    deadline = time.monotonic() + timeout
    while link.status()["acked_through"] < last:
        if time.monotonic() > deadline:
            return None
        time.sleep(every)
    return time.monotonic()


class Ticker:
    """Calls fn every `every` seconds on a thread until closed (samples during a phase)."""

    def __init__(self, fn: Callable[[], None], every: float) -> None:
        self.fn, self.every = fn, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-ticker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.fn()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def wire_bytes(ledger: Path, box: str, site: str) -> int:
    """Bytes of the batch payloads the link makes of a ledger's whole outbox."""
    store = LedgerLinkStore(ledger, box=box, site=site)
    try:
        events = store.pending(0, 1 << 62)
        return sum(len(b.encode()) for b in batches(box, site, store.epoch, events))
    finally:
        store.close()
