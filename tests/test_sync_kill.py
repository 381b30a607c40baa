"""SIGKILL of the box during sync: every committed event reaches the hub once, nothing else does.

The box is a separate process (tests/sync_box_proc.py: the real Link over a real, fsync'd
ledger.db) appending events in small transactions while it syncs to the real HubServer through
mosquitto. The test kills it with SIGKILL at random moments (most land inside a transaction or
with batches in flight and acks on their way), starts it again, and at the end lets it drain.
What counts as committed is the ledger's own word: sqlite_sequence, and for each seq the last
transaction the journal announced for it (a killed, uncommitted transaction's seqs are reused by
the next run, with other ids: those ids must never reach the hub).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.ledger import Ledger
from sync.hub.issuer import Hub
from sync.hub.serve import HubServer
from tests.broker import Broker, Pki, make_hub, pki_fixture  # noqa: F401
from tests.test_sync_faults import (
    BOX,
    SITE,
    assert_exactly_once,
    hub_acked,
    hub_rows,
    outbox_depth,
    query,
    wait,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
KILLS = 8
DRAIN_EVENTS = 200


@dataclass
class Journal:
    """What tests/sync_box_proc.py wrote: the transactions it began and those it saw commit."""

    lives: int = 0
    began: list[tuple[int, int, list[str]]] = field(default_factory=list)
    confirmed: set[int] = field(default_factory=set)  # `last` seqs seen committed

    @classmethod
    def read(cls, path: Path) -> Journal:
        j = cls()
        for line in path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "P":
                j.lives += 1
            elif kind == "B":
                first, last, ids = rest.split(" ")
                j.began.append((int(first), int(last), ids.split(",")))
            elif kind == "C":
                j.confirmed.add(int(rest))
        return j

    def committed(self, high: int) -> tuple[list[str], set[str]]:
        """(ids of seqs 1..high, the ids of transactions that never committed). A seq's id is
        the one of the last transaction that wrote it: a killed transaction's seqs were reused."""
        by_seq: dict[int, str] = {}
        for first, last, ids in self.began:
            assert len(ids) == last - first + 1
            by_seq.update(zip(range(first, last + 1), ids, strict=True))
        assert sorted(s for s in by_seq if s <= high) == list(range(1, high + 1))
        kept = [by_seq[s] for s in range(1, high + 1)]
        every = {i for _, _, ids in self.began for i in ids}
        return kept, every - set(kept)


def outbox_high(ledger: Path) -> int:
    """The highest seq the ledger ever committed (AUTOINCREMENT's record)."""
    rows = query(ledger, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
    return int(rows[0][0]) if rows else 0


@dataclass
class BoxProcess:
    tmp: Path
    cfg: dict[str, object]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, life: int, **extra: object) -> subprocess.Popen[bytes]:
        path = self.tmp / f"box-{life}.json"
        path.write_text(json.dumps(self.cfg | {"seed": life} | extra))
        with (self.tmp / "box.stderr").open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.sync_box_proc", str(path)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.procs.append(proc)
        return proc

    def journal_text(self) -> str:
        path = Path(str(self.cfg["journal"]))
        return path.read_text() if path.exists() else ""

    def connected(self, pid: int) -> bool:
        """The process `pid` has said its link is up."""
        after = self.journal_text().partition(f"P {pid}\n")[2]
        return "\nL\n" in "\n" + after

    def up_or_gone(self, proc: subprocess.Popen[bytes]) -> bool:
        return self.connected(proc.pid) or proc.poll() is not None

    def diagnostics(self) -> str:
        err = self.tmp / "box.stderr"
        text = err.read_text(errors="replace") if err.exists() else ""
        tail = "\n".join(line[:160] for line in self.journal_text().splitlines()[-5:])
        return f"box stderr (tail):\n{text[-4000:]}\njournal (tail):\n{tail}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def hub_and_box(tmp_path: Path, pki: Pki) -> Iterator[tuple[HubServer, BoxProcess, str]]:
    issuer = Hub.init(tmp_path / "issuer", keys=1)
    ledger = Ledger(tmp_path / "ledger.db")
    epoch = ledger.meta("epoch") or ""
    ledger.close()
    broker = Broker(pki, tmp_path / "broker").start()
    cert = pki.box(BOX)
    box = BoxProcess(
        tmp_path,
        {
            "ledger": str(tmp_path / "ledger.db"),
            "journal": str(tmp_path / "journal"),
            "box": BOX,
            "site": SITE,
            "host": broker.host,
            "port": broker.port,
            "ca": str(pki.ca_file),
            "cert": str(cert.cert),
            "key": str(cert.key),
            "anchor": str(issuer.dir / "trust-anchor.json"),
            "keepalive": 5,
            "resend_after": 2.0,
        },
    )
    server = make_hub(issuer, broker, tmp_path / "hub.db", {BOX: SITE})
    try:
        server.start().wait_ready()
        yield server, box, epoch
    finally:
        box.close()
        server.close()
        broker.stop()


def test_sigkill_of_the_box_during_sync_loses_and_doubles_nothing(
    hub_and_box: tuple[HubServer, BoxProcess, str], tmp_path: Path
) -> None:
    server, box, epoch = hub_and_box
    ledger = tmp_path / "ledger.db"
    seed = int(os.environ.get("FAULT_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    at_kill: list[tuple[int, int | None]] = []  # (committed seq, hub's ack) when killed
    for life in range(KILLS):
        proc = box.spawn(life)
        try:
            wait(functools.partial(box.up_or_gone, proc), 30, f"box process {life} to connect")
            assert proc.poll() is None, f"box process {life} exited with {proc.returncode}"
        except AssertionError as err:
            raise AssertionError(f"{err}\n{box.diagnostics()}") from None
        time.sleep(rng.uniform(0.2, 1.5))  # syncing: transactions and batches in flight
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        at_kill.append((outbox_high(ledger), hub_acked(server.db_path, BOX, epoch)))
    # The last life drains and stops cleanly.
    proc = box.spawn(KILLS, drain=True, count=DRAIN_EVENTS)
    t0 = time.monotonic()
    code = proc.wait(90)
    assert code == 0, box.diagnostics()
    drained = time.monotonic() - t0

    journal = Journal.read(Path(str(box.cfg["journal"])))
    high = outbox_high(ledger)
    kept, lost = journal.committed(high)
    assert journal.lives == KILLS + 1
    assert all(c <= high for c in journal.confirmed)
    assert_exactly_once(server.db_path, BOX, epoch, kept)
    hub_ids = {i for _, _, i, _ in hub_rows(server.db_path, BOX)}
    assert not hub_ids & lost, "an uncommitted event reached the hub"
    assert outbox_depth(ledger) == 0
    cut = [ids for _, last, ids in journal.began if last not in journal.confirmed]
    rolled_back = sum(1 for ids in cut if set(ids) <= lost)
    log.info(
        "SIGKILL x%d (seed %d): %d events committed; %d kills inside a transaction (%d rolled "
        "back, %d ids never committed; %d committed before the journal's C); at each kill "
        "(committed, hub ack) %s; %d duplicates at the hub; the last life ran %.1f s",
        *(KILLS, seed, high, len(cut), rolled_back, len(lost), len(cut) - rolled_back, at_kill),
        *(server.stats().get("events_duplicate", 0), drained),
    )
