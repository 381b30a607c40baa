"""Area `daemon` (issue 4, "Performance"): the running daemon, end to end, on simulated hardware.

Setup: the fixture's hub signs a 1,000,000-code snapshot (100,000 revocations), which a worker
imports into a fresh box home; 8 entry gate lanes, each a GM65-style serial scanner and a Modbus
relay board (fire loop wired) with a turnstile that passes 10 ms after the unlock, and four
ESC/POS printers (two kitchen stations, the receipt, and one for the measured jobs). The daemon is
`python -m edge.cli run --home DIR` in a subprocess; the simulators live in this process (see
bench/daemon_site.py), and so do the scan and print-job drivers, while the background load runs
in a third process (both in bench/daemon_load.py).

Phases, on one daemon: start to READY (several starts), idle RSS, scan-to-gate idle (one scan at
a time over the 8 lanes), print job to bytes idle, everything at once (8 lanes admitting as fast
as their turnstiles allow, deltas importing back to back, kitchen orders printing, an event-stream
client reading, measured scans and print jobs), then RSS over many scans: tickets already used
(denied `already_used`: the full decision path, a durable deny event each) on the 8 lanes with
the event stream connected; its rate is the daemon's decision capacity.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.daemon_load import (
    Codes,
    LaneCounts,
    LoadProc,
    PrintProbe,
    Samples,
    admit_once,
    decisions,
    deny_scans,
    diff,
    feedback_ms,
    idle_scans,
    lane_driver,
)
from bench.daemon_site import Api, CpuMeter, DaemonProc, Hardware
from bench.fixture import Fixture, Sizes, build_in_child
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

DEDUPE_S = 8.0  # edge.config_sections.LaneConfig.dedupe_s: a ticket admitted is ignored this long
SCANNER_DEDUP_S = 2.0  # drivers.scanner.ScannerOptions.dedup


@dataclass(frozen=True)
class DaemonSizes:
    fixture: Sizes
    starts: int  # daemon starts timed to READY
    idle_scans: int
    print_jobs: int
    loaded_s: float
    rss_warmup: int  # deny scans before the RSS baseline
    rss_scans: int
    quiet_s: float

    @classmethod
    def full(cls) -> DaemonSizes:
        fx = _fixture_sizes(1_000_000, 100_000, 10_000, 400, 7500)
        return cls(fx, 5, 1500, 300, 60.0, 5000, 200_000, 60.0)

    @classmethod
    def quick(cls) -> DaemonSizes:
        return cls(_fixture_sizes(20_000, 2_000, 1_000, 120, 900), 2, 100, 30, 6.0, 500, 5000, 0.0)


def _fixture_sizes(codes: int, revoked: int, delta: int, deltas: int, redeem: int) -> Sizes:
    return Sizes(codes, revoked, 10, delta, 0, deltas, 0, 0, 0, redeem, 0, 0, 0, 0.0)


@dataclass
class Run:
    figures: Figures
    sizes: DaemonSizes
    work: Path
    fixture: Fixture
    hw: Hardware
    home: Path
    proc: DaemonProc
    codes: Codes
    loaded_end: float = 0.0


def _setup(work: Path, sizes: DaemonSizes) -> tuple[Fixture, Path, Hardware]:
    (work / "fixture").mkdir()
    fixture = build_in_child(work / "fixture", sizes.fixture)
    hw = Hardware.start()
    try:
        home = work / "box"
        home.mkdir()
        (home / "anchor.json").write_text(fixture.anchor.read_text())
        (home / "edge.toml").write_text(hw.config("anchor.json"))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.workers",
                "snapshot",
                str(home / "edge.toml"),
                str(fixture.snapshot),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        doc = json.loads(out.stdout)
        progress(f"snapshot imported in {doc['seconds']:.2f} s: {doc['counts']}")
    except BaseException:
        hw.close()
        raise
    return fixture, home, hw


def _starts(r: Run) -> None:
    times = []
    for i in range(r.sizes.starts):
        if i:
            code, _ = r.proc.stop()
            if code != 0:
                raise RuntimeError(f"daemon exit status {code}: {r.proc.tail()}")
        times.append(r.proc.start())
        progress(f"  start {i + 1}: READY after {times[-1]:.3f} s")
    r.figures.add("start_to_ready_s", median(times), "s")
    r.figures.add("start_to_ready_max_s", max(times), "s")
    time.sleep(5.0)  # idle a few seconds after READY
    st = r.proc.status_kb()
    r.figures.add("idle_rss_mb", st["VmRSS"] / 1024, "MB", 1)
    r.figures.add("idle_rss_anon_mb", st.get("RssAnon", 0) / 1024, "MB", 1)


def _idle(r: Run, api: Api) -> None:
    wait_quiet(r.sizes.quiet_s)
    noise = Noise()
    before = decisions(api)
    for lane in r.hw.lanes:  # first scan on each lane: warm-up, not counted
        admit_once(lane, r.codes, Samples())
    s = idle_scans(r.hw, r.codes, r.sizes.idle_scans)
    progress(f"  idle scans: {diff(decisions(api), before)}; {noise.describe()}")
    r.figures.latency("scan_to_gate", s.ms)
    r.figures.add("scan_to_gate_max_ms", max(s.ms, default=float("nan")), "ms")
    r.figures.add("scan_to_gate_samples", len(s.ms), "count", 0)
    r.figures.add("scan_to_gate_misses", s.misses, "count", 0)
    r.figures.latency("scan_to_beep", feedback_ms(s))
    rtt = []
    for _ in range(50):
        t = time.monotonic()
        api.call("GET", "/healthz")
        rtt.append((time.monotonic() - t) * 1000)
    r.figures.latency("api_healthz", rtt)
    wait_quiet(r.sizes.quiet_s)
    noise = Noise()
    probe = PrintProbe(r.hw, api)
    probe.once()  # warm-up
    probe.from_return.clear()
    probe.from_post.clear()
    for _ in range(r.sizes.print_jobs):
        probe.once()
    progress(
        f"  idle print jobs: {len(probe.from_return)}, failures {dict(probe.failures)}; "
        f"{noise.describe()}"
    )
    r.figures.latency("print_job_to_bytes", probe.from_post)
    r.figures.latency("print_job_returned_to_bytes", probe.from_return)


def _loaded(r: Run, api: Api) -> None:
    deltas = [str(p) for p in r.fixture.deltas]
    wait_quiet(r.sizes.quiet_s)
    noise = Noise()
    before = decisions(api)
    load = LoadProc(r.home, r.work, {"sse": True, "deltas": deltas, "orders_per_s": 2.0})
    try:
        samples, stop = Samples(), threading.Event()
        probe = PrintProbe(r.hw, api.clone())
        threads = [
            threading.Thread(target=lane_driver, args=(lane, r.codes, samples, stop, i))
            for i, lane in enumerate(r.hw.lanes)
        ]
        threads.append(threading.Thread(target=probe.loop, args=(stop,)))
        start = time.monotonic()
        for t in threads:
            t.start()
        stop.wait(r.sizes.loaded_s)
        stop.set()
        end = r.loaded_end = time.monotonic()
        for t in threads:
            t.join(30)
        probe.api.close()
        result = load.finish()
    finally:
        load.kill()
    imports: list[dict[str, Any]] = result["imports"]
    busy = sum(max(0.0, min(i["end"], end) - max(i["start"], start)) for i in imports)
    ok = [i["end"] - i["start"] for i in imports if i["ok"]]
    summary = json.dumps({k: v for k, v in result.items() if k != "imports"}, ensure_ascii=False)
    progress(f"  loaded: {diff(decisions(api), before)}; load {summary}")
    progress(f"  loaded: {noise.describe()}")
    _slowest(samples, imports, start)
    f = r.figures
    f.latency("scan_to_gate_loaded", samples.ms)
    f.add("scan_to_gate_loaded_max_ms", max(samples.ms, default=float("nan")), "ms")
    f.add("scan_to_gate_loaded_samples", len(samples.ms), "count", 0)
    f.add("scan_to_gate_loaded_misses", samples.misses, "count", 0)
    f.add("scans_per_s_8_lanes", len(samples.ms) / (end - start), "1/s", 1)
    f.add("loaded_import_busy_pct", 100 * busy / (end - start), "%", 1)
    f.add("loaded_deltas_imported", len(ok), "count", 0)
    f.add("loaded_delta_import_p50_s", median(ok), "s")
    f.add("loaded_sse_events", sum(result["events"].values()), "count", 0)
    f.add("loaded_print_orders", result["orders"], "count", 0)
    f.add("print_job_to_bytes_loaded_p99_ms", percentile(probe.from_post, 99), "ms")
    f.add("print_job_to_bytes_loaded_samples", len(probe.from_post), "count", 0)


def _slowest(samples: Samples, imports: list[dict[str, float]], start: float, n: int = 5) -> None:
    """Where the slowest loaded scans fell: which lane, and how near an import's end (its
    activation and the ledger event that follows run on the daemon's threads then)."""
    ends = sorted(i["end"] for i in imports)
    worst = sorted(zip(samples.ms, samples.sent, strict=True), key=lambda x: -x[0])[:n]
    parts = []
    for ms, (lane, sent) in worst:
        near = min(ends, key=lambda e: abs(e - sent), default=None)
        rel = "" if near is None else f", import ended {1000 * (near - sent):+.0f} ms"
        parts.append(f"{ms:.1f} ms ({lane.name} at {sent - start:.1f} s{rel})")
    progress("  slowest loaded scans: " + "; ".join(parts))


