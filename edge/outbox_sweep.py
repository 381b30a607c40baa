"""Acked outbox rows leave the ledger here, on the database thread the lanes redeem on.

The cloud link (sync/, its own process) records the hub's ack mark in the ledger (meta
`outbox_acked`); the rows through it are done with but still in the outbox. Deleting them is a
write on the file the lanes commit redemptions to. From another process it would take the write
lock beside them, and a lane that finds it taken sleeps in SQLite's busy handler (1, 2, 5, 10,
... 50 ms), longest when the holder is a background process the scheduler put aside: during a
drain that cost a gate up to 100 ms. On the lanes' own thread a delete is one more short job in
their queue: a scan waits for one chunk at most, never for a lock.

- Quiet lanes (no new outbox row for QUIET_S): chunks of QUIET_CHUNK rows, back to back.
- Busy lanes: nothing, unless SWEEP_LAG_ROWS acked rows wait (a gate busy all day is never
  quiet): then BUSY_CHUNK rows (about a millisecond) every BUSY_EVERY_S.
The deletes are not synced to disk: a power cut may bring some back; they are below the ack
mark, are not sent again, and are deleted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable

from edge.ledger import OUTBOX_SPAN_SQL, Ledger, acked_through
from edge.runner import Runner
from edge.store import transaction

log = logging.getLogger(__name__)

QUIET_S = 2.0
SWEEP_LAG_ROWS = 200_000
QUIET_CHUNK = 200  # rows per job when the lanes are quiet (a few ms)
BUSY_CHUNK = 50  # ... when they are not (about a millisecond)
BUSY_EVERY_S = 0.05  # about 1,000 rows/s beside busy lanes: ahead of any gate's events
IDLE_LOOK_S = 1.0  # how often to look when nothing waits


def look(conn: sqlite3.Connection) -> tuple[int | None, int]:
    """(newest seq, acked rows still in the outbox): three primary-key lookups."""
    lo, hi = conn.execute(OUTBOX_SPAN_SQL).fetchone()
    if lo is None:
        return None, 0
    return int(hi), max(0, acked_through(conn) - int(lo) + 1)


def sweep_chunk(conn: sqlite3.Connection, rows: int) -> int:
    """Delete up to `rows` of the acked rows, oldest first, in one unsynced transaction."""
    with transaction(conn, synced=False):
        lo = conn.execute("SELECT min(seq) FROM outbox").fetchone()[0]
        through = acked_through(conn)
        if lo is None or lo > through:
            return 0
        top = min(through, int(lo) + rows - 1)
        return int(conn.execute("DELETE FROM outbox WHERE seq <= ?", (top,)).rowcount)


class OutboxSweeper:
    """The daemon's loop that deletes acked rows (module doc). `ledger()` is the open ledger."""

    def __init__(self, db: Runner, ledger: Callable[[], Ledger]) -> None:
        self.db, self.ledger = db, ledger
        self.swept = 0
        self._newest: int | None = None
        self._active_at = time.monotonic()  # not quiet until QUIET_S has passed

    async def step(self) -> float:
        """One look, and one chunk if one is due; seconds until the next step."""
        conn = self.ledger().conn
        newest, waiting = await self.db.call(look, conn)
        now = time.monotonic()
        if newest != self._newest:
            self._newest, self._active_at = newest, now
        if waiting == 0:
            return IDLE_LOOK_S
        if now - self._active_at >= QUIET_S:
            self.swept += await self.db.call(sweep_chunk, conn, QUIET_CHUNK)
            return 0.0
        if waiting >= SWEEP_LAG_ROWS:
            self.swept += await self.db.call(sweep_chunk, conn, BUSY_CHUNK)
            return BUSY_EVERY_S
        return min(IDLE_LOOK_S, max(0.0, self._active_at + QUIET_S - now))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                pause = await self.step()
            except sqlite3.OperationalError as err:  # a full disk: later; the rows can wait
                log.warning("outbox sweep failed, trying again in 10 s: %s", err)
                pause = 10.0
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            else:
                await asyncio.sleep(0)  # let a scan that came meanwhile go first


WAL_CHECK_S = 1.0
WAL_CHECKPOINT_BYTES = 8 << 20  # half edge.ledger.WAL_KEEP_BYTES, the most a restarted WAL keeps


class WalKeeper:
    """Checkpoints the ledger's WAL from a connection of its own, off the lanes' thread, once it
    passes WAL_CHECKPOINT_BYTES. Otherwise the lanes' connection would, at SQLite's cap
    (edge.ledger.WAL_CAP_PAGES), inside a redemption's commit: 20-40 ms seen during a drain.
    PASSIVE: it never waits for the lanes, and what it could not copy is done next time.

    It goes by the WAL file's size, and SQLite reuses the file from its start after a complete
    checkpoint without shrinking it (edge.ledger.WAL_KEEP_BYTES only cuts it back to 16 MB):
    once the file has passed the mark, the keeper checkpoints every WAL_CHECK_S, copying what
    was written in that second (nothing written: nothing copied, nothing synced). Kept so, and
    not shrunk below the mark, because a commit that extends the file syncs slower than one
    that overwrites it."""

    def __init__(self, ledger: Callable[[], Ledger]) -> None:
        self.ledger = ledger
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WAL_CHECK_S)
            if stop.is_set():
                return
            ledger = self.ledger()
            wal = ledger.path.with_name(ledger.path.name + "-wal")
            try:
                if wal.stat().st_size < WAL_CHECKPOINT_BYTES:
                    continue
                await asyncio.to_thread(ledger.checkpoint, "PASSIVE")
                self.runs += 1
            except (OSError, sqlite3.Error) as err:  # no WAL yet, or a busy moment: next time
                log.debug("WAL checkpoint skipped: %s", err)
