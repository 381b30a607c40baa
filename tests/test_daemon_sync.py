"""The whole loop on one machine: the daemon's outbox reaches the reference hub through a real
mosquitto with mTLS, the hub's ack empties it, and a print job sent by the hub prints once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drivers.printer.sim import SimPrinter
from sync.hub.serve import HubServer
from sync.protocol import Down
from tests.broker import Broker, Pki, broker_fixture, pki_fixture  # noqa: F401
from tests.daemon_kit import SITE, Running, make_site, running

BOX = "box-e2e"


def printed(d: Running, printer: str) -> list[str]:
    dev = d.box.slots[printer].device
    assert isinstance(dev, SimPrinter) and dev.server is not None
    return list(dev.server.machine.text)


def test_events_reach_the_hub_once_and_a_hub_print_job_prints_once(
    tmp_path: Path, pki: Pki, broker: Broker
) -> None:
    site = make_site(tmp_path)
    certs = pki.box(BOX)
    with (site.home / "edge.toml").open("a") as f:
        f.write(
            f'\n[sync]\nbroker = "127.0.0.1:{broker.port}"\nca = "{pki.ca_file}"\n'
            f'cert = "{certs.cert}"\nkey = "{certs.key}"\n'
        )
    hub = HubServer(
        site.hub,
        host="127.0.0.1",
        port=broker.port,
        ca=pki.ca_file,
        cert=pki.hub.cert,
        key=pki.hub.key,
        db_path=tmp_path / "hub.db",
        registry={BOX: SITE},
    )
    with hub:
        hub.wait_ready()
        with running(site, cloud=True) as d:
            code = site.ticket()
            assert d.scan("entry", code)["state"] == "confirmed"
            d.wait(lambda: (d.box.cloud_status or dict)().get("connected") is True, what="link")

            def hub_types() -> list[str]:
                return [t for *_, t in _events(hub)]

            d.wait(lambda: {"redemption", "redemption_confirmed"} <= set(hub_types()), what="hub")
            d.wait(
                lambda: d.api("GET", "/api/v1/status")[1]["ledger"]["outbox_depth"] == 0,
                what="outbox emptied by the hub's ack",
                timeout=20,
            )
            ids = [i for _, _, i, _ in _events(hub)]
            assert len(ids) == len(set(ids))  # each event stored once
            body = {"template": "test_page", "data": {}, "target": "receipt"}
            hub.send(BOX, "print", body, 600, msg_id="hub-job-1")
            d.wait(lambda: any("TEST PAGE" in line for line in printed(d, "receipt")), what="job")
            # The same message handled again (a broker redelivery after a crash): no second print.
            cloud = d.daemon.extensions[0]
            again = Down("hub-job-1", "print", time.time(), 600, body)
            assert "hub-job-1" in d.run(cloud.handle(again))  # type: ignore[attr-defined]
            time.sleep(1.0)
            assert sum("TEST PAGE" in line for line in printed(d, "receipt")) == 1
            # request_status: the retained status is published again, with fresh figures.
            seen = _box_summary(hub)["last_seen"]
            hub.send(BOX, "command", {"command": "request_status"}, 60, msg_id="status-1")
            d.wait(
                lambda: any(e.get("result") == "status published" for e in d.events("cloud")),
                what="request_status handled",
            )
            d.wait(lambda: _box_summary(hub)["last_seen"] > seen, what="a fresh status at the hub")


def _events(hub: HubServer) -> list[tuple[str, int, str, str]]:
    from sync.hub.store import HubStore

    store = HubStore(hub.db_path)
    try:
        return store.events(BOX)
    finally:
        store.close()


def _box_summary(hub: HubServer) -> dict[str, Any]:
    from sync.hub.store import HubStore

    store = HubStore(hub.db_path)
    try:
        box: dict[str, Any] = store.summary()["boxes"][BOX]
        return box
    finally:
        store.close()
