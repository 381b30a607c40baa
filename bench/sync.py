"""Area `sync` (issue 5, "Performance"): the cloud link end to end on this machine, everything
real: mosquitto 2 with mutual TLS and the per-box ACL (tests/broker.py), the reference hub as its
own process (`edge hub serve`), the box's Link (sync/link.py) over a real ledger.db, and the
fault proxy (tests/faultproxy.py) for the shaped link and the partitions.

Phases:
- drain (bench/sync_drain.py): N queued events (gate admissions: a redemption and its
  confirmation each) drained by the link and acked by the hub; repeated, median;
- the daemon (bench/sync_daemon.py): scan-to-gate p99 idle and while its link drains N events;
- the fleet (bench/sync_fleet.py): many boxes, each its own certificate, connection and ledger,
  connected at once; nothing lost, nothing doubled in the hub's database;
- catch-up after a partition, and the drain through the proxy shaped to 100 ms and 2 Mbit/s.

Figure names keep the issue's sizes (drain_100k_s, catchup_10k_s) in --quick too, where the
sizes are small (printed as *_events); --quick figures are not checked against the targets.

The hub's used delta looks up each pending redemption's confirmation by redemption id
(sync/hub/bundles.py _used_entry); a hub schema without an index on events(redemption_id)
(before the hub's migration 2) makes a 100k drain quadratic: it does not finish in minutes.
Should the index be missing, the bench adds it to each fresh hub.db, prints
hub_index_workaround=1, and measures one drain without it (drain_100k_no_index_*).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.stats import Figures, Noise, add_noise, drop_work, progress


def run(quick: bool, base: Path | None = None, keep: bool = False) -> Figures:
    # Imported here: paho, pytest (tests/broker.py) and the proxy are not needed by the other
    # areas, which `python -m bench` imports too.
    from bench.sync_daemon import daemon_phase
    from bench.sync_drain import catchup_phase, drain_phase, shaped_phase
    from bench.sync_fleet import fleet_phase
    from bench.sync_hub import needs_index_workaround
    from bench.sync_kit import Lab, SyncSizes

    sizes = SyncSizes.quick() if quick else SyncSizes.full()
    figures = Figures()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-sync-", dir=base))
    progress(f"sync ({'quick' if quick else 'full size'}) in {work}")
    whole = Noise()
    lab: Lab | None = None
    try:
        lab = Lab.make(work)
        workaround = needs_index_workaround(work / "probe-hub.db")
        if workaround:
            progress(
                "hub.db has no index on events(redemption_id): the bench adds it to each hub "
                "database (see bench/sync.py), and measures one drain without it"
            )
        figures.add("hub_index_workaround", int(workaround), "bool", 0)
        figures.add("drain_events", sizes.drain, "count", 0)
        progress(f"drain: {sizes.drain} events x{sizes.drain_repeats}, link -> broker -> hub")
        drain_phase(lab, sizes, figures, workaround)
        progress(
            f"daemon: scan to gate idle ({sizes.idle_scans} scans) and during "
            f"{sizes.daemon_repeats} drains of {sizes.daemon_drain} events"
        )
        daemon_phase(lab, sizes, figures, workaround, quick)
        progress(
            f"fleet: {sizes.fleet_boxes} boxes x {sizes.fleet_events} events over "
            f"{sizes.fleet_workers} processes"
        )
        fleet_phase(lab, sizes, figures, workaround)
        progress(
            f"catch-up: {sizes.catchup} events written during a {sizes.partition_s:.0f} s "
            f"partition, x{sizes.catchup_repeats} (blackhole, then reset)"
        )
        catchup_phase(lab, sizes, figures, workaround)
        progress(f"shaped: {sizes.shaped} events through the proxy at 100 ms RTT, 2 Mbit/s")
        shaped_phase(lab, sizes, figures, workaround)
    finally:
        if lab is not None:
            lab.close()
        drop_work(work, keep)
    return add_noise(figures, whole)
