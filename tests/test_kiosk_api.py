"""The kiosk API's core (kiosk_ui/api.py, api_counter.py, api_status.py): bootstrap, the event
stream, the counter (scan, confirm, recent, void, receipt, shift) and the technician's status,
against the real daemon on simulated devices, over HTTP with a real session cookie and CSRF
token, as the browser would."""

from __future__ import annotations

import http.client
import json
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest

from edge import shifts
from kiosk_ui import api as kiosk_api
from sync.hub.issuer import BundleContent, ShortCodeSpec, random_short_code
from tests.conftest import NOW
from tests.conftest import Box as SvcBox
from tests.daemon_kit import HOUR, SITE, Running, Site, make_site, printed, running, scanner
from tests.kiosk_kit import KIOSK, Client, add_users

WINDOW_S = 4  # the site's void window: short, so the test can outlive it
DESK = """
[lanes.desk]
kind = "counter"
list = "default"
scanner = "desk-scanner"
"""


@contextmanager
def sse(d: Running, client: Client, topics: str = "") -> Iterator[http.client.HTTPResponse]:
    url = urlsplit(d.daemon.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", f"{KIOSK}/events?topics={topics}", headers={"Cookie": client.cookie()})
        resp = conn.getresponse()
        try:
            yield resp
        finally:
            resp.close()
    finally:
        conn.close()


def next_event(resp: http.client.HTTPResponse, topic: str, **match: Any) -> dict[str, Any]:
    """The data of the next event of `topic` whose data has the `match` items."""
    name, data = "", ""
    while True:
        line = resp.readline().decode()
        assert line, "the event stream ended"
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif line == "" and name:
            doc: dict[str, Any] = json.loads(data)["data"]
            if name == topic and all(doc.get(k) == v for k, v in match.items()):
                return doc
            name, data = "", ""


def outbox_types(d: Running) -> list[str]:
    return [e["type"] for e in d.outbox()]


def audits(d: Running, action: str) -> list[dict[str, Any]]:
    return [a for a in d.run(d.box.audit_log(500)) if a["action"] == action]


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Replaces conftest's per-test guard: the daemon is shared by the module; `daemon`
    checks for leaked threads around it all."""
    yield


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Running]]:
    before = set(threading.enumerate())
    site = make_site(
        tmp_path_factory.mktemp("kiosk-api"),
        devices={"desk-scanner": ("scanner", "sim://?kind=serial&dedup=0.3")},
        zones_toml=DESK,
    )
    toml = site.home / "edge.toml"
    toml.write_text(
        toml.read_text().replace("[policy]\n", f"[policy]\nvoid_window_s = {WINDOW_S}\n")
    )
    add_users(site.home, ("cashier1", "super1", "tech1"))
    with running(site, kiosk=True) as d:
        watcher = Client(d.daemon.url).login("cashier1")
        with sse(d, watcher) as stream:
            yield site, d
            # An open event stream must not hold the daemon up, and ends when it stops.
            d.loop.call_soon_threadsafe(d.daemon.request_stop)
            deadline = time.monotonic() + 10
            while stream.readline() and time.monotonic() < deadline:
                pass
            assert time.monotonic() < deadline, "the event stream outlived the daemon"
    time.sleep(0.2)
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"the daemon left threads running: {leaked}"


@pytest.fixture(scope="module")
def cashier(daemon: tuple[Site, Running]) -> Client:
    return Client(daemon[1].daemon.url).login("cashier1")


@pytest.fixture(scope="module")
def sup(daemon: tuple[Site, Running]) -> Client:
    return Client(daemon[1].daemon.url).login("super1")


def test_bootstrap_says_who_and_what(daemon: tuple[Site, Running], cashier: Client) -> None:
    _, d = daemon
    assert Client(d.daemon.url).get("/bootstrap")[0] == 401
    doc = cashier.ok("GET", "/bootstrap")
    assert (doc["user"], doc["role"], doc["site"]) == ("cashier1", "cashier", "site-e2e")
    assert doc["counter_lanes"] == ["counter", "desk"]
    assert set(doc["gate_lanes"]) == {"entry", "entry2", "exit"}
    assert doc["banks"] == ["wall"] and "receipt" in doc["printers"]
    assert doc["lanes"]["desk"]["scanner"] == "desk-scanner"
    assert doc["void_window_s"] == WINDOW_S
    assert doc["tls"] == {"enabled": False, "fingerprint": None}
    assert doc["version"] and any(z["zone"] == "main" for z in doc["zones"])


def test_a_ticket_is_redeemed_at_once_and_a_deny_says_why(
    daemon: tuple[Site, Running], cashier: Client
) -> None:
    site, _d = daemon
    ticket = site.ticket()
    doc = cashier.ok("POST", "/counter/scan", {"code": ticket})
    assert (doc["decision"], doc["state"], doc["needs_confirm"]) == ("admit", "confirmed", False)
    assert doc["lane"] == "counter" and doc["line_zh"] and doc["line_en"]
    assert doc["product_name"] == "成人票 Adult" and doc["source"] == "kiosk"
    again = cashier.ok("POST", "/counter/scan", {"code": ticket, "lane": "desk"})
    assert (again["decision"], again["reason"]) == ("deny", "already_used")
    assert again["line_en"] == "Ticket already used" and not again["needs_confirm"]
    junk = cashier.ok("POST", "/counter/scan", {"code": "hello world"})
    assert (junk["decision"], junk["reason"]) == ("deny", "malformed")


def test_a_voucher_waits_for_the_tap(daemon: tuple[Site, Running], cashier: Client) -> None:
    site, d = daemon
    voucher = site.vouchers[0]
    before = outbox_types(d).count("redemption")
    doc = cashier.ok("POST", "/counter/scan", {"code": voucher})
    assert (doc["decision"], doc["needs_confirm"], doc["kind"]) == ("confirm", True, "short")
    assert doc["redemption_id"] is None and doc["product_name"] == "茶 Tea"
    assert outbox_types(d).count("redemption") == before  # nothing written by the scan
    # Scanned again before the tap: still only a confirm (nothing was used).
    assert cashier.ok("POST", "/counter/scan", {"code": voucher})["decision"] == "confirm"
    done = cashier.ok("POST", "/counter/redeem", {"code": voucher})
    assert (done["decision"], done["state"], done["needs_confirm"]) == ("admit", "confirmed", False)
    assert outbox_types(d).count("redemption") == before + 1
    twice = cashier.ok("POST", "/counter/redeem", {"code": voucher})
    assert (twice["decision"], twice["reason"]) == ("deny", "already_used")


def test_the_counter_scanner_shows_on_the_event_stream(
    daemon: tuple[Site, Running], cashier: Client
) -> None:
    site, d = daemon
    voucher, ticket = site.vouchers[1], site.ticket()
    with sse(d, cashier, "decision") as stream:
        scanner(d, "desk-scanner").present(voucher)
        seen = next_event(stream, "decision", lane="desk")
        assert (seen["decision"], seen["needs_confirm"], seen["source"]) == (
            "confirm",
            True,
            "scanner",
        )
        token = seen["confirm_token"]
        assert voucher not in json.dumps(seen)  # the event never carries the code itself
        scanner(d, "desk-scanner").present(ticket)
        seen = next_event(stream, "decision", lane="desk")
        assert (seen["decision"], seen["state"]) == ("admit", "confirmed")
        # The tap redeems the scanned voucher by its token; it is on the stream too.
        tap = {"confirm_token": token, "lane": "desk"}
        cashier.ok("POST", "/counter/redeem", tap)
        seen = next_event(stream, "decision", lane="desk", source="kiosk")
        assert (seen["decision"], seen["product_name"]) == ("admit", "茶 Tea")
    status, doc = cashier.post("/counter/redeem", tap)  # one tap per confirm
    assert status == 409 and "scan the code again" in doc["detail"]
    assert cashier.post("/counter/redeem", tap | {"lane": "counter"})[0] == 409
    status, doc = cashier.post("/counter/redeem", {"confirm_token": token, "code": voucher})
    assert status == 422 and "either code or confirm_token" in doc["detail"]


def multi_entry_voucher(site: Site, d: Running, entries: int) -> str:
    """A voucher good for `entries` uses, brought in by a delta bundle."""
    code = random_short_code(12)
    spec = ShortCodeSpec(
        code,
        secrets.token_bytes(16),
        "tea",
        int(site.now - HOUR),
        int(site.now + 9 * HOUR),
        entries=entries,
    )
    site.hub.mint_short(SITE, spec)
    delta = site.root / f"delta-{code}.bundle"
    site.hub.write_bundle(SITE, delta, BundleContent(short_codes=[spec]), snapshot=False)
    d.run(d.box.import_bundle(delta))
    return code


def test_a_confirm_token_redeems_once(daemon: tuple[Site, Running], cashier: Client) -> None:
    site, d = daemon
    voucher = multi_entry_voucher(site, d, entries=3)
    doc = cashier.ok("POST", "/counter/scan", {"code": voucher, "lane": "desk"})
    assert doc["decision"] == "confirm" and doc["remaining"] == 2, doc  # left after this one
    before = outbox_types(d).count("redemption")
    tap = {"confirm_token": doc["confirm_token"], "lane": "desk"}
    rid = secrets.token_hex(16)
    first = cashier.ok("POST", "/counter/redeem", tap | {"redemption_id": rid})
    assert (first["decision"], first["redemption_id"], first["remaining"]) == ("admit", rid, 2)
    # The same tap again (a lost answer): its recorded outcome, not a second admit.
    assert cashier.ok("POST", "/counter/redeem", tap | {"redemption_id": rid}) == first
    # The token replayed (the same body three times, another tap): refused.
    replays = [cashier.post("/counter/redeem", tap)[0] for _ in range(3)]
    other = cashier.post("/counter/redeem", tap | {"redemption_id": secrets.token_hex(16)})
    assert replays == [409, 409, 409] and other[0] == 409
    assert outbox_types(d).count("redemption") == before + 1
    again = cashier.ok("POST", "/counter/scan", {"code": voucher, "lane": "desk"})
    assert (again["decision"], again["remaining"]) == ("confirm", 1)


def test_the_event_stream_ends_with_its_session(
    daemon: tuple[Site, Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, d = daemon
    monkeypatch.setattr(kiosk_api, "SESSION_CHECK_S", 0.5)  # a quicker test; 5 s in service
    tablet = Client(d.daemon.url).login("cashier1")
    with sse(d, tablet, "decision") as stream:
        assert tablet.call("DELETE", "/api/v1/session")[0] == 204
        time.sleep(1.5)
        d.scan("counter", "after logout")
        rest = b""
        while line := stream.readline():  # the server ends it (a timeout here fails)
            rest += line
    assert b"after logout" not in rest and b"event: decision" not in rest


def test_recent_and_undo_within_the_window(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    site, d = daemon
    ticket = site.ticket()
    rid = cashier.ok("POST", "/counter/scan", {"code": ticket})["redemption_id"]
    recent = cashier.ok("GET", "/counter/recent?limit=5")
    row = recent[0]
    assert (row["redemption_id"], row["actor"], row["voidable"]) == (rid, "cashier1", True)
    assert row["product_name"] == "成人票 Adult" and row["state"] == "confirmed"
    assert len(recent) <= 5 and [r["at"] for r in recent] == sorted(
        (r["at"] for r in recent), reverse=True
    )
    voided = cashier.ok("POST", "/counter/void", {"redemption_id": rid, "why": "wrong ticket"})
    assert voided["state"] == "voided"
    assert audits(d, "void")[0]["actor"] == "cashier1"
    assert cashier.ok("GET", "/counter/recent")[0]["voidable"] is False  # voided already
    # The ticket is usable again.
    again = cashier.ok("POST", "/counter/scan", {"code": ticket})
    assert again["decision"] == "admit"
    # Past the window: the cashier is refused, a supervisor may.
    late = next(r for r in cashier.ok("GET", "/counter/recent") if r["redemption_id"] != rid)
    late_id = again["redemption_id"]
    assert late["redemption_id"] == late_id
    time.sleep(WINDOW_S + 0.3)
    assert cashier.ok("GET", "/counter/recent")[0]["voidable"] is False
    status, doc = cashier.post("/counter/void", {"redemption_id": late_id})
    assert status == 403 and "supervisor" in doc["detail"], doc
    assert sup.ok("GET", "/counter/recent")[0]["voidable"] is True
    assert sup.ok("POST", "/counter/void", {"redemption_id": late_id})["state"] == "voided"
    assert audits(d, "void")[0]["actor"] == "super1"


def test_a_receipt_prints_and_reprints(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    site, d = daemon
    rid = cashier.ok("POST", "/counter/scan", {"code": site.ticket()})["redemption_id"]
    job = cashier.ok("POST", "/counter/receipt", {"redemption_id": rid})
    assert job["printer"] == "receipt" and job["template"] == "redemption"
    d.wait(lambda: "核销凭证 REDEMPTION" in printed(d, "receipt"), what="the receipt")
    assert "成人票 Adult" in printed(d, "receipt")
    d.wait(lambda: _printed(d, job["id"]), what="the job printed")
    again = cashier.ok("POST", "/counter/receipt", {"redemption_id": rid})
    assert again["id"] != job["id"] and again["reprint_of"] == job["id"]
    entry = audits(d, "reprint")[0]  # a reprint is audited, as on the printers screen
    assert (entry["actor"], entry["target"]) == ("cashier1", job["id"])
    status, doc = cashier.post("/counter/receipt", {"redemption_id": "0" * 32})
    assert status == 404 and "no redemption" in doc["detail"]
    # A voided redemption gets no receipt (nor a reprint).
    sup.ok("POST", "/counter/void", {"redemption_id": rid})
    status, doc = cashier.post("/counter/receipt", {"redemption_id": rid})
    assert status == 409 and "voided" in doc["detail"] and "撤销" in doc["detail"], doc
    assert len(audits(d, "reprint")) == 1


def _printed(d: Running, job_id: str) -> bool:
    assert d.box.spool is not None
    job = d.run(d.box.spool.job(job_id))
    return job is not None and job["state"] == "printed"


def test_the_shift_summary_and_its_close(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    site, d = daemon
    sup.ok("POST", "/counter/shift/close", {"note": "start clean"})  # earlier tests' scans
    fresh = cashier.ok("GET", "/counter/shift")
    assert (fresh["admits"], fresh["denies"], fresh["voids"]) == (0, 0, 0)
    adult, family = site.ticket(), site.ticket(product="family", persons=3)
    cashier.ok("POST", "/counter/scan", {"code": adult})
    cashier.ok("POST", "/counter/scan", {"code": family})
    cashier.ok("POST", "/counter/scan", {"code": adult})  # already used
    cashier.ok("POST", "/counter/scan", {"code": "hello world"})  # malformed
    d.scan("entry", "hello world")  # a gate's deny: not the counter's shift
    scanner(d, "desk-scanner").present(adult)  # the desk's own scanner: already used
    d.wait(lambda: (d.box.lanes["desk"].state.last or {}).get("reason") == "already_used")
    rid = cashier.ok("POST", "/counter/scan", {"code": site.ticket()})["redemption_id"]
    cashier.ok("POST", "/counter/void", {"redemption_id": rid})

    def summary() -> dict[str, Any]:
        doc: dict[str, Any] = cashier.ok("GET", "/counter/shift")
        return doc

    d.wait(lambda: summary()["denies"] == 3, what="three denies counted")
    doc = summary()
    assert (doc["admits"], doc["voids"], doc["shift_id"]) == (2, 1, fresh["shift_id"])
    products = {p["product"]: (p["count"], p["persons"]) for p in doc["by_product"]}
    assert products == {"adult": (1, 1), "family": (1, 3)}
    reasons = {r["reason"]: r["count"] for r in doc["by_reason"]}
    assert reasons == {"already_used": 2, "malformed": 1}
    assert next(r for r in doc["by_reason"] if r["reason"] == "malformed")["zh"]

    closed = cashier.ok("POST", "/counter/shift/close", {})
    assert (closed["shift_id"], closed["admits"], closed["denies"]) == (doc["shift_id"], 2, 3)
    assert closed["closed_at"] and closed["print_job"]["template"] == "shift_close"
    assert closed["print_error"] is None
    d.wait(lambda: _printed(d, closed["print_job"]["id"]), what="the slip")
    slip = printed(d, "receipt").rsplit("交班汇总 SHIFT CLOSE", 1)[1]  # the last one
    assert "cashier1" in slip and "家庭票 Family" in slip
    events = [e for e in d.outbox() if e["type"] == "shift_closed"]
    assert events[-1]["body"]["admits"] == 2 and events[-1]["body"]["closed_by"] == "cashier1"
    assert audits(d, "shift_close")[0]["actor"] == "cashier1"
    new = cashier.ok("GET", "/counter/shift")
    assert new["shift_id"] == doc["shift_id"] + 1
    assert (new["admits"], new["denies"], new["voids"], new["by_product"]) == (0, 0, 0, [])


def test_two_screens_closing_the_same_shift_close_it_once(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    _, d = daemon
    shown = cashier.ok("GET", "/counter/shift")["shift_id"]
    closed = outbox_types(d).count("shift_closed")
    body = {"shift_id": shown, "note": "end of day"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda c: c.post("/counter/shift/close", body), (cashier, sup)))
    assert sorted(s for s, _ in answers) == [200, 409], answers
    refused = next(doc for s, doc in answers if s == 409)["detail"]
    assert f"shift {shown}" in refused and "班次" in refused
    assert outbox_types(d).count("shift_closed") == closed + 1
    assert cashier.ok("GET", "/counter/shift")["shift_id"] == shown + 1
    status, _ = cashier.post("/counter/shift/close", {"shift_id": shown})  # a stale screen
    assert status == 409 and cashier.ok("GET", "/counter/shift")["shift_id"] == shown + 1


def test_a_void_never_commits_without_its_audit_entry(
    daemon: tuple[Site, Running], sup: Client
) -> None:
    site, d = daemon
    assert d.box.svc is not None
    ledger = d.box.svc.ledger
    rid = sup.ok("POST", "/counter/scan", {"code": site.ticket()})["redemption_id"]
    d.run(d.box.db.call(ledger.conn.execute, "ALTER TABLE audit RENAME TO audit_away"))
    try:  # the audit log cannot be written (a full disk, a crash at that moment)
        status, _ = sup.post("/counter/void", {"redemption_id": rid})
    finally:
        d.run(d.box.db.call(ledger.conn.execute, "ALTER TABLE audit_away RENAME TO audit"))
    assert status == 500
    red = d.run(d.box.db.call(ledger.get, bytes.fromhex(rid)))
    assert red is not None and red.state == "confirmed"  # not voided either
    assert sup.ok("POST", "/counter/void", {"redemption_id": rid})["state"] == "voided"
    assert audits(d, "void")[0]["target"] == rid


def test_the_first_shift_covers_what_came_before_it(box: SvcBox) -> None:
    """Admits never open a shift: the first one reaches back to them."""
    svc = box.service()
    svc.import_bundle(box.snapshot())
    for i in range(3):
        assert svc.redeem(box.ticket()[0], "counter", at=NOW + i).admit
    closed = shifts.close(svc, "cashier1", "", NOW + 60)
    assert (closed["admits"], closed["opened_ts"]) == (3, NOW)
    assert shifts.current(svc, NOW + 61)["admits"] == 0


def test_a_void_counts_in_the_shift_it_was_made_in(box: SvcBox) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    early = svc.redeem(box.ticket()[0], "counter", at=NOW)
    assert early.redemption_id is not None
    first = shifts.close(svc, "cashier1", "", NOW + 60)
    svc.void(bytes.fromhex(early.redemption_id), "undone", at=NOW + 120)
    second = shifts.close(svc, "cashier1", "", NOW + 180)
    assert (first["admits"], first["voids"]) == (1, 0)
    assert (second["admits"], second["voids"]) == (0, 1)


def test_status_is_for_technicians(
    daemon: tuple[Site, Running], cashier: Client, sup: Client
) -> None:
    _, d = daemon
    for client in (cashier, sup):
        status, doc = client.get("/status")
        assert status == 403 and doc["detail"]["reason"] == "forbidden_role"
    tech = Client(d.daemon.url).login("tech1")
    doc = tech.ok("GET", "/status")
    names = {dev["name"]: dev for dev in doc["devices"]}
    assert names["desk-scanner"]["up"] is True and "hint" in names["desk-scanner"]
    assert doc["sync"] == {
        "configured": False,
        "online": False,
        "since": None,
        "outbox_depth": doc["ledger"]["outbox_depth"],
        "last_ack": None,
        "last_error": None,
    }
    assert doc["cache"]["active"] is True and doc["cache"]["seq"] >= 1
    assert doc["cert"] is None and doc["clock_offset_s"] is None
    assert doc["version"] and doc["tls"]["enabled"] is False


def test_bad_input_gets_a_clear_4xx(daemon: tuple[Site, Running], cashier: Client) -> None:
    _, d = daemon
    cases: list[tuple[str, Any, int, str]] = [
        ("/counter/scan", {"code": "x" * 3000}, 422, "code"),
        ("/counter/scan", {"code": "abc", "extra": 1}, 422, "extra"),
        ("/counter/scan", {}, 422, "code"),
        ("/counter/scan", {"code": "abc", "lane": "entry"}, 422, "not a counter lane"),
        ("/counter/scan", {"code": "abc", "lane": "nope"}, 422, "not a counter lane"),
        ("/counter/void", {"redemption_id": "xyz"}, 422, "redemption_id"),
        ("/counter/void", {"redemption_id": "ab" * 16}, 404, "no redemption"),
        ("/counter/shift/close", {"note": "n" * 501}, 422, "note"),
    ]
    for path, body, code, words in cases:
        status, doc = cashier.post(path, body)
        assert (status, isinstance(doc["detail"], str)) == (code, True), (path, body, doc)
        assert words in doc["detail"] and " / " in doc["detail"], doc
    status, doc = cashier.post("/counter/scan", raw=b"{not json")
    assert status == 422 and "malformed" in doc["detail"]
    status, doc = cashier.post("/counter/scan", raw=b'{"code": "' + b"x" * 20000 + b'"}')
    assert status == 413 and "16384 bytes" in doc["detail"]
    assert cashier.get("/counter/recent?limit=0")[0] == 422
    # A POST without the CSRF token is refused before anything happens.
    bare = Client(d.daemon.url)
    bare.jar, bare.opener = cashier.jar, cashier.opener
    status, doc = bare.post("/counter/scan", {"code": "abc"})
    assert status == 403 and doc["detail"]["reason"] == "csrf"
    assert bare.get("/bootstrap")[0] == 200  # the cookie alone is enough to read
    assert Client(d.daemon.url).post("/counter/scan", {"code": "abc"})[0] == 401
