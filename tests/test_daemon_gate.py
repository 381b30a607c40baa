"""End to end: the daemon on simulated scanners and turnstiles, driven through the sim devices.

A scan goes in through the simulated serial reader on its pty (the real scanner driver reads it),
or through the lane's API (`edge scan`); the gate is the real Modbus driver talking to a simulated
relay board and turnstile.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.gate.sim import SimGate
from drivers.scanner.sim import SimScanner
from edge.codes import display_rotating
from sync.hub.issuer import load_private, new_holder_key, random_short_code
from tests.daemon_kit import HOUR, Running, Site, make_site, running


def turnstile(d: Running, gate: str = "gate-in") -> Any:
    dev = d.box.slots[gate].device
    assert isinstance(dev, SimGate)
    return dev.turnstile


def last_decision(d: Running, lane: str) -> dict[str, Any] | None:
    return d.box.lanes[lane].state.last


def test_scan_on_the_reader_admits_passes_and_confirms(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        scanner = d.box.slots["scanner-in"].device
        assert isinstance(scanner, SimScanner)
        before = turnstile(d).unlocks
        scanner.present(code)
        d.wait(
            lambda: (last_decision(d, "entry") or {}).get("state") == "confirmed", what="confirm"
        )
        out = last_decision(d, "entry")
        assert out is not None and out["passed"] == 1 and out["source"] == "scanner"
        assert turnstile(d).unlocks == before + 1
        # Held under the reader again: nothing happens (no deny beep, no second open).
        assert d.scan("entry", code).get("duplicate") is True
        assert turnstile(d).unlocks == before + 1
        # The reader got a good-read beep command (GM65 feedback bytes on its pty).
        d.wait(lambda: len(scanner.commands) > 0, what="reader feedback")
        status, metrics = d.api("GET", "/metrics")
        assert status == 200
        assert 'edge_decisions_total{lane="entry",reason="ok"} 1' in metrics
        assert "edge_scan_to_actuator_seconds_bucket" in metrics


def test_no_passage_voids_and_ticket_is_usable_again(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        turnstile(d).queue = 0  # nobody walks through
        out = d.scan("entry", code)
        assert out["decision"] == "admit" and out["state"] == "voided" and out["passed"] == 0
        turnstile(d).queue = -1
        # Told to scan again, the visitor can at once: nobody passed, nothing to dedupe.
        again = d.scan("entry", code)
        assert again["state"] == "confirmed" and again["passed"] == 1


def test_group_ticket_opens_for_each_person_and_confirms_those_counted(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket(product="family", persons=4)
    with running(site) as d:
        turnstile(d).queue = 3  # the fourth member does not come
        out = d.scan("entry", code)
        assert out["persons"] == 4 and out["passed"] == 3 and out["state"] == "confirmed"
        assert turnstile(d).unlocks == 4
        zones = {z["zone"]: z for z in d.api("GET", "/api/v1/occupancy")[1]}
        assert zones["main"]["inside"] == 3


def test_anti_passback_and_exit(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket(entries=3)
    with running(site) as d:
        assert d.scan("entry", code)["state"] == "confirmed"
        # At the zone's other entry lane (this one would ignore the same ticket for its
        # dedupe window of 3 s): the zone knows the visitor is inside.
        second = d.scan("entry2", code)
        assert second["reason"] == "passback" and second["line_zh"] == "请先出园"
        out = d.scan("exit", code)
        assert out["state"] == "confirmed", out
        assert d.scan("entry2", code)["state"] == "confirmed"


@pytest.fixture(scope="class")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Running]]:
    """One daemon for a class of tests that each bring their own codes (a daemon's start and
    stop cost ~0.7 s). Threads are checked around the class, not around each test."""
    before = set(threading.enumerate())
    site = make_site(tmp_path_factory.mktemp("shared"))
    with running(site) as d:
        yield site, d
    deadline = time.monotonic() + 5
    while leaked := [t for t in threading.enumerate() if t not in before and t.is_alive()]:
        assert time.monotonic() < deadline, f"the shared daemon left threads running: {leaked}"
        time.sleep(0.05)


class TestEveryDeny:
    @pytest.fixture(autouse=True)
    def no_thread_leaks(self) -> Iterator[None]:
        """Replaces conftest's guard: the daemon is shared; `shared` checks around them all."""
        yield

    @pytest.mark.parametrize(
        "kind",
        [
            "already_used",
            "expired",
            "not_yet_valid",
            "wrong_site",
            "bad_signature",
            "malformed",
            "not_on_list",
            "unknown_code",
            "holder_required",
            "wrong_slot",
        ],
    )
    def test_keeps_the_gate_shut(
        self, shared: tuple[Site, Running], tmp_path: Path, kind: str
    ) -> None:
        site, d = shared
        now = site.now
        if kind == "already_used":
            code = site.ticket()
        elif kind == "expired":
            code = site.ticket(valid_from=int(now - 48 * HOUR), valid_until=int(now - 24 * HOUR))
        elif kind == "not_yet_valid":
            code = site.ticket(valid_from=int(now + 48 * HOUR), valid_until=int(now + 72 * HOUR))
        elif kind == "wrong_site":
            code = site.ticket(site="elsewhere")
        elif kind == "bad_signature":
            good = site.ticket()
            code = good[:40] + ("A" if good[40] != "A" else "B") + good[41:]
        elif kind == "malformed":
            code = "hello world"
        elif kind == "not_on_list":
            code = site.vouchers[0]
        elif kind == "unknown_code":
            code = random_short_code(12)  # well-formed, not in the cache
        elif kind == "holder_required":
            code = site.ticket(holder_key=new_holder_key(tmp_path / "h.key"))
        else:
            code = site.ticket(slot=(int(now + 5 * HOUR), int(now + 6 * HOUR)))
        if kind == "already_used":
            # Its one entry at the other entrance of the same list (the entry lane itself
            # would take it for the same visitor for its dedupe_s), then out.
            assert d.scan("entry2", code)["state"] == "confirmed"
            assert d.scan("exit", code)["state"] == "confirmed"
            time.sleep(0.1)
        before = turnstile(d).unlocks
        out = d.scan("entry", code)
        assert out["decision"] == "deny"
        if kind == "already_used":  # one entry, used and exited: no entries left
            assert out["reason"] in ("entries_exhausted", "already_used")
        elif kind == "bad_signature":
            assert out["reason"] in ("bad_signature", "malformed")
        else:
            assert out["reason"] == kind
        assert out["line_zh"] and out["line_en"]
        time.sleep(0.3)
        assert turnstile(d).unlocks == before


