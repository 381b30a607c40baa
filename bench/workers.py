"""Work that runs beside the benchmark process: a snapshot import in a fresh interpreter (so its
peak RSS is its own), and the delta importer loop (run as a process or as a thread).

    python -m bench.workers snapshot CONFIG BUNDLE      -> one JSON line on stdout
    python -m bench.workers importer NICE CONFIG STOPFILE BUNDLE...  -> a JSON line per import
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.cache import CacheStore
from edge.config import load
from edge.trust import TrustAnchor


def mono_ns() -> int:
    """System-wide monotonic clock, comparable between processes on one machine."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def snapshot_main(config: Path, bundle: Path) -> None:
    """Import a snapshot through the box's service; report time and RSS growth as JSON."""
    from edge.service import RedemptionService  # imported before the baseline is taken

    svc = RedemptionService(load(config, config.parent))
    reset = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    hwm_before = _status_kb("VmHWM")
    t0 = time.perf_counter()
    result = svc.import_bundle(bundle)
    seconds = time.perf_counter() - t0
    hwm_after = _status_kb("VmHWM")
    svc.close()
    # Growth = peak during the import minus RSS just before it. Without a peak reset, the peak
    # before the import may hide growth below it, so the figure is only an upper bound of that.
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_kb": rss_before,
                "hwm_before_kb": hwm_before,
                "hwm_after_kb": hwm_after,
                "peak_reset": reset,
                "seq": result.seq,
                "counts": result.counts,
            }
        ),
        flush=True,
    )


@dataclass(frozen=True)
class ImportMark:
    index: int
    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def import_loop(
    config: Path,
    bundles: Sequence[Path],
    should_stop: Callable[[], bool],
    report: Callable[[ImportMark], None],
) -> int:
    """Import deltas back to back through a CacheStore, as the daemon's importer would."""
    cfg = load(config, config.parent)
    store = CacheStore(cfg.state_dir, TrustAnchor.load(cfg.trust_anchor), cfg.site)
    done = 0
    for i, bundle in enumerate(bundles):
        if should_stop():
            break
        start = mono_ns()
        store.import_file(bundle, time.time())
        report(ImportMark(i, start, mono_ns()))
        done += 1
    return done


def importer_main(nice: int, config: Path, stop_file: Path, bundles: Sequence[Path]) -> None:
    if nice:
        os.nice(nice)

    def report(mark: ImportMark) -> None:
        print(
            json.dumps({"index": mark.index, "start_ns": mark.start_ns, "end_ns": mark.end_ns}),
            flush=True,
        )

    import_loop(config, bundles, stop_file.exists, report)


def main(argv: Sequence[str]) -> None:
    if argv[0] == "snapshot":
        snapshot_main(Path(argv[1]), Path(argv[2]))
    elif argv[0] == "importer":
        importer_main(int(argv[1]), Path(argv[2]), Path(argv[3]), [Path(p) for p in argv[4:]])
    else:
        raise SystemExit(f"unknown worker {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
