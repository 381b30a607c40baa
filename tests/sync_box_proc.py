"""A box's sync side in a process of its own, for tests/test_sync_kill.py (SIGKILL during sync).

    python -m tests.sync_box_proc CONFIG.json      (from the project root)

It opens the ledger (synchronous=FULL: each commit is fsync'd), starts the real Link and appends
outbox events in small transactions, as the lanes would, until it is killed. The journal file
tells the test what happened, one line per os.write on an O_APPEND file (a SIGKILL cannot tear a
line, nor lose one written before it):

    P <pid>                      the process started
    L                            the link connected for the first time
    B <first> <last> <id,...>    a transaction with these seqs and event ids, BEFORE its commit
    C <last>                     ... and after it

A "B" without its "C" may or may not have committed: the ledger's sqlite_sequence says. With
"drain": true it writes `count` events, waits for the hub's acks to empty the outbox, stops the
link cleanly and exits 0 (3 when the outbox did not drain in time).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from edge.ledger import Ledger
from edge.store import transaction
from edge.trust import TrustAnchor
from sync.link import LedgerLinkStore, Link

log = logging.getLogger("tests.sync_box_proc")

MAX_LIFE_S = 120.0  # a box the test forgot to kill ends on its own
DRAIN_TIMEOUT_S = 60.0


class Journal:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def say(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def run(cfg: dict[str, Any]) -> int:
    rng = random.Random(cfg.get("seed"))
    journal = Journal(Path(cfg["journal"]))
    journal.say(f"P {os.getpid()}")
    ledger = Ledger(Path(cfg["ledger"]))
    link = Link(
        LedgerLinkStore(ledger.path, box=cfg["box"], site=cfg["site"]),
        host=cfg["host"],
        port=int(cfg["port"]),
        ca=Path(cfg["ca"]),
        cert=Path(cfg["cert"]),
        key=Path(cfg["key"]),
        anchor=TrustAnchor.load(Path(cfg["anchor"])),
        on_down=lambda _down: None,
        keepalive=int(cfg.get("keepalive", 5)),
        resend_after=float(cfg.get("resend_after", 2.0)),
        backoff_max=2.0,
    )
    link.start()
    drain, count = bool(cfg.get("drain")), int(cfg.get("count", 0))
    written, up, k = 0, False, 0
    t_end = time.monotonic() + MAX_LIFE_S
    try:
        while time.monotonic() < t_end and not (drain and written >= count):
            n = rng.randint(1, 20)
            if drain:
                n = min(n, count - written)
            with transaction(ledger.conn):
                ids = [
                    ledger.append_event("passage", {"lane": "g1", "n": k + i}, time.time()).hex()
                    for i in range(n)
                ]
                last = int(ledger.conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                journal.say(f"B {last - n + 1} {last} {','.join(ids)}")
                # The rest of the business write (the redemption row, the zone count): a
                # kill often lands inside a transaction.
                time.sleep(rng.uniform(0.0, 0.008))
            journal.say(f"C {last}")
            k += n
            written += n
            link.notify()
            if not up and link.status()["connected"]:
                up = True
                journal.say("L")
            time.sleep(rng.uniform(0.0, 0.005))
        if not drain:
            return 2
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while ledger.outbox_depth() > 0:
            if time.monotonic() > deadline:
                log.error("outbox not drained: %d rows left", ledger.outbox_depth())
                return 3
            time.sleep(0.05)
        return 0
    finally:
        link.stop()
        ledger.close()
        journal.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s"
    )
    cfg = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