def test_rotating_code_replay_is_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    holder_pub = new_holder_key(tmp_path / "holder.key")
    ticket = site.ticket(holder_key=holder_pub, entries=2)
    live = display_rotating(ticket, load_private(tmp_path / "holder.key"), int(time.time()))
    with running(site) as d:
        assert d.scan("entry", live)["state"] == "confirmed"
        assert d.scan("exit", live)["reason"] == "replayed"


def test_capacity_holds_pending_entries_across_two_lanes(tmp_path: Path) -> None:
    site = make_site(tmp_path, capacity=1)
    a, b, c = site.ticket(), site.ticket(), site.ticket()
    with running(site) as d:
        turnstile(d, "gate-in").queue = 0  # the first visitor hesitates: PENDING for the window
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(d.scan, "entry", a)
            d.wait(lambda: d.box.lanes["entry"].state.busy, what="first gate open")
            second = d.scan("entry2", b)
            assert second["reason"] == "capacity_full" and second["line_zh"] == "已满 请稍候"
            assert first.result()["state"] == "voided"
        # The hesitant visitor's place is free again.
        assert d.scan("entry2", c)["state"] == "confirmed"
        occupancy = {z["zone"]: z for z in d.api("GET", "/api/v1/occupancy")[1]}["main"]
        assert occupancy["inside"] == 1 and occupancy["level"] == "full"


