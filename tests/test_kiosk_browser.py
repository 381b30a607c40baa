"""The kiosk in a real browser (Debian's Chromium, headless) against the real daemon.

One daemon on simulated devices and one browser serve the whole module (each test opens its own
browser context: its own cookies, one person at one screen). The people are the kiosk's users
(cashier1, super1, tech1); the visitors scan at the simulated readers; the test reads what came
out of the simulated printers, lock board and turnstiles, and what the box recorded.

Screenshots of every main screen, in Chinese and English, go to test-output/screenshots/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from drivers.gate.sim import SimGate
from tests.browser_kit import (
    CASHIER,
    COUNTER_SCANNER,
    FIRE_GATE,
    SUPERVISOR,
    TECHNICIAN,
    BusWatch,
    Tab,
    ThreadGuard,
    add_staff,
    catalogue,
    chromium,
    expired_ticket,
    make_kiosk_site,
    tab,
)
from tests.daemon_kit import (
    Hands,
    Running,
    Site,
    board,
    jobs,
    paper,
    scan_at_locker,
    scanner,
    turnstile_unlocks,
)
from tests.daemon_kit import running as run_daemon

# Each main screen and an element that shows it has loaded.
SCREENS = {
    "counter": "scan-input",
    "gate": "lane-entry",
    "lockers": "bank-wall",
    "printers": "printer-receipt",
    "status": "status-devices",
}


@dataclass
class Env:
    site: Site
    d: Running
    browser: Browser

    def tab(self) -> AbstractContextManager[Tab]:
        return tab(self.browser, self.d)


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Replaces tests/conftest.py's per-test guard here: the daemon and the browser are shared
    by the module and may start worker threads lazily during any test; `env` checks that the
    module as a whole leaves none behind."""
    yield


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    guard = ThreadGuard()
    site = make_kiosk_site(tmp_path_factory.mktemp("kiosk"))
    add_staff(site)
    # A busy shared machine: a screen may take a few seconds to answer, never 10.
    expect.set_options(timeout=10_000)
    with run_daemon(site, kiosk=True) as d, chromium() as browser:
        yield Env(site, d, browser)
    guard.check()


def counter_admit(bus: BusWatch, rid_seen: set[str] | None = None) -> dict[str, Any]:
    """The next admit on the counter lane (not one in `rid_seen`)."""

    def mine(e: dict[str, Any]) -> bool:
        return (
            e.get("lane") == "counter"
            and e.get("decision") == "admit"
            and (e.get("redemption_id") not in (rid_seen or set()))
        )

    return bus.wait_for(mine, what="an admit at the counter")


def outbox_types(d: Running) -> list[str]:
    return [e["type"] for e in d.outbox()]


def receipt_after(d: Running, lines_before: int) -> str:
    return "\n".join(paper(d, "receipt").text[lines_before:])


# -- login, every screen, both languages ----------------------------------------------------


def test_login_every_screen_and_english(env: Env) -> None:
    d = env.d
    with env.tab() as t:
        t.goto()
        expect(t.by("login-name")).to_be_visible()
        expect(t.by("nav-counter")).to_be_hidden()
        t.shot("login-zh")
        # A wrong PIN: said in words, still at the login screen.
        t.by("login-name").fill(TECHNICIAN.name)
        t.by("login-pin").fill("975310")
        t.by("login-submit").click()
        expect(t.by("login-error")).not_to_be_empty()
        expect(t.by("logout")).to_be_hidden()

        t.login(TECHNICIAN)
        for screen, ready in SCREENS.items():
            t.nav(screen)
            expect(t.by(ready)).to_be_visible()
            t.shot(f"{screen}-zh")
        # The technician's status screen: the devices with their state.
        expect(t.by(f"device-{COUNTER_SCANNER}")).to_have_attribute("data-up", "true")
        expect(t.by("status-version")).not_to_be_empty()

        zh, en = catalogue("zh-CN"), catalogue("en")
        nav_zh = t.by("nav-counter").inner_text().strip()
        assert nav_zh in zh.values()
        t.by("lang-toggle").click()
        expect(t.by("nav-counter")).not_to_have_text(nav_zh)
        nav_en = t.by("nav-counter").inner_text().strip()
        assert nav_en in en.values() and nav_en.isascii(), nav_en
        assert t.page.evaluate("localStorage.getItem('edge.lang')") == "en"
        for screen, ready in SCREENS.items():
            t.nav(screen)
            expect(t.by(ready)).to_be_visible()
            t.shot(f"{screen}-en")
        # The choice survives a reload (a kiosk browser restarts at night).
        t.page.reload()
        expect(t.by("nav-counter")).to_have_text(nav_en)
        # A decision in English: the reason in plain English words.
        t.nav("counter")
        scanner(d, COUNTER_SCANNER).present(expired_ticket(env.site))
        expect(t.by("decision")).to_have_attribute("data-decision", "deny")
        expect(t.by("decision-line")).to_contain_text("Expired")
        t.shot("counter-deny-en")

        # The printers screen: a test page comes out of the receipt printer.
        t.nav("printers")
        before = len(paper(d, "receipt").text)
        t.by("test-page-receipt").click()
        d.wait(lambda: "TEST PAGE" in receipt_after(d, before), what="the test page printed")

        t.by("logout").click()
        expect(t.by("login-name")).to_be_visible()
        t.shot("login-en")


