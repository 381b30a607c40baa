"""Run the real daemon in-process (its own loop on a thread) on simulated devices, for e2e tests.

The test body stays synchronous: `d.api(...)` calls the HTTP API like the kiosk or the CLI would,
`d.run(coro)` runs a coroutine on the daemon's loop, and `d.box.slots[...]` reaches a simulator
(the turnstile, the lock board, the printer) to play the visitor or the staff.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from drivers.gate.sim import SimGate
from drivers.locker.sim import SimBoard, SimLocker
from drivers.printer.sim import SimPrinter
from drivers.printer.simstate import EscposMachine
from drivers.scanner.sim import SimScanner
from edge import box as edge_box
from edge import lanes as edge_lanes
from edge.box import Box
from edge.codes import Ticket
from edge.config import load
from edge.daemon import Daemon
from edge.notify import Notifier
from sync.hub.issuer import BundleContent, Hub, ShortCodeSpec, random_short_code

T = TypeVar("T")
SITE = "site-e2e"
# A daemon's stop (and a reload) waits for each lane's and the alert forwarder's next look at
# `stop`: 0.5 s on a box, ~0.3 s of every one of the suite's ~70 daemon stops. Shorter here; the
# lanes handle scans the same way.
edge_lanes.SERVE_POLL_S = edge_box.ALERTS_POLL_S = 0.05
HOUR = 3600

DEVICES = {
    "scanner-in": ("scanner", "sim://?kind=serial&dedup=0.3"),
    "gate-in": ("gate", "sim://?board=modbus&pass_delay_ms=150&window_s=1.5"),
    "scanner-out": ("scanner", "sim://?kind=serial&dedup=0.3"),
    "gate-out": ("gate", "sim://?board=modbus&pass_delay_ms=150&window_s=1.5"),
    "scanner-in2": ("scanner", "sim://?kind=serial&dedup=0.3"),
    "gate-in2": ("gate", "sim://?board=modbus&pass_delay_ms=150&window_s=1.5"),
    "hot": ("printer", "sim://?profile=tm-t20"),
    "hot2": ("printer", "sim://?profile=tm-t20"),
    "bar": ("printer", "sim://?profile=xp-58"),
    "receipt": ("printer", "sim://?profile=tm-t20"),
    "wall": ("locker", "sim://?dialect=8a&doors=8&confirm_timeout=0.5"),
    "locker-scanner": ("scanner", "sim://?kind=serial&dedup=0.3"),
}
LANES = """
[lanes.entry]
kind = "gate"
list = "main-gate"
scanner = "scanner-in"
gate = "gate-in"
dedupe_s = 3

[lanes.entry2]
kind = "gate"
list = "main-gate"
scanner = "scanner-in2"
gate = "gate-in2"

[lanes.exit]
kind = "gate"
direction = "exit"
list = "main-gate"
scanner = "scanner-out"
gate = "gate-out"

[lanes.counter]
kind = "counter"
list = "default"

[lanes.lockers]
kind = "locker"
list = "default"
scanner = "locker-scanner"
locker = "wall"

[printing]
receipt = "receipt"
failover_after_s = 0.8
retry_max_s = 0.3
stations.hot = ["hot", "hot2"]
stations.bar = ["bar"]

