"""Dry-run validation latency per code kind: idle, and while deltas import concurrently
(in a separate importer process, the daemon's design, and in a thread of the same process)."""

from __future__ import annotations

import bisect
import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.codesource import KINDS, CodeSource
from bench.stats import Figures, Noise, median, percentile, progress, wait_quiet
from bench.workers import ImportMark, import_loop, mono_ns
from edge.service import RedemptionService

LANE = "counter"
_RECOUNT = 600  # samples between re-counts of in-import samples
_MAX_SECONDS = 300.0


@dataclass
class Run:
    """Validate samples (kind, start, end in monotonic ns) and the imports that overlapped."""

    samples: list[tuple[str, int, int]] = field(default_factory=list)
    marks: list[ImportMark] = field(default_factory=list)
    denied: Counter[str] = field(default_factory=Counter)

    def during_import(self) -> list[tuple[str, int, int]]:
        """Samples whose interval overlaps an import (imports are disjoint, in order)."""
        ends = [m.end_ns for m in self.marks]
        out = []
        for s in self.samples:
            j = bisect.bisect_right(ends, s[1])
            if j < len(self.marks) and self.marks[j].start_ns < s[2]:
                out.append(s)
        return out

    def latencies_ms(self, kind: str, only_import: bool) -> list[float]:
        chosen = self.during_import() if only_import else self.samples
        return [(e - s) / 1e6 for k, s, e in chosen if k == kind]


def sample(svc: RedemptionService, source: CodeSource, run: Run, done: Callable[[], bool]) -> None:
    """Validate kinds round-robin until `done()` (checked every few hundred samples)."""
    deadline = time.monotonic() + _MAX_SECONDS
    while True:
        for _ in range(_RECOUNT // len(KINDS)):
            for kind in KINDS:
                text = source.next(kind)
                start = mono_ns()
                decision = svc.validate(text, LANE)
                end = mono_ns()
                run.samples.append((kind, start, end))
                if not decision.admit:
                    run.denied[f"{kind}:{decision.reason}"] += 1
        if done() or time.monotonic() > deadline:
            return


def _enough(run: Run, per_kind: int) -> bool:
    counts = Counter(k for k, _, _ in run.during_import())
    return all(counts[k] >= per_kind for k in KINDS)


def idle(svc: RedemptionService, source: CodeSource, per_kind: int) -> Run:
    run = Run()
    sample(svc, source, run, lambda: len(run.samples) >= per_kind * len(KINDS))
    return run


def with_process(
    svc: RedemptionService,
    source: CodeSource,
    config: Path,
    deltas: Sequence[Path],
    per_kind: int,
    stop_file: Path,
    nice: int = 0,
) -> Run:
    """Deltas import in a separate process (`bench.workers importer`) while we validate."""
    run = Run()
    stop_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.workers",
            "importer",
            str(nice),
            str(config),
            str(stop_file),
            *map(str, deltas),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    marks: queue.Queue[ImportMark] = queue.Queue()
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            marks.put(ImportMark(**json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def done() -> bool:
        while not marks.empty():
            run.marks.append(marks.get())
        return proc.poll() is not None or _enough(run, per_kind)

    try:
        sample(svc, source, run, done)
    finally:
        stop_file.touch()
        proc.wait()
        reader.join()
    if proc.returncode:
        progress(f"WARNING: importer process exited with status {proc.returncode}")
    while not marks.empty():
        run.marks.append(marks.get())
    return run


def with_thread(
    svc: RedemptionService, source: CodeSource, config: Path, deltas: Sequence[Path], per_kind: int
) -> Run:
    """Deltas import in a thread of this process (shares the GIL with the lane)."""
    run = Run()
    stop = threading.Event()
    finished = threading.Event()

    def work() -> None:
        try:
            import_loop(config, deltas, stop.is_set, run.marks.append)
        finally:
            finished.set()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        sample(svc, source, run, lambda: finished.is_set() or _enough(run, per_kind))
    finally:
        stop.set()
        worker.join()
    return run


@dataclass(frozen=True)
class Variant:
    suffix: str  # figure names: validate_<kind><suffix>_p99_ms
    what: str
    thread: bool = False
    nice: int = 0


VARIANTS = (
    Variant("", "importer process"),
    Variant("_nice", "importer process at nice 10", nice=10),
    Variant("_thread", "importer thread in the lane's process", thread=True),
)


def concurrent(
    figures: Figures,
    svc: RedemptionService,
    source: CodeSource,
    config: Path,
    deltas: Sequence[Path],
    per_kind: int,
    rounds: int,
    stop_file: Path,
    quiet_s: float,
) -> None:
    """Rounds of every variant in turn, so each sees the same background noise; figures are the
    pooled p50 and the median over rounds of each round's p99."""
    runs: dict[str, list[Run]] = {v.suffix: [] for v in VARIANTS}
    used = 0
    for r in range(rounds):
        for v in VARIANTS:
            left = deltas[used:]
            if not left:
                progress(f"WARNING: no deltas left for round {r + 1} {v.what}")
                continue
            wait_quiet(quiet_s)
            noise = Noise()
            if v.thread:
                run = with_thread(svc, source, config, left, per_kind)
            else:
                run = with_process(svc, source, config, left, per_kind, stop_file, v.nice)
            used += len(run.marks)
            runs[v.suffix].append(run)
            _round_summary(run, f"round {r + 1}/{rounds}, {v.what}", per_kind, noise)
    for v in VARIANTS:
        for kind in KINDS:
            per_round = [r.latencies_ms(kind, True) for r in runs[v.suffix]]
            pooled = [x for lat in per_round for x in lat]
            figures.add(f"validate_{kind}{v.suffix}_p50_ms", percentile(pooled, 50), "ms")
            figures.add(
                f"validate_{kind}{v.suffix}_p99_ms",
                median([percentile(lat, 99) for lat in per_round]),
                "ms",
            )


def _round_summary(run: Run, what: str, per_kind: int, noise: Noise) -> None:
    if run.denied:
        progress(f"WARNING {what}: denied decisions {dict(run.denied)}")
    counted = Counter(k for k, _, _ in run.during_import())
    if any(counted[k] < per_kind for k in KINDS):
        progress(f"WARNING {what}: fewer in-import samples than asked ({dict(counted)})")
    p99 = ", ".join(f"{k} {percentile(run.latencies_ms(k, True), 99):.3f}" for k in KINDS)
    progress(
        f"  {what}: {len(run.marks)} deltas (median "
        f"{median([m.seconds for m in run.marks]):.3f} s), {sum(counted.values())} of "
        f"{len(run.samples)} samples during imports; p99 ms {p99}; {noise.describe()}"
    )


def report_idle(figures: Figures, run: Run) -> None:
    if run.denied:
        progress(f"WARNING validate idle: denied decisions {dict(run.denied)}")
    for kind in KINDS:
        figures.latency(f"validate_{kind}_idle", run.latencies_ms(kind, False))
    total_s = sum(e - s for _, s, e in run.samples) / 1e9
    figures.add("validate_per_s", len(run.samples) / total_s, "1/s", 0)