# -- counter --------------------------------------------------------------------------------


def test_counter_scanner_shows_the_decision(env: Env) -> None:
    d, site = env.d, env.site
    with env.tab() as t, BusWatch(d, {"decision"}) as bus:
        t.login(CASHIER)
        expect(t.by("scan-input")).to_be_focused()
        scanner(d, COUNTER_SCANNER).present(site.ticket())
        expect(t.by("decision")).to_have_attribute("data-decision", "admit")
        expect(t.by("decision-product")).to_contain_text("成人票")
        admit = counter_admit(bus)
        assert admit["source"] == "scanner" and admit["state"] == "confirmed", admit
        expect(t.by(f"recent-{admit['redemption_id']}")).to_be_visible()
        t.shot("counter-admit-zh")

        # The cashier undoes it (the customer changed their mind): within the void window.
        rid = admit["redemption_id"]
        t.by(f"void-{rid}").click()
        expect(t.by(f"recent-{rid}")).to_have_attribute("data-state", "voided")
        d.wait(lambda: "redemption_voided" in outbox_types(d), what="the void recorded")

        # An expired ticket: red, with the reason in plain words.
        scanner(d, COUNTER_SCANNER).present(expired_ticket(site))
        expect(t.by("decision")).to_have_attribute("data-decision", "deny")
        expect(t.by("decision-line")).to_contain_text("已过有效期")
        expect(t.by("scan-input")).to_be_focused()
        t.shot("counter-deny-zh")


def test_typed_code_waits_for_the_terminator_not_a_pause(env: Env) -> None:
    d, site = env.d, env.site
    code = site.ticket()
    half = len(code) // 2
    with env.tab() as t, BusWatch(d, {"decision"}) as bus:
        t.login(CASHIER)
        scan = t.by("scan-input")
        expect(scan).to_be_focused()
        t0 = time.monotonic()
        t.page.keyboard.type(code[:half], delay=600 / half)
        time.sleep(0.7)  # the scanner stalls mid-code (a busy USB hub): nothing is submitted
        assert [e for e in bus.take() if e.get("lane") == "counter"] == []
        expect(scan).to_have_value(code[:half])
        t.wedge(code[half:], over_s=0.4)
        assert time.monotonic() - t0 > 1.0
        expect(t.by("decision")).to_have_attribute("data-decision", "admit")
        counter_admit(bus)
        time.sleep(0.5)  # a second submit (on a pause, or twice on Enter) would show by now
        bus.take()
        mine = [e for e in bus.seen if e.get("lane") == "counter"]
        assert len({e.get("redemption_id") for e in mine}) == 1 and len(mine) == 1, mine
        assert mine[0]["source"] == "kiosk"
        # Ready for the next customer: the field is empty and keeps the focus.
        expect(scan).to_have_value("")
        expect(scan).to_be_focused()


def test_voucher_needs_one_confirming_tap_then_the_receipt_prints(env: Env) -> None:
    d, site = env.d, env.site
    typed, scanned = site.vouchers[0], site.vouchers[1]
    with env.tab() as t, BusWatch(d, {"decision", "print"}) as bus:
        t.login(CASHIER)
        expect(t.by("scan-input")).to_be_focused()  # keys typed before would go elsewhere
        redemptions = outbox_types(d).count("redemption")
        t.wedge(typed)
        expect(t.by("decision")).to_have_attribute("data-decision", "confirm")
        expect(t.by("confirm-redeem")).to_be_visible()
        t.shot("counter-voucher-confirm-zh")
        assert outbox_types(d).count("redemption") == redemptions  # nothing written yet
        t.by("confirm-redeem").click()
        expect(t.by("decision")).to_have_attribute("data-decision", "admit")
        expect(t.by("decision-product")).to_contain_text("茶")
        admit = counter_admit(bus)
        assert outbox_types(d).count("redemption") == redemptions + 1

        before = len(paper(d, "receipt").text)
        t.by("print-receipt").click()
        d.wait(lambda: "核销凭证 REDEMPTION" in receipt_after(d, before), what="the receipt")
        assert "茶 Tea" in receipt_after(d, before)
        d.wait(
            lambda: any(
                j["template"] in ("redemption", "receipt") and j["state"] == "printed"
                for j in jobs(d).values()
            ),
            what="the receipt job printed",
        )

        # The second voucher through the counter's hand scanner: the same confirming tap.
        scanner(d, COUNTER_SCANNER).present(scanned)
        expect(t.by("decision")).to_have_attribute("data-decision", "confirm")
        assert outbox_types(d).count("redemption") == redemptions + 1
        t.by("confirm-redeem").click()
        expect(t.by("decision")).to_have_attribute("data-decision", "admit")
        counter_admit(bus, {admit["redemption_id"]})
        assert outbox_types(d).count("redemption") == redemptions + 2


