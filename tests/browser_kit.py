"""Real-browser kit: Debian's Chromium driven by Playwright against the real daemon with the kiosk.

Playwright never downloads a browser here (the box and the CI may be offline): it launches
/usr/bin/chromium (`make test` installs the `chromium` package) through `executable_path`.
The sync API is used from the test's thread; the daemon runs its own loop on another thread
(tests/daemon_kit.py), so the two never share an event loop.

Used by tests/test_kiosk_browser.py and bench/kiosk.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from edge.bus import Subscription
from edge.config import load
from kiosk_ui.users import Role, UserStore, open_kiosk_db
from tests.daemon_kit import HOUR, Running, Site, make_site

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (tests run as root in containers), no GPU, and nothing that phones home: the
# background services of a desktop Chromium would reach for the internet the box may not have.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-output" / "screenshots"
STATIC = REPO / "kiosk_ui" / "static"

COUNTER_SCANNER = "counter-scanner"
# The exit gate has its fire loop wired (input 3), so a test can raise the hardware alarm.
FIRE_GATE = "gate-out"


@dataclass(frozen=True)
class Staff:
    name: str
    pin: str
    role: Role


CASHIER = Staff("cashier1", "2580", Role.CASHIER)
SUPERVISOR = Staff("super1", "135790", Role.SUPERVISOR)
TECHNICIAN = Staff("tech1", "246802", Role.TECHNICIAN)
STAFF = (CASHIER, SUPERVISOR, TECHNICIAN)


def make_kiosk_site(root: Path) -> Site:
    """tests/daemon_kit's e2e site, plus a GM65-style serial scanner on the counter lane (the
    cashier's hand scanner) and a fire loop on the exit gate."""
    site = make_site(
        root,
        devices={
            COUNTER_SCANNER: ("scanner", "sim://?kind=serial&dedup=0.3"),
            FIRE_GATE: ("gate", "sim://?board=modbus&pass_delay_ms=150&window_s=1.5&fire_input=3"),
        },
    )
    toml = site.home / "edge.toml"
    text = toml.read_text()
    lane = '[lanes.counter]\nkind = "counter"\nlist = "default"\n'
    assert text.count(lane) == 1, "tests/daemon_kit.py's counter lane changed"
    toml.write_text(text.replace(lane, lane + f'scanner = "{COUNTER_SCANNER}"\n'))
    return site


def expired_ticket(site: Site) -> str:
    """A genuine ticket whose validity ended an hour ago (denied `expired`)."""
    return site.ticket(valid_from=int(site.now - 30 * HOUR), valid_until=int(site.now - HOUR))


def add_staff(site: Site, staff: tuple[Staff, ...] = STAFF) -> None:
    """Create the kiosk users in the box's kiosk.db (as `edge user add` would)."""
    state = load(site.home / "edge.toml", site.home).state_dir
    conn = open_kiosk_db(state)
    try:
        store = UserStore(conn)
        for s in staff:
            store.add(s.name, s.role, s.pin)
    finally:
        conn.close()


