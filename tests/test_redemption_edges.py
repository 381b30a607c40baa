"""Edge cases of redemption found in review: retries, voids echoed by the cloud, occupancy
accounting, retired keys in snapshots, concurrent writers and imports."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from edge import bundle as fmt
from edge.cache import ImportResult
from edge.config import load
from edge.decision import Decision
from edge.errors import BundleRefused, StoreCorrupt
from edge.rules import Reason
from edge.service import RedemptionService
from edge.store import WriteLock
from sync.hub.issuer import BundleContent
from tests.conftest import NOW, SITE, Box

GATES = (
    '\n[lanes.gate-in]\nkind = "gate"\nlist = "default"\ndirection = "entry"\n'
    '\n[lanes.gate-out]\nkind = "gate"\nlist = "default"\ndirection = "exit"\n'
)
ZONED = [{"id": "default", "products": ["*"], "zone": "hall"}]


def _in_threads(box: Box, jobs: list[Callable[[RedemptionService], object]]) -> list[object]:
    """Run each job on its own service in its own thread (SQLite connections are per thread);
    returns each job's result or the exception that escaped it."""
    results: list[object] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        svc = RedemptionService(load(box.home / "edge.toml", box.home), clock=lambda: box.now)
        try:
            start.wait(timeout=10)
            results[i] = jobs[i](svc)
        except Exception as err:  # the test lists what escaped
            results[i] = err
        finally:
            svc.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_retries_of_one_id_agree_and_redeem_once(box: Box) -> None:
    main = box.service()
    main.import_bundle(box.snapshot())
    for kw in ({}, {"entries": 0}):
        code, _ = box.ticket(**kw)
        rid = secrets.token_bytes(16)
        results = _in_threads(
            box,
            [lambda s: s.redeem(code, "counter", redemption_id=rid)] * 4,  # noqa: B023
        )
        assert all(isinstance(r, Decision) and r.admit for r in results), results
        assert {r.redemption_id for r in results if isinstance(r, Decision)} == {rid.hex()}
    assert main.ledger.counts() == {"confirmed": 2}


def test_retry_of_a_voided_redemption_is_not_an_admit(box: Box) -> None:
    box.config_text(GATES)
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket()
    other, _ = box.ticket()
    rid = secrets.token_bytes(16)
    assert svc.redeem(code, "gate-in", redemption_id=rid).admit
    svc.void(rid, "no passage")
    assert svc.redeem(code, "gate-in").admit  # the visitor scans again: a new redemption
    retry = svc.redeem(code, "gate-in", redemption_id=rid)
    assert not retry.admit and retry.state == "voided"
    reused = svc.redeem(other, "gate-in", redemption_id=rid)
    assert not reused.admit and "another code" in reused.detail