def test_shift_close_shows_the_summary_prints_it_and_syncs_it(env: Env) -> None:
    d, site = env.d, env.site
    with env.tab() as t, BusWatch(d, {"decision"}) as bus:
        t.login(CASHIER)
        scanner(d, COUNTER_SCANNER).present(site.ticket())
        counter_admit(bus)
        summary = t.by("shift-summary")
        expect(summary).to_contain_text("成人票")
        t.shot("counter-shift-zh")
        before = len(paper(d, "receipt").text)
        closed = outbox_types(d).count("shift_closed")
        t.by("shift-close").click()
        t.by("shift-close-confirm").click()
        d.wait(lambda: "交班汇总 SHIFT CLOSE" in receipt_after(d, before), what="the shift slip")
        slip = receipt_after(d, before)
        assert CASHIER.name in slip and "成人票" in slip, slip
        d.wait(lambda: outbox_types(d).count("shift_closed") == closed + 1, what="synced event")
        t.shot("counter-shift-closed-zh")
        # A new shift has begun: nothing redeemed in it yet.
        status, shift = t.fetch("GET", "/api/v1/kiosk/counter/shift")
        assert status == 200 and shift["admits"] == 0, shift


# -- lockers --------------------------------------------------------------------------------


def test_locker_deposit_then_pickup_at_the_wall(env: Env) -> None:
    d = env.d
    with env.tab() as t, Hands(board(d)) as hands:
        t.login(CASHIER)
        t.nav("lockers")
        expect(t.by("bank-wall")).to_be_visible()
        slips = len(paper(d, "receipt").qr)
        t.by("deposit-order").fill("K-2001")
        t.by("deposit-size").select_option("S")
        t.by("deposit-submit").click()
        # The pickup slip (its QR holds the code) comes out of the receipt printer.
        d.wait(lambda: len(paper(d, "receipt").qr) > slips, what="the pickup slip")
        code = paper(d, "receipt").qr[-1]
        status, grid = d.api("GET", "/api/v1/lockers/wall")
        assert status == 200, grid
        door = next(row["door"] for row in grid if row.get("order_no") == "K-2001")
        assert door in (1, 2, 3, 4)  # an S compartment
        expect(t.by(f"door-wall-{door}")).to_have_attribute("data-state", "occupied")
        t.shot("lockers-occupied-zh")

        # The customer scans the slip at the locker's reader: that door opens on the board.
        unlocks = len(board(d).unlocks())
        got = scan_at_locker(d, code)
        assert got["ok"] is True and got["door"] == door, got
        assert len(board(d).unlocks()) == unlocks + 1
        d.wait(lambda: hands.closed.count(door) == 2, what="the customer shut the door")
        expect(t.by(f"door-wall-{door}")).to_have_attribute("data-state", "free")


# -- gate supervisor ------------------------------------------------------------------------


def test_force_admit_is_recorded_as_forced(env: Env) -> None:
    d, site = env.d, env.site
    code = site.ticket()
    assert d.scan("entry", code)["state"] == "confirmed"  # the visitor went in at entry
    with env.tab() as t, BusWatch(d, {"decision"}) as bus:
        t.login(SUPERVISOR)
        t.nav("gate")
        card = t.by("lane-entry2-last")
        # Back out and in again at entry2: refused, and the lane's card says why.
        scanner(d, "scanner-in2").present(code)
        expect(card).to_contain_text("已使用")
        gate_before = turnstile_unlocks(d, "gate-in2")
        t.by("force-code").fill(code)
        t.by("force-lane").select_option("entry2")
        t.by("force-note").fill("家长在里面 parents inside")
        t.by("force-submit").click()
        forced = bus.wait_for(lambda e: e.get("source") == "force_admit", what="forced admit")
        assert forced["decision"] == "admit" and forced["forced"] is True, forced
        assert turnstile_unlocks(d, "gate-in2") == gate_before + 1
        expect(card).not_to_contain_text("已使用")
        t.shot("gate-forced-zh")
    svc = d.box.svc
    assert svc is not None
    rec = d.run(d.box.db.call(svc.ledger.get, bytes.fromhex(forced["redemption_id"])))
    assert rec is not None and rec.forced and SUPERVISOR.name in rec.note
    audit = d.api("GET", "/api/v1/audit")[1]
    mine = [a for a in audit if a["action"] == "force_admit"]
    assert mine and mine[0]["actor"] == SUPERVISOR.name and "parents" in mine[0]["detail"]


