"""Edges found in review: undo during a passage, stale scans, rotating re-reads, forced admits
where they cannot be settled, emergency mode across a restart, the API token, daemon.json."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

from drivers.gate.sim import SimGate
from edge.client import daemon_url
from edge.codes import display_rotating
from edge.daemon import api_token
from sync.hub.issuer import load_private, new_holder_key
from tests.daemon_kit import Running, make_site, running


def turnstile(d: Running, gate: str = "gate-in") -> object:
    dev = d.box.slots[gate].device
    assert isinstance(dev, SimGate)
    return dev.turnstile


def test_undo_from_the_kiosk_waits_for_the_visitor_in_the_gate(tmp_path: Path) -> None:
    url = "sim://?board=modbus&pass_delay_ms=1200&window_s=3"
    site = make_site(tmp_path, devices={"gate-in": ("gate", url)})
    code = site.ticket()
    with running(site) as d, concurrent.futures.ThreadPoolExecutor(1) as pool:
        scan = pool.submit(d.scan, "entry", code)
        d.wait(lambda: d.box.lanes["entry"].inflight is not None, what="gate open")
        rid = d.box.lanes["entry"].inflight
        status, body = d.api("POST", "/api/v1/void", {"redemption_id": rid, "actor": "c1"})
        assert status == 409 and "in the gate" in body["detail"]
        assert scan.result()["state"] == "confirmed"


def test_a_scan_that_waited_too_long_is_not_acted_on(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        before = turnstile(d).unlocks  # type: ignore[attr-defined]
        lane = d.box.lanes["entry"]
        out = d.run(lane.handle(code, t0=time.monotonic() - 10))
        assert out["decision"] == "scan_again" and out["line_zh"] == "请重新扫码"
        assert turnstile(d).unlocks == before  # type: ignore[attr-defined]
        assert d.scan("entry", code)["state"] == "confirmed"  # nothing was recorded


def test_the_same_rotating_frame_read_twice_is_one_visitor(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    ticket = site.ticket(holder_key=new_holder_key(tmp_path / "h.key"), entries=2)
    live = display_rotating(ticket, load_private(tmp_path / "h.key"), int(time.time()))
    with running(site) as d:
        assert d.scan("entry", live)["state"] == "confirmed"
        assert d.scan("entry", live).get("duplicate") is True  # no red "replayed" at the reader


def test_force_admit_is_refused_where_it_cannot_be_settled(tmp_path: Path) -> None:
    url = "sim://?board=modbus&pass_delay_ms=150&window_s=1.5&fire_input=3"
    site = make_site(tmp_path, devices={"gate-in": ("gate", url)})
    code = site.ticket()
    with running(site) as d:
        body = {"code": code, "lane": "lockers", "actor": "sup", "note": "lost slip"}
        status, doc = d.api("POST", "/api/v1/force-admit", body)
        assert status == 400 and "locker" in doc["detail"]
        turnstile(d).fire = True  # type: ignore[attr-defined]
        d.wait(lambda: d.box.lanes["entry"].state.fire, what="fire", timeout=5)
        status, doc = d.api("POST", "/api/v1/force-admit", body | {"lane": "entry"})
        assert status == 400 and "fire" in doc["detail"]
        assert d.api("GET", "/api/v1/status")[1]["ledger"]["redemptions"] == {}


def test_emergency_free_passage_survives_a_restart(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d:
        d.api("POST", "/api/v1/emergency", {"on": True, "actor": "sup", "note": "evacuation"})
    with running(site, bundle=False) as d:
        assert d.box.lanes["entry"].state.emergency
        assert d.scan("entry", "no ticket")["decision"] == "free_passage"


def test_an_empty_token_file_is_replaced_and_never_accepted(tmp_path: Path) -> None:
    (tmp_path / "api-token").write_text("")
    token = api_token(tmp_path)
    assert len(token) >= 32 and (tmp_path / "api-token").read_text() == token
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600
    assert api_token(tmp_path) == token


def test_a_daemon_json_left_by_a_killed_daemon_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "daemon.json").write_text(json.dumps({"pid": 1, "url": "http://127.0.0.1:1"}))
    (tmp_path / "edge.lock").touch()
    assert daemon_url(tmp_path) is None  # the lock is free: nobody runs here


def test_a_ticket_read_again_at_the_reader_writes_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        assert d.scan("entry", code)["state"] == "confirmed"
        before = len(d.outbox())
        assert d.scan("entry", code).get("duplicate") is True
        assert len(d.outbox()) == before  # no scan_denied event for the visitor still there
