"""The link in its own process (sync/link_proc.py) driven by the daemon's LinkClient
(sync/link_client.py), against a real mosquitto with mTLS and the reference hub (HubServer):
downlink messages reach the parent once, a killed child is restarted without losing anything,
a stop is clean, and a child whose parent died does not stay behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.ledger import Ledger
from edge.store import transaction
from sync.hub.issuer import Hub
from sync.hub.serve import HubServer
from sync.hub.store import HubStore
from sync.link_client import LinkClient
from sync.protocol import Down
from tests.broker import Broker, Pki, Probes, broker_fixture, make_hub, pki_fixture, probes_fixture  # noqa: F401

BOX = "box-proc"
SITE = "site-proc"


def wait(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (its reaper may be slow)


class Rig:
    def __init__(self, tmp_path: Path, pki: Pki, broker: Broker, issuer: Hub) -> None:
        self.tmp, self.pki, self.broker, self.issuer = tmp_path, pki, broker, issuer
        self.ledger = Ledger(tmp_path / "ledger.db")
        self.downs: list[Down] = []  # print jobs (the hub sends a caught_up too)
        self.refused: list[tuple[str, str]] = []
        self.restarted = threading.Event()

    def client(self) -> LinkClient:
        certs = self.pki.box(BOX)
        return LinkClient(
            self.ledger.path,
            box=BOX,
            site=SITE,
            host=self.broker.host,
            port=self.broker.port,
            ca=self.pki.ca_file,
            cert=certs.cert,
            key=certs.key,
            anchor=self.issuer.anchor,
            on_down=lambda d: self.downs.append(d) if d.type == "print" else None,
            on_refused=lambda r, d: self.refused.append((r, d)),
            on_restart=self.restarted.set,
            status_extra=lambda: {"cache_seq": 7},
        )

    def write(self, n: int) -> None:
        with transaction(self.ledger.conn):
            for i in range(n):
                self.ledger.append_event("test", {"i": i}, time.time())

    def outbox(self) -> int:
        """Events the hub has not acked (acked rows wait for the link's sweep in a quiet
        moment: counting rows would wait for that too)."""
        return self.ledger.outbox_depth()

    def hub_events(self, hub: HubServer) -> list[tuple[str, int, str, str]]:
        store = HubStore(hub.db_path)
        try:
            return store.events(BOX)
        finally:
            store.close()


@pytest.fixture(name="rig")
def rig_fixture(tmp_path: Path, pki: Pki, broker: Broker) -> Iterator[tuple[Rig, HubServer]]:
    issuer = Hub.init(tmp_path / "issuer", keys=1)
    rig = Rig(tmp_path, pki, broker, issuer)
    hub = make_hub(issuer, broker, tmp_path / "hub.db", {BOX: SITE})
    try:
        with hub:
            hub.wait_ready()
            yield rig, hub
    finally:
        rig.ledger.conn.close()


def test_events_go_up_and_a_down_message_reaches_the_parent_once(
    rig: tuple[Rig, HubServer],
) -> None:
    r, hub = rig
    link = r.client()
    link.start()
    try:
        wait(lambda: link.status().get("connected") is True, what="the link process connected")
        r.write(20)
        link.notify()
        wait(lambda: r.outbox() == 0, what="the outbox emptied by the hub's acks")
        assert len({i for _, _, i, _ in r.hub_events(hub)}) == 20
        body = {"template": "test_page", "data": {}, "target": "receipt"}
        hub.send(BOX, "print", body, 600, msg_id="job-1")
        wait(lambda: r.downs, what="the print job at the parent")
        time.sleep(1.0)  # a second copy would come now
        assert [(d.id, d.type, d.body) for d in r.downs] == [("job-1", "print", body)]
        assert not r.refused
        # The child stored it in the inbox before handing it over.
        row = r.ledger.conn.execute("SELECT type FROM inbox WHERE id = 'job-1'").fetchone()
        assert row == ("print",)
    finally:
        link.stop()
    assert link.pid is None


def test_a_killed_link_process_is_restarted_and_nothing_is_lost(
    rig: tuple[Rig, HubServer],
) -> None:
    r, hub = rig
    link = r.client()
    link.start()
    try:
        wait(lambda: link.status().get("connected") is True, what="the link process connected")
        r.write(50)
        link.notify()
        first = link.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait(lambda: link.status().get("connected") is False, what="the status says down")
        # A message sent while the child is dead waits in the broker's session for it.
        hub.send(BOX, "print", {"template": "test_page", "data": {}}, 600, msg_id="while-down")
        r.write(50)  # and the box goes on writing events
        assert r.restarted.wait(15), "the link process was not restarted"
        wait(lambda: link.pid not in (None, first), what="a new link process")
        wait(lambda: link.status().get("connected") is True, what="the new process connected")
        link.notify()
        wait(lambda: r.outbox() == 0, what="the outbox emptied after the restart", timeout=40)
        events = r.hub_events(hub)
        assert len(events) == len({i for _, _, i, _ in events}) == 100  # none lost, none twice
        wait(lambda: [d.id for d in r.downs] == ["while-down"], what="the message sent meanwhile")
        assert link.status()["process_restarts"] == 1
    finally:
        link.stop()


def test_stop_is_clean(rig: tuple[Rig, HubServer], pki: Pki, probes: Probes) -> None:
    r, _hub = rig
    link = r.client()
    link.start()
    wait(lambda: link.status().get("connected") is True, what="the link process connected")
    probe = probes(r.broker, pki.hub, client_id="status-probe")
    probe.subscribe(f"gw/{BOX}/up/status")
    online = probe.get()
    assert online is not None and json.loads(online.payload)["state"] == "online"
    assert json.loads(online.payload)["cache_seq"] == 7  # status_extra reaches the child
    pid = link.pid
    assert pid is not None
    t0 = time.monotonic()
    link.stop()
    assert time.monotonic() - t0 < 3.5
    assert not alive(pid)
    offline = probe.get()
    assert offline is not None
    assert json.loads(offline.payload) == {"v": 1, "state": "offline", "clean": True}
    assert link.status()["connected"] is False
    link.stop()  # again: nothing


PARENT = """
import sys, time
from pathlib import Path
from edge.trust import TrustAnchor
from sync.link_client import LinkClient
a = sys.argv
link = LinkClient(Path(a[1]), box=a[2], site="s", host=a[3], port=int(a[4]), ca=Path(a[5]),
                  cert=Path(a[6]), key=Path(a[7]), anchor=TrustAnchor.load(Path(a[8])),
                  on_down=lambda d: None)
link.start()
while link.pid is None:
    time.sleep(0.01)
print(link.pid, flush=True)
time.sleep(60)
"""


def test_a_link_process_whose_parent_died_exits(rig: tuple[Rig, HubServer]) -> None:
    r, _hub = rig
    certs = r.pki.box(BOX)
    args = [r.ledger.path, BOX, r.broker.host, r.broker.port, r.pki.ca_file, certs.cert]
    args += [certs.key, r.issuer.dir / "trust-anchor.json"]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, *map(str, args)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # no stop, no cleanup: the daemon crashed
        parent.wait()
        wait(lambda: not alive(child), timeout=10, what="the orphaned link process to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
