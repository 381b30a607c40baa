"""The daemon deletes acked outbox rows on its database thread (edge/outbox_sweep.py): all of
them once the lanes are quiet, in small bites beside busy lanes only past SWEEP_LAG_ROWS, and
never a row the hub has not acked. Real ledger, real database thread."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest

from edge import ledger as ledger_module
from edge import outbox_sweep
from edge.ledger import ACKED_KEY, Ledger
from edge.outbox_sweep import OutboxSweeper, WalKeeper
from edge.runner import Runner
from edge.store import transaction


def append(ledger: Ledger, n: int) -> int:
    """n events as the lanes write them; the last seq."""
    with transaction(ledger.conn):
        for i in range(n):
            ledger.append_event("passage", {"i": i}, time.time())
    return int(ledger.conn.execute("SELECT max(seq) FROM outbox").fetchone()[0])


def ack_through(path: Path, seq: int) -> None:
    """What the link process does: the hub's ack mark, from its own connection."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (ACKED_KEY, f"{epoch} {seq}"))
    finally:
        conn.close()


def seqs(ledger: Ledger) -> tuple[int, int, int]:
    """(rows, lowest seq, highest seq) in the outbox."""
    n, lo, hi = ledger.conn.execute("SELECT count(*), min(seq), max(seq) FROM outbox").fetchone()
    return int(n), int(lo or 0), int(hi or 0)


W = TypeVar("W", OutboxSweeper, WalKeeper)


