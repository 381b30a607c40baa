"""scan_to_gate_during_drain_ratio: the daemon as bench/daemon.py runs it (`python -m edge.cli run`
in a subprocess, 8 gate lanes on simulated serial scanners and Modbus relay boards in this
process), with a [sync] section pointing at the broker, so its CloudLink (sync/link.py) runs
inside it as on a box. The hub is `edge hub serve` on the fixture's issuer, so its used deltas
are signed by the box's trust anchor and imported by the box as they come.

Scan to gate (the board has the relay command), one scan at a time over the lanes with 10-30 ms
between visitors, as bench/daemon.py's idle phase:
- idle: link up, the outbox empty (each admission's two events go up and are acked at once);
- during a drain: the daemon is stopped, N events are appended to its ledger's outbox (not
  timed), the hub is stopped so nothing is acked, the daemon starts again (its link connects and
  fills its window into the hub's broker session), scanning starts, and then the hub starts. The
  samples counted are the scans made from the hub's connection to the moment the last of the N
  events left the outbox (the hub's ack). Repeated; the p99 is over all drains' samples.

Where the processes run (CpuSplit): the box's (this process, the daemon, its link) on half the
CPUs, the cloud's (hub, broker) on the other half, for the whole phase, idle and drains alike.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.daemon import DaemonSizes, _log_summary, _setup
from bench.daemon_load import Codes, Samples, admit_once, idle_scans
from bench.daemon_site import LANES, SITE, Api, CpuMeter, DaemonProc, Hardware, poll_until
from bench.fixture import Sizes
from bench.stats import Figures, Noise, median, percentile, progress, settle_disk, wait_quiet
from bench.sync_hub import HubProc, prepare_hub_db
from bench.sync_kit import Lab, SyncSizes, fill_outbox
from edge.ledger import acked_through
from sync.hub.store import register_box

CLOUD_NICE = 10
BOX = "bench-daemon"  # bench.daemon_site.Hardware.config's [box] device


def _sizes(s: SyncSizes, quick: bool) -> DaemonSizes:
    redeem = 600 if quick else 3000  # fresh codes: idle scans + the scans during the drains
    fx = Sizes(s.daemon_codes, s.daemon_codes // 10, 10, 1000, 0, 0, 0, 0, 0, redeem, 0, 0, 0, 0)
    return DaemonSizes(fx, 1, s.idle_scans, 0, 0.0, 0, 0, s.quiet_s)


def _sync_section(lab: Lab) -> str:
    cert = lab.pki.box(BOX)
    return (
        f'\n[sync]\nbroker = "{lab.broker.host}:{lab.broker.port}"\nca = "{lab.pki.ca_file}"\n'
        f'cert = "{cert.cert}"\nkey = "{cert.key}"\n'
    )


def _cloud(api: Api) -> dict[str, Any]:
    status, doc = api.call("GET", "/api/v1/status")
    return dict(doc.get("cloud") or {}) if status == 200 else {}


class CpuSplit:
    """The cloud (hub, broker) on CPUs of its own, the box (this process with its simulated
    hardware, the daemon and its link) on the others: a real box does not run the cloud, and
    on this 2-vCPU machine a hub at one CPU for the whole drain would otherwise take its turns
    from the box's threads, so the figure would measure the bench's layout, not the box. The
    box gets the first half of the CPUs (one of two here: a harder case than a 2-core box),
    the cloud the rest; idle and drain are measured in the same layout. The cloud also runs at
    CLOUD_NICE. EDGE_BENCH_CLOUD_CPUS=shared (or a single CPU): every process on every CPU,
    as the previous figures were measured."""

    def __init__(self) -> None:
        self.all = os.sched_getaffinity(0)
        cpus = sorted(self.all)
        shared = os.environ.get("EDGE_BENCH_CLOUD_CPUS") == "shared" or len(cpus) < 2
        half = len(cpus) // 2
        self.box: set[int] | None = None if shared else set(cpus[:half])
        self.cloud: set[int] | None = None if shared else set(cpus[half:])

    def describe(self) -> str:
        if self.box is None:
            return f"box and cloud share CPUs {sorted(self.all)}"
        cloud = sorted(self.cloud or ())
        return f"box on CPUs {sorted(self.box)}, cloud (hub, broker) on CPUs {cloud}"

    def enter(self, broker: subprocess.Popen[bytes] | None) -> None:
        """This process (so the daemon it starts) to the box's CPUs, the broker to the cloud's."""
        if self.box is not None:
            _pin(os.getpid(), self.box)
        as_cloud(self, broker)

    def leave(self, broker: subprocess.Popen[bytes] | None) -> None:
        """Every CPU again, for the phases after this one."""
        if self.box is not None:
            _pin(os.getpid(), self.all)
            if broker is not None and broker.poll() is None:
                _pin(broker.pid, self.all)


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` (threads started later inherit their starter's set)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)


def as_cloud(split: CpuSplit, *procs: subprocess.Popen[bytes] | None) -> None:
    """The hub and the broker stand for the cloud, other machines: on the cloud's CPUs when
    there are some (CpuSplit), and at CLOUD_NICE, so the box's processes get the CPU first.
    EDGE_BENCH_CLOUD_NICE=0: equal shares."""
    nice = int(os.environ.get("EDGE_BENCH_CLOUD_NICE", CLOUD_NICE))
    for p in procs:
        if p is not None and p.poll() is None:
            os.setpriority(os.PRIO_PROCESS, p.pid, nice)
            if split.cloud is not None:
                _pin(p.pid, split.cloud)


class AckMark:
    """The hub's ack mark as the box recorded it: the rows through it have left the outbox
    (the daemon deletes them later). One read-only connection for a whole drain: the poll runs
    in this process beside the simulated scanners and gates, and opening a connection 20 times
    a second cost them GIL time that the idle phase did not pay."""

    def __init__(self, ledger: Path) -> None:
        self.conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5.0)

    def through(self) -> int:
        return acked_through(self.conn)

    def close(self) -> None:
        self.conn.close()


def _scan_loop(hw: Hardware, codes: Codes, out: Samples, stop: threading.Event) -> None:
    """idle_scans' pattern until stopped: one scan at a time, lanes in turn."""
    rng = random.Random(2)
    i = 0
    while not stop.is_set():
        try:
            admit_once(hw.lanes[i % LANES], codes, out)
        except IndexError:
            progress("  fresh codes used up")
            return
        i += 1
        stop.wait(0.01 + rng.uniform(0, 0.02))


