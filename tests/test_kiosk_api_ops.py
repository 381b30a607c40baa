"""The kiosk's gate, locker and printer screens' API (kiosk_ui/api_gate.py, api_lockers.py,
api_printers.py) against the real daemon on simulated turnstiles, lock board and printers, over
HTTP with a real session cookie and CSRF token, as the browser would."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.gate.sim import SimGate
from edge.rules import SiteClock
from tests.daemon_kit import (
    HOUR,
    Hands,
    Running,
    Site,
    board,
    make_site,
    paper,
    printed,
    running,
    turnstile_unlocks,
)
from tests.kiosk_kit import KIOSK, Client, add_users

FIRE_GATE = "sim://?board=modbus&pass_delay_ms=150&window_s=1.5&fire_input=3"


def text(detail: Any) -> str:
    """An error's words, whichever shape (`"中文 / English"` or the auth error dict)."""
    return detail["message"] if isinstance(detail, dict) else str(detail)


def reason(doc: Any) -> str | None:
    detail = doc.get("detail") if isinstance(doc, dict) else None
    return detail.get("reason") if isinstance(detail, dict) else None


def turnstile(d: Running, gate: str) -> Any:
    dev = d.box.slots[gate].device
    assert isinstance(dev, SimGate)
    return dev.turnstile


