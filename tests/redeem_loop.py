"""Child process for tests/test_durability.py: redeem pre-minted codes in a loop until killed.

    python tests/redeem_loop.py BOX_DIR CODES_JSONL SEED MAX_SECONDS [--retry RID:INDEX:LANE]

Takes the box's write lock (a full integrity check follows an unclean stop, as the daemon does),
then scans codes at random (a hot subset often, so codes are scanned many times) on the `counter`
lane (confirmed at once) and the `gate` lane (pending; then sometimes confirmed or voided).
Each line on stdout is written and flushed only after the call it reports has returned:

    READY <unclean 0|1>
    INTENT <redemption id> <code index> <lane>      before redeem (the id a retry reuses)
    COMMITTED <redemption id> <canonical id> [RECORDED]   after an admitting redeem returned
                                                     (RECORDED: a retry found it in the ledger)
    DENY <redemption id> <reason>
    CONFIRMED <redemption id> | VOIDED <redemption id>
    STOPPED                                          MAX_SECONDS passed; lock released

--retry replays the scan a killed run announced (INTENT) but did not report, with the same
redemption id, as a lane does after a crash: the ledger must not record it twice.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import time
from pathlib import Path

from edge.config import load
from edge.service import RedemptionService
from edge.store import WriteLock


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("box", type=Path)
    ap.add_argument("codes", type=Path)
    ap.add_argument("seed", type=int)
    ap.add_argument("max_seconds", type=float)
    ap.add_argument("--retry", default="")
    args = ap.parse_args()
    codes = [json.loads(line) for line in args.codes.read_text().splitlines() if line.strip()]
    hot = min(len(codes), 150)
    rng = random.Random(args.seed)
    cfg = load(args.box / "edge.toml", args.box)
    todo: list[tuple[bytes, int, str]] = []
    if args.retry:
        rid, idx, lane = args.retry.split(":")
        todo.append((bytes.fromhex(rid), int(idx), lane))
    with WriteLock(cfg.state_dir) as lock:
        svc = RedemptionService(cfg, full_check=lock.unclean)
        emit(f"READY {int(lock.unclean)}")
        deadline = time.monotonic() + args.max_seconds
        while time.monotonic() < deadline:
            if todo:
                rid, idx, lane = todo.pop()
            else:
                rid = secrets.token_bytes(16)
                idx = rng.randrange(hot) if rng.random() < 0.5 else rng.randrange(len(codes))
                lane = rng.choice(("counter", "gate"))
            emit(f"INTENT {rid.hex()} {idx} {lane}")
            d = svc.redeem(codes[idx]["code"], lane, redemption_id=rid)
            if not d.admit:
                emit(f"DENY {rid.hex()} {d.reason}")
                continue
            assert d.redemption_id == rid.hex(), d
            retried = " RECORDED" if d.detail.startswith("already recorded") else ""
            emit(f"COMMITTED {d.redemption_id} {d.canonical_id}{retried}")
            if lane == "gate":
                roll = rng.random()
                if roll < 0.3:
                    svc.void(rid, "nobody passed")
                    emit(f"VOIDED {rid.hex()}")
                elif roll < 0.7:
                    svc.confirm(rid)
                    emit(f"CONFIRMED {rid.hex()}")
        svc.close()
    emit("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