def _log_lines(log: Path, marker: str) -> list[tuple[float, str]]:
    """(time.monotonic() of the line, line) for the daemon log's lines containing `marker`."""
    offset = time.time() - time.monotonic()
    out = []
    with open(log, errors="replace") as fh:
        for line in fh:
            if marker in line:
                stamp = line.split(" ", 1)[0].rstrip("Z")
                at = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.UTC)
                out.append((at.timestamp() - offset, line))
    return out


def _activations(log: Path) -> list[float]:
    """When the daemon activated a bundle (the site's used deltas)."""
    lines = _log_lines(log, " edge.cache bundle seq=")
    return [at for at, line in lines if line.rstrip().endswith("active")]


def _decision_ms(log: Path, start: float, end: float) -> list[float]:
    """The lanes' own latency_ms (handling to gate open) of admissions logged in a window."""
    out = []
    for at, line in _log_lines(log, " edge.lanes decision "):
        if start <= at <= end and "reason=ok" in line and "latency_ms=" in line:
            out.append(float(line.split("latency_ms=", 1)[1].split()[0]))
    return out


def _slowest(samples: Samples, start: float, end: float, log: Path, n: int = 6) -> None:
    """The slowest scans of a drain, and how near each was to a used delta's activation (the
    import runs on a worker thread, the activation and view refresh on the database thread)."""
    acts = _activations(log)
    inside = [(ms, sent) for ms, (_, sent) in zip(samples.ms, samples.sent, strict=True)]
    worst = sorted((x for x in inside if start <= x[1] <= end), key=lambda x: -x[0])[:n]
    parts = []
    for ms, sent in worst:
        near = min(acts, key=lambda a: abs(a - sent), default=None)
        rel = "" if near is None else f", delta active {1000 * (near - sent):+.0f} ms"
        parts.append(f"{ms:.0f} ms (at {sent - start:.1f} s{rel})")
    progress(f"  slowest: {'; '.join(parts)}; {len(acts)} bundles activated in all")


class _Run:
    def __init__(
        self, lab: Lab, work: Path, sizes: SyncSizes, hw: Hardware, home: Path, split: CpuSplit
    ) -> None:
        self.lab, self.work, self.sizes, self.hw, self.home = lab, work, sizes, hw, home
        self.split = split
        self.proc = DaemonProc(home, work)
        hub_dir = work / "fixture" / "hub"
        log = work / "hub.log"
        self.hub = HubProc(hub_dir, lab.broker, hub_db_path(work), log, split.cloud)

    def start_daemon(self) -> Api:
        took = self.proc.start(timeout=90)
        api = Api.of(self.home)
        if not poll_until(lambda: _cloud(api).get("connected") is True, 30.0, 0.1):
            raise RuntimeError(f"the daemon's link did not connect: {_cloud(api)}")
        progress(f"  daemon READY in {took:.2f} s, link connected")
        return api

    def drain(self, i: int, codes: Codes) -> tuple[list[float], float]:
        """One drain with scans; (scan-to-gate ms during it, drain seconds)."""
        n = self.sizes.daemon_drain
        code, _ = self.proc.stop()
        self.hub.stop()
        if code != 0:
            raise RuntimeError(f"daemon exit status {code}: {self.proc.tail()}")
        last, _ = fill_outbox(self.home / "ledger.db", n)
        settle_disk(self.sizes.quiet_s)  # the fill is setup: its write-back is not the drain's
        api = self.start_daemon()
        samples, stop = Samples(), threading.Event()
        scanner = threading.Thread(target=_scan_loop, args=(self.hw, codes, samples, stop))
        try:
            scanner.start()
            time.sleep(2.0)  # scanning before the drain starts: the daemon is warm again
            noise, cpu = Noise(), CpuMeter(self.proc.pid)
            self.hub.start()
            as_cloud(self.split, self.hub.p)
            start = time.monotonic()

            mark = AckMark(self.home / "ledger.db")
            try:
                ok = poll_until(lambda: mark.through() >= last, self.sizes.drain_timeout_s, 0.05)
            finally:
                mark.close()
            end = time.monotonic()
            daemon_cpu = cpu.percent()
        finally:
            stop.set()
            scanner.join(30)
            api.close()
        ms = [
            m for m, (_, sent) in zip(samples.ms, samples.sent, strict=True) if start <= sent <= end
        ]
        _slowest(samples, start, end, self.proc.log_path)
        own = _decision_ms(self.proc.log_path, start, end)
        progress(
            f"  drain {i + 1}: {n} events {'acked' if ok else 'NOT acked'} in {end - start:.1f} s "
            f"after the hub connected; {len(ms)} scans meanwhile (misses {samples.misses}), "
            f"p99 {percentile(ms, 99):.1f} ms (the lanes' own latency_ms p99 "
            f"{percentile(own, 99):.1f} ms); daemon cpu {daemon_cpu:.0f}%; {noise.describe()}"
        )
        return ms, (end - start) if ok else float("nan")


