"""What the cloud link needs from the box (LinkStore), and its implementation over ledger.db.

The link (sync/link.py) calls every LinkStore method from its own thread. LedgerLinkStore opens
its OWN connection to ledger.db on that thread (SQLite connections belong to the thread that
made them; WAL lets it read and write beside the daemon's connection) and keeps every write a
short transaction so the lanes' redeem path is never held up for long.

The inbox (ledger migration 5) holds downlink messages: a message is stored before the broker
gets its PUBACK, so a crash re-delivers it instead of losing it; the id is the primary key, so a
redelivery is recognised and handled once. The daemon marks rows handled (`inbox_done`) and
after a restart handles what is left (`inbox_unhandled`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from edge.errors import StoreError
from edge.ledger import ACKED_KEY, acked_through, ledger_wal, outbox_depth
from edge.ledger_schema import LEDGER_SCHEMA
from edge.store import open_db, transaction
from sync.protocol import Batch, Down, Event, batches, parse_json

log = logging.getLogger(__name__)

FETCH_ROWS = 2000


class LinkStore(Protocol):
    """The box's side of the link's state. Every call comes from the link's own thread."""

    @property
    def box(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def epoch(self) -> str: ...

    def pending(self, after_seq: int, limit: int) -> list[Event]:
        """Outbox events with seq > after_seq, oldest first, at most `limit`."""
        ...

    def acked(self, epoch: str, through: int) -> bool:
        """The hub holds every event of `epoch` up to `through`: record it (they have left the
        outbox). False when `epoch` is not this ledger's."""
        ...

    def acked_stored(self) -> int:
        """What `acked` recorded for this ledger's epoch (0: nothing)."""
        ...

    def depth(self) -> int:
        """Rows still in the outbox."""
        ...

    def clock(self, offset_s: float) -> None:
        """Record cloud time minus box time (what `clock_suspect` uses)."""
        ...

    def accept(self, down: Down, raw: bytes) -> bool:
        """Persist a verified downlink message; False when its id was already stored (a
        redelivery). Raising means "not stored": the link then does not acknowledge it."""
        ...

    def close(self) -> None: ...


class LedgerLinkStore:
    """LinkStore over the ledger's outbox, inbox and meta table. Opened lazily on first use, on
    the thread that uses it (the link's)."""

    def __init__(
        self,
        ledger_path: Path,
        *,
        box: str,
        site: str,
        clock: Callable[[], float] = time.time,
        record_offset_every_s: float = 60.0,
    ) -> None:
        self.path = ledger_path
        self._box = box
        self._site = site
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._epoch: str | None = None
        self._every = record_offset_every_s
        self._last_offset: tuple[float, float] | None = None  # (offset, recorded at)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            # create=False: the daemon's Ledger made (and checked) the file; this connection
            # only migrates it if this release added a table since (the inbox).
            self._conn = open_db(self.path, LEDGER_SCHEMA, create=False, check=False)
            # SQLite's default (1000 pages) would make this connection checkpoint the WAL
            # inline after its commits, writing and syncing the database file beside the
            # lanes' commits; the daemon's maintenance checkpoints it, as the Ledger's owner.
            ledger_wal(self._conn)
        return self._conn

    @property
    def box(self) -> str:
        return self._box

    @property
    def site(self) -> str:
        return self._site

    @property
    def epoch(self) -> str:
        if self._epoch is None:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if row is None:
                raise StoreError(
                    self.path, "the ledger has no epoch", "open it once with edge.ledger.Ledger"
                )
            self._epoch = str(row[0])
        return self._epoch

    def pending(self, after_seq: int, limit: int) -> list[Event]:
        rows = self._db().execute(
            "SELECT seq, event_id, type, redemption_id, body, created_at FROM outbox "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_event(*row) for row in rows]

    def acked(self, epoch: str, through: int) -> bool:
        """One meta row, without a sync to disk (a power cut may lose it: those events go up
        again and the hub drops them by id)."""
        if epoch != self.epoch:
            return False
        conn = self._db()
        with transaction(conn, synced=False):  # the inbox's writes stay synced
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (ACKED_KEY, f"{epoch} {through}")
            )
        return True

    def acked_stored(self) -> int:
        return acked_through(self._db())

    def depth(self) -> int:
        return outbox_depth(self._db())

    def clock(self, offset_s: float) -> None:
        # Every ack carries hub time; writing (and fsyncing) each one would cost the redeem
        # path a write lock per batch, so record only a change or a periodic refresh.
        now = self._clock()
        last = self._last_offset
        if last is not None and abs(last[0] - offset_s) < 0.5 and now - last[1] < self._every:
            return
        conn = self._db()
        with transaction(conn):
            # The same keys RedemptionService.record_clock_offset writes.
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock_offset_s', ?)", (repr(offset_s),)
            )
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('clock_offset_at', ?)", (repr(now),))
        self._last_offset = (offset_s, now)

    def accept(self, down: Down, raw: bytes) -> bool:
        conn = self._db()
        with transaction(conn):
            cur = conn.execute(
                "INSERT OR IGNORE INTO inbox (id, type, payload, received_at) VALUES (?, ?, ?, ?)",
                (down.id, down.type, raw, self._clock()),
            )
        return cur.rowcount == 1

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class OutboxReader:
    """Reads the outbox ahead a page at a time and cuts batches of consecutive seqs (at most
    128 KB each), so the publisher does not re-read rows it already holds. Link's thread."""

    def __init__(self, store: LinkStore, page: int = FETCH_ROWS) -> None:
        self.store = store
        self.page = page
        self.next = 0  # highest seq handed out in a batch
        self._buffer: list[Event] = []
        self._more = True

    def wake(self) -> None:
        """New rows may have been written."""
        self._more = True

    def skip_through(self, seq: int) -> None:
        """The hub holds everything up to `seq` (sent by an earlier run, say): go on after it."""
        if self.next < seq:
            self.next = seq
            self._buffer = [e for e in self._buffer if e.seq > seq]

    def next_batch(self) -> Batch | None:
        if self._more and len(self._buffer) < self.page // 2:
            after = self._buffer[-1].seq if self._buffer else self.next
            want = self.page - len(self._buffer)
            rows = self.store.pending(after, want)
            self._buffer.extend(rows)
            self._more = len(rows) == want  # a full page: there may be more behind it
        if not self._buffer:
            return None
        # A batch holds consecutive seqs only: stop at a gap (the next batch starts after it).
        buf, run = self._buffer, 1
        while run < len(buf) and buf[run].seq == buf[run - 1].seq + 1:
            run += 1
        st = self.store
        batch = next(batches(st.box, st.site, st.epoch, buf[:run]))
        del buf[: len(batch.events)]
        self.next = batch.events[-1].seq
        return batch