def test_force_admit_retry_records_once(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, _ = box.ticket(valid_until=int(NOW) - 1, valid_from=int(NOW) - 3600)
    rid = secrets.token_bytes(16)
    for _ in range(3):
        d = svc.force_admit(code, "counter", note="late bus", actor="li", redemption_id=rid)
        assert d.admit and d.forced and d.redemption_id == rid.hex()
    assert svc.ledger.counts() == {"confirmed": 1}


def test_void_is_not_undone_by_the_cloud_echoing_our_redemption(box: Box) -> None:
    box.config_text(GATES)
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    d = svc.redeem(code, "gate-in")
    rid = bytes.fromhex(d.redemption_id or "")
    svc.void(rid, "no passage")
    echo = [(rid, t.ticket_id, "default", "entry", 1, int(NOW))]
    svc.import_bundle(box.bundle(BundleContent(used=echo), snapshot=False))
    assert svc.validate(code, "gate-in").admit


def test_occupancy_counts_are_exact_inverses(box: Box) -> None:
    box.config_text(GATES)
    svc = box.service()
    svc.import_bundle(box.snapshot(lists=ZONED, zones=[{"id": "hall", "capacity": 2}]))
    day = svc._day(box.now)
    out_code, _ = box.ticket()
    out = svc.redeem(out_code, "gate-out")  # an exit with nobody recorded inside
    svc.confirm(bytes.fromhex(out.redemption_id or ""))
    assert svc.ledger.zone_load("hall", day) == 0
    svc.void(bytes.fromhex(out.redemption_id or ""), "wrong button")
    assert svc.ledger.zone_load("hall", day) == 0  # no phantom visitor
    group, _ = box.ticket(persons=2)
    assert svc.validate(group, "gate-in").admit
    d = svc.redeem(group, "gate-in")
    svc.confirm(bytes.fromhex(d.redemption_id or ""), passed=0)  # nobody went through
    rec = svc.ledger.get(bytes.fromhex(d.redemption_id or ""))
    assert rec is not None and rec.state == "voided"
    assert svc.ledger.zone_load("hall", day) == 0 and svc.validate(group, "gate-in").admit


def test_snapshot_cannot_bring_back_a_retired_key(box: Box, tmp_path: Path) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    leaked = box.hub.active_kid()
    code, _ = box.ticket(kid=leaked)
    svc.import_bundle(box.bundle(BundleContent(retire_kids=[leaked]), snapshot=False))
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY
    # whoever holds the leaked key signs a snapshot that certifies it again and retires nothing
    forged = tmp_path / "forged.bundle"
    header = {
        "site": SITE,
        "seq": 99,
        "base_seq": None,
        "issued_at": int(NOW),
        "expires_at": int(NOW) + 86400,
        "kid": leaked,
        "key_certs": [box.hub.cert_hex(k) for k in box.hub.kids()],
        "site_info": {"timezone": "UTC"},
        "site_key": "00" * 32,
        "lists": [{"id": "default", "products": ["*"]}],
    }
    with forged.open("wb") as f:
        w = fmt.BundleWriter(f, header, box.hub.signing_key(leaked))
        w.finish()
    with pytest.raises(BundleRefused) as err:
        svc.import_bundle(forged)
    assert err.value.reason == "retired_key"
    fresh = box.bundle(BundleContent(lists=[{"id": "default", "products": ["*"]}]), snapshot=True)
    svc.import_bundle(fresh)  # a genuine snapshot from the hub, which forgets nothing either
    assert svc.validate(code, "counter").reason is Reason.UNKNOWN_KEY


def test_deeply_nested_header_is_refused_not_crashed(box: Box, tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    path = tmp_path / "deep.bundle"
    path.write_bytes(fmt.MAGIC + bytes([1]) + len(deep).to_bytes(4, "big") + deep)
    with pytest.raises(BundleRefused) as err:
        box.service().import_bundle(path)
    assert err.value.reason == "corrupted"


def test_two_importers_are_serialised(box: Box) -> None:
    main = box.service()
    main.import_bundle(box.snapshot(short_codes=[box.short() for _ in range(2000)]))
    delta = box.bundle(BundleContent(short_codes=[box.short()]), snapshot=False)
    snap = box.snapshot(short_codes=[box.short() for _ in range(3000)])

    def importer(path: Path) -> Callable[[RedemptionService], object]:
        def job(svc: RedemptionService) -> object:
            try:
                return svc.import_bundle(path)
            except BundleRefused as err:  # rollback/wrong_base: fine outcomes of a race
                return err

        return job

    results = _in_threads(box, [importer(snap), importer(delta), importer(snap)])
    assert all(isinstance(r, ImportResult | BundleRefused) for r in results), results
    st = main.status()["cache"]
    assert st["active"] and st["seq"] in (3, 4)


def test_marker_survives_a_start_that_found_corruption(tmp_path: Path) -> None:
    with pytest.raises(StoreCorrupt), WriteLock(tmp_path):
        raise StoreCorrupt(tmp_path / "ledger.db", "index damaged", "restore")
    with WriteLock(tmp_path) as lock:
        assert lock.unclean  # the next start runs the full integrity check again
    with WriteLock(tmp_path) as lock:
        assert not lock.unclean


def test_voucher_retry_returns_the_recorded_admit_even_when_the_code_is_gone(box: Box) -> None:
    svc = box.service()
    voucher = box.short()
    svc.import_bundle(box.snapshot(short_codes=[voucher]))
    rid = secrets.token_bytes(16)
    assert svc.redeem(voucher.code, "counter", redemption_id=rid).admit
    removed = BundleContent(remove_short_codes=[voucher.code])
    svc.import_bundle(box.bundle(removed, snapshot=False))  # the cloud withdrew it since
    retry = svc.redeem(voucher.code, "counter", redemption_id=rid)
    assert retry.admit and retry.redemption_id == rid.hex()
    for _ in range(svc.config.policy.short_code_max_failures):  # strangers mistype codes
        svc.validate("12345678901" + "0", "counter")
    retry = svc.redeem(voucher.code, "counter", redemption_id=rid)
    assert retry.admit and svc.ledger.counts() == {"confirmed": 1}


def test_surplus_exits_do_not_bank_places_for_later_entries(box: Box) -> None:
    box.config_text(GATES)
    svc = box.service()
    svc.import_bundle(box.snapshot(lists=ZONED, zones=[{"id": "hall", "capacity": 2}]))
    for _ in range(3):  # three people leave who were never counted in (fire-mode free passage)
        out, _ = box.ticket()
        d = svc.redeem(out, "gate-out")
        svc.confirm(bytes.fromhex(d.redemption_id or ""))
    admitted = 0
    for _ in range(5):
        code, _ = box.ticket()
        d = svc.redeem(code, "gate-in")
        if d.admit:
            admitted += 1
            svc.confirm(bytes.fromhex(d.redemption_id or ""))
    assert admitted == 2
    # one of them leaves and the exit is undone (wrong button): the count is exact both ways
    out, _ = box.ticket()
    d = svc.redeem(out, "gate-out")
    rid = bytes.fromhex(d.redemption_id or "")
    svc.confirm(rid)
    day = svc._day(box.now)
    assert svc.ledger.zone_inside("hall", day) == 1
    svc.void(rid, "wrong button")
    assert svc.ledger.zone_inside("hall", day) == 2


def test_refused_commands_stop_cleanly_store_errors_do_not(tmp_path: Path) -> None:
    with pytest.raises(ValueError), WriteLock(tmp_path):
        raise ValueError("bad --id")
    with WriteLock(tmp_path) as lock:
        assert not lock.unclean
    with pytest.raises(RuntimeError), WriteLock(tmp_path):
        raise RuntimeError("a bug")
    with WriteLock(tmp_path) as lock:
        assert lock.unclean


def test_a_crowd_level_clears_only_clearly_under_its_threshold() -> None:
    from edge.occupancy import held_level

    # full 10, warn 8: at the limit one out and one in does not flap full -> warn -> full.
    assert held_level("normal", "full", 10, 8, 10) == "full"  # up at once
    assert held_level("full", "warn", 9, 8, 10) == "full"  # one out: still full
    assert held_level("full", "warn", 8, 8, 10) == "warn"  # clearly under: cleared
    assert held_level("warn", "normal", 7, 8, 10) == "warn"
    assert held_level("warn", "normal", 6, 8, 10) == "normal"
    assert held_level("full", "normal", 0, 8, 10) == "normal"
    # A big zone: the margin is 5 %.
    assert held_level("full", "warn", 960, 800, 1000) == "full"
    assert held_level("full", "warn", 949, 800, 1000) == "warn"
