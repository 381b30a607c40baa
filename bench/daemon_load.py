"""What the bench puts on the daemon. In the bench process: scans on the simulated readers
(admits of fresh codes, denies of used ones), measured print jobs, and the launcher of the load
process. As its own process (so its work does not share the bench process's interpreter with the
simulators that stamp the measurements), the background load:

- an event-stream client: GET /api/v1/events, reading every event (the kiosk's live view);
- a delta importer: POST /api/v1/bundles/import of one bundle after the other, back to back;
- a kitchen: POST /api/v1/print/orders, each order a ticket per station plus the receipt.

    python -m bench.daemon_load HOME STOPFILE JSON

JSON: {"sse": bool, "deltas": [paths], "orders_per_s": float}. Prints "started" once the event
stream is connected, then, after STOPFILE appears, one JSON line with what was done.
"""

from __future__ import annotations

import bisect
import contextlib
import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemon_site import (
    GATE_GAP_S,
    KITCHEN,
    LANES,
    PASS_DELAY_MS,
    Api,
    Hardware,
    Lane,
    poll_until,
)
from bench.fixture import Fixture
from bench.stats import progress
from edge.codes import display_rotating
from sync.hub.issuer import load_private

KINDS = ("signed", "rotating", "short")

DISHES = ("宫保鸡丁", "鱼香肉丝", "麻婆豆腐（微辣）", "回锅肉", "清炒时蔬", "扬州炒饭", "酸辣汤")


class Load:
    def __init__(self, home: Path, stop_file: Path, spec: dict[str, Any]) -> None:
        self.home, self.stop_file, self.spec = home, stop_file, spec
        self.api = Api.of(home)
        self.done = threading.Event()
        self.connected = threading.Event()
        self.events: Counter[str] = Counter()
        self.sse_bytes = 0
        self.imports: list[dict[str, Any]] = []
        self.orders = 0
        self.order_errors: Counter[str] = Counter()
        self.errors: list[str] = []
        self.sse_conn: http.client.HTTPConnection | None = None

    def sse(self) -> None:
        conn = http.client.HTTPConnection(self.api.host, self.api.port, timeout=30)
        self.sse_conn = conn
        try:
            conn.request("GET", "/api/v1/events", headers=self.api.headers)
            resp = conn.getresponse()
            if resp.status != 200:
                self.errors.append(f"events: HTTP {resp.status}")
                return
            conn.sock.settimeout(None)  # keep-alives come every 15 s; run() shuts it down
            self.connected.set()
            while not self.done.is_set():
                line = resp.fp.readline()
                if not line:
                    break
                self.sse_bytes += len(line)
                if line.startswith(b"event: "):
                    self.events[line[7:].strip().decode()] += 1
        except (OSError, ValueError) as err:
            if not self.done.is_set():
                self.errors.append(f"events: {err}")
        finally:
            conn.close()

    def importer(self) -> None:
        api = self.api.clone()
        try:
            for path in self.spec.get("deltas", []):
                if self.done.is_set():
                    break
                start = time.monotonic()
                status, doc = api.call("POST", "/api/v1/bundles/import", {"path": path})
                end = time.monotonic()
                ok = status == 200 and doc.get("decision") == "applied"
                if not ok:
                    self.errors.append(f"import {path}: {status} {doc}")
                self.imports.append({"start": start, "end": end, "ok": ok})
        finally:
            api.close()

    def kitchen(self) -> None:
        rate = float(self.spec.get("orders_per_s", 0))
        if rate <= 0:
            return
        api = self.api.clone()
        rng = random.Random(7)
        n = 0
        try:
            while not self.done.wait(rng.expovariate(rate)):
                n += 1
                items = [
                    {
                        "name": rng.choice(DISHES),
                        "qty": rng.randint(1, 3),
                        "price_cents": rng.randint(800, 8800),
                        "station": rng.choice(KITCHEN),
                        "note": rng.choice(("", "少辣 less spicy", "不要香菜 no coriander")),
                    }
                    for _ in range(rng.randint(2, 8))
                ]
                order = {"id": f"bench-{time.time_ns()}-{n}", "table": f"A{n % 40}", "items": items}
                status, doc = api.call("POST", "/api/v1/print/orders", order)
                if status == 200:
                    self.orders += 1
                else:
                    self.order_errors[str(status)] += 1
                    if len(self.errors) < 20:
                        self.errors.append(f"order: {status} {doc}")
        finally:
            api.close()

    def run(self) -> dict[str, Any]:
        threads = []
        if self.spec.get("sse", True):
            threads.append(threading.Thread(target=self.sse, name="load-sse"))
        threads.append(threading.Thread(target=self.kitchen, name="load-kitchen"))
        for t in threads:
            t.start()
        if self.spec.get("sse", True):
            self.connected.wait(10)
        importer = threading.Thread(target=self.importer, name="load-importer")
        importer.start()
        threads.append(importer)
        print("started", flush=True)
        while not self.stop_file.exists():
            time.sleep(0.05)
        self.done.set()
        if self.sse_conn is not None and self.sse_conn.sock is not None:
            with contextlib.suppress(OSError):
                self.sse_conn.sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(60)
        return {
            "events": dict(self.events),
            "sse_bytes": self.sse_bytes,
            "imports": self.imports,
            "orders": self.orders,
            "order_errors": dict(self.order_errors),
            "errors": self.errors[:20],
        }


