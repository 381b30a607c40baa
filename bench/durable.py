"""Durable redemption latency (ledger commit fsync'd by SQLite's WAL at synchronous=FULL) and
the disk's own fsync latency in the same directory, for comparison."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from bench.codesource import KINDS, CodeSource
from bench.stats import Figures, percentile, progress
from edge.service import RedemptionService

LANE = "counter"
_PAGE = 4096


def fsync_latencies_ms(directory: Path, n: int) -> list[float]:
    """Write 4 KiB and fsync, n times, cycling over a 1 MiB file (as a WAL does)."""
    path = directory / "fsync-probe.bin"
    block = os.urandom(_PAGE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    out = []
    try:
        for i in range(n):
            start = time.perf_counter_ns()
            os.pwrite(fd, block, (i % 256) * _PAGE)
            os.fsync(fd)
            out.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return out


def redeem(figures: Figures, svc: RedemptionService, source: CodeSource, n: int) -> None:
    """Redeem n distinct codes (kinds round-robin) on a counter lane; each call commits.

    In WAL mode only a checkpoint writes the database file itself, so a change of its mtime
    (checked outside the timed call) marks the redemptions that ran SQLite's auto-checkpoint.
    """
    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    checkpointed: list[float] = []
    plain: list[float] = []
    denied: Counter[str] = Counter()
    db = svc.ledger.path
    t0 = time.monotonic()
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        text = source.next(kind)
        before = db.stat().st_mtime_ns
        start = time.perf_counter_ns()
        decision = svc.redeem(text, LANE)
        ms = (time.perf_counter_ns() - start) / 1e6
        per_kind[kind].append(ms)
        (checkpointed if db.stat().st_mtime_ns != before else plain).append(ms)
        if not decision.admit:
            denied[f"{kind}:{decision.reason}"] += 1
        if (i + 1) % 2000 == 0:
            progress(f"redeem: {i + 1}/{n} in {time.monotonic() - t0:.1f} s, p99 of the last "
                     f"2000 {percentile([*plain, *checkpointed][-2000:], 99):.3f} ms")
    if denied:
        progress(f"WARNING redeem: denied decisions {dict(denied)}")
    all_ms = [x for k in KINDS for x in per_kind[k]]
    figures.latency("redeem", all_ms, p999=True)
    figures.add("redeem_per_s", len(all_ms) / (sum(all_ms) / 1000.0), "1/s", 0)
    for kind in KINDS:
        figures.latency(f"redeem_{kind}", per_kind[kind])
    figures.add("redeem_checkpoints", len(checkpointed), "count", 0)
    figures.add("redeem_checkpoint_p50_ms", percentile(checkpointed, 50), "ms")
    figures.latency("redeem_no_checkpoint", plain)