def _log_summary(proc: DaemonProc) -> None:
    """Warnings and errors the daemon logged during the whole run, by logger."""
    counts: Counter[str] = Counter()
    try:
        with open(proc.log_path, errors="replace") as f:
            for line in f:
                parts = line.split(" ", 3)
                if len(parts) > 2 and parts[1] in ("WARNING", "ERROR", "CRITICAL"):
                    counts[f"{parts[1]} {parts[2]}"] += 1
    except OSError:
        return
    progress(f"daemon log: {dict(counts) or 'no warnings or errors'}")


def _rss(r: Run, api: Api) -> None:
    load = LoadProc(r.home, r.work, {"sse": True, "deltas": [], "orders_per_s": 0})
    counts = LaneCounts(api.clone())
    trend: list[tuple[int, int]] = []  # (scans taken so far, VmRSS kB), every 2 s
    stop = threading.Event()

    def sample(base_scans: int) -> None:
        while not stop.wait(2.0):
            trend.append((sum(counts.scans.values()) - base_scans, r.proc.status_kb()["VmRSS"]))

    try:
        # The readers swallow the same text within 2 s (drivers.scanner dedup): the codes
        # admitted just now would vanish there instead of reaching the lanes.
        time.sleep(max(0.0, r.loaded_end + SCANNER_DEDUP_S + 0.5 - time.monotonic()))
        deny_scans(r.hw, r.codes, counts, r.sizes.rss_warmup)
        # Codes admitted in the last seconds of the loaded phase are still "at the reader"
        # (the lane's dedupe window, 8 s): past it, every scan below is a decision.
        time.sleep(max(2.0, r.loaded_end + DEDUPE_S + 1.0 - time.monotonic()))
        before = decisions(api)
        base = r.proc.status_kb()
        noise, cpu = Noise(), CpuMeter(r.proc.pid)
        sampler = threading.Thread(target=sample, args=(sum(counts.scans.values()),))
        sampler.start()
        try:
            seconds = deny_scans(r.hw, r.codes, counts, r.sizes.rss_scans)
            daemon_cpu = cpu.percent()
        finally:
            stop.set()
            sampler.join()
        progress(f"  {r.sizes.rss_scans} deny scans in {seconds:.1f} s; {noise.describe()}")
        time.sleep(2.0)
        end = r.proc.status_kb()
        decided = decisions(api)
        progress(f"  decisions: {diff(decided, before)}")
    finally:
        counts.close()
        result = load.finish() if load.p.poll() is None else {}
        load.kill()
    progress(f"  event stream: {result.get('events')}, errors {result.get('errors')}")
    step = max(1, len(trend) // 8)
    progress(
        "  VmRSS MB by scans: " + ", ".join(f"{n}: {kb / 1024:.1f}" for n, kb in trend[::step])
    )
    f = r.figures
    f.add("rss_growth_200k_scans_mb", (end["VmRSS"] - base["VmRSS"]) / 1024, "MB", 1)
    f.add("rss_growth_anon_mb", (end.get("RssAnon", 0) - base.get("RssAnon", 0)) / 1024, "MB", 1)
    f.add("rss_scans_denied", r.sizes.rss_scans, "count", 0)
    f.add("rss_scans_decided", sum(decided.values()) - sum(before.values()), "count", 0)
    f.add("rss_end_mb", end["VmRSS"] / 1024, "MB", 1)
    f.add("scans_per_s_8_lanes_denied", r.sizes.rss_scans / seconds, "1/s", 1)
    f.add("daemon_cpu_pct_denied", daemon_cpu, "%", 1)


def run(quick: bool, base: Path | None = None, keep: bool = False) -> Figures:
    sizes = DaemonSizes.quick() if quick else DaemonSizes.full()
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-daemon-", dir=base))
    progress(f"daemon ({'quick' if quick else 'full size'}) in {work}")
    whole = Noise()
    hw: Hardware | None = None
    proc: DaemonProc | None = None
    try:
        progress("setup: fixture, simulated hardware, box home, snapshot import")
        fixture, home, hw = _setup(work, sizes)
        figures.add("setup_short_codes", sizes.fixture.short_codes, "count", 0)
        proc = DaemonProc(home, work)
        r = Run(figures, sizes, work, fixture, hw, home, proc, Codes(fixture))
        progress(f"start to READY x{sizes.starts}, then idle RSS")
        _starts(r)
        api = Api.of(home)
        try:
            progress(f"idle: {sizes.idle_scans} scans one at a time, {sizes.print_jobs} print jobs")
            _idle(r, api)
            progress(f"everything at once for {sizes.loaded_s:.0f} s")
            _loaded(r, api)
            progress(f"RSS: {sizes.rss_warmup} warm-up + {sizes.rss_scans} deny scans")
            _rss(r, api)
        finally:
            api.close()
        code, secs = proc.stop()
        progress(f"daemon stopped: exit {code} in {secs:.2f} s")
        _log_summary(proc)
        figures.add("daemon_stop_s", secs, "s")
    finally:
        if proc is not None:
            proc.close()
        if hw is not None:
            hw.close()
        drop_work(work, keep)
    return add_noise(figures, whole)