def hub_db_path(work: Path) -> Path:
    """The hub stands for the cloud, which is another machine: its database goes to memory
    (/dev/shm) when there is one, so its fsyncs do not queue behind or ahead of the box's
    redemption commits on this machine's one disk."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return work / "hub.db"
    where = shm / f"edge-bench-hub-{work.parent.name}"
    where.mkdir(exist_ok=True)
    return where / "hub.db"


def daemon_phase(lab: Lab, sizes: SyncSizes, f: Figures, workaround: bool, quick: bool) -> None:
    work = lab.work / "daemon"
    work.mkdir()
    hw: Hardware | None = None
    run: _Run | None = None
    split = CpuSplit()
    progress(f"  {split.describe()}")
    try:
        split.enter(lab.broker.proc)
        progress("  daemon setup: fixture, simulated hardware, box home, snapshot import")
        fixture, home, hw = _setup(work, _sizes(sizes, quick))
        with (home / "edge.toml").open("a") as toml:
            toml.write(_sync_section(lab))
        register_box(work / "fixture" / "hub", BOX, SITE)
        prepare_hub_db(hub_db_path(work), workaround)
        run = _Run(lab, work, sizes, hw, home, split)
        run.hub.start()
        as_cloud(split, run.hub.p)
        api = run.start_daemon()
        codes = Codes(fixture)
        for lane in hw.lanes:  # the first scan on each lane is a warm-up
            admit_once(lane, codes, Samples())
        api.close()
        wait_quiet(sizes.quiet_s)
        noise = Noise()
        idle_start = time.monotonic()
        idle = idle_scans(hw, codes, sizes.idle_scans)
        own = _decision_ms(run.proc.log_path, idle_start, time.monotonic())
        progress(
            f"  idle: {len(idle.ms)} scans (misses {idle.misses}), p99 "
            f"{percentile(idle.ms, 99):.1f} ms (the lanes' own latency_ms p99 "
            f"{percentile(own, 99):.1f} ms); {noise.describe()}"
        )
        during: list[float] = []
        secs = []
        for i in range(sizes.daemon_repeats):
            wait_quiet(sizes.quiet_s)
            ms, took = run.drain(i, codes)
            during += ms
            secs.append(took)
        code, _ = run.proc.stop()
        progress(f"  daemon stopped: exit {code}")
        _log_summary(run.proc)
        problems = run.hub.problems()
        if problems:
            progress(f"  hub log: {dict(problems)}")
    finally:
        try:
            if run is not None:
                run.proc.close()
                run.hub.stop()
            if hw is not None:
                hw.close()
        finally:
            split.leave(lab.broker.proc)
        if hub_db_path(work).parent != work:  # the hub's database in /dev/shm
            shutil.rmtree(hub_db_path(work).parent, ignore_errors=True)
    idle_p99, drain_p99 = percentile(idle.ms, 99), percentile(during, 99)
    f.add("scan_to_gate_box_cpus", len(split.box or split.all), "count", 0)
    f.add("scan_to_gate_idle_p50_ms", percentile(idle.ms, 50), "ms")
    f.add("scan_to_gate_idle_p99_ms", idle_p99, "ms")
    f.add("scan_to_gate_idle_samples", len(idle.ms), "count", 0)
    f.add("scan_to_gate_during_drain_p50_ms", percentile(during, 50), "ms")
    f.add("scan_to_gate_during_drain_p99_ms", drain_p99, "ms")
    f.add("scan_to_gate_during_drain_samples", len(during), "count", 0)
    f.add("scan_to_gate_during_drain_ratio", drain_p99 / idle_p99, "x", 2)
    f.add("daemon_drain_100k_s", median(secs), "s")
