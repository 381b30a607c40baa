"""The redemption ledger and its outbox, in one SQLite file (WAL, synchronous=FULL).

A redemption row and the outbox event that reports it are written in one transaction, committed
(and so fsync'd) before any actuator is told to move. Rows are keyed on canonical ids and are never
deleted by upload; `prune` removes only what has expired past retention and has been acknowledged.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.ledger_schema import LEDGER_SCHEMA
from edge.rules import Direction, Prior
from edge.store import open_db

EVENT_VERSION = 1

LIVE = ("pending", "confirmed")


def _occupancy_share(
    direction: str, state: str, persons: int, passed: int | None, counted: int | None
) -> tuple[int, int, int]:
    """(entered, exited, pending) persons that a redemption in `state` adds to its zone."""
    if state == "pending" and direction == "entry":
        return (0, 0, persons)
    if state == "confirmed":
        n = persons if passed is None else passed
        return (n, 0, 0) if direction == "entry" else (0, n if counted is None else counted, 0)
    return (0, 0, 0)


# Checkpoints belong off the redeem path (`Ledger.checkpoint`, run by a maintenance task); this
# automatic one is only a cap on the WAL for a process that never runs maintenance.
WAL_CAP_PAGES = 16384
# The most WAL file kept after the WAL restarts (journal_size_limit). SQLite otherwise keeps the
# file at its high-water size for good: after a week offline, hundreds of MB once the acked rows
# are swept. Twice the size at which the daemon checkpoints (edge/outbox_sweep.py
# WAL_CHECKPOINT_BYTES), so the file a busy box writes its WAL in stays allocated: a commit that
# extends the file syncs 2-3x slower than one that overwrites (0.27 against 0.09 ms, p50 here).
WAL_KEEP_BYTES = 16 << 20


def ledger_wal(conn: sqlite3.Connection) -> None:
    """The WAL settings of every connection that writes ledger.db (the Ledger's, the cloud
    link's): none checkpoints inline before WAL_CAP_PAGES (the daemon's WalKeeper does it, off
    the lanes' thread), and whichever restarts the WAL cuts its file back to WAL_KEEP_BYTES."""
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CAP_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")


# meta: "EPOCH SEQ": the cloud holds this ledger's events through SEQ. Rows up to it have left
# the outbox (acked); the daemon deletes them later, on its database thread (edge/outbox_sweep.py).
ACKED_KEY = "outbox_acked"


def acked_through(conn: sqlite3.Connection) -> int:
    """The seq the cloud acked through, for this ledger's epoch (0: none, or another epoch's)."""
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('epoch', ?)", (ACKED_KEY,)))
    epoch, _, seq = str(rows.get(ACKED_KEY, "")).partition(" ")
    if not seq or epoch != rows.get("epoch"):
        return 0
    try:
        return int(seq)
    except ValueError:
        return 0


# Two subqueries: SQLite reads min() or max() off the primary key only when it is the query's
# one aggregate; "SELECT min(seq), max(seq) FROM outbox" scans the table (23 ms at 200k rows,
# on the database thread, every few seconds, while a backlog drains).
OUTBOX_SPAN_SQL = "SELECT (SELECT min(seq) FROM outbox), (SELECT max(seq) FROM outbox)"


def unacked_span(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(first, last) seq of the events the cloud has not acked, or None when there are none.
    Acked rows leave as a prefix and a rolled-back insert gives its seq back, so the span is
    the count: no scan of a large backlog on the thread the lanes' redemptions wait for."""
    lo, hi = conn.execute(OUTBOX_SPAN_SQL).fetchone()
    if hi is None:
        return None
    first = max(int(lo), acked_through(conn) + 1)
    return None if first > int(hi) else (first, int(hi))


def outbox_depth(conn: sqlite3.Connection) -> int:
    """Events waiting for the cloud's ack (rows acked but not yet deleted do not count)."""
    span = unacked_span(conn)
    return 0 if span is None else span[1] - span[0] + 1


@dataclass(frozen=True)
class Redemption:
    id: bytes
    canonical_id: str
    list_id: str
    direction: str
    kind: str
    product: str
    zone: str | None
    persons: int
    passed: int | None
    state: str
    forced: bool
    note: str
    lane: str
    created_at: float
    updated_at: float
    business_day: str
    valid_until: int
    cache_seq: int
    clock_suspect: bool
    counted: int | None = None  # confirmed exits: persons actually taken out of the zone

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["id"] = self.id.hex()
        return d


class Ledger:
    """Owner of ledger.db. All writes happen inside `edge.store.transaction(ledger.conn)`."""

    def __init__(self, path: Path, *, full_check: bool = False) -> None:
        self.path = path
        self.conn: sqlite3.Connection = open_db(
            path, LEDGER_SCHEMA, create=True, full_check=full_check
        )
        ledger_wal(self.conn)
        if self.meta("epoch") is None:
            self.conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (secrets.token_hex(8),)
            )

    def close(self) -> None:
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.conn.close()

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Copy the WAL into the database from a connection of its own, so a maintenance
        thread can run it while lanes redeem. PASSIVE never waits for writers; TRUNCATE
        (when idle) also resets the WAL. Returns SQLite's (busy, wal pages, checkpointed)."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode}")
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            conn.close()
        return int(busy), int(log), int(done)

    # -- meta -----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- reads ----------------------------------------------------------------------------------

    def priors(self, canonical_id: str, list_id: str) -> list[tuple[bytes, Prior]]:
        rows = self.conn.execute(
            "SELECT id, direction, created_at FROM redemptions "
            "WHERE canonical_id = ? AND list_id = ? AND state IN ('pending', 'confirmed')",
            (canonical_id, list_id),
        )
        return [(bytes(r[0]), Prior(Direction(r[1]), r[2])) for r in rows]

    def redemption_ids(self, canonical_id: str, list_id: str) -> set[bytes]:
        """Every local redemption id of a code on a list, whatever its state."""
        rows = self.conn.execute(
            "SELECT id FROM redemptions WHERE canonical_id = ? AND list_id = ?",
            (canonical_id, list_id),
        )
        return {bytes(r[0]) for r in rows}

    def rotating_seen(self, canonical_id: str, shown_at: int) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM rotating_seen WHERE canonical_id = ? AND shown_at = ?",
            (canonical_id, shown_at),
        ).fetchone()
        return row is not None

    def zone_inside(self, zone: str, business_day: str) -> int:
        """Persons counted inside (confirmed entries less confirmed exits, never below 0)."""
        row = self.conn.execute(
            "SELECT max(0, entered - exited) FROM occupancy WHERE zone = ? AND business_day = ?",
            (zone, business_day),
        ).fetchone()
        return int(row[0]) if row else 0

    def zone_load(self, zone: str, business_day: str) -> int:
        row = self.conn.execute(
            "SELECT max(0, entered - exited) + pending FROM occupancy "
            "WHERE zone = ? AND business_day = ?",
            (zone, business_day),
        ).fetchone()
        return int(row[0]) if row else 0

    def get(self, redemption_id: bytes) -> Redemption | None:
        row = self.conn.execute(
            "SELECT * FROM redemptions WHERE id = ?", (redemption_id,)
        ).fetchone()
        if row is None:
            return None
        values = list(row)
        values[0] = bytes(values[0])
        values[10] = bool(values[10])
        values[18] = bool(values[18])
        return Redemption(*values)

    def pending(self) -> list[Redemption]:
        ids = self.conn.execute(
            "SELECT id FROM redemptions WHERE state = 'pending' ORDER BY created_at"
        ).fetchall()
        return [r for (rid,) in ids if (r := self.get(bytes(rid))) is not None]

    def recent(self, limit: int = 20) -> list[Redemption]:
        ids = self.conn.execute(
            "SELECT id FROM redemptions ORDER BY created_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [r for (rid,) in ids if (r := self.get(bytes(rid))) is not None]

    def outbox_depth(self) -> int:
        return outbox_depth(self.conn)

    def outbox(self, limit: int = 100) -> list[tuple[int, dict[str, Any]]]:
        rows = self.conn.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
        return [(int(seq), json.loads(body)) for seq, body in rows]

    def counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, n FROM redemption_counts WHERE n > 0")
        return {str(s): int(n) for s, n in rows}

    # -- writes (inside a transaction) ----------------------------------------------------------

    def insert(self, r: Redemption) -> None:
        self.conn.execute(
            "INSERT INTO redemptions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.id,
                r.canonical_id,
                r.list_id,
                r.direction,
                r.kind,
                r.product,
                r.zone,
                r.persons,
                r.passed,
                r.state,
                int(r.forced),
                r.note,
                r.lane,
                r.created_at,
                r.updated_at,
                r.business_day,
                r.valid_until,
                r.cache_seq,
                int(r.clock_suspect),
                r.counted,
            ),
        )

    def set_state(
        self,
        rid: bytes,
        state: str,
        passed: int | None,
        at: float,
        note: str,
        counted: int | None = None,
    ) -> None:
        self.conn.execute(
            "UPDATE redemptions SET state = ?, passed = ?, updated_at = ?, counted = ?, "
            "note = CASE WHEN ? = '' THEN note ELSE ? END WHERE id = ?",
            (state, passed, at, counted, note, note, rid),
        )

    def remember_rotating(self, canonical_id: str, shown_at: int, at: float, keep_s: float) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO rotating_seen VALUES (?, ?, ?)", (canonical_id, shown_at, at)
        )
        self.conn.execute("DELETE FROM rotating_seen WHERE seen_at < ?", (at - keep_s,))

    def move_occupancy(
        self, r: Redemption, new_state: str, new_passed: int | None, new_counted: int | None = None
    ) -> None:
        """Move a redemption's share of its zone's counts from its current state to `new_state`.

        Each state contributes exactly (entered, exited, pending) persons, so every transition
        (confirm, void, undo of an exit) is an exact inverse and the counts cannot drift. The
        load is max(0, entered - exited) + pending, per zone and business day: the counts start
        again at the site's rollover hour, when a site is closed.
        """
        if not r.zone:
            return
        old = _occupancy_share(r.direction, r.state, r.persons, r.passed, r.counted)
        new = _occupancy_share(r.direction, new_state, r.persons, new_passed, new_counted)
        d_in, d_out, d_pend = (n - o for n, o in zip(new, old, strict=True))
        if d_in == d_out == d_pend == 0:
            return
        self.conn.execute(
            "INSERT INTO occupancy (zone, business_day, entered, exited, pending) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (zone, business_day) DO UPDATE SET "
            "entered = entered + excluded.entered, exited = exited + excluded.exited, "
            "pending = pending + excluded.pending",
            (r.zone, r.business_day, d_in, d_out, d_pend),
        )

    def append_event(
        self, etype: str, body: dict[str, Any], at: float, redemption_id: bytes | None = None
    ) -> bytes:
        event_id = secrets.token_bytes(16)
        doc = {
            "v": EVENT_VERSION,
            "event_id": event_id.hex(),
            "type": etype,
            "at": at,
            "body": body,
        }
        self.conn.execute(
            "INSERT INTO outbox (event_id, type, redemption_id, body, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (event_id, etype, redemption_id, json.dumps(doc, ensure_ascii=False), at),
        )
        return event_id

    def prune(self, now: float, retention_days: int) -> int:
        """Drop redemptions whose ticket expired over `retention_days` ago and are fully acked."""
        cur = self.conn.execute(
            "DELETE FROM redemptions WHERE valid_until + ? < ? AND NOT EXISTS "
            "(SELECT 1 FROM outbox WHERE outbox.redemption_id = redemptions.id)",
            (retention_days * 86400, now),
        )
        return cur.rowcount
