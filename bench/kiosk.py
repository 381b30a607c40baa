"""Area `kiosk` (issue 6, "Performance"): the kiosk in a real browser (Debian's Chromium, headless,
through Playwright) against the real daemon on simulated devices.

The daemon runs in this process on its own thread (tests/daemon_kit.py, the site of the browser
tests: tests/browser_kit.py); Chromium is its own process. Phases:

- first load of the counter screen, logged in (the session cookie of one login), each in a fresh
  browser context with the HTTP cache disabled: from the start of the navigation to the moment
  the scan field is on screen, enabled and focused (performance.now() in the page, whose origin
  is the navigation start); bytes are everything the network delivered for that load (headers
  included, Chrome's encodedDataLength) until then plus a settling half second;
- scan to browser: a code presented on the counter lane's simulated serial scanner (the GM65
  reader on a pty, read by the real driver), through the lane, the bus and the event stream, to
  the decision shown in the page. A MutationObserver in the page stamps the change of the
  decision element (`scan_to_dom`), then the next animation frame, the frame that draws it
  (`scan_to_browser`, the figure of the issue). The page's clock (timeOrigin + now) is mapped to
  this process's wall clock by the round trip with the smallest delay, before and after the
  phase. Each scan is the opposite of what the screen shows, an admit (a fresh ticket) or a
  deny (an expired one), so that every scan changes it. A scan the page never shows within 5 s
  is a miss; `scan_lane_lost` counts scans the lane itself never decided (the reader/driver).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stats import (
    Figures,
    Noise,
    add_noise,
    drop_work,
    median,
    percentile,
    progress,
    wait_quiet,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.daemon_kit import Running, Site

READY_JS = """
(() => {
  const done = () => {
    if (window.__ready !== undefined) return;
    const el = document.querySelector('[data-testid="scan-input"]');
    if (el && document.activeElement === el && !el.disabled && el.offsetParent !== null) {
      window.__ready = performance.now();
    }
  };
  document.addEventListener('focusin', done, true);
  new MutationObserver(done).observe(document, {subtree: true, childList: true, attributes: true});
})();
"""

OBSERVE_JS = """
() => {
  const now = () => performance.timeOrigin + performance.now();
  const current = () => {
    const el = document.querySelector('[data-testid="decision"]');
    return el ? el.getAttribute('data-decision') : null;
  };
  window.__marks = [];
  let last = current();
  new MutationObserver(() => {
    const decision = current();
    if (decision === last) return;
    last = decision;
    const mark = {decision, dom: now(), frame: null};
    window.__marks.push(mark);
    requestAnimationFrame(() => { mark.frame = now(); });
  }).observe(document.body, {subtree: true, childList: true, attributes: true,
                              characterData: true});
}
"""

WAIT_JS = """
([from, want]) => {
  const marks = window.__marks;
  for (let i = from; i < marks.length; i++) {
    if (marks[i].decision === want && marks[i].frame !== null) return {index: i, ...marks[i]};
  }
  return null;
}
"""


def _calibrate(page: Page) -> tuple[float, float]:
    """(page clock - wall clock, round trip) in ms, from the fastest of 30 round trips."""
    best = (0.0, float("inf"))
    for _ in range(30):
        a = time.time() * 1000
        p = float(page.evaluate("performance.timeOrigin + performance.now()"))
        b = time.time() * 1000
        if b - a < best[1]:
            best = (p - (a + b) / 2, b - a)
    return best


def _login_cookies(browser: Browser, base: str) -> list[Any]:
    from playwright.sync_api import expect

    from tests.browser_kit import CASHIER

    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{base}/kiosk/")
        page.get_by_test_id("login-name").fill(CASHIER.name)
        page.get_by_test_id("login-pin").fill(CASHIER.pin)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("logout")).to_be_visible(timeout=15_000)
        return list(context.cookies())
    finally:
        context.close()


def _first_load(browser: Browser, base: str, cookies: list[Any]) -> tuple[float, float, int, int]:
    """One cold load of the counter screen: (ms to ready in the page, ms seen from here, bytes,
    requests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        context.add_cookies(cookies)
        context.add_init_script(READY_JS)
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        finished: dict[str, float] = {}
        streamed: dict[str, float] = {}

        def on_finished(e: dict[str, Any]) -> None:
            finished[e["requestId"]] = float(e["encodedDataLength"])

        def on_data(e: dict[str, Any]) -> None:
            rid = e["requestId"]
            streamed[rid] = streamed.get(rid, 0.0) + float(e.get("encodedDataLength", 0))

        cdp.on("Network.loadingFinished", on_finished)
        cdp.on("Network.dataReceived", on_data)
        t0 = time.monotonic()
        page.goto(f"{base}/kiosk/#/counter")
        page.wait_for_function("() => window.__ready !== undefined", timeout=15_000)
        seen_ms = (time.monotonic() - t0) * 1000
        ready_ms = float(page.evaluate("window.__ready"))
        page.wait_for_timeout(500)  # what the page fetches right after (lazy modules, icons)
        total = sum(finished.values()) + sum(
            v for rid, v in streamed.items() if rid not in finished
        )
        requests = len(finished.keys() | streamed.keys())
        cdp.detach()
        return ready_ms, seen_ms, int(total), requests
    finally:
        context.close()


def _loads(figures: Figures, browser: Browser, base: str, cookies: list[Any], n: int) -> None:
    _first_load(browser, base, cookies)  # warm-up: the daemon's first static file reads
    ready, seen, sizes, requests = [], [], [], []
    for _ in range(n):
        r, s, b, q = _first_load(browser, base, cookies)
        ready.append(r)
        seen.append(s)
        sizes.append(b)
        requests.append(q)
    figures.add("counter_first_load_ms", median(ready), "ms", 1)
    figures.add("counter_first_load_p99_ms", percentile(ready, 99), "ms", 1)
    figures.add("counter_first_load_outside_ms", median(seen), "ms", 1)
    figures.add("counter_first_load_kb", max(sizes) / 1000, "KB", 1)
    figures.add("counter_first_load_requests", max(requests), "count", 0)
    figures.add("counter_first_load_samples", len(ready), "count", 0)


def _scans(figures: Figures, browser: Browser, d: Running, site: Site, n: int) -> None:
    from tests.browser_kit import CASHIER, COUNTER_SCANNER, BusWatch, expired_ticket, tab
    from tests.daemon_kit import scanner

    warm = 6
    fresh = [site.ticket() for _ in range(n + warm)]
    old = [expired_ticket(site) for _ in range(n + warm)]
    reader = scanner(d, COUNTER_SCANNER)
    with tab(browser, d) as t, BusWatch(d, {"decision"}) as bus:
        t.login(CASHIER)
        t.page.get_by_test_id("scan-input").wait_for()
        t.page.evaluate(OBSERVE_JS)
        offset, rtt = _calibrate(t.page)
        progress(f"  page clock offset {offset:+.2f} ms (round trip {rtt:.2f} ms)")
        dom: list[float] = []
        frame: list[float] = []
        misses, consumed, shown = 0, 0, None
        noise = Noise()
        for i in range(n + warm):
            # The opposite of what the screen shows, so that every scan changes it.
            want = "deny" if shown == "admit" else "admit"
            code = (old if want == "deny" else fresh).pop()
            t0 = time.time() * 1000
            reader.present(code)
            try:
                handle = t.page.wait_for_function(
                    WAIT_JS, arg=[consumed, want], polling=5, timeout=5000
                )
            except Exception:  # playwright's TimeoutError: a scan never shown
                misses += 1
                shown = t.page.evaluate(
                    "() => document.querySelector('[data-testid=decision]')"
                    "?.getAttribute('data-decision')"
                )
                consumed = int(t.page.evaluate("() => window.__marks.length"))
                continue
            mark = handle.json_value()
            consumed, shown = int(mark["index"]) + 1, want
            if i >= warm:
                dom.append(mark["dom"] - offset - t0)
                frame.append(mark["frame"] - offset - t0)
            time.sleep(0.05)  # the next customer steps up
        after, rtt2 = _calibrate(t.page)
        time.sleep(0.5)
        bus.take()
        decided = len([e for e in bus.seen if e.get("lane") == "counter"])
        progress(
            f"  {len(frame)} scans measured; {n + warm} presented, {decided} decided by the "
            f"lane, {misses} never shown; clock drift over the phase {after - offset:+.2f} ms "
            f"(round trip {rtt2:.2f} ms); {noise.describe()}"
        )
    figures.latency("scan_to_browser", frame)
    figures.add("scan_to_browser_median_ms", median(frame), "ms")
    figures.add("scan_to_browser_max_ms", max(frame, default=float("nan")), "ms")
    figures.latency("scan_to_dom", dom)
    figures.add("scan_to_browser_samples", len(frame), "count", 0)
    figures.add("scan_to_browser_misses", misses, "count", 0)
    figures.add("scan_lane_lost", n + warm - decided, "count", 0)


def run(quick: bool, base: Path | None = None, keep: bool = False) -> Figures:
    # Imported here: Playwright and the test kits are needed by this area only.
    from tests.browser_kit import CASHIER, add_staff, chromium, make_kiosk_site
    from tests.daemon_kit import running

    loads, scans = (3, 20) if quick else (25, 220)
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-kiosk-", dir=base))
    progress(f"kiosk ({'quick' if quick else 'full size'}) in {work}")
    whole = Noise()
    try:
        site = make_kiosk_site(work / "site")
        add_staff(site, (CASHIER,))
        with running(site, kiosk=True) as d, chromium() as browser:
            progress(f"browser {browser.version}; daemon at {d.daemon.url}")
            cookies = _login_cookies(browser, d.daemon.url)
            wait_quiet(0 if quick else 20)
            progress(f"first load of the counter screen x{loads}, cache disabled")
            _loads(figures, browser, d.daemon.url, cookies, loads)
            wait_quiet(0 if quick else 20)
            progress(f"scan to browser x{scans} on the counter's simulated scanner")
            _scans(figures, browser, d, site, scans)
    finally:
        drop_work(work, keep)
    return add_noise(figures, whole)
