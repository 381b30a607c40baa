"""The fleet: many boxes, each with its own certificate (Pki.box), ledger (1,000 events queued in
its outbox), Link and TLS connection, started at the same moment against one mosquitto and one
hub (`edge hub serve`, its own process), then checked against the hub's database.

The boxes run in a few worker processes (`python -m bench.sync_fleet SPEC`), not all in this
one: each Link is two threads (paho's network loop and the link's worker), and a hundred of them
under one interpreter lock would measure the lock. A worker builds its links, prints "ready",
starts them all when it reads "go" on stdin, prints one JSON line (when each box connected and
when the hub's ack named its last event), and keeps its links connected until it reads "stop".

Connections held at once: the broker's side of the TCP connections on its port in
/proc/net/tcp (state ESTABLISHED), sampled every 0.2 s and once more when every worker has
reported (its links still connected), minus the hub's own connection.
CPU and memory: utime+stime of the broker and hub processes over the run, and their peak RSS
(VmHWM; the broker is restarted before the fleet and the hub is a fresh process).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.daemon_site import proc_cpu_s
from bench.stats import Figures, Noise, median, percentile, progress, wait_quiet
from bench.sync_hub import HubProc, hub_db, peak_rss_mb, prepare_hub_db
from bench.sync_kit import Lab, SyncSizes, Ticker, fill_outbox


def established(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is `port` (the server's side)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except FileNotFoundError:
            continue
    return n


class Worker:
    def __init__(self, spec: Path, log: Path) -> None:
        self.log = log.open("wb")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.sync_fleet", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"fleet worker did not start: {line!r} (see {log})")

    def go(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def result(self) -> dict[str, Any]:
        """The worker's report (it comes once every box is done or the time is up)."""
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker exited ({self.p.wait(10)}) without a report")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def stop(self, timeout: float = 60.0) -> None:
        """Stop its links (a clean disconnect each) and wait for it to exit."""
        self.p.communicate("stop\n", timeout=timeout)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self.log.close()