def check_chromium() -> None:
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium); "
            "Playwright must not download its own browser"
        )


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium; closed (browser, then Playwright's driver) on the way out, so
    no thread or process outlives the caller."""
    check_chromium()
    pw: Playwright = sync_playwright().start()
    try:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        pw.stop()


@dataclass
class Tab:
    """One browser context (its own cookies and localStorage: one person at one screen) with
    one page, and the script errors the page raised."""

    context: BrowserContext
    page: Page
    base: str
    errors: list[str] = field(default_factory=list)

    def goto(self, route: str = "") -> None:
        self.page.goto(f"{self.base}/kiosk/{route}")

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def login(self, staff: Staff) -> None:
        """Log in through the login screen, as a person would."""
        if "/kiosk/" not in self.page.url:
            self.goto()
        self.by("login-name").fill(staff.name)
        self.by("login-pin").fill(staff.pin)
        self.by("login-submit").click()
        expect(self.by("logout")).to_be_visible()

    def nav(self, screen: str) -> None:
        """Open a screen through its navigation button (what the role may see)."""
        self.by(f"nav-{screen}").click()
        self.page.wait_for_function("s => location.hash === '#/' + s", arg=screen)

    def wedge(self, code: str, *, over_s: float = 0.0) -> None:
        """A keyboard-wedge scanner: keystrokes (spread over `over_s`) into whatever has the
        focus, then its terminator, Enter."""
        self.page.keyboard.type(code, delay=over_s * 1000 / max(len(code), 1))
        self.page.keyboard.press("Enter")

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        assert path.stat().st_size > 2000, f"{path} is empty"
        return path

    def fetch(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request made by script in the page, with the page's session cookie and its CSRF
        token (what anyone at this screen could send without using the UI)."""
        status, doc = self.page.evaluate(_FETCH, {"method": method, "path": path, "body": body})
        return int(status), doc


_FETCH = """
async ({method, path, body}) => {
  const who = await fetch('/api/v1/session', {credentials: 'same-origin'});
  const token = who.ok ? (await who.json()).csrf_token : '';
  const r = await fetch(path, {
    method, credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
    body: body === null ? undefined : JSON.stringify(body),
  });
  let doc = null;
  try { doc = await r.json(); } catch (e) { doc = null; }
  return [r.status, doc];
}
"""


@contextmanager
def tab(browser: Browser, d: Running, *, lang: str | None = None) -> Iterator[Tab]:
    """A fresh context at 1280x800. `lang` preselects the UI language (localStorage edge.lang)
    before the first load. Fails the caller when the page raised a script error."""
    # 1280x800: the 10-inch kiosk screen of the issue.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    context.set_default_timeout(10_000)  # a click waits this long for its button, not 30 s
    try:
        if lang is not None:
            context.add_init_script(
                f"if (!localStorage.getItem('edge.lang')) localStorage.setItem('edge.lang', "
                f"{json.dumps(lang)});"
            )
        page = context.new_page()
        t = Tab(context, page, d.daemon.url)
        page.on("pageerror", lambda err: t.errors.append(str(err)))
        yield t
        assert not t.errors, f"the page raised script errors: {t.errors}"
    finally:
        context.close()


def catalogue(lang: str) -> dict[str, str]:
    """The UI's string catalogue (kiosk_ui/static/i18n/<lang>.json), flattened to key -> text."""
    doc = json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, str):
            out[prefix] = node

    walk("", doc)
    return out


class BusWatch:
    """The daemon's bus events on some topics from now on (a subscription on the daemon's loop),
    to see what a click or a scan did inside the box."""

    def __init__(self, d: Running, topics: set[str]) -> None:
        self.d, self.topics = d, topics
        self.seen: list[dict[str, Any]] = []
        self._sub: Subscription | None = None

    def __enter__(self) -> BusWatch:
        async def subscribe() -> Subscription:
            return self.d.box.bus.subscribe(self.topics)

        self._sub = self.d.run(subscribe())
        return self

    def __exit__(self, *exc: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:

            async def close() -> None:
                sub.close()

            self.d.run(close())

    def take(self) -> list[dict[str, Any]]:
        """Events published since the last take (data plus "topic"), oldest first."""
        sub = self._sub
        assert sub is not None

        async def pending() -> list[dict[str, Any]]:
            return [dict(e.data) | {"topic": e.topic} for e in sub.pending()]

        new = self.d.run(pending())
        self.seen += new
        return new

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = "event"
    ) -> dict[str, Any]:
        """The first event since the watch began that matches (already seen ones included)."""
        deadline = time.monotonic() + timeout
        while True:
            self.take()
            for event in self.seen:
                if match(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on the bus in {timeout} s; saw {self.seen}")
            time.sleep(0.02)


class ThreadGuard:
    """conftest's leak guard, for a module that shares one daemon and one browser across its
    tests: snapshot before the module's fixture starts them, check after it closed them."""

    def __init__(self) -> None:
        self.before = set(threading.enumerate())

    def check(self) -> None:
        leaked = [t for t in threading.enumerate() if t not in self.before and t.is_alive()]
        assert not leaked, f"the module left threads running: {leaked}"
