"""End to end: the daemon's services as their users drive them, on simulated hardware.

Staff and the kiosk go through the HTTP API; customers scan at the simulated readers; the test
plays the hands at the hardware (closing a locker door, loading paper) through the simulators and
reads what came out of them (the printed lines, the door states, the turnstile's unlocks).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from drivers.gate.sim import SimGate
from drivers.locker.sim import SimBoard, SimLocker
from drivers.printer.sim import SimPrinter
from drivers.printer.simstate import EscposMachine
from drivers.scanner.sim import SimScanner
from tests.daemon_kit import Running, make_site, running


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


def pickup_result(d: Running, after: int) -> dict[str, Any]:
    """The locker lane's answer to the scan number `after` + 1 (the lane counts its scans)."""
    lane = d.box.lanes["lockers"]
    d.wait(lambda: lane.state.scans > after and lane.state.last is not None, what="pickup")
    d.wait(lambda: (lane.state.last or {}).get("reason") is not None, what="pickup answer")
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
    return dep


# -- lockers --------------------------------------------------------------------------------------


def test_locker_deposit_prints_the_slip_and_the_customer_picks_up(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d, Hands(board(d)) as hands:
        dep = deposit(d, "A-1001")
        door, code = dep["door"], dep["code"]
        # An S compartment; the deposit returned only after the staff closed its door.
        assert door in (1, 2, 3, 4) and dep["size"] == "S"
        assert hands.closed == [door] and not board(d).is_open(door)
        assert len(code) == 7 and code.isdigit() and dep["printed"] is True
        # The pickup slip comes out of the receipt printer: the code in clear and as a QR.
        d.wait(lambda: code in paper(d, "receipt").qr, what="slip printed")
        slip = printed(d, "receipt")
        assert "取货凭条 PICKUP SLIP" in slip and code in slip and "A-1001" in slip
        row = door_row(d, door)
        assert row["state"] == "occupied" and row["order_no"] == "A-1001"

        # The customer scans the slip at the locker's reader; the door opens, they close it.
        scans = d.box.lanes["lockers"].state.scans
        scanner(d, "locker-scanner").present(code)
        got = pickup_result(d, scans)
        assert got["ok"] is True and got["door"] == door and got["door_closed"] is True, got
        assert f"{door}号柜门已打开" in got["line_zh"]
        assert hands.closed == [door, door]
        assert door_row(d, door)["state"] == "free"

        # The same slip again: already picked up, the door stays shut.
        unlocks = len(board(d).unlocks())
        scans = d.box.lanes["lockers"].state.scans
        scanner(d, "locker-scanner").present(code)
        again = pickup_result(d, scans)
        assert again["reason"] == "already_used" and again["ok"] is False
        assert len(board(d).unlocks()) == unlocks

        events = d.outbox()
        kinds = [e["type"] for e in events]
        assert "locker_deposit" in kinds and "locker_pickup" in kinds
        picked = next(e for e in events if e["type"] == "locker_pickup")["body"]
        assert picked["state"] == "confirmed" and picked["door"] == door
        assert picked["order_no"] == "A-1001" and picked["door_closed"] is True
        # The code goes up to the cloud only as a fingerprint, never in clear.
        assert code not in json.dumps(events)


def test_stuck_door_is_reported_and_the_code_still_works_after_the_technician(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path)
    with running(site) as d, Hands(board(d)) as hands:
        dep = deposit(d, "B-2002", size="L")
        door, code = dep["door"], dep["code"]
        assert door in (5, 6, 7, 8)
        board(d).set_stuck(door)

        scans = d.box.lanes["lockers"].state.scans
        scanner(d, "locker-scanner").present(code)
        stuck = pickup_result(d, scans)
        assert stuck["reason"] == "door_fault" and stuck["ok"] is False, stuck
        assert "取件码仍然有效" in stuck["line_zh"] and "still valid" in stuck["line_en"]
        assert hands.closed == [door]  # only the deposit: the door never opened for the pickup
        assert door_row(d, door)["state"] == "fault"
        alerts = [e for e in d.events("locker") if e.get("event") == "alert"]
        assert any(a["door"] == door and "door fault" in a["what"] for a in alerts), alerts
        fault = [e["body"] for e in d.outbox() if e["type"] == "locker_door_fault"]
        assert fault and fault[-1]["door"] == door and fault[-1]["code_still_valid"] is True

        # The technician frees the latch and opens the door from the kiosk (audited).
        board(d).set_stuck(door, False)
        status, opened = d.api(
            "POST",
            f"/api/v1/lockers/wall/doors/{door}/open",
            {"actor": "tech-zhao", "why": "latch jammed, freed"},
        )
        assert status == 200, opened
        assert opened["opened"] is True and opened["cleared"] is True
        d.wait(lambda: hands.closed == [door, door], what="technician closes the door")
        audit = d.api("GET", "/api/v1/audit")[1]
        assert audit[0]["action"] == "locker_open_door" and audit[0]["actor"] == "tech-zhao"
        assert audit[0]["target"] == f"wall:{door}" and "latch jammed" in audit[0]["detail"]

        # The customer's code still opens the door.
        scans = d.box.lanes["lockers"].state.scans
        scanner(d, "locker-scanner").present(code)
        got = pickup_result(d, scans)
        assert got["ok"] is True and got["door"] == door and got["door_closed"] is True, got
        assert door_row(d, door)["state"] == "free"
        assert [e["type"] for e in d.outbox()].count("locker_pickup") == 1


# -- printing -------------------------------------------------------------------------------------

ORDER = {
    "id": "T12-0042",
    "table": "12",
    "items": [
        {"name": "宫保鸡丁", "qty": 2, "price_cents": 3800, "station": "hot"},
        {"name": "酸梅汤", "qty": 3, "price_cents": 800, "station": "bar", "note": "少冰"},
        {"name": "炒青菜", "qty": 1, "price_cents": 1800, "station": "hot"},
    ],
}


def jobs(d: Running) -> dict[str, dict[str, Any]]:
    status, rows = d.api("GET", "/api/v1/print/jobs")
    assert status == 200, rows
    return {j["id"]: j for j in rows}


def test_kitchen_order_is_split_by_station_and_printed_once(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    with running(site) as d:
        status, out = d.api("POST", "/api/v1/print/orders", ORDER)
        assert status == 200, out
        assert sorted(j["printer"] for j in out) == ["bar", "hot", "receipt"]
        ids = {j["id"] for j in out}
        d.wait(
            lambda: all(jobs(d)[i]["state"] == "printed" for i in ids), what="three jobs printed"
        )
        hot, bar, counter = printed(d, "hot"), printed(d, "bar"), printed(d, "receipt")
        assert "宫保鸡丁" in hot and "炒青菜" in hot and "酸梅汤" not in hot
        assert "酸梅汤" in bar and "少冰" in bar and "宫保鸡丁" not in bar
        assert all(name in counter for name in ("宫保鸡丁", "酸梅汤", "炒青菜"))
        assert "T12-0042" in hot and "T12-0042" in bar
        assert printed(d, "hot2") == ""  # the backup printer is not used while hot works
        cuts = {p: len(paper(d, p).cuts) for p in ("hot", "bar", "receipt")}
        assert cuts == {"hot": 1, "bar": 1, "receipt": 1}

        # The till sends the same order again (a retry after a timeout): nothing more prints.
        status, again = d.api("POST", "/api/v1/print/orders", ORDER)
        assert status == 200 and {j["id"] for j in again} == ids
        assert all(j["state"] == "printed" for j in again)
        time.sleep(0.5)
        assert {p: len(paper(d, p).cuts) for p in ("hot", "bar", "receipt")} == cuts
        assert len(jobs(d)) == 3

        # An item for a station that does not exist: a clear 4xx, nothing stored.
        bad = ORDER | {"id": "T12-0043", "items": [ORDER["items"][0] | {"station": "grill"}]}
        status, err = d.api("POST", "/api/v1/print/orders", bad)
        assert status in (400, 409, 422) and "grill" in json.dumps(err, ensure_ascii=False)
        assert len(jobs(d)) == 3


def test_paper_out_holds_the_job_then_prints_it_once_after_refill(tmp_path: Path) -> None:
    site = make_site(tmp_path, devices={"receipt": ("printer", "sim://?profile=tm-t20&paper=out")})
    with running(site) as d:
        status, job = d.api(
            "POST",
            "/api/v1/print/jobs",
            {"template": "test_page", "data": {"printer": "receipt"}, "target": "receipt"},
        )
        assert status == 200, job
        jid = job["id"]
        d.wait(lambda: jobs(d)[jid]["state"] == "held", what="job held")
        held = jobs(d)[jid]
        assert "缺纸" in held["last_error"] or "paper" in held["last_error"].lower(), held
        alerts = [e for e in d.events("device") if e.get("device") == "receipt" and e["error"]]
        assert alerts and alerts[0]["alert"] == "printer", alerts
        time.sleep(0.8)  # several retries while the roll is empty: nothing reaches the paper
        assert paper(d, "receipt").text == [] and jobs(d)[jid]["state"] == "held"

        paper(d, "receipt").load_paper()
        d.wait(lambda: jobs(d)[jid]["state"] == "printed", what="printed after refill")
        time.sleep(0.5)
        assert printed(d, "receipt").count("打印测试 TEST PAGE") == 1
        assert len(paper(d, "receipt").cuts) == 1
        assert len(jobs(d)) == 1
        # The alert is cleared once the printer is ready again.
        last = [e for e in d.events("device") if e.get("device") == "receipt"][-1]
        assert last["error"] == ""
        results = [e["body"] for e in d.outbox() if e["type"] == "print_result"]
        assert [(r["job"], r["state"]) for r in results] == [(jid, "printed")]


def test_dead_station_printer_fails_over_to_its_backup(tmp_path: Path) -> None:
    dead = "sim://?profile=tm-t20&reply=none&timeout=0.3"
    site = make_site(tmp_path, devices={"hot": ("printer", dead)})
    with running(site) as d:
        order = {"id": "T3-7", "items": [{"name": "红烧肉", "qty": 1, "station": "hot"}]}
        status, out = d.api("POST", "/api/v1/print/orders", order)
        assert status == 200, out
        kitchen = next(j for j in out if j["station"] == "hot")
        assert kitchen["printer"] == "hot"
        start = time.monotonic()
        d.wait(lambda: jobs(d)[kitchen["id"]]["state"] == "printed", what="printed on backup")
        took = time.monotonic() - start
        done = jobs(d)[kitchen["id"]]
        assert done["printer"] == "hot2", done
        assert took >= site_failover_after(d) - 0.1, took  # not before the configured time
        assert "红烧肉" in printed(d, "hot2")
        # The dead printer got no job bytes: failing over never prints a ticket twice.
        assert paper(d, "hot").text == [] and paper(d, "hot").cuts == []
        moves = [e for e in d.events("print") if e.get("state") == "failover"]
        assert moves and moves[0]["from_printer"] == "hot" and moves[0]["printer"] == "hot2"
        # The station's next ticket goes straight to the backup while hot stays dead.
        order2 = {"id": "T3-8", "items": [{"name": "回锅肉", "qty": 1, "station": "hot"}]}
        out2 = d.api("POST", "/api/v1/print/orders", order2)[1]
        assert next(j for j in out2 if j["station"] == "hot")["printer"] == "hot2"
        d.wait(lambda: "回锅肉" in printed(d, "hot2"), what="second ticket on the backup")


def site_failover_after(d: Running) -> float:
    return float(d.box.config.printing.failover_after_s)


# -- supervisor actions ---------------------------------------------------------------------------


def test_force_admit_and_manual_open_are_audited(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d:
        assert d.scan("entry", code)["state"] == "confirmed"
        assert d.scan("entry2", code)["reason"] == "already_used"
        before = turnstile_unlocks(d, "gate-in2")
        status, forced = d.api(
            "POST",
            "/api/v1/force-admit",
            {"code": code, "lane": "entry2", "actor": "sup-wang", "note": "lost child, parents in"},
        )
        assert status == 200, forced
        assert forced["decision"] == "admit" and forced["forced"] is True
        assert forced["state"] == "confirmed" and forced["passed"] == 1
        assert turnstile_unlocks(d, "gate-in2") == before + 1
        svc = d.box.svc
        assert svc is not None
        rec = d.run(d.box.db.call(svc.ledger.get, bytes.fromhex(forced["redemption_id"])))
        assert rec is not None and rec.forced and rec.state == "confirmed"
        assert "sup-wang" in rec.note and "already_used" in rec.note
        # Forcing needs a reason.
        status, _ = d.api(
            "POST",
            "/api/v1/force-admit",
            {"code": code, "lane": "entry2", "actor": "x", "note": ""},
        )
        assert status == 422

        before = turnstile_unlocks(d)
        status, opened = d.api(
            "POST",
            "/api/v1/lanes/entry/open",
            {"actor": "sup-wang", "persons": 2, "note": "wheelchair and helper"},
        )
        assert status == 200, opened
        assert opened["passed"] == 2 and opened["requested"] == 2
        assert turnstile_unlocks(d) == before + 2
        audit = d.api("GET", "/api/v1/audit")[1]
        assert [a["action"] for a in audit[:2]] == ["manual_open", "force_admit"]
        assert audit[0]["target"] == "entry" and "wheelchair" in audit[0]["detail"]
        assert audit[1]["target"] == "entry2" and "lost child" in audit[1]["detail"]
        assert all(a["actor"] == "sup-wang" for a in audit[:2])
        kinds = [e["type"] for e in d.outbox()]
        assert kinds.count("audit") == 2


# -- the live event stream ------------------------------------------------------------------------


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


def read_event(resp: http.client.HTTPResponse, topic: str) -> dict[str, Any]:
    """The next server-sent event of `topic` (others skipped)."""
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
            if name == topic:
                doc: dict[str, Any] = json.loads(data)
                return doc
            name, data = "", ""


def test_event_stream_shows_a_scan_decision(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    code = site.ticket()
    with running(site) as d, event_stream(d, "decision,passage") as resp:
        assert resp.status == 200
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        assert resp.readline().startswith(b": connected")
        scanner(d, "scanner-in").present(code)
        passage = read_event(resp, "passage")
        decision = read_event(resp, "decision")
        assert decision["topic"] == "decision"
        data = decision["data"]
        assert data["lane"] == "entry" and data["reason"] == "ok" and data["source"] == "scanner"
        assert data["state"] == "confirmed" and data["line_zh"] == "请通行"
        assert passage["data"]["redemption_id"] == data["redemption_id"]
        assert code not in json.dumps(decision)  # a fingerprint, never the whole code
        # Without the token there is no stream.
        url = urlsplit(d.daemon.url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        try:
            conn.request("GET", "/api/v1/events")
            assert conn.getresponse().status == 401
        finally:
            conn.close()