[lockers.wall]
sizes.S = "1-4"
sizes.L = "5-8"
pickup_hours = 1
door_close_timeout_s = 5
"""


@dataclass
class Site:
    root: Path
    hub: Hub
    home: Path
    bundle: Path
    now: float = field(default_factory=time.time)
    vouchers: list[str] = field(default_factory=list)

    def ticket(self, **kw: Any) -> str:
        base: dict[str, Any] = dict(
            kid=self.hub.active_kid(),
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=int(self.now - HOUR),
            valid_until=int(self.now + 8 * HOUR),
        )
        return self.hub.mint_ticket(Ticket(**(base | kw)))


def make_site(
    root: Path,
    *,
    devices: dict[str, tuple[str, str]] | None = None,
    capacity: int | None = None,
    zones_toml: str = "",
) -> Site:
    now = time.time()
    hub = Hub.init(root / "hub", keys=1, not_before=int(now - 86400))
    home = root / "box"
    home.mkdir(parents=True)
    (home / "trust-anchor.json").write_text((root / "hub" / "trust-anchor.json").read_text())
    devs = DEVICES | (devices or {})
    text = [
        "[box]",
        f'site = "{SITE}"',
        'device = "box-e2e"',
        'trust_anchor = "trust-anchor.json"',
        "",
        "[policy]",
        "clock_max_unsynced_hours = 87600",
        "",
        "[http]",
        'listen = "127.0.0.1:0"',
        "",
    ]
    for name, (cls, url) in devs.items():
        text += [f"[devices.{name}]", f'class = "{cls}"', 'driver = "sim"', f'url = "{url}"', ""]
    (home / "edge.toml").write_text("\n".join(text) + LANES + zones_toml)
    vouchers = [random_short_code(12) for _ in range(3)]
    for code in vouchers:
        hub.mint_short(
            SITE,
            ShortCodeSpec(
                code,
                secrets.token_bytes(16),
                "tea",
                int(now - HOUR),
                int(now + 9 * HOUR),
                kind="voucher",
            ),
        )
    zone: dict[str, Any] = {"id": "main"}
    if capacity is not None:
        zone["capacity"] = capacity
    content = BundleContent(
        site_info={"timezone": "Asia/Shanghai", "rollover_hour": 4},
        products=[
            {"id": "adult", "name": "成人票 Adult"},
            {"id": "family", "name": "家庭票 Family"},
            {"id": "tea", "name": "茶 Tea"},
        ],
        lists=[
            {
                "id": "main-gate",
                "zone": "main",
                "products": ["adult", "family"],
                "anti_passback": "hard",
            },
            {"id": "default", "products": ["*"]},
        ],
        zones=[zone],
        short_codes=hub.minted_short_codes(SITE),
    )
    bundle = root / "snapshot.bundle"
    hub.write_bundle(SITE, bundle, content, snapshot=True, now=int(now))
    return Site(root, hub, home, bundle, now, vouchers)


class Running:
    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop

    @property
    def box(self) -> Box:
        assert self.daemon.box is not None
        return self.daemon.box

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def api(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.daemon.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.box.token if token is None else token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                ctype = resp.headers.get("content-type", "")
                return resp.status, (json.loads(raw) if "json" in ctype else raw.decode())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def scan(self, lane: str, code: str) -> dict[str, Any]:
        status, doc = self.api("POST", f"/api/v1/lanes/{lane}/scan", {"code": code})
        assert status == 200, doc
        result: dict[str, Any] = doc
        return result

    def outbox(self) -> list[dict[str, Any]]:
        """The events waiting for the cloud, oldest first, read on the daemon's database thread
        (the thread that owns the ledger connection)."""
        svc = self.box.svc
        assert svc is not None
        rows = self.run(self.box.db.call(svc.ledger.outbox, 100_000))
        return [doc for _, doc in rows]

    def events(self, topic: str) -> list[dict[str, Any]]:
        """The data of the bus's recent events on `topic`, copied on the daemon's loop (the bus
        is appended to there: iterating it from the test thread could race)."""

        async def copy() -> list[dict[str, Any]]:
            return [dict(e.data) for e in self.box.bus.recent if e.topic == topic]

        return self.run(copy())

    def wait(self, cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running(
    site: Site,
    *,
    bundle: bool = True,
    environ: dict[str, str] | None = None,
    cloud: bool = False,
    kiosk: bool = False,
) -> Iterator[Running]:
    config = load(site.home / "edge.toml", site.home)
    loop = asyncio.new_event_loop()
    daemon_box: list[Daemon] = []
    errors: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        extensions: list[Any] = []
        if cloud:
            from edge.cloud import CloudLink

            assert config.sync is not None, "the site's edge.toml has no [sync] section"
            extensions.append(CloudLink(config.sync))
        if kiosk:
            from kiosk_ui.extension import Kiosk

            extensions.append(Kiosk())
        d = Daemon(
            config,
            notifier=Notifier(environ or {}),
            bundle=site.bundle if bundle else None,
            extensions=extensions,
        )
        daemon_box.append(d)
        try:
            loop.run_until_complete(d.run())
        except BaseException as err:  # reported to the test
            errors.append(err)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=main, name="daemon-under-test")
    thread.start()
    deadline = time.monotonic() + 30
    while not (daemon_box and daemon_box[0].ready.is_set()):
        if errors or not thread.is_alive():
            thread.join()
            raise AssertionError(f"daemon did not start: {errors}")
        if time.monotonic() > deadline:
            raise AssertionError("daemon not ready in 30 s")
        time.sleep(0.02)
    r = Running(daemon_box[0], loop)
    try:
        yield r
    finally:
        loop.call_soon_threadsafe(r.daemon.request_stop)
        thread.join(30)
        assert not thread.is_alive(), "daemon did not stop within 30 s"
        if errors:
            raise errors[0]


# -- the hands at the simulated hardware: helpers for the services tests -----------------------


def board(d: Running, bank: str = "wall") -> SimBoard:
    dev = d.box.slots[bank].device
    assert isinstance(dev, SimLocker)
    return dev.board


def paper(d: Running, printer: str) -> EscposMachine:
    """The simulated printer's mechanism: what it printed, its paper and cover."""
    dev = d.box.slots[printer].device
    assert isinstance(dev, SimPrinter) and dev.server is not None
    return dev.server.machine