def _event(
    seq: int, event_id: bytes, etype: str, rid: bytes | None, body: str, created_at: float
) -> Event:
    try:
        doc: Any = parse_json(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
            raise ValueError("not an event document")
        data, at = doc["body"], float(doc.get("at", created_at))
    except (ValueError, TypeError) as err:
        # A row that cannot be read must not stop the stream behind it: it goes up as what
        # it is, and the hub records it.
        log.error("outbox row %d is unreadable (%s); sending it as such", seq, err)
        data, at = {"unreadable": body[:2000]}, float(created_at)
    return Event(
        seq=int(seq),
        id=bytes(event_id).hex(),
        type=str(etype),
        at=at,
        body=data,
        redemption_id=None if rid is None else bytes(rid).hex(),
    )


class InboxRow(NamedTuple):
    id: str
    type: str
    payload: bytes
    received_at: float


def inbox_unhandled(conn: sqlite3.Connection, limit: int = 100) -> list[InboxRow]:
    """Downlink messages stored but not yet handled, oldest first (for the daemon, at start)."""
    rows = conn.execute(
        "SELECT id, type, payload, received_at FROM inbox WHERE handled_at IS NULL "
        "ORDER BY received_at LIMIT ?",
        (limit,),
    )
    return [InboxRow(str(i), str(t), bytes(p), float(r)) for i, t, p, r in rows]


def inbox_done(conn: sqlite3.Connection, msg_id: str, result: str, at: float) -> None:
    """Mark a downlink message handled (inside the caller's transaction, with its effect)."""
    conn.execute(
        "UPDATE inbox SET handled_at = ?, result = ? WHERE id = ?", (at, result[:2000], msg_id)
    )
