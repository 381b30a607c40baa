"""The reference hub as the bench runs it: `python -m edge.cli hub serve` in its own process (as a
cloud would run it: its CPU and memory are its own, and it shares no interpreter lock with the
boxes), on a hub.db made beforehand by the hub's own migrations, read afterwards read-only.

The hub's used delta looks up each pending redemption's confirmation by redemption id
(sync/hub/bundles.py _used_entry). Without an index on events(redemption_id) (the hub's schema
before its migration 2) every lookup scans the whole events table and a drain of 100,000
redemption events becomes quadratic. prepare_hub_db(workaround=True) adds that index when the
schema lacks it; with the hub's migration 2 in place it adds nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.daemon_site import proc_cpu_s, proc_status_kb
from sync.hub.store import HubStore
from tests.broker import Broker


def peak_rss_mb(pid: int) -> float:
    return proc_status_kb(pid).get("VmHWM", 0) / 1024


class HubProc:
    """`python -m edge.cli hub serve` in its own process (the cloud's side runs elsewhere), so
    its CPU and memory are its own and it shares no interpreter lock with the boxes."""

    def __init__(
        self, hub_dir: Path, broker: Broker, db: Path, log: Path, cpus: set[int] | None = None
    ) -> None:
        """`cpus`: the CPUs the hub runs on (set as soon as it is started); None: any."""
        self.hub_dir, self.broker, self.db, self.log_path = hub_dir, broker, db, log
        self.cpus = cpus
        self.p: subprocess.Popen[bytes] | None = None
        self.cpu0 = 0.0

    def start(self, timeout: float = 30.0) -> HubProc:
        b, pki = self.broker, self.broker.pki
        fresh = not self.db.exists()
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [sys.executable, "-m", "edge.cli", "hub", "serve", "--dir", str(self.hub_dir)]
        cmd += ["--broker", f"{b.host}:{b.port}", "--ca", str(pki.ca_file)]
        cmd += ["--cert", str(pki.hub.cert), "--key", str(pki.hub.key), "--db", str(self.db)]
        with open(self.log_path, "ab") as log:
            self.p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if self.cpus is not None:  # at once: the interpreter is still starting, one thread
            os.sched_setaffinity(self.p.pid, self.cpus)
        deadline = time.monotonic() + timeout
        while "hub: connected" not in self._log(mark):
            if self.p.poll() is not None or time.monotonic() > deadline:
                tail = self._log(mark)[-2000:]
                code = self.p.poll()
                self.stop()
                raise RuntimeError(f"hub did not connect (exit {code}):\n{tail}")
            time.sleep(0.02)
        if fresh:
            time.sleep(1.0)  # a new session subscribes after its CONNACK: let that finish
        self.cpu0 = proc_cpu_s(self.p.pid)
        return self

    def _log(self, since: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid) - self.cpu0

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def problems(self) -> Counter[str]:
        """WARNING/ERROR lines of the hub's log, by logger and first words."""
        out: Counter[str] = Counter()
        for line in self._log(0).splitlines():
            parts = line.split(" ", 4)
            if len(parts) > 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                out[f"{parts[2]} {parts[3]} {' '.join(parts[4].split()[:4])}"] += 1
        return out

    def stop(self) -> None:
        p, self.p = self.p, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _redemption_index(conn: sqlite3.Connection) -> str | None:
    """The name of an index of hub.db's events led by redemption_id, if there is one."""
    for row in conn.execute("PRAGMA index_list(events)").fetchall():
        cols = [r[2] for r in conn.execute(f"PRAGMA index_info('{row[1]}')").fetchall()]
        if cols[:1] == ["redemption_id"]:
            return str(row[1])
    return None


def prepare_hub_db(db: Path, workaround: bool) -> bool:
    """Make hub.db with the hub's own migrations; with `workaround`, add the index on
    events(redemption_id) if they did not (see the module docstring). True if it added it."""
    HubStore(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        if _redemption_index(conn) is not None or not workaround:
            return False
        conn.execute("CREATE INDEX bench_events_by_redemption ON events (redemption_id, type)")
        return True
    finally:
        conn.close()


def needs_index_workaround(probe: Path) -> bool:
    """True when a hub.db made by the hub's own migrations has no index led by redemption_id."""
    HubStore(probe).close()
    conn = sqlite3.connect(probe)
    try:
        return _redemption_index(conn) is None
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{probe}{suffix}").unlink(missing_ok=True)


def hub_db(path: Path) -> sqlite3.Connection:
    """A read-only connection to the hub's database (WAL: beside the serving hub)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)


def hub_counts(db: Path, box: str, epoch: str) -> tuple[int, int]:
    """(events stored, acked_through) for one stream."""
    conn = hub_db(db)
    try:
        n = conn.execute(
            "SELECT count(*) FROM events WHERE box = ? AND epoch = ?", (box, epoch)
        ).fetchone()[0]
        row = conn.execute(
            "SELECT acked_through FROM streams WHERE box = ? AND epoch = ?", (box, epoch)
        ).fetchone()
        return int(n), int(row[0]) if row else 0
    finally:
        conn.close()