@asynccontextmanager
async def running(worker: W) -> AsyncIterator[W]:
    """The worker's run(stop) as a task for the block; stopped and awaited after it."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await task


def sweeping(ledger: Ledger, db: Runner) -> AbstractAsyncContextManager[OutboxSweeper]:
    return running(OutboxSweeper(db, lambda: ledger))


async def until(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
def db() -> Iterator[Runner]:
    runner = Runner("db")
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def ledger(tmp_path: Path, db: Runner) -> Iterator[Ledger]:
    """Opened, used and closed on the database thread, as in the daemon."""
    led = db.run_sync(Ledger, tmp_path / "ledger.db")
    try:
        yield led
    finally:
        db.run_sync(led.close)


def test_quiet_lanes_get_every_acked_row_deleted_and_no_other(
    ledger: Ledger, db: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_sweep, "QUIET_S", 0.3)
    monkeypatch.setattr(outbox_sweep, "IDLE_LOOK_S", 0.05)

    async def main() -> None:
        acked = await db.call(append, ledger, 1000)
        last = await db.call(append, ledger, 30)  # not acked yet
        ack_through(ledger.path, acked)
        async with sweeping(ledger, db) as sweeper:
            await until(lambda: sweeper.swept == 1000, 10, "the acked rows deleted")
            await asyncio.sleep(0.2)
            left = await db.call(seqs, ledger)
            assert left == (30, acked + 1, last), "a row not acked was deleted"
            ack_through(ledger.path, last)
            await until(lambda: sweeper.swept == 1030, 10, "the rest, once acked")
        assert await db.call(seqs, ledger) == (0, 0, 0)
        assert await db.call(ledger.outbox_depth) == 0

    asyncio.run(main())


def test_busy_lanes_keep_their_rows_until_the_lag_and_then_lose_them_in_small_bites(
    ledger: Ledger, db: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate busy all day is never quiet: below SWEEP_LAG_ROWS acked rows stay; past it they
    go BUSY_CHUNK rows a job (about a millisecond of the lanes' thread) while writes go on."""
    monkeypatch.setattr(outbox_sweep, "QUIET_S", 3600.0)
    monkeypatch.setattr(outbox_sweep, "SWEEP_LAG_ROWS", 400)
    monkeypatch.setattr(outbox_sweep, "BUSY_EVERY_S", 0.01)
    monkeypatch.setattr(outbox_sweep, "IDLE_LOOK_S", 0.05)
    chunks: list[int] = []
    real = outbox_sweep.sweep_chunk

    def noted(conn: sqlite3.Connection, rows: int) -> int:
        chunks.append(rows)
        return real(conn, rows)

    monkeypatch.setattr(outbox_sweep, "sweep_chunk", noted)

    async def lanes(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await db.call(append, ledger, 1)
            await asyncio.sleep(0.02)

    async def main() -> None:
        ack_through(ledger.path, await db.call(append, ledger, 300))
        stop = asyncio.Event()
        writer = asyncio.create_task(lanes(stop))
        try:
            async with sweeping(ledger, db) as sweeper:
                await asyncio.sleep(0.5)
                assert sweeper.swept == 0 and not chunks, "deleted beside busy lanes under the lag"
                ack_through(ledger.path, await db.call(append, ledger, 300))  # 600 wait now
                await until(lambda: sweeper.swept >= 200, 10, "the lag swept while busy")
        finally:
            stop.set()
            await writer
        assert set(chunks) == {outbox_sweep.BUSY_CHUNK}, chunks
        rows, lo, _ = await db.call(seqs, ledger)
        assert rows > 0 and lo == sweeper.swept + 1  # oldest first, nothing skipped

    asyncio.run(main())


WAL_MARK = 256 << 10  # the keeper's checkpoint mark in these tests


def keeping(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> AbstractAsyncContextManager[WalKeeper]:
    """A WalKeeper at work on `ledger`, looking every 50 ms, its mark at WAL_MARK."""
    monkeypatch.setattr(outbox_sweep, "WAL_CHECK_S", 0.05)
    monkeypatch.setattr(outbox_sweep, "WAL_CHECKPOINT_BYTES", WAL_MARK)
    return running(WalKeeper(lambda: ledger))


def wal_size(ledger: Ledger) -> int:
    return ledger.path.with_name(ledger.path.name + "-wal").stat().st_size


def test_the_wal_is_checkpointed_off_the_lanes_thread_once_it_grows(
    ledger: Ledger, db: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past WAL_CHECKPOINT_BYTES the keeper copies the WAL into the database from its own
    connection, so the lanes' commits never reach SQLite's inline cap."""

    async def main() -> None:
        async with keeping(ledger, monkeypatch) as keeper:
            await db.call(append, ledger, 10)
            await asyncio.sleep(0.3)
            assert keeper.runs == 0 and wal_size(ledger) < WAL_MARK  # small: left alone
            while wal_size(ledger) < WAL_MARK:
                await db.call(append, ledger, 500)
            await until(lambda: keeper.runs >= 1, 10, "a checkpoint of the grown WAL")
        busy, frames, copied = ledger.checkpoint("PASSIVE")
        assert busy == 0 and frames == copied, (busy, frames, copied)

    asyncio.run(main())


def test_a_wal_grown_by_a_big_write_goes_back_to_its_kept_size_and_is_reused(
    tmp_path: Path, db: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a big write (a sweep of the acked rows of a long outage) SQLite would keep the WAL
    file at its high-water size for good. journal_size_limit cuts it to WAL_KEEP_BYTES when the
    WAL restarts after the keeper's checkpoint; the writes after that overwrite the file
    instead of growing it."""
    monkeypatch.setattr(ledger_module, "WAL_KEEP_BYTES", 2 * WAL_MARK)
    ledger = db.run_sync(Ledger, tmp_path / "ledger.db")

    async def main() -> None:
        async with keeping(ledger, monkeypatch) as keeper:
            while wal_size(ledger) < 8 * WAL_MARK:
                await db.call(append, ledger, 2000)
            runs = keeper.runs
            # two: the first may have begun before the last write
            await until(lambda: keeper.runs >= runs + 2, 10, "a checkpoint of the whole WAL")
            await db.call(append, ledger, 1)  # the next write restarts the WAL
            kept = wal_size(ledger)
            assert kept <= 2 * WAL_MARK
            for _ in range(10):  # the lanes' small writes, with the keeper at work
                await db.call(append, ledger, 1)
                await asyncio.sleep(0.05)
            assert wal_size(ledger) == kept

    try:
        asyncio.run(main())
    finally:
        db.run_sync(ledger.close)
