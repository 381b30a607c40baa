"""Area `core`: the offline redemption core's figures (issue 2, "Performance").

Setup (full size): 1,000,000 short codes and 100,000 revocations in a snapshot signed by a hub
with 10 signing keys, a site with a default check-in list, a chain of 10,000-code deltas.
The box side is the real RedemptionService / CacheStore on a fresh state directory. Redeem runs
twice: on a fresh ledger, then on one aged with 300,000 redemptions (30 days of a busy gate).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import durable, validate
from bench.codesource import KINDS, CodeSource
from bench.fixture import Fixture, Sizes, build_in_child
from bench.stats import Figures, Noise, add_noise, drop_work, median, progress, wait_quiet
from edge.config import load
from edge.service import RedemptionService


def _snapshot(figures: Figures, fixture: Fixture, sizes: Sizes) -> Path:
    """Import the snapshot into fresh boxes, each in a fresh process; return the last config."""
    seconds, growth = [], []
    config = Path()
    for r in range(sizes.snapshot_repeats):
        if r:
            shutil.rmtree(config.parent)
        config = fixture.make_box(fixture.workdir / f"box-{r}")
        out = subprocess.run(
            [sys.executable, "-m", "bench.workers", "snapshot", str(config), str(fixture.snapshot)],
            check=True,
            capture_output=True,
            text=True,
        )
        doc = json.loads(out.stdout)
        mb = (doc["hwm_after_kb"] - doc["rss_before_kb"]) / 1024
        if not doc["peak_reset"]:
            progress("note: could not reset the peak RSS; growth is an upper bound")
        progress(
            f"snapshot {r + 1}/{sizes.snapshot_repeats}: {doc['seconds']:.2f} s, "
            f"RSS {doc['rss_before_kb'] / 1024:.0f} MB -> peak "
            f"{doc['hwm_after_kb'] / 1024:.0f} MB, counts {doc['counts']}"
        )
        seconds.append(doc["seconds"])
        growth.append(mb)
    figures.add("snapshot_1m_s", median(seconds), "s")
    figures.add("snapshot_1m_max_s", max(seconds), "s")
    figures.add("snapshot_1m_rss_growth_mb", max(growth), "MB", 1)
    return config


def _deltas(figures: Figures, svc: RedemptionService, bundles: list[Path]) -> None:
    seconds = []
    for bundle in bundles:
        start = time.perf_counter()
        svc.import_bundle(bundle)
        seconds.append(time.perf_counter() - start)
    progress(f"delta imports: {', '.join(f'{s:.3f}' for s in seconds)} s")
    figures.add("delta_10k_s", median(seconds), "s")
    figures.add("delta_10k_max_s", max(seconds), "s")


def _warm_up(svc: RedemptionService, fixture: Fixture) -> None:
    """First scans open the cache (with its integrity check) and load the keyring."""
    source = CodeSource(fixture, "validate")
    start = time.perf_counter()
    for _ in range(30):
        for kind in KINDS:
            svc.validate(source.next(kind), validate.LANE)
    progress(f"warm-up (opens and checks the cache): {time.perf_counter() - start:.2f} s")


def _settle() -> None:
    """Flush the setup's dirty pages so their writeback does not land inside a measurement."""
    start = time.perf_counter()
    os.sync()
    progress(f"sync after setup: {time.perf_counter() - start:.2f} s")


class _Phase:
    """Progress for one phase, with how noisy the machine was during it."""

    def __init__(self, what: str) -> None:
        self.what = what
        progress(what)
        self.noise = Noise()

    def end(self) -> None:
        progress(
            f"  {self.what}: done in {time.monotonic() - self.noise.start:.1f} s "
            f"({self.noise.describe()})"
        )


def _validate(
    figures: Figures, svc: RedemptionService, fixture: Fixture, sizes: Sizes, config: Path
) -> None:
    source = CodeSource(fixture, "validate")
    wait_quiet(sizes.quiet_s)
    phase = _Phase("validate, nothing else running")
    validate.report_idle(figures, validate.idle(svc, source, sizes.idle_samples))
    phase.end()
    phase = _Phase(
        f"validate while deltas import, {sizes.rounds} round(s) of "
        f"{len(validate.VARIANTS)} importer variants"
    )
    validate.concurrent(
        figures,
        svc,
        source,
        config,
        fixture.deltas[sizes.deltas_timed :],
        sizes.validate_samples,
        sizes.rounds,
        fixture.workdir / "stop-importer",
        sizes.quiet_s,
    )
    phase.end()


def _redeem(figures: Figures, svc: RedemptionService, fixture: Fixture, sizes: Sizes) -> None:
    source = CodeSource(fixture, "redeem")
    wait_quiet(sizes.quiet_s)
    phase = _Phase(f"redeem {sizes.redeem} distinct codes on a counter lane, fresh ledger")
    durable.redeem(figures, svc, source, sizes.redeem)
    phase.end()
    phase = _Phase(f"age the ledger: {sizes.aged_ledger} redemptions over 30 days")
    durable.age_ledger(svc, sizes.aged_ledger)
    figures.add("setup_aged_ledger_redemptions", sizes.aged_ledger, "count", 0)
    phase.end()
    wait_quiet(sizes.quiet_s)
    phase = _Phase(f"redeem {sizes.redeem} more codes, aged ledger")
    durable.redeem(figures, svc, source, sizes.redeem, "redeem_aged")
    phase.end()


def run(quick: bool, base: Path | None = None, keep: bool = False) -> Figures:
    sizes = Sizes.quick() if quick else Sizes.full()
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-", dir=base))
    progress(f"core ({'quick' if quick else 'full size'}) in {work}")
    whole = Noise()
    try:
        phase = _Phase("setup: hub, snapshot, deltas, code pools")
        fixture = build_in_child(work, sizes)
        _settle()
        phase.end()
        figures.add("setup_short_codes", sizes.short_codes, "count", 0)
        figures.add("setup_revocations", sizes.revocations, "count", 0)
        figures.add("setup_signing_keys", sizes.keys, "count", 0)
        figures.add("setup_delta_codes", sizes.delta_codes, "count", 0)

        wait_quiet(sizes.quiet_s)
        phase = _Phase(f"snapshot import x{sizes.snapshot_repeats}, each in a fresh process")
        config = _snapshot(figures, fixture, sizes)
        box = config.parent
        phase.end()
        phase = _Phase("fsync loop (4 KiB write + fsync) in the state directory")
        figures.latency("fsync", durable.fsync_latencies_ms(box, sizes.fsync))
        phase.end()

        svc = RedemptionService(load(config, box))
        try:
            _warm_up(svc, fixture)
            phase = _Phase(f"delta imports x{sizes.deltas_timed} through the service")
            _deltas(figures, svc, fixture.deltas[: sizes.deltas_timed])
            phase.end()
            _validate(figures, svc, fixture, sizes, config)
            _redeem(figures, svc, fixture, sizes)
        finally:
            svc.close()
    finally:
        drop_work(work, keep)
    return add_noise(figures, whole)
