"""Outbox backpressure (edge/outbox_watch.py): the backlog alarm rises once and clears once (bus,
/healthz, /metrics, STATUS=, an outbox event), nothing is ever dropped, and a flapping device's
alerts are coalesced before they are written, harder while the alarm is up. The real daemon on
simulated devices; a real mosquitto and the reference hub where the link drains the backlog."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge.devices import DeviceSlot
from edge.outbox_watch import Coalescer
from sync.hub.serve import HubServer
from sync.hub.store import HubStore
from tests.broker import Broker, Pki, broker_fixture, make_hub, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE, Running, Site, make_site, running

BOX = "box-e2e"


def add_sync(
    site: Site, broker: str, extra: str, certs: tuple[Path, Path, Path] | None = None
) -> None:
    ca, cert, key = certs or (Path("ca.crt"), Path("box.crt"), Path("box.key"))
    with (site.home / "edge.toml").open("a") as f:
        f.write(
            f'\n[sync]\nbroker = "{broker}"\nca = "{ca}"\ncert = "{cert}"\nkey = "{key}"\n'
            f"catch_up_s = 0\n{extra}"
        )


def alerts(d: Running, device: str) -> list[dict[str, Any]]:
    return [
        e["body"]
        for e in d.outbox()
        if e["type"] == "device_alert" and e["body"]["device"] == device
    ]


def flap(d: Running, slot: DeviceSlot, times: int) -> None:
    """The device drops and comes back `times` times (what a loose cable does to its slot)."""

    async def go() -> None:
        for i in range(times):
            if i % 2 == 0:
                slot.mark_down("no reply from the board", "check the cable / 检查连线")
            else:
                slot.mark_up()
            await asyncio.sleep(0.005)

    d.run(go())


def metric(d: Running, name: str) -> float:
    status, text = d.api("GET", "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on /metrics")


def test_the_coalescer_writes_one_per_interval_and_the_latest_state_with_the_count() -> None:
    t = [0.0]
    c = Coalescer(60.0, 600.0, clock=lambda: t[0], wall=lambda: 1000.0 + t[0])
    assert c.offer("device_alert", {"device": "gate", "up": False}) == {
        "device": "gate",
        "up": False,
    }
    for i in range(1, 50):
        t[0] = float(i)
        assert c.offer("device_alert", {"device": "gate", "up": i % 2 == 0}) is None
    assert c.offer("device_alert", {"device": "bar", "up": False}) is not None  # another source
    sale = {"redemption_id": "ab", "lane": "entry"}
    for _ in range(3):  # business facts are never held back
        assert c.offer("redemption", sale) is sale
    t[0] = 59.9
    assert c.due() == []
    t[0] = 60.0
    assert c.due() == [
        (
            "device_alert",
            {"device": "gate", "up": False, "suppressed": 48, "suppressed_since": 1001.0},
        )
    ]
    assert c.suppressed == {"device_alert": 48}
    # That one opened the next window: a change inside it waits for its end, not longer.
    t[0] = 61.0
    assert c.offer("device_alert", {"device": "gate", "up": True}) is None
    t[0] = 120.0
    assert c.due() == [
        (
            "device_alert",
            {"device": "gate", "up": True, "suppressed": 0, "suppressed_since": 1061.0},
        )
    ]
    t[0] = 200.0
    assert c.due() == []  # quiet windows are forgotten
    # Under the alarm the window is ten minutes.
    c.alarm = True
    assert c.offer("device_alert", {"device": "gate", "up": False}) is not None
    t[0] = 700.0
    assert c.offer("device_alert", {"device": "gate", "up": True}) is None
    t[0] = 801.0
    assert [b["up"] for _, b in c.due()] == [True]
    # At stop what is held is written at once.
    t[0] = 802.0
    assert c.offer("device_alert", {"device": "gate", "up": False}) is None
    assert [b["up"] for _, b in c.drain()] == [False]


def test_a_flapping_device_is_coalesced_and_redemptions_are_all_written(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    add_sync(site, "127.0.0.1:9", "telemetry_interval_s = 1\n")
    with running(site) as d:  # no link started: the outbox only grows
        flap(d, d.box.slots["gate-in2"], 40)  # ends up
        codes = [site.ticket() for _ in range(3)]
        for code in codes:
            assert d.scan("counter", code)["state"] == "confirmed"
        d.wait(lambda: len(alerts(d, "gate-in2")) == 2, timeout=5, what="the trailing alert")
        first, last = alerts(d, "gate-in2")
        assert (first["up"], "suppressed" in first) == (False, False)
        assert (last["up"], last["suppressed"]) == (True, 38)  # its current state, and the count
        assert len([e for e in d.outbox() if e["type"] == "redemption"]) == 3
        assert metric(d, "edge_telemetry_suppressed") == 38
        time.sleep(1.2)
        assert len(alerts(d, "gate-in2")) == 2  # quiet now: nothing more
        assert d.api("GET", "/healthz")[1]["status"] == "ok"


def test_an_old_backlog_raises_the_alarm_and_telemetry_waits_longer(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    add_sync(
        site,
        "127.0.0.1:9",
        "outbox_alarm_age_s = 1.5\ntelemetry_interval_s = 1\ntelemetry_interval_alarm_s = 60\n",
    )
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        # A 2 s watchdog: the main loop sends STATUS= every second (without one, every 5 s).
        environ = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
        with running(site, environ=environ) as d:
            d.wait(lambda: d.api("GET", "/healthz")[1]["status"] == "degraded", what="alarm")
            health = d.api("GET", "/healthz")[1]
            assert health["devices_down"] == [] and health["database"] is True
            (alarm,) = health["alarms"]
            assert alarm["alarm"] == "outbox" and "oldest event" in alarm["reason"], alarm
            assert metric(d, "edge_outbox_alarm") == 1
            assert metric(d, "edge_outbox_oldest_age_seconds") >= 1.5
            assert metric(d, "edge_outbox_depth") >= 1
            status = ""
            while "outbox backlog" not in status:  # systemctl status shows it
                status = notify.recv(4096).decode()
            assert status.startswith("STATUS=degraded 降级: outbox backlog 积压: oldest event")
            raised = [e["body"] for e in d.outbox() if e["type"] == "outbox_alarm"]
            assert [r["state"] for r in raised] == ["raised"]  # once, not at every check
            assert [e["state"] for e in d.events("outbox")] == ["raised"]
            # While it is up a flapping gate gets one alert a minute, not one a second.
            flap(d, d.box.slots["gate-out"], 10)
            time.sleep(1.5)
            assert len(alerts(d, "gate-out")) == 1
            assert d.scan("counter", site.ticket())["state"] == "confirmed"  # never refused
            # A reload keeps the alarm's state: still degraded, and no second "raised" up.
            before = d.daemon.reloads
            assert d.api("POST", "/api/v1/config/reload")[0] == 202
            d.wait(lambda: d.daemon.reloads > before, what="reload done")
            time.sleep(1.0)  # several checks of the new box's watch
            assert d.api("GET", "/healthz")[1]["status"] == "degraded"
            raised = [e["body"] for e in d.outbox() if e["type"] == "outbox_alarm"]
            assert [r["state"] for r in raised] == ["raised"]
    # Stopping writes what was held back: the cloud will know the gate is up again.
    with sqlite3.connect(site.home / "ledger.db") as conn:
        rows = conn.execute("SELECT body FROM outbox WHERE type = 'device_alert'").fetchall()
    gate_out = [json.loads(b)["body"] for (b,) in rows if '"gate-out"' in b]
    assert [(a["up"], a.get("suppressed")) for a in gate_out] == [(False, None), (True, 8)]


def test_the_alarm_clears_when_the_hub_drains_the_backlog_and_nothing_is_lost(
    tmp_path: Path, pki: Pki, broker: Broker
) -> None:
    site = make_site(tmp_path)
    certs = pki.box(BOX)
    add_sync(
        site,
        f"127.0.0.1:{broker.port}",
        # The age threshold far off (the rows alarm is the one under test); a twentieth of it is
        # how often the backlog is read: 0.5 s.
        "outbox_alarm_rows = 6\noutbox_alarm_age_s = 10\n",
        (pki.ca_file, certs.cert, certs.key),
    )

    def hub() -> HubServer:
        return make_hub(site.hub, broker, tmp_path / "hub.db", {BOX: SITE})

    with hub() as down:  # the hub's persistent session holds what the box sends meanwhile
        down.wait_ready()
    with running(site, cloud=True) as d:
        d.wait(lambda: (d.box.cloud_status or dict)().get("connected") is True, what="link")
        codes = [site.ticket() for _ in range(6)]
        for code in codes:
            assert d.scan("counter", code)["state"] == "confirmed"
        d.wait(lambda: d.api("GET", "/healthz")[1]["status"] == "degraded", what="alarm")
        (alarm,) = d.api("GET", "/healthz")[1]["alarms"]
        assert "events waiting for the cloud (alarm at 6)" in alarm["reason"], alarm
        assert d.api("GET", "/api/v1/status")[1]["outbox"]["alarm"] is True
        with hub() as up:
            up.wait_ready()
            d.wait(lambda: d.api("GET", "/healthz")[1]["status"] == "ok", timeout=20, what="clear")
            assert metric(d, "edge_outbox_alarm") == 0
            assert [e["state"] for e in d.events("outbox")] == ["raised", "cleared"]
            d.wait(lambda: "cleared" in _alarm_states(tmp_path), timeout=15, what="at the hub")
    store = HubStore(tmp_path / "hub.db")
    try:
        types = [t for *_, t in store.events(BOX)]
    finally:
        store.close()
    assert types.count("redemption") == 6  # every one arrived, none twice
    assert _alarm_states(tmp_path) == ["raised", "cleared"]


def _alarm_states(root: Path) -> list[str]:
    store = HubStore(root / "hub.db")
    try:
        rows = store.conn.execute(
            "SELECT body FROM events WHERE type = 'outbox_alarm' ORDER BY seq"
        ).fetchall()
    finally:
        store.close()
    return [json.loads(b)["state"] for (b,) in rows]
