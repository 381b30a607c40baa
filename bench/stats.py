"""Percentiles, figure output and progress messages shared by the benchmark areas."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_T0 = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, stamped with seconds since start."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the smallest value >= q% of the samples."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass
class Figures:
    """Collects `name=value unit` figures; prints each as soon as it is added."""

    lines: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, digits: int = 3) -> None:
        text = f"{value:.{digits}f}" if digits > 0 else f"{round(value)}"
        line = f"{name}={text} {unit}"
        self.lines.append(line)
        self.values[name] = value
        print(line, flush=True)

    def latency(self, prefix: str, samples_ms: Sequence[float], *, p999: bool = False) -> None:
        """p50 and p99 (and p99.9, max) of latencies in milliseconds."""
        self.add(f"{prefix}_p50_ms", percentile(samples_ms, 50), "ms")
        self.add(f"{prefix}_p99_ms", percentile(samples_ms, 99), "ms")
        if p999:
            self.add(f"{prefix}_p999_ms", percentile(samples_ms, 99.9), "ms")
            self.add(f"{prefix}_max_ms", max(samples_ms, default=math.nan), "ms")


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    unit: str
    at_least: bool = False  # the figure must be >= limit (a rate), not <= (a time)


# The targets (issue 2, "Performance"); a figure above its limit misses the target.
TARGETS = (
    Target("validate_signed_p99_ms", 1.0, "ms"),
    Target("validate_rotating_p99_ms", 1.0, "ms"),
    Target("validate_short_p99_ms", 1.0, "ms"),
    Target("redeem_p99_ms", 2.0, "ms"),
    Target("redeem_p999_ms", 10.0, "ms"),
    Target("redeem_aged_p99_ms", 2.0, "ms"),  # the same targets, on a ledger with 30 days of use
    Target("redeem_aged_p999_ms", 10.0, "ms"),
    Target("snapshot_1m_s", 10.0, "s"),
    Target("snapshot_1m_rss_growth_mb", 100.0, "MB"),
    Target("delta_10k_s", 0.5, "s"),
    # issue 3, "Performance"
    Target("locker_unlock_wire_p99_ms", 5.0, "ms"),
    Target("gate_pulse_wire_p99_ms", 5.0, "ms"),
    Target("camera_present_to_decode_p99_ms", 150.0, "ms"),
    Target("camera_empty_cpu_pct", 25.0, "%"),
    Target("camera_degraded_decode_rate", 0.9, "", at_least=True),
    Target("kitchen_ticket_text_ms", 20.0, "ms"),
    # issue 4, "Performance" (bench/daemon.py)
    Target("scan_to_gate_p99_ms", 20.0, "ms"),
    Target("scan_to_gate_loaded_p99_ms", 50.0, "ms"),
    Target("print_job_to_bytes_p99_ms", 100.0, "ms"),
    Target("start_to_ready_s", 3.0, "s"),
    Target("start_to_ready_max_s", 3.0, "s"),
    Target("idle_rss_mb", 150.0, "MB"),
    Target("rss_growth_200k_scans_mb", 20.0, "MB"),
    # issue 5, "Performance" (bench/sync.py)
    Target("drain_100k_s", 10.0, "s"),
    Target("scan_to_gate_during_drain_ratio", 2.0, "x"),
    Target("fleet_lost", 0.0, ""),
    Target("fleet_duplicated_effects", 0.0, ""),
    # issue 6, "Performance" (bench/kiosk.py)
    Target("scan_to_browser_p99_ms", 150.0, "ms"),
    Target("counter_first_load_ms", 1000.0, "ms"),
    Target("counter_first_load_p99_ms", 1000.0, "ms"),
    Target("counter_first_load_kb", 300.0, "KB"),
)


def check_targets(figures: Figures) -> int:
    """Print each target's verdict on stderr; return how many were missed."""
    missed = 0
    for t in TARGETS:
        value = figures.values.get(t.name)
        if value is None:
            continue
        ok = value >= t.limit if t.at_least else value <= t.limit
        missed += not ok
        verdict = "ok" if ok else f"MISSED by {abs(value - t.limit):.3g} {t.unit}"
        op = ">=" if t.at_least else "<="
        progress(f"target {t.name} {op} {t.limit:g} {t.unit}: {value:.3f} {verdict}")
    return missed


def _psi_total_us(resource: str) -> int | None:
    """Total µs some task waited for `resource` (Linux PSI); None when unavailable."""
    try:
        with open(f"/proc/pressure/{resource}") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Noise:
    """How much other work competed with a stretch of the run: the share of wall time in which
    some task waited for a CPU or for I/O (PSI "some"), and the load average at its end."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.cpu = _psi_total_us("cpu")
        self.io = _psi_total_us("io")

    def percent(self) -> tuple[float, float]:
        wall_us = (time.monotonic() - self.start) * 1e6
        cpu, io = _psi_total_us("cpu"), _psi_total_us("io")
        pct_cpu = math.nan if cpu is None or self.cpu is None else 100 * (cpu - self.cpu) / wall_us
        pct_io = math.nan if io is None or self.io is None else 100 * (io - self.io) / wall_us
        return pct_cpu, pct_io

    def describe(self) -> str:
        cpu, io = self.percent()
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
        return f"cpu pressure {cpu:.0f}%, io pressure {io:.0f}%, load {load}"


def wait_quiet(max_wait_s: float, limit_pct: float = 5.0) -> None:
    """On a shared machine, wait (up to max_wait_s) for a second in which tasks waited for a CPU
    less than limit_pct of the time, so a measurement does not start inside someone's build."""
    if max_wait_s <= 0:
        return
    deadline = time.monotonic() + max_wait_s
    while True:
        probe = Noise()
        time.sleep(1.0)
        cpu, _ = probe.percent()
        if not cpu > limit_pct:  # also true when PSI is unavailable (nan)
            return
        if time.monotonic() >= deadline:
            progress(f"machine still busy (cpu pressure {cpu:.0f}%); measuring anyway")
            return


def settle_disk(max_wait_s: float, limit_pct: float = 2.0) -> None:
    """After a setup step that wrote a lot (a filled outbox): write it out (sync) and wait, up
    to max_wait_s, for a second with I/O pressure under limit_pct, so the write-back of the
    setup does not slow the fsyncs of the measurement that follows."""
    os.sync()
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        probe = Noise()
        time.sleep(1.0)
        _, io = probe.percent()
        if not io > limit_pct:
            return
    progress(f"disk still busy after {max_wait_s:g} s; measuring anyway")


def drop_work(work: Path, keep: bool) -> None:
    """The end of a benchmark's run: its work directory goes, unless asked to keep it."""
    if keep:
        progress(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def add_noise(figures: Figures, whole: Noise) -> Figures:
    """The share of the run in which other work competed for the CPU and the disk."""
    cpu, io = whole.percent()
    figures.add("noise_cpu_pressure_pct", cpu, "%", 1)
    figures.add("noise_io_pressure_pct", io, "%", 1)
    return figures
