"""The hub stores the batches queued together in one transaction (sync/hub/uplink.py
_on_event_messages) and keeps how many passed on each redemption's row (sync/hub/store.py),
which the site's used delta reads (sync/hub/bundles.py).

A real broker and hub (tests/test_hub_serve.py's boxes); a storage failure is a real SQLite
trigger refusing one event, as a full or failing disk refuses a write.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge.store import Schema, open_db, transaction
from sync import protocol
from sync.hub.bundles import UsedDebounce, used_entries
from sync.hub.issuer import Hub
from sync.hub.store import HUB_SCHEMA, HubStore
from tests.broker import Broker, Probes, broker_fixture, pki_fixture, probes_fixture  # noqa: F401
from tests.test_hub_serve import EPOCH, SITE, box, ev, hub_fixture, read_db, start_hub, wait  # noqa: F401


def test_a_group_with_bad_batches_stores_the_others_and_acks_only_what_is_stored(
    hub: Hub, broker: Broker, probes: Probes
) -> None:
    poisoned = ev(3)
    HubStore(hub.dir / "hub.db").close()
    conn = sqlite3.connect(hub.dir / "hub.db")
    conn.execute(
        f"CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.id = '{poisoned.id}' "
        "BEGIN SELECT RAISE(ABORT, 'write failed'); END"
    )
    conn.commit()
    conn.close()
    server = start_hub(hub, broker)
    try:
        a, b = box(probes, broker, "box-a"), box(probes, broker, "box-b")
        # Hold the hub's worker (a call on its thread) while the batches queue up behind it.
        gate = threading.Event()
        held: Future[Any] = Future()
        server._q.put(("call", gate.wait, held))
        a.send([ev(1), ev(2)])
        a.p.publish(protocol.up_events("box-a"), b'{"v":1,"box":"box-a","events":')
        a.send([poisoned, ev(4)])  # fails to store: rolled back alone
        a.send([ev(5), ev(6)])
        b.send([ev(1), ev(2), ev(3)])
        wait(lambda: server._q.qsize() >= 5, what="five batches queued at the hub")
        gate.set()
        assert a.ack() == 2, "seq 3-4 were not stored: the ack must stop before them"
        assert a.next("ack", 0.5) is None, "one ack per stream for the group"
        assert b.ack() == 3
        seqs = read_db(hub, lambda s: [seq for _, seq, _, _ in s.events("box-a")])
        assert seqs == [1, 2, 5, 6]
        stats = server.stats()
        assert stats["event_groups"] == 1, stats
        assert (stats["batches"], stats["batches_failed"], stats["refused_malformed"]) == (3, 1, 1)
        # The disk is fine again: the box sends what was not acked, and the ack moves on.
        conn = sqlite3.connect(hub.dir / "hub.db")
        conn.execute("DROP TRIGGER poison")
        conn.commit()
        conn.close()
        a.send([poisoned, ev(4)])
        assert a.ack() == 6
    finally:
        server.close()


def _confirmed(rid: str, passed: Any) -> dict[str, Any]:
    return {"redemption_id": rid} if passed is ... else {"redemption_id": rid, "passed": passed}


def _redemption(rid: str, ticket: str, **extra: Any) -> dict[str, Any]:
    body = {"id": rid, "canonical_id": ticket, "list_id": "default", "direction": "entry"}
    return body | {"persons": 2, "state": "pending"} | extra


def test_a_hub_db_from_before_keeps_its_used_entries(tmp_path: Path) -> None:
    """A hub.db written before `passed` was on the row: the migration fills it in from the
    events, so the used delta and snapshots name the same uses as before."""
    db = tmp_path / "hub.db"
    old = open_db(db, Schema("hub", HUB_SCHEMA.migrations[:2]), create=True)
    rid = [secrets.token_hex(16) for _ in range(5)]
    ticket = [secrets.token_hex(16) for _ in range(5)]
    # (redemption body, its confirmation's body or None)
    cases = [
        (_redemption(rid[0], ticket[0]), _confirmed(rid[0], 1)),  # confirmed: 1 passed
        (_redemption(rid[1], ticket[1], state="confirmed", passed=2), None),  # in its body
        (_redemption(rid[2], ticket[2]), None),  # still pending: no use
        (_redemption(rid[3], ticket[3]), _confirmed(rid[3], 0)),  # nobody passed
        (_redemption(rid[4], ticket[4]), _confirmed(rid[4], ...)),  # no count: its persons
    ]
    seq, now = 0, time.time()
    with transaction(old):
        old.execute("INSERT INTO boxes (box, site) VALUES ('box-a', ?)", (SITE,))
        for body, conf in cases:
            for etype, doc in (("redemption", body), ("redemption_confirmed", conf)):
                if doc is None:
                    continue
                seq += 1
                eid = secrets.token_hex(16)
                old.execute(
                    "INSERT INTO events VALUES ('box-a', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        EPOCH,
                        seq,
                        eid,
                        etype,
                        now,
                        protocol.canonical(doc).decode(),
                        body["id"],
                        now,
                    ),
                )
                if etype == "redemption":
                    old.execute(
                        "INSERT INTO redemptions (id, box, site, canonical_id, list_id, "
                        "direction, event_id, at) VALUES (?, 'box-a', ?, ?, 'default', 'entry', "
                        "?, ?)",
                        (body["id"], SITE, body["canonical_id"], eid, now),
                    )
    old.close()
    store = HubStore(db)
    try:
        entries, _ = used_entries(store, SITE, 0.0)
    finally:
        store.close()
    got = {e[0].hex(): e[4] for e in entries}
    assert got == {rid[0]: 1, rid[1]: 2, rid[4]: 2}


def test_a_confirmation_that_overtakes_its_redemption_still_counts(tmp_path: Path) -> None:
    """A resend can bring a confirmation before its redemption: the use is there once both are."""
    store = HubStore(tmp_path / "hub.db")
    try:
        rid, ticket = secrets.token_hex(16), secrets.token_hex(16)
        conf = protocol.Event(
            2, secrets.token_hex(16), "redemption_confirmed", time.time(), _confirmed(rid, 3), rid
        )
        red = protocol.Event(
            1, secrets.token_hex(16), "redemption", time.time(), _redemption(rid, ticket), rid
        )
        with transaction(store.conn):
            store.store_batch(protocol.Batch("box-a", SITE, EPOCH, (conf,)), SITE, time.time())
        assert used_entries(store, SITE, 0.0)[0] == [], "no redemption yet: no use"
        with transaction(store.conn):
            store.store_batch(protocol.Batch("box-a", SITE, EPOCH, (red,)), SITE, time.time())
        entries, _ = used_entries(store, SITE, 0.0)
        assert [(e[0].hex(), e[1].hex(), e[4]) for e in entries] == [(rid, ticket, 3)]
    finally:
        store.close()


def test_odd_field_types_in_a_redemption_are_stored_not_refused_forever(tmp_path: Path) -> None:
    """A box's bug (an object where a string belongs) must not make its batch fail at every
    resend and hold up everything after it."""
    from edge.store import transaction
    from sync.hub.store import HubStore
    from sync.protocol import Batch, Event

    store = HubStore(tmp_path / "hub.db")
    try:
        body = {"id": secrets.token_hex(16), "canonical_id": {"x": 1}, "list_id": 7}
        ev = Event(1, secrets.token_hex(16), "redemption", 1.0, body, body["id"])
        with transaction(store.conn):
            res = store.store_batch(Batch("box-a", "west-lake", "e" * 16, (ev,)), "west-lake", 2.0)
        assert res.new == 1 and res.acked_through == 1
        row = store.conn.execute("SELECT canonical_id, list_id FROM redemptions").fetchone()
        assert row == ('{"x":1}', "7")
    finally:
        store.close()


def test_used_deltas_coalesce_while_a_box_drains_a_backlog() -> None:
    """Live traffic: a delta a second. A box draining an outage's backlog (thousands of
    events a second): one delta per 10 s window, so the site's boxes import 10x fewer."""

    def events(n: int, kind: str = "redemption") -> list[protocol.Event]:
        return [protocol.Event(i, secrets.token_hex(16), kind, 0.0, {}) for i in range(n)]

    d = UsedDebounce(delay_s=1.0, drain_delay_s=10.0, drain_rate=200.0)
    d.note("s", events(2), now=100.0)  # a live gate
    assert d.due(now=100.9) == [] and d.due(now=101.0) == ["s"]
    d.note("s", events(2, "passage"), now=200.0)  # no use in it: no delta owed
    assert d.due(now=300.0) == []
    for k in range(20):  # 20 batches of 400 in 2 s: a drain
        d.note("s", events(400), now=400.0 + k * 0.1)
    assert d.due(now=401.0) == [] and d.due(now=409.9) == []
    assert d.due(now=410.0) == ["s"]
    d.note("other", events(1), now=410.0)  # another site is live: its own window
    assert d.due(now=411.0) == ["other"]