def printed(d: Running, printer: str) -> str:
    return "\n".join(paper(d, printer).text)


def scanner(d: Running, name: str) -> SimScanner:
    dev = d.box.slots[name].device
    assert isinstance(dev, SimScanner)
    return dev


def turnstile_unlocks(d: Running, gate: str = "gate-in") -> int:
    dev = d.box.slots[gate].device
    assert isinstance(dev, SimGate)
    return int(dev.turnstile.unlocks)


def door_row(d: Running, door: int) -> dict[str, Any]:
    status, grid = d.api("GET", "/api/v1/lockers/wall")
    assert status == 200, grid
    rows = {row["door"]: row for row in grid}
    row: dict[str, Any] = rows[door]
    return row


class Hands:
    """The person at the locker wall: closes every door that opens, after a moment, and
    remembers which doors were open (in order)."""

    def __init__(self, wall: SimBoard, doors: int = 8, delay: float = 0.15) -> None:
        self.wall, self.doors, self.delay = wall, doors, delay
        self.closed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hands-at-the-wall")

    def _run(self) -> None:
        while not self._stop.is_set():
            for door in range(1, self.doors + 1):
                if self.wall.is_open(door):
                    self._stop.wait(self.delay)  # takes the parcel / puts it in
                    self.wall.close_door(door)
                    self.closed.append(door)
            self._stop.wait(0.02)

    def __enter__(self) -> Hands:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def scan_at_locker(d: Running, code: str) -> dict[str, Any]:
    """The customer presents `code` at the locker's reader; returns the lane's answer."""
    lane = d.box.lanes["lockers"]
    before = lane.state.last
    scanner(d, "locker-scanner").present(code)
    d.wait(lambda: lane.state.last is not before, what="the locker lane's answer")
    last = lane.state.last
    assert last is not None
    return last


def deposit(d: Running, order_no: str, size: str = "S") -> dict[str, Any]:
    status, dep = d.api(
        "POST",
        "/api/v1/lockers/wall/deposit",
        {"order_no": order_no, "size": size, "actor": "staff-li"},
    )
    assert status == 200, dep
    out: dict[str, Any] = dep
    return out


def jobs(d: Running) -> dict[str, dict[str, Any]]:
    status, rows = d.api("GET", "/api/v1/print/jobs")
    assert status == 200, rows
    return {j["id"]: j for j in rows}


@contextmanager
def event_stream(d: Running, topics: str) -> Iterator[http.client.HTTPResponse]:
    url = urlsplit(d.daemon.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request(
            "GET",
            f"/api/v1/events?topics={topics}",
            headers={"Authorization": f"Bearer {d.box.token}"},
        )
        resp = conn.getresponse()
        try:
            yield resp
        finally:
            resp.close()
    finally:
        conn.close()


def read_event(
    resp: http.client.HTTPResponse, topic: str, allowed: tuple[str, ...] = ("decision", "passage")
) -> dict[str, Any]:
    """The next server-sent event of `topic` (others skipped; all must be in `allowed`, the
    topics the stream was asked for)."""
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
            assert name in allowed, f"event {name!r} on a stream for {allowed}"
            if name == topic:
                doc: dict[str, Any] = json.loads(data)
                return doc
            name, data = "", ""