def test_capacity_race_never_overshoots(tmp_path: Path) -> None:
    site = make_site(tmp_path, capacity=3)
    codes = [site.ticket() for _ in range(8)]
    with running(site) as d:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            lanes = ["entry", "entry2"] * 4
            results = list(pool.map(d.scan, lanes, codes))
        admitted = [r for r in results if r.get("decision") == "admit"]
        assert len(admitted) == 3
        assert {r["reason"] for r in results if r.get("decision") == "deny"} == {"capacity_full"}
        alerts = [e for e in d.box.bus.recent if e.topic == "occupancy" and e.data.get("alert")]
        assert any(e.data["level"] == "full" for e in alerts)


def test_fire_input_reports_free_passage_and_sends_no_command(tmp_path: Path) -> None:
    url = "sim://?board=modbus&pass_delay_ms=150&window_s=1.5&fire_input=3"
    site = make_site(tmp_path, devices={"gate-in": ("gate", url)})
    code = site.ticket()
    with running(site) as d:
        turnstile(d).fire = True
        d.wait(lambda: d.box.lanes["entry"].state.fire, what="fire mode", timeout=5)
        before = turnstile(d).unlocks
        out = d.scan("entry", code)
        assert out["decision"] == "free_passage" and out["fire"] is True
        assert turnstile(d).unlocks == before  # no command during a fire alarm
        # The supervisor's emergency switch cannot clear the hardware input.
        status, _ = d.api("POST", "/api/v1/emergency", {"on": False, "actor": "sup"})
        assert status == 200
        assert d.box.lanes["entry"].state.fire
        turnstile(d).fire = False
        d.wait(lambda: not d.box.lanes["entry"].state.fire, what="fire cleared", timeout=5)
        assert d.scan("entry", code)["state"] == "confirmed"


def test_emergency_free_passage_is_audited(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d:
        status, _ = d.api(
            "POST", "/api/v1/emergency", {"on": True, "actor": "sup-wang", "note": "drill"}
        )
        assert status == 200
        out = d.scan("entry", "anything at all")
        assert out["decision"] == "free_passage" and out["passed"] == 1
        d.api("POST", "/api/v1/emergency", {"on": False, "actor": "sup-wang"})
        assert d.scan("entry", "anything at all")["decision"] == "deny"
        audit = d.api("GET", "/api/v1/audit")[1]
        assert [a["action"] for a in audit[:2]] == ["emergency_free_passage"] * 2
        assert audit[1]["actor"] == "sup-wang" and "drill" in audit[1]["detail"]


def test_api_needs_the_token_and_rejects_bad_bodies(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d:
        assert d.api("GET", "/api/v1/status", token="wrong")[0] == 401
        assert d.api("POST", "/api/v1/lanes/entry/scan", {"code": ""})[0] == 422
        assert d.api("POST", "/api/v1/lanes/entry/scan", {"nope": 1})[0] == 422
        assert d.api("POST", "/api/v1/lanes/nowhere/scan", {"code": "x"})[0] == 404
        assert d.api("POST", "/api/v1/redeem", {"code": "x", "lane": "entry"})[0] == 400
        status, health = d.api("GET", "/healthz")
        assert status == 200 and health["status"] == "ok"


def test_repeated_wrong_short_codes_are_rate_limited_per_lane(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d:
        reasons = [d.scan("entry", random_short_code(12))["reason"] for _ in range(12)]
        assert reasons[0] == "unknown_code" and reasons[-1] == "rate_limited", reasons
        # Another lane is not punished for this one's guesses.
        assert d.scan("entry2", random_short_code(12))["reason"] == "unknown_code"


def test_a_ticket_at_the_locker_opens_nothing_and_records_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        out = d.scan("lockers", code)
        assert out["decision"] == "deny" and out["reason"] == "unknown_code"
        assert d.api("GET", "/api/v1/status")[1]["ledger"]["redemptions"] == {}
        assert d.scan("entry", code)["state"] == "confirmed"  # still unused