# -- in the bench process: what the measurement phases drive ---------------------------------


class Codes:
    """Unused codes for admits (each once, kinds in turn), and the used ones for denies."""

    def __init__(self, fixture: Fixture) -> None:
        self.pools = {k: fixture.pools[f"{k}_redeem"] for k in KINDS}
        self.holder = load_private(fixture.holder_key)
        self.next_i = dict.fromkeys(KINDS, 0)
        self.turn = 0
        self.used: dict[str, list[str]] = {k: [] for k in KINDS}
        self.lock = threading.Lock()

    def display(self, kind: str, text: str) -> str:
        """What the phone shows now, for a rotating ticket (made outside the timed interval)."""
        return display_rotating(text, self.holder, int(time.time())) if kind == "rotating" else text

    def fresh(self) -> tuple[str, str]:
        """(kind, ticket text) of a code never scanned; raises IndexError when all are used."""
        with self.lock:
            kind = KINDS[self.turn % len(KINDS)]
            self.turn += 1
            i = self.next_i[kind]
            if i >= len(self.pools[kind]):
                raise IndexError(f"{kind} codes used up")
            self.next_i[kind] = i + 1
            return kind, self.pools[kind][i]

    def mark_used(self, kind: str, text: str) -> None:
        with self.lock:
            self.used[kind].append(text)


@dataclass
class Samples:
    ms: list[float] = field(default_factory=list)
    sent: list[tuple[Lane, float]] = field(default_factory=list)  # to pair with feedback
    misses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, lane: Lane, ms: float, sent: float) -> None:
        with self.lock:
            self.ms.append(ms)
            self.sent.append((lane, sent))


def scan_to_gate(lane: Lane, text: str, timeout: float = 2.0) -> tuple[float, float] | None:
    """Present `text`; (scan stamp, unlock stamp) once the board has the relay command."""
    sent, pulses = len(lane.reader.sent_at), len(lane.board.pulses)
    lane.reader.present(text)
    at = lane.board.wait_pulse(pulses, timeout)
    if at is None:
        return None
    # The visitor walks through; the lane is done once the driver has read PASS.
    lane.board.wait_read_after(at + PASS_DELAY_MS / 1000, 1.0)
    return lane.reader.sent_at[sent], at


def admit_once(lane: Lane, codes: Codes, out: Samples) -> float | None:
    kind, text = codes.fresh()
    got = scan_to_gate(lane, codes.display(kind, text))
    if got is None:
        out.misses += 1
        progress(f"  {lane.name}: no unlock for a fresh {kind} code (denied or lost)")
        return None
    codes.mark_used(kind, text)
    out.add(lane, (got[1] - got[0]) * 1000, got[0])
    return got[1]


def idle_scans(hw: Hardware, codes: Codes, n: int) -> Samples:
    """One scan at a time, lanes in turn; the next only once the last visitor has passed."""
    out = Samples()
    rng = random.Random(1)
    for i in range(n):
        admit_once(hw.lanes[i % LANES], codes, out)
        time.sleep(0.01 + rng.uniform(0, 0.02))
    return out


def feedback_ms(samples: Samples) -> list[float]:
    """Scan -> the first OUT1 command (beep/LED) its reader got after it."""
    out = []
    for lane, sent in samples.sent:
        stamps = lane.reader.feedback_at
        j = bisect.bisect_left(stamps, sent)
        if j < len(stamps) and stamps[j] - sent < 2.0:
            out.append((stamps[j] - sent) * 1000)
    return out


def lane_driver(lane: Lane, codes: Codes, out: Samples, stop: threading.Event, seed: int) -> None:
    """The next visitor scans as soon as the gate can take the next unlock (plus 0-30 ms)."""
    rng = random.Random(seed)
    last = 0.0
    while not stop.is_set():
        wait = last + GATE_GAP_S + rng.uniform(0, 0.03) - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        try:
            at = admit_once(lane, codes, out)
        except IndexError:
            return
        last = at if at is not None else time.monotonic()