def fleet_phase(lab: Lab, sizes: SyncSizes, f: Figures, workaround: bool) -> None:
    work = lab.work / "fleet"
    work.mkdir()
    n_box, n_ev = sizes.fleet_boxes, sizes.fleet_events
    boxes = [
        (f"fleet-{i:03d}", f"fleet-site-{i // sizes.boxes_per_site:02d}") for i in range(n_box)
    ]
    committed: dict[str, set[str]] = {}
    specs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for cn, site in boxes:
        lab.register(cn, site)
        cert = lab.pki.box(cn)
        last, ids = fill_outbox(work / f"{cn}.db", n_ev)
        committed[cn] = ids
        specs.append(
            {"cn": cn, "site": site, "ledger": str(work / f"{cn}.db"), "last": last}
            | {"cert": str(cert.cert), "key": str(cert.key)}
        )
    progress(
        f"  {n_box} boxes: certificates, registry and ledgers in {time.monotonic() - t0:.1f} s"
    )
    lab.broker.restart()  # its CPU and peak memory from here are the fleet's
    broker_pid = _broker_pid(lab)
    prepare_hub_db(work / "hub.db", workaround)
    hub = HubProc(lab.hub.dir, lab.broker, work / "hub.db", work / "hub.log").start()
    workers: list[Worker] = []
    samples: list[int] = []
    ticker: Ticker | None = None
    try:
        common = {
            "host": lab.broker.host,
            "port": lab.broker.port,
            "ca": str(lab.pki.ca_file),
            "anchor": str(lab.hub.dir / "trust-anchor.json"),
            "timeout": sizes.fleet_timeout_s,
        }
        per = -(-n_box // sizes.fleet_workers)
        for w in range(sizes.fleet_workers):
            spec = work / f"worker-{w}.json"
            spec.write_text(json.dumps(common | {"boxes": specs[w * per : (w + 1) * per]}))
            workers.append(Worker(spec, work / f"worker-{w}.log"))
        wait_quiet(sizes.quiet_s)
        noise = Noise()
        broker_cpu0, hub_cpu0 = proc_cpu_s(broker_pid), hub.cpu_s()
        ticker = Ticker(lambda: samples.append(established(lab.broker.port)), 0.2)
        go = time.monotonic()
        for worker in workers:
            worker.go()
        results = [w.result() for w in workers]
        ticker.close()
        samples.append(established(lab.broker.port))
        broker_cpu, hub_cpu = proc_cpu_s(broker_pid) - broker_cpu0, hub.cpu_s() - hub_cpu0
        broker_rss, hub_rss = peak_rss_mb(broker_pid), hub.peak_rss_mb()
        progress(f"  fleet ran; {noise.describe()}")
        for worker in workers:
            worker.stop()
    finally:
        if ticker is not None:
            ticker.close()
        for worker in workers:
            worker.kill()
        hub.stop()
    problems = hub.problems()
    if problems:
        progress(f"  hub log: {dict(problems)}")
    done = {cn: at for r in results for cn, at in r["done"].items() if at is not None}
    connected = [at - go for r in results for at in r["connected"].values() if at is not None]
    end = max(done.values(), default=go)
    stored, lost, dup = _check(work / "hub.db", committed)
    complete = sum(1 for cn in committed if stored.get(cn, 0) == n_ev and cn in done)
    total = sum(len(ids) for ids in committed.values())
    box_cpu = sum(r["cpu_s"] for r in results)
    progress(
        f"  {len(done)}/{n_box} boxes acked through their last event, last at "
        f"{end - go:.1f} s; connect p50 {median(connected):.2f} s, max "
        f"{max(connected, default=float('nan')):.2f} s; link errors "
        f"{dict(sum((Counter(r['errors']) for r in results), Counter()))}"
    )
    f.add("fleet_boxes", complete, "count", 0)
    f.add("fleet_connections", max(samples, default=1) - 1, "count", 0)
    f.add("fleet_events", total, "count", 0)
    f.add("fleet_s", end - go, "s")
    f.add("fleet_events_per_s", total / (end - go) if end > go else float("nan"), "1/s", 0)
    f.add("fleet_connect_p99_s", percentile(connected, 99), "s")
    f.add("fleet_lost", lost, "count", 0)
    f.add("fleet_duplicated_effects", dup, "count", 0)
    f.add("fleet_broker_cpu_s", broker_cpu, "s", 2)
    f.add("fleet_broker_peak_rss_mb", broker_rss, "MB", 1)
    f.add("fleet_hub_cpu_s", hub_cpu, "s", 2)
    f.add("fleet_hub_peak_rss_mb", hub_rss, "MB", 1)
    f.add("fleet_box_processes_cpu_s", box_cpu, "s", 2)


def _broker_pid(lab: Lab) -> int:
    assert lab.broker.proc is not None
    return lab.broker.proc.pid


def _check(db: Path, committed: dict[str, set[str]]) -> tuple[dict[str, int], int, int]:
    """(events stored per box, events committed but not stored, duplicated effects)."""
    conn = hub_db(db)
    try:
        stored: dict[str, int] = {}
        lost = 0
        for cn, ids in committed.items():
            have = {str(i) for (i,) in conn.execute("SELECT id FROM events WHERE box = ?", (cn,))}
            stored[cn] = len(have)
            lost += len(ids - have)
        # Stored more than once: one event id in two rows (the table forbids it), one
        # redemption in two `redemption` events, one confirmation counted twice.
        dup = conn.execute("SELECT count(*) - count(DISTINCT id) FROM events").fetchone()[0]
        for etype, key in (("redemption", "$.id"), ("redemption_confirmed", "$.redemption_id")):
            dup += conn.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM events "
                f"WHERE type = ? GROUP BY json_extract(body, '{key}'))",
                (etype,),
            ).fetchone()[0]
        return stored, lost, int(dup)
    finally:
        conn.close()


# -- the worker process ---------------------------------------------------------------------------


def main(spec_path: str) -> None:
    import logging

    from edge.trust import TrustAnchor
    from sync.link import LedgerLinkStore, Link

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    spec = json.loads(Path(spec_path).read_text())
    anchor = TrustAnchor.load(Path(spec["anchor"]))
    links: dict[str, Link] = {}
    last = {b["cn"]: int(b["last"]) for b in spec["boxes"]}
    for b in spec["boxes"]:
        links[b["cn"]] = Link(
            LedgerLinkStore(Path(b["ledger"]), box=b["cn"], site=b["site"]),
            host=spec["host"],
            port=spec["port"],
            ca=Path(spec["ca"]),
            cert=Path(b["cert"]),
            key=Path(b["key"]),
            anchor=anchor,
            on_down=lambda _down: None,
        )
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    connected: dict[str, float | None] = dict.fromkeys(links)
    done: dict[str, float | None] = dict.fromkeys(links)
    errors: Counter[str] = Counter()
    try:
        for link in links.values():
            link.start()
        deadline = time.monotonic() + float(spec["timeout"])
        while time.monotonic() < deadline and not all(done.values()):
            for cn, link in links.items():
                st = link.status()
                now = time.monotonic()
                if connected[cn] is None and st["connected"]:
                    connected[cn] = now
                if done[cn] is None and st["acked_through"] >= last[cn]:
                    done[cn] = now
            time.sleep(0.02)
        for link in links.values():
            err = link.status()["last_error"]
            if err:
                errors[str(err["error"]).split(":")[0]] += 1
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
        doc = {"connected": connected, "done": done, "errors": dict(errors), "cpu_s": cpu}
        print(json.dumps(doc), flush=True)
        sys.stdin.readline()  # "stop" (or EOF): the parent has counted the connections
    finally:
        stoppers = [threading.Thread(target=link.stop) for link in links.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(30)


if __name__ == "__main__":
    main(sys.argv[1])
