"""The database owner: corrupt and newer files are refused clearly, never recreated."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.errors import SchemaTooNew, StoreBusy, StoreCorrupt
from edge.ledger import Ledger
from edge.ledger_schema import LEDGER_SCHEMA
from edge.store import Schema, WriteLock, open_db, transaction
from tests.conftest import Box


def test_garbage_file_is_reported_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreCorrupt) as info:
        Ledger(path)
    assert str(path) in str(info.value) and "backup" in str(info.value)
    assert path.read_bytes().startswith(b"this is not sqlite")


def test_damaged_pages_fail_the_check(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = Ledger(path)
    ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    data = bytearray(path.read_bytes())
    for page in range(4096, len(data), 4096):  # break the header of every page after the first
        data[page : page + 8] = b"\xee" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        Ledger(path, full_check=True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={LEDGER_SCHEMA.version + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew) as info:
        Ledger(path)
    assert "newer" in str(info.value)


def test_migrations_apply_in_order_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    v1 = Schema("x", ["CREATE TABLE a (x INTEGER);"])
    conn = open_db(path, v1, create=True)
    conn.execute("INSERT INTO a VALUES (1)")
    conn.close()
    broken = Schema("x", [*v1.migrations, "CREATE TABLE b (y);", "CREATE TABLE a (dup);"])
    with pytest.raises(sqlite3.OperationalError):
        open_db(path, broken, create=False)
    conn = open_db(path, v1, create=False)  # still version 1: the failed run left nothing
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'b'").fetchone() is None
    conn.close()
    v3 = Schema("x", [*v1.migrations, "CREATE TABLE b (y);", "ALTER TABLE a ADD COLUMN z;"])
    conn = open_db(path, v3, create=False)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT x FROM a").fetchall() == [(1,)]
    conn.close()


def test_write_lock_is_exclusive_and_detects_unclean_stop(tmp_path: Path) -> None:
    with WriteLock(tmp_path) as lock:
        assert not lock.unclean
        with pytest.raises(StoreBusy):
            WriteLock(tmp_path).acquire()
    (tmp_path / "edge.running").write_text("1234\n")  # a writer that was killed
    with WriteLock(tmp_path) as lock:
        assert lock.unclean


def test_ledger_prune_keeps_unacknowledged_rows(box: Box) -> None:
    svc = box.service()
    svc.import_bundle(box.snapshot())
    code, t = box.ticket()
    svc.redeem(code, "counter")
    later = t.valid_until + 31 * 86400
    assert svc.ledger.prune(later, 30) == 0  # its events are still in the outbox
    svc.ledger.conn.execute("DELETE FROM outbox")  # the cloud acknowledged everything
    assert svc.ledger.prune(t.valid_until + 29 * 86400, 30) == 0  # retention not over
    assert svc.ledger.prune(later, 30) == 1


def test_a_version_1_ledger_is_migrated_to_version_2(tmp_path: Path) -> None:
    """Numbered migrations on a fixture database made by the first schema version."""
    path = tmp_path / "ledger.db"
    v1 = Schema("ledger", LEDGER_SCHEMA.migrations[:1])
    conn = open_db(path, v1, create=True)
    conn.execute(
        "INSERT INTO redemptions (id, canonical_id, list_id, direction, kind, product, persons,"
        " state, lane, created_at, updated_at, business_day, valid_until, cache_seq,"
        " clock_suspect) VALUES (x'00', 'ab', 'default', 'exit', 'signed', 'adult', 1,"
        " 'confirmed', 'gate', 0, 0, '2026-05-01', 9, 1, 0)"
    )
    conn.close()
    ledger = Ledger(path)
    assert ledger.conn.execute("PRAGMA user_version").fetchone()[0] == LEDGER_SCHEMA.version
    r = ledger.get(b"\x00")
    assert r is not None and r.counted is None and r.direction == "exit"
    ledger.close()


def test_an_unsynced_transaction_commits_and_puts_the_setting_back(tmp_path: Path) -> None:
    """`transaction(conn, synced=False)` commits at synchronous=NORMAL and leaves the
    connection as it was (FULL for the ledger), after a commit and after a rollback."""
    conn = open_db(tmp_path / "t.db", Schema("t", ["CREATE TABLE t (x INTEGER);"]), create=True)
    seen: list[int] = []
    try:
        with transaction(conn, synced=False):
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            conn.execute("INSERT INTO t VALUES (1)")
        assert seen == [1] and conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        with pytest.raises(RuntimeError), transaction(conn, synced=False):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("undone")
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        conn.close()