class PrintProbe:
    """Kitchen tickets to the `measure` printer, one at a time: accepted -> first job byte."""

    def __init__(self, hw: Hardware, api: Api) -> None:
        self.tap = hw.printers["measure"]
        self.api = api
        self.from_post: list[float] = []  # POST sent -> first byte of the job at the printer
        self.from_return: list[float] = []  # POST returned -> first byte (< 0: bytes came first)
        self.failures: Counter[str] = Counter()
        self.rng = random.Random(5)

    def once(self) -> None:
        n = len(self.tap.job_starts)
        data = {
            "station": "测试 bench",
            "table": f"B{n % 30}",
            "order_no": f"M{n:06d}",
            "time": time.strftime("%H:%M"),
            "items": [{"name": "宫保鸡丁", "qty": 1 + n % 3, "note": "少辣 less spicy"}],
        }
        body = {"template": "kitchen", "data": data, "target": "printer-measure"}
        posted = time.monotonic()
        status, doc = self.api.call("POST", "/api/v1/print/jobs", body)
        accepted = time.monotonic()
        if status != 200:
            self.failures[f"http {status}"] += 1
            return
        at = self.tap.wait_job(n, 5.0)
        if at is None:
            self.failures["no bytes"] += 1
            return
        self.from_return.append((at - accepted) * 1000)
        self.from_post.append((at - posted) * 1000)
        job = doc["id"]
        poll_until(lambda: self._state(job) in ("printed", "failed", "uncertain"), 5.0, 0.01)
        time.sleep(self.rng.uniform(0.01, 0.05))

    def _state(self, job: str) -> str:
        status, doc = self.api.call("GET", "/api/v1/print/jobs?printer=printer-measure&limit=5")
        return next((j["state"] for j in doc if j["id"] == job), "") if status == 200 else ""

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.once()


class LoadProc:
    """bench/daemon_load.py in its own process."""

    def __init__(self, home: Path, work: Path, spec: dict[str, Any]) -> None:
        self.stop_file = work / f"stop-load-{time.monotonic_ns()}"
        self.p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.daemon_load",
                str(home),
                str(self.stop_file),
                json.dumps(spec),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()
        if line != "started":
            self.kill()
            raise RuntimeError(f"load process did not start: {line!r}")

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, _ = self.p.communicate(timeout=120)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


def decisions(api: Api) -> Counter[str]:
    """edge_decisions_total summed over lanes, by reason (from /metrics)."""
    status, text = api.call("GET", "/metrics")
    out: Counter[str] = Counter()
    for line in text.splitlines() if status == 200 else []:
        if line.startswith("edge_decisions_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] += round(float(line.rsplit(" ", 1)[1]))
    return out


def diff(after: Counter[str], before: Counter[str]) -> str:
    d = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"


class LaneCounts:
    """Scans each lane has taken, from GET /api/v1/lanes every 50 ms (a kiosk polls the same)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.scans: dict[str, int] = self._get()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="bench-lane-counts")
        self.thread.start()

    def _get(self) -> dict[str, int]:
        status, doc = self.api.call("GET", "/api/v1/lanes")
        assert status == 200, doc
        return {name: lane["scans"] for name, lane in doc.items()}

    def _poll(self) -> None:
        while not self.stop.wait(0.05):
            scans = self._get()
            with self.cond:
                self.scans = scans
                self.cond.notify_all()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.api.close()


def deny_scans(
    hw: Hardware, codes: Codes, counts: LaneCounts, total: int, window: int = 32
) -> float:
    """`total` scans of used codes over the 8 lanes, each lane at most `window` scans ahead of
    what it has taken; seconds until every lane has taken its share."""
    pool = [
        (k, t)
        for i in range(max(map(len, codes.used.values())))
        for k in KINDS
        for t in codes.used[k][i : i + 1]
    ]
    if not pool:
        raise RuntimeError("no used codes to scan again")
    base = dict(counts.scans)
    quota = [total // LANES + (i < total % LANES) for i in range(LANES)]

    def drive(i: int, lane: Lane) -> None:
        offset = i * len(pool) // LANES
        for n in range(quota[i]):
            with counts.cond:
                while n - (counts.scans[lane.name] - base[lane.name]) >= window:
                    counts.cond.wait(0.2)
            kind, text = pool[(offset + n) % len(pool)]
            lane.reader.present(codes.display(kind, text))

    start = time.monotonic()
    threads = [
        threading.Thread(target=drive, args=(i, lane), name=f"bench-deny-{i}")
        for i, lane in enumerate(hw.lanes)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def done() -> bool:
        return all(
            counts.scans[lane.name] - base[lane.name] >= quota[i] for i, lane in enumerate(hw.lanes)
        )

    if not poll_until(done, 10.0, 0.02):
        missing = sum(quota) - sum(counts.scans[n.name] - base[n.name] for n in hw.lanes)
        progress(f"  {missing} scans not taken by the lanes after 10 s")
    return time.monotonic() - start


def main(argv: list[str]) -> None:
    home, stop_file, spec = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    result = Load(home, stop_file, spec).run()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
