"""Child process for tests/test_durability.py: import a chain of bundles until killed.

    python tests/import_loop.py BOX_DIR CHAIN_DIR MAX_SECONDS [--checkpoint CODES_JSONL SEED]

CHAIN_DIR holds bundles named <seq>.bin (six digits). Under the box's write lock the child imports,
in order, the bundle after the active sequence, through RedemptionService.import_bundle (so a
snapshot streams into a new file and is swapped in by rename; a delta is one transaction).

With --checkpoint, after each import (and, once the chain is done, in a loop) it redeems a few
codes and then runs `PRAGMA wal_checkpoint(TRUNCATE)` on the active cache file (with the service's
own reader still open, so the delta's pages are in the WAL) and on the ledger.

Each stdout line is flushed after what it reports has returned:

    READY <active seq, 0 if none> <unclean 0|1>
    BEGIN <seq>  /  IMPORTED <seq> <import ms>
    COMMITTED <redemption id> <canonical id>
    CKPT-BEGIN <seq> <cache WAL bytes> <ledger WAL bytes>  (what the checkpoints have to copy)
    CKPT <seq> <cache checkpoint ms> <ledger checkpoint ms>
    DONE <seq>       the chain is imported (without --checkpoint) or MAX_SECONDS passed
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from pathlib import Path

from edge.config import load
from edge.service import RedemptionService
from edge.store import WriteLock


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wal_size(db: Path) -> int:
    try:
        return (db.parent / (db.name + "-wal")).stat().st_size
    except FileNotFoundError:
        return 0


def active_seq(svc: RedemptionService) -> int:
    if not svc.view.refresh():
        return 0
    assert svc.view.state is not None
    return svc.view.state.seq


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("box", type=Path)
    ap.add_argument("chain", type=Path)
    ap.add_argument("max_seconds", type=float)
    ap.add_argument("--checkpoint", nargs=2, metavar=("CODES", "SEED"))
    args = ap.parse_args()
    codes: list[dict[str, str]] = []
    rng = random.Random(0)
    if args.checkpoint:
        codes = [json.loads(x) for x in Path(args.checkpoint[0]).read_text().splitlines() if x]
        rng = random.Random(int(args.checkpoint[1]))
    cfg = load(args.box / "edge.toml", args.box)
    with WriteLock(cfg.state_dir) as lock:
        svc = RedemptionService(cfg, full_check=lock.unclean)
        seq = active_seq(svc)
        emit(f"READY {seq} {int(lock.unclean)}")
        deadline = time.monotonic() + args.max_seconds
        while time.monotonic() < deadline:
            nxt = args.chain / f"{seq + 1:06d}.bin"
            if nxt.exists():
                emit(f"BEGIN {seq + 1}")
                started = time.perf_counter()
                seq = svc.import_bundle(nxt).seq
                emit(f"IMPORTED {seq} {(time.perf_counter() - started) * 1e3:.1f}")
            elif not args.checkpoint:
                break
            if args.checkpoint:
                for _ in range(3):
                    d = svc.redeem(rng.choice(codes)["code"], "counter")
                    if d.admit:
                        emit(f"COMMITTED {d.redemption_id} {d.canonical_id}")
                assert active_seq(svc) == seq  # the service's reader stays open on the cache
                path = svc.cache.active_path()
                assert path is not None
                cache_wal = wal_size(path)
                ledger_wal = wal_size(svc.ledger.path)
                emit(f"CKPT-BEGIN {seq} {cache_wal} {ledger_wal}")
                started = time.perf_counter()
                conn = sqlite3.connect(f"file:{path}", uri=True, isolation_level=None, timeout=10)
                try:
                    cache_ck = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                finally:
                    conn.close()
                middle = time.perf_counter()
                ledger_ck = svc.ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                done = time.perf_counter()
                assert cache_ck[0] == 0 and ledger_ck[0] == 0, (cache_ck, ledger_ck)  # not busy
                emit(f"CKPT {seq} {(middle - started) * 1e3:.1f} {(done - middle) * 1e3:.1f}")
        svc.close()
    emit(f"DONE {seq}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
