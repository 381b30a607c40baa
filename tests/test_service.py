"""Redemption service on a real box directory: decisions, ledger, outbox, clock, limits."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path

import pytest

from edge.codes import display_rotating
from edge.errors import InvalidTransition
from edge.ledger import ACKED_KEY, OUTBOX_SPAN_SQL, Ledger, unacked_span
from edge.ledger_schema import LEDGER_SCHEMA
from edge.rules import Reason
from edge.store import Schema, open_db, transaction
from sync.hub.issuer import BundleContent, load_private, new_holder_key
from tests.conftest import HOUR, NOW, Box

GATE = (
    '\n[lanes.gate-in]\nkind = "gate"\nlist = "default"\ndirection = "entry"\n'
    '\n[lanes.gate-out]\nkind = "gate"\nlist = "default"\ndirection = "exit"\n'
)


def test_no_cache_denies_with_reason(box: Box) -> None:
    code, _ = box.ticket()
    d = box.service().validate(code, "counter")
    assert d.reason is Reason.NO_CACHE and not d.admit


def test_signed_ticket_redeemed_once_and_keyed_on_canonical_id(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    first = svc.redeem(code, "counter")
    assert first.admit and first.state == "confirmed" and first.canonical_id == t.canonical_id
    assert first.product_name == "成人票 Adult" and first.remaining == 0
    assert svc.redeem(code, "counter").reason is Reason.ALREADY_USED
    assert svc.redeem(code.lower(), "counter").reason is Reason.ALREADY_USED
    events = [e["type"] for _, e in svc.ledger.outbox()]
    assert events.count("redemption") == 1 and events.count("scan_denied") == 2


def test_validate_is_a_dry_run(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket()
    depth = svc.ledger.outbox_depth()
    assert svc.validate(code, "counter").admit
    assert svc.validate(code, "counter").admit
    assert svc.ledger.outbox_depth() == depth and svc.ledger.counts() == {}


def test_retry_with_the_same_redemption_id_does_not_redeem_twice(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket()
    rid = secrets.token_bytes(16)
    a = svc.redeem(code, "counter", redemption_id=rid)
    b = svc.redeem(code, "counter", redemption_id=rid)
    assert a.admit and b.admit and a.redemption_id == b.redemption_id == rid.hex()
    assert svc.ledger.counts() == {"confirmed": 1}


def test_gate_pending_then_void_makes_ticket_usable_again(box: Box) -> None:
    box.config_text(GATE)
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket()
    d = svc.redeem(code, "gate-in")
    assert d.state == "pending"
    assert svc.validate(code, "gate-in").reason is Reason.ALREADY_USED  # pending counts
    svc.void(bytes.fromhex(d.redemption_id or ""), "no passage")
    again = svc.redeem(code, "gate-in")
    assert again.admit
    r = svc.confirm(bytes.fromhex(again.redemption_id or ""))
    assert r.state == "confirmed" and r.passed == 1
    with pytest.raises(InvalidTransition):
        svc.confirm(bytes.fromhex(d.redemption_id or ""))
    types = [e["type"] for _, e in svc.ledger.outbox()]
    assert "redemption_voided" in types and "redemption_confirmed" in types


def test_capacity_counts_pending_entries_and_group_persons(box: Box) -> None:
    box.config_text(GATE)
    svc = box.service()
    lists = [{"id": "default", "products": ["*"], "zone": "lake"}]
    svc.import_bundle(box.snapshot(lists=lists, zones=[{"id": "lake", "capacity": 5}]))
    group, _ = box.ticket(persons=4)
    single, _ = box.ticket()
    late, _ = box.ticket(persons=2)
    g = svc.redeem(group, "gate-in")
    assert g.admit  # 4 pending
    assert svc.redeem(single, "gate-in").admit  # 5 pending
    assert svc.validate(late, "gate-in").reason is Reason.CAPACITY_FULL
    svc.confirm(bytes.fromhex(g.redemption_id or ""), passed=3)  # one of the group stayed out
    assert svc.ledger.zone_load("lake", svc._day(box.now)) == 4
    assert svc.validate(late, "gate-in").reason is Reason.CAPACITY_FULL  # 4 + 2 > 5
    out, _ = box.ticket()
    assert svc.redeem(out, "gate-in").admit  # 5 again
    exit_code, _ = box.ticket()
    d = svc.redeem(exit_code, "gate-out")
    svc.confirm(bytes.fromhex(d.redemption_id or ""))
    assert svc.ledger.zone_load("lake", svc._day(box.now)) == 4


def test_force_admit_overrides_a_rule_but_not_a_forgery(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket(valid_until=NOW - 1, valid_from=NOW - HOUR)
    assert svc.validate(code, "counter").reason is Reason.EXPIRED
    d = svc.force_admit(code, "counter", note="bus was late", actor="supervisor-li")
    assert d.admit and d.forced and "expired" in d.detail
    rec = svc.ledger.get(bytes.fromhex(d.redemption_id or ""))
    assert rec is not None and rec.forced and "bus was late" in rec.note
    forged = code[:-3] + ("A" if code[-3] != "A" else "B") + code[-2:]
    assert not svc.force_admit(forged, "counter", note="x", actor="y").admit
    with pytest.raises(ValueError):
        svc.force_admit(code, "counter", note=" ", actor="y")


def test_rotating_code_freshness_replay_and_static_copy(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    pub = new_holder_key(box.root / "h.key")
    code, t = box.ticket(holder_key=pub, entries=0)
    code_id = t.canonical_id
    key = load_private(box.root / "h.key")
    assert svc.validate(code, "counter").reason is Reason.HOLDER_REQUIRED
    fresh = display_rotating(code, key, int(NOW) - 10)
    assert svc.redeem(fresh, "counter").admit
    replay = svc.redeem(fresh, "counter")
    assert replay.reason is Reason.REPLAYED and replay.canonical_id == code_id
    assert (
        svc.validate(display_rotating(code, key, int(NOW) - 46), "counter").reason
        is Reason.STALE_CODE
    )
    assert svc.validate(display_rotating(code, key, int(NOW) - 45), "counter").admit
    assert svc.validate(display_rotating(code, key, int(NOW) + 15), "counter").admit  # phone ahead
    assert (
        svc.validate(display_rotating(code, key, int(NOW) + 16), "counter").reason
        is Reason.STALE_CODE
    )
    new_holder_key(box.root / "thief.key")
    stolen = display_rotating(code, load_private(box.root / "thief.key"), int(NOW))
    assert svc.validate(stolen, "counter").reason is Reason.BAD_SIGNATURE


def test_short_codes_and_rate_limit(box: Box) -> None:
    svc = box.service()
    voucher = box.short(entries=2)
    svc.import_bundle(box.snapshot(short_codes=[voucher]))
    d = svc.redeem(voucher.code, "counter")
    assert d.admit and d.kind == "short" and d.canonical_id == voucher.code_id.hex()
    assert d.remaining == 1
    from sync.hub.issuer import random_short_code

    for _ in range(svc.config.policy.short_code_max_failures):
        assert svc.validate(random_short_code(12), "counter").reason is Reason.UNKNOWN_CODE
    assert svc.validate(voucher.code, "counter").reason is Reason.RATE_LIMITED
    box.now += svc.config.policy.short_code_failure_window_s + 1
    assert svc.validate(voucher.code, "counter").admit


def test_used_elsewhere_from_site_delta(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    used = [(secrets.token_bytes(16), t.ticket_id, "default", "entry", 1, int(NOW) - 60)]
    svc.import_bundle(box.bundle(BundleContent(used=used), snapshot=False))
    assert svc.validate(code, "counter").reason is Reason.USED_ELSEWHERE


def test_clock_backwards_is_suspect_and_list_can_fail_closed(box: Box) -> None:
    svc = box.service()
    lists = [{"id": "default", "products": ["*"], "clock_fail": "closed"}]
    svc.import_bundle(box.snapshot(lists=lists))
    code, _ = box.ticket()
    assert svc.redeem(code, "counter").admit
    box.now -= 3 * HOUR  # the RTC lost power and came back in the past
    other, _ = box.ticket(valid_from=int(box.now) - HOUR)
    d = svc.validate(other, "counter")
    assert d.reason is Reason.CLOCK_SUSPECT and d.clock_suspect
    box.now += 3 * HOUR
    svc.record_clock_offset(900.0)  # cloud says we are 15 minutes off
    assert svc.validate(other, "counter").reason is Reason.CLOCK_SUSPECT
    svc.record_clock_offset(0.5)
    assert svc.validate(other, "counter").admit


def test_stale_cache_warns_by_default(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    box.now += 49 * HOUR
    code, _ = box.ticket(valid_until=int(box.now) + HOUR)
    d = svc.validate(code, "counter")
    assert d.admit and Reason.STALE_CACHE in d.warnings
    assert svc.status()["cache"]["stale"] is True


def test_revocation_delta_and_key_retirement(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    old_kid = box.hub.active_kid()
    code, t = box.ticket()
    other, _ = box.ticket()
    svc.import_bundle(box.bundle(BundleContent(revocations=[t.ticket_id]), snapshot=False))
    assert svc.validate(code, "counter").reason is Reason.REVOKED
    svc.import_bundle(box.bundle(BundleContent(retire_kids=[old_kid]), snapshot=False))
    assert svc.validate(other, "counter").reason is Reason.UNKNOWN_KEY
    fresh, _ = box.ticket()
    assert box.hub.active_kid() != old_kid and svc.validate(fresh, "counter").admit


def test_outbox_events_carry_version_and_ids(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    d = svc.redeem(code, "counter")
    event = next(e for _, e in svc.ledger.outbox() if e["type"] == "redemption")
    assert event["v"] == 1 and len(bytes.fromhex(event["event_id"])) == 16
    assert (
        event["body"]["id"] == d.redemption_id and event["body"]["canonical_id"] == t.canonical_id
    )
    assert "code" not in str(event) or code not in str(event)


def test_the_outbox_depth_reads_the_key_ends_not_the_whole_backlog(box: Box) -> None:
    """The depth is read on the database thread the lanes wait for, every few seconds while a
    backlog drains: it must be two primary-key lookups, not a scan of 100k rows."""
    svc = box.service()
    conn = svc.ledger.conn
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + OUTBOX_SPAN_SQL)]
    assert plan and not [p for p in plan if p.startswith("SCAN outbox")], plan
    with transaction(conn):
        seqs = [svc.ledger.append_event("device_alert", {"i": i}, NOW) for i in range(10)]
    assert svc.ledger.outbox_depth() == 10 and unacked_span(conn) is not None
    first, last = unacked_span(conn) or (0, 0)
    assert last - first == 9 and len(seqs) == 10
    with transaction(conn):
        svc.ledger.set_meta(ACKED_KEY, f"{svc.ledger.meta('epoch')} {first + 3}")
    assert svc.ledger.outbox_depth() == 6 and unacked_span(conn) == (first + 4, last)


def _grouped(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) FROM redemptions GROUP BY state")
    return {str(s): int(n) for s, n in rows}


def test_the_status_counts_follow_every_redemption_without_a_scan(box: Box) -> None:
    """The status screen asks every 5 s: the counts come from a table the writes keep."""
    box.config_text(GATE)
    svc = box.service()
    svc.import_bundle(box.snapshot())
    gate = [svc.redeem(box.ticket()[0], "gate-in") for _ in range(4)]
    svc.redeem(box.ticket()[0], "counter")
    assert all(d.admit and d.redemption_id for d in gate)
    svc.confirm(bytes.fromhex(gate[0].redemption_id or ""))
    svc.void(bytes.fromhex(gate[1].redemption_id or ""), "nobody passed")
    svc.confirm(bytes.fromhex(gate[2].redemption_id or ""), passed=0)  # a void too
    svc.void(bytes.fromhex(gate[1].redemption_id or ""), "again")  # voided already: no change
    counts = svc.ledger.counts()
    assert counts == _grouped(svc.ledger.conn) == {"confirmed": 2, "pending": 1, "voided": 2}
    statements: list[str] = []
    svc.ledger.conn.set_trace_callback(statements.append)
    svc.ledger.counts()
    svc.ledger.conn.set_trace_callback(None)
    assert statements and all("FROM redemptions " not in s for s in statements), statements


def test_the_counts_migration_counts_the_redemptions_already_there(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    old = Schema("ledger", LEDGER_SCHEMA.migrations[:7])
    conn = open_db(path, old, create=True)
    states = ["confirmed"] * 5 + ["voided"] * 2 + ["pending"]
    for i, state in enumerate(states):
        conn.execute(
            "INSERT INTO redemptions (id, canonical_id, list_id, direction, kind, product, "
            "persons, state, lane, created_at, updated_at, business_day, valid_until, "
            "cache_seq, clock_suspect) VALUES (?, ?, 'main', 'entry', 'ticket', 'adult', 1, ?, "
            "'gate', ?, ?, '2026-11-22', 0, 1, 0)",
            (bytes([i]) * 16, f"T{i}", state, NOW, NOW),
        )
    conn.close()
    ledger = Ledger(path)
    try:
        assert ledger.counts() == {"confirmed": 5, "voided": 2, "pending": 1}
        with transaction(ledger.conn):
            ledger.conn.execute("DELETE FROM redemptions WHERE state = 'pending'")
        assert ledger.counts() == _grouped(ledger.conn) == {"confirmed": 5, "voided": 2}
    finally:
        ledger.close()
