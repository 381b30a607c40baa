"""Durable redemption latency (ledger commit fsync'd by SQLite's WAL at synchronous=FULL) and
the disk's own fsync latency in the same directory, for comparison."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.codesource import KINDS, CodeSource
from bench.stats import Figures, percentile, progress
from edge.ledger import Redemption
from edge.service import RedemptionService
from edge.store import transaction

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


def age_ledger(svc: RedemptionService, n: int, days: int = 30) -> None:
    """Give the ledger the history of a box that has run for `days` days (n confirmed
    redemptions), written through Ledger.insert in one transaction, then checkpointed."""
    now = time.time()
    step = days * 86400 / max(n, 1)
    with transaction(svc.ledger.conn):
        for i in range(n):
            at = now - (n - i) * step
            svc.ledger.insert(
                Redemption(
                    id=os.urandom(16),
                    canonical_id=os.urandom(16).hex(),
                    list_id="default",
                    direction="entry",
                    kind=KINDS[i % len(KINDS)],
                    product="adult",
                    zone=None,
                    persons=1,
                    passed=1,
                    state="confirmed",
                    forced=False,
                    note="",
                    lane=LANE,
                    created_at=at,
                    updated_at=at,
                    business_day=time.strftime("%Y-%m-%d", time.gmtime(at)),
                    valid_until=int(at) + 86400,
                    cache_seq=1,
                    clock_suspect=False,
                )
            )
    svc.ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextmanager
def background_checkpoints(svc: RedemptionService, period_s: float = 0.2) -> Iterator[None]:
    """What the daemon's maintenance task does: PASSIVE checkpoints off the lane's thread."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(period_s):
            svc.ledger.checkpoint("PASSIVE")

    worker = threading.Thread(target=run, name="ledger-checkpoint", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()


def redeem(
    figures: Figures, svc: RedemptionService, source: CodeSource, n: int, name: str = "redeem"
) -> None:
    with background_checkpoints(svc):
        _redeem(figures, svc, source, n, name)


def _redeem(
    figures: Figures, svc: RedemptionService, source: CodeSource, n: int, name: str
) -> None:
    """Redeem n distinct codes (kinds round-robin) on a counter lane; each call commits.

    Checkpoints run in a background thread (as in the daemon); in WAL mode only a checkpoint
    writes the database file itself, so a change of its mtime (checked outside the timed call)
    marks the redemptions that overlapped one.
    """
    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    in_order: list[float] = []
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
        in_order.append(ms)
        (checkpointed if db.stat().st_mtime_ns != before else plain).append(ms)
        if not decision.admit:
            denied[f"{kind}:{decision.reason}"] += 1
        if (i + 1) % 2000 == 0:
            progress(
                f"{name}: {i + 1}/{n} in {time.monotonic() - t0:.1f} s, p99 of the last "
                f"2000 {percentile(in_order[-2000:], 99):.3f} ms"
            )
    if denied:
        progress(f"WARNING {name}: denied decisions {dict(denied)}")
    figures.latency(name, in_order, p999=True)
    figures.add(f"{name}_per_s", len(in_order) / (sum(in_order) / 1000.0), "1/s", 0)
    for kind in KINDS:
        figures.latency(f"{name}_{kind}", per_kind[kind])
    figures.add(f"{name}_checkpoints", len(checkpointed), "count", 0)
    figures.add(f"{name}_checkpoint_p50_ms", percentile(checkpointed, 50), "ms")
    figures.latency(f"{name}_no_checkpoint", plain)