def audits(d: Running, action: str) -> list[dict[str, Any]]:
    return [a for a in d.run(d.box.audit_log(500)) if a["action"] == action]


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Replaces conftest's per-test guard here: the daemon is shared by the module (its
    executor threads come and go between tests); `daemon` checks for leaks around it all."""
    yield


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Running]]:
    before = set(threading.enumerate())
    site = make_site(
        tmp_path_factory.mktemp("kiosk-ops"),
        devices={
            "gate-in2": ("gate", FIRE_GATE),
            "bar": ("printer", "sim://?profile=xp-58&paper=out"),
        },
    )
    add_users(site.home, ("cashier1", "super1", "super2"))  # super2: locked out on purpose
    with running(site, kiosk=True) as d:
        yield site, d
    time.sleep(0.2)
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"the daemon left threads running: {leaked}"


@pytest.fixture(scope="module")
def sup(daemon: tuple[Site, Running]) -> Client:
    return Client(daemon[1].daemon.url).login("super1")


@pytest.fixture(scope="module")
def cashier(daemon: tuple[Site, Running]) -> Client:
    return Client(daemon[1].daemon.url).login("cashier1")


# -- gate -----------------------------------------------------------------------------------------


def test_overview_shows_lanes_zones_and_denies_by_reason(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    site, d = daemon
    assert Client(d.daemon.url).get("/gate/overview")[0] == 401
    future = site.ticket(valid_from=int(site.now + 2 * HOUR))
    assert d.scan("entry", future)["reason"] == "not_yet_valid"
    assert d.scan("entry", "NOT-A-CODE")["decision"] == "deny"
    status, doc = sup.get("/gate/overview")
    assert status == 200, doc
    assert doc["deny_counts"]["entry"]["not_yet_valid"] == 1
    assert sum(doc["deny_counts"]["entry"].values()) == 2
    assert doc["deny_counts"]["exit"] == {} and "ok" not in doc["deny_counts"]["entry"]
    assert doc["deny_day"] == SiteClock("Asia/Shanghai", 4).business_day(time.time()).isoformat()
    # Today's counts are kept in the ledger: a restart of the box (here a reload: new metrics)
    # keeps them.
    assert d.api("POST", "/api/v1/config/reload")[0] == 202
    d.wait(lambda: d.daemon.reloads == 1, timeout=20, what="the box restarted")
    status, again = sup.get("/gate/overview")
    assert status == 200 and again["deny_counts"] == doc["deny_counts"], again
    assert doc["lanes"]["entry"]["kind"] == "gate"
    assert doc["lanes"]["entry"]["last"]["decision"] == "deny"
    zone = next(z for z in doc["zones"] if z["zone"] == "main")
    assert {"inside", "pending", "warn", "full", "level", "text_zh"} <= set(zone)
    assert doc["emergency"] is False and doc["fire"] is False
    status, spec = sup.call("GET", "/openapi.json")  # /docs lists the routes and their bodies
    assert status == 200
    emergency = spec["paths"][f"{KIOSK}/gate/emergency"]["post"]["requestBody"]
    assert "pin" in emergency["content"]["application/json"]["schema"]["properties"]


def test_manual_open_moves_the_turnstile_and_is_audited(
    daemon: tuple[Site, Running], sup: Client, cashier: Client
) -> None:
    _, d = daemon
    before = turnstile_unlocks(d, "gate-in")
    status, out = sup.post("/gate/lanes/entry/open", {"note": "轮椅 wheelchair"})
    assert status == 200, out
    assert out["passed"] == 1 and out["actor"] == "super1"
    assert turnstile_unlocks(d, "gate-in") == before + 1
    last = audits(d, "manual_open")[0]
    assert (
        last["actor"] == "super1" and last["target"] == "entry" and "wheelchair" in last["detail"]
    )
    # An empty body means one person; a name in the body is refused, never trusted.
    assert sup.post("/gate/lanes/entry/open", raw=b"")[0] == 200
    assert turnstile_unlocks(d, "gate-in") == before + 2
    status, doc = sup.post("/gate/lanes/entry/open", {"actor": "mallory"})
    assert status == 422 and "actor" in text(doc["detail"])
    assert sup.post("/gate/lanes/entry/open", {"persons": 0})[0] == 422
    status, doc = sup.post("/gate/lanes/nope/open", {})
    assert status == 404 and "通道" in doc["detail"] and "no lane" in doc["detail"]
    assert sup.post("/gate/lanes/counter/open", {})[0] == 409  # a counter has no gate
    status, doc = cashier.post("/gate/lanes/entry/open", {})
    assert status == 403 and reason(doc) == "forbidden_role"
    assert turnstile_unlocks(d, "gate-in") == before + 2


def test_force_admit_is_recorded_forced_with_the_note(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    site, d = daemon
    code = site.ticket(valid_from=int(site.now + 2 * HOUR))  # its slot has not begun
    note = "旅行团晚到 late tour group"
    status, out = sup.post("/gate/force-admit", {"code": code, "lane": "entry", "note": note})
    assert status == 200, out
    assert out["decision"] == "admit" and out["forced"] is True and out["state"] == "confirmed"
    rid = out["redemption_id"]
    events = [e for e in d.outbox() if e["type"] == "redemption"]
    body = next(e["body"] for e in events if e["body"].get("id") == rid)
    assert body["forced"] is True and body["note"].startswith("super1: " + note)
    assert audits(d, "force_admit")[0]["actor"] == "super1"
    # A reason is required; the lane must exist; a code that does not verify stays denied.
    assert sup.post("/gate/force-admit", {"code": code, "lane": "entry"})[0] == 422
    assert sup.post("/gate/force-admit", {"code": code, "lane": "entry", "note": ""})[0] == 422
    assert sup.post("/gate/force-admit", {"code": code, "lane": "x", "note": "n"})[0] == 404
    status, out = sup.post("/gate/force-admit", {"code": "JUNK", "lane": "entry", "note": "n"})
    assert status == 200 and out["decision"] == "deny", out
    assert sup.post("/gate/force-admit", raw=b"{not json")[0] == 422
    assert sup.post("/gate/force-admit", raw=b'{"code": "' + b"1" * 20000 + b'"}')[0] == 413


def test_emergency_needs_the_pin_and_a_confirmation(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    _, d = daemon
    gates = [lane for lane in d.box.lanes.values() if lane.cfg.kind == "gate"]
    status, doc = sup.post("/gate/emergency", {"on": True, "pin": "135790", "confirm": False})
    assert status == 400 and "confirm" in doc["detail"]
    status, doc = sup.post("/gate/emergency", {"on": True, "pin": "999999", "confirm": True})
    assert status == 403 and "PIN" in doc["detail"]
    assert not any(lane.state.emergency for lane in gates)
    failed = audits(d, "kiosk_pin_check_failed")
    assert failed and failed[0]["actor"] == "super1"

    status, doc = sup.post("/gate/emergency", {"on": True, "pin": "135790", "confirm": True})
    assert status == 200, doc
    assert doc["emergency"] is True and all(lane.state.emergency for lane in gates)
    assert sup.get("/gate/overview")[1]["emergency"] is True
    entry = audits(d, "emergency_free_passage")[0]
    assert entry["actor"] == "super1" and entry["detail"].startswith("on")
    status, doc = sup.post("/gate/emergency", {"on": False, "pin": "135790", "confirm": True})
    assert status == 200 and doc["emergency"] is False
    assert not any(lane.state.emergency for lane in gates)
    assert audits(d, "emergency_free_passage")[0]["detail"].startswith("off")


def test_wrong_pins_for_free_passage_lock_the_user_out(daemon: tuple[Site, Running]) -> None:
    _, d = daemon
    other = Client(d.daemon.url).login("super2")
    answers = [
        other.post("/gate/emergency", {"on": True, "pin": "111112", "confirm": True})
        for _ in range(5)
    ]
    assert [s for s, _ in answers] == [403, 403, 403, 403, 429], answers
    assert reason(answers[-1][1]) == "locked"
    # Locked: even the right PIN is not checked now, and free passage stays off.
    status, doc = other.post("/gate/emergency", {"on": True, "pin": "246813", "confirm": True})
    assert status == 429 and reason(doc) == "locked"
    assert not any(lane.state.emergency for lane in d.box.lanes.values())


def test_the_fire_input_stays_active_after_emergency_off(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    _, d = daemon
    fire = turnstile(d, "gate-in2")
    fire.fire = True
    try:
        d.wait(lambda: d.box.lanes["entry2"].state.fire, what="fire mode", timeout=5)
        doc = sup.get("/gate/overview")[1]
        assert doc["fire"] is True and doc["fire_lanes"] == ["entry2"] and doc["fire_zh"]
        status, doc = sup.post("/gate/emergency", {"on": False, "pin": "135790", "confirm": True})
        assert status == 200, doc
        assert doc["emergency"] is False and doc["fire"] is True
        assert doc["lanes"]["entry2"]["fire"] is True and "fire" in doc["fire_en"]
        assert d.box.lanes["entry2"].state.fire
        assert sup.get("/gate/overview")[1]["fire"] is True
    finally:
        fire.fire = False
    d.wait(lambda: not d.box.lanes["entry2"].state.fire, what="fire cleared", timeout=5)
    assert sup.get("/gate/overview")[1]["fire"] is False


def test_a_cashier_may_not_use_the_supervisor_routes(
    daemon: tuple[Site, Running], cashier: Client
) -> None:
    _, d = daemon
    refused = [
        cashier.get("/gate/overview"),
        cashier.post("/gate/force-admit", {"code": "x", "lane": "entry", "note": "n"}),
        cashier.post("/gate/emergency", {"on": True, "pin": "2580", "confirm": True}),
        cashier.post("/lockers/wall/doors/1/open", {"why": "curious"}),
        cashier.post("/lockers/wall/doors/1/reissue"),
        cashier.get("/printers"),
        cashier.post("/printers/receipt/test-page"),
    ]
    assert [(s, reason(doc)) for s, doc in refused] == [(403, "forbidden_role")] * len(refused)
    assert not board(d).is_open(1)
    nocsrf = Client(d.daemon.url).login("super1")
    nocsrf.csrf = ""
    status, doc = nocsrf.post("/lockers/wall/doors/1/open", {"why": "no token"})
    assert status == 403 and reason(doc) == "csrf"


# -- lockers --------------------------------------------------------------------------------------


def test_deposit_reissue_and_door_open(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    _, d = daemon
    with Hands(board(d)):
        status, dep = cashier.post("/lockers/wall/deposit", {"order_no": "K-1001", "size": "S"})
        assert status == 200, dep
        door, code = dep["door"], dep["code"]
        assert door in (1, 2, 3, 4) and dep["printed"] is True
        d.wait(lambda: code in paper(d, "receipt").qr, what="pickup slip printed")
        assert "K-1001" in printed(d, "receipt")
        status, grids = cashier.get("/lockers")
        assert status == 200
        row = next(r for r in grids["banks"]["wall"] if r["door"] == door)
        assert row["state"] == "occupied" and row["order_no"] == "K-1001"

        status, again = sup.post(f"/lockers/wall/doors/{door}/reissue")
        assert status == 200, again
        assert again["code"] != code and again["printed"] is True
        d.wait(lambda: again["code"] in paper(d, "receipt").qr, what="new slip printed")
        assert audits(d, "locker_reissue")[0]["actor"] == "super1"

        status, opened = sup.post(f"/lockers/wall/doors/{door}/open", {"why": "顾客遗失凭条"})
        assert status == 200 and opened["opened"] is True, opened
        entry = audits(d, "locker_open_door")[0]
        assert entry["actor"] == "super1" and entry["target"] == f"wall:{door}"
        assert "顾客遗失凭条" in entry["detail"]
        d.wait(lambda: not board(d).is_open(door), what="door closed again")

    assert cashier.post("/lockers/wall/deposit", {"order_no": "K-2", "size": "XL"})[0] == 422
    assert cashier.post("/lockers/wall/deposit", {"order_no": "K" * 65})[0] == 422
    assert cashier.post("/lockers/wall/deposit", {"order_no": "K-3", "actor": "x"})[0] == 422
    status, doc = cashier.post("/lockers/nope/deposit", {"order_no": "K-4"})
    assert status == 404 and "no locker bank" in doc["detail"]
    for bad in ("99", "abc", "0"):
        status, doc = sup.post(f"/lockers/wall/doors/{bad}/open", {"why": "x"})
        assert status == 404 and "no door" in doc["detail"], doc
    assert sup.post("/lockers/wall/doors/1/open", {})[0] == 422  # the reason is required
    assert sup.post("/lockers/wall/doors/8/reissue")[0] == 409  # nothing in it


# -- printers -------------------------------------------------------------------------------------


def bar(sup: Client) -> dict[str, Any]:
    status, doc = sup.get("/printers")
    assert status == 200, doc
    row: dict[str, Any] = next(p for p in doc["printers"] if p["name"] == "bar")
    return row


def test_paper_out_holds_the_job_with_the_reason_then_it_prints(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    _, d = daemon
    status, job = sup.post("/printers/bar/test-page")
    assert status == 200 and job["state"] in ("queued", "held"), job
    jid = job["id"]
    d.wait(lambda: [h["id"] for h in bar(sup)["held"]] == [jid], what="job held")
    row = bar(sup)
    assert row["state"] == "attention" and row["up"] is True and row["queue"] == 1
    assert "缺纸" in row["held"][0]["why"] and "paper" in row["hint"]
    status, doc = sup.post(f"/printers/jobs/{jid}/reprint")  # it prints by itself later
    assert status == 409 and "held" in doc["detail"]

    paper(d, "bar").load_paper()
    d.wait(lambda: bar(sup)["state"] == "ready", what="bar printer ready")
    d.wait(lambda: "打印测试 TEST PAGE" in printed(d, "bar"), what="test page printed")
    row = bar(sup)
    assert row["held"] == [] and row["queue"] == 0 and row["hint"] == ""

    status, again = sup.post(f"/printers/jobs/{jid}/reprint", {"why": "smudged"})
    assert status == 200 and again["reprint_of"] == jid and again["id"] != jid
    d.wait(lambda: "重印 REPRINT" in printed(d, "bar"), what="reprint printed")
    entry = audits(d, "reprint")[0]
    assert entry["actor"] == "super1" and entry["target"] == jid and entry["detail"] == "smudged"
    status, doc = sup.get("/printers")
    assert {j["id"] for j in doc["jobs"]} >= {jid, again["id"]}

    assert sup.post("/printers/jobs/nope/reprint")[0] == 404
    assert sup.post(f"/printers/jobs/{jid}/reprint", {"actor": "x"})[0] == 422
    status, doc = sup.post("/printers/nope/test-page")
    assert status == 404 and "no printer" in doc["detail"]
    assert sup.post("/printers/bar/test-page", {"copies": 2})[0] == 422