def emergency(t: Tab, pin: str) -> None:
    """Turn emergency free passage over: the toggle opens the PIN box (still open after a wrong
    PIN), then the PIN and the confirmation."""
    if not t.by("emergency-pin").is_visible():
        t.by("emergency-toggle").click()
    t.by("emergency-pin").fill(pin)
    t.by("emergency-confirm").click()


def test_emergency_free_passage_needs_the_pin_and_never_clears_the_fire_input(env: Env) -> None:
    d = env.d
    gates = [lane for lane in d.box.lanes.values() if lane.cfg.kind == "gate"]
    fire_lane = next(lane for lane in gates if lane.cfg.gate == FIRE_GATE)
    try:
        with env.tab() as t:
            t.login(SUPERVISOR)
            t.nav("gate")
            state = t.by("emergency-state")
            expect(state).to_have_attribute("data-on", "false")
            expect(t.by("fire-banner")).to_be_hidden()

            emergency(t, "864209")  # not super1's PIN: refused, nothing changes
            expect(t.by("toast")).to_be_visible()
            expect(state).to_have_attribute("data-on", "false")
            assert not any(lane.state.emergency for lane in gates)

            emergency(t, SUPERVISOR.pin)
            expect(state).to_have_attribute("data-on", "true")
            d.wait(lambda: all(lane.state.emergency for lane in gates), what="free passage")
            t.shot("gate-emergency-zh")

            # The hardware fire loop trips on the exit gate: the screen shows it.
            device = d.box.slots[FIRE_GATE].device
            assert isinstance(device, SimGate)
            turnstile = device.turnstile
            turnstile.fire = True
            try:
                d.wait(lambda: fire_lane.state.fire, timeout=5, what="fire mode")
                expect(t.by("fire-banner")).to_be_visible()
                # Emergency off: the software mode ends, the fire input stays.
                emergency(t, SUPERVISOR.pin)
                expect(state).to_have_attribute("data-on", "false")
                d.wait(lambda: not any(lane.state.emergency for lane in gates), what="passage off")
                assert fire_lane.state.fire
                expect(t.by("fire-banner")).to_be_visible()
                t.shot("gate-fire-zh")
            finally:
                turnstile.fire = False
            d.wait(lambda: not fire_lane.state.fire, timeout=5, what="fire cleared")
            expect(t.by("fire-banner")).to_be_hidden()
    finally:  # the module's later tests need the gates back to normal, whatever failed here
        if any(lane.state.emergency for lane in gates):
            d.run(d.box.set_emergency(False, "test-cleanup"))
    actions = [
        (a["actor"], a["detail"].split()[0])
        for a in d.api("GET", "/api/v1/audit")[1]
        if a["action"] == "emergency_free_passage"
    ]
    assert actions[:2] == [(SUPERVISOR.name, "off"), (SUPERVISOR.name, "on")], actions


# -- roles ----------------------------------------------------------------------------------


def test_a_cashier_cannot_do_a_supervisors_action(env: Env) -> None:
    d = env.d
    with env.tab() as t:
        t.login(CASHIER)
        expect(t.by("nav-counter")).to_be_visible()
        expect(t.by("nav-lockers")).to_be_visible()
        for screen in ("gate", "printers", "status"):
            expect(t.by(f"nav-{screen}")).to_be_hidden()

        # The same request the gate screen would send, from the cashier's own session.
        unlocks = turnstile_unlocks(d, "gate-in")
        status, doc = t.fetch(
            "POST", "/api/v1/kiosk/gate/lanes/entry/open", {"persons": 1, "note": "friend"}
        )
        assert status == 403 and doc["detail"]["reason"] == "forbidden_role", doc
        status, doc = t.fetch(
            "POST",
            "/api/v1/kiosk/gate/emergency",
            {"on": True, "pin": CASHIER.pin, "confirm": True},
        )
        assert status == 403 and doc["detail"]["reason"] == "forbidden_role", doc
        time.sleep(0.3)
        assert turnstile_unlocks(d, "gate-in") == unlocks
        assert not d.box.lanes["entry"].state.emergency
        # Typing the gate screen's address shows none of its controls.
        t.goto("#/gate")
        expect(t.by("force-submit")).to_be_hidden()
        expect(t.by("emergency-toggle")).to_be_hidden()
        t.shot("cashier-no-gate-zh")
