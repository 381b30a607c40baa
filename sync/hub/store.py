"""The reference hub's database (hub.db). Its tables are sync/hub/schema.py and its box registry
(boxes.json) sync/hub/registry.py; their names are importable from here too.

One connection, owned by the hub's worker thread (sync/hub/serve.py); `edge hub send` and
`edge hub status` open their own (WAL lets them run beside a serving hub). Every write happens
inside `edge.store.transaction`, so a batch's events, its stream's high-water mark, any conflict
it reveals and the conflict messages for the boxes are committed together or not at all.

Events are keyed on (box, epoch, seq) and deduplicated on their id: a batch published twice, or
resent after a lost ack, stores nothing the second time. The ack is the highest seq up to which
the hub holds every event of the stream, counted from the lowest seq it has seen for that epoch
(a box whose acked rows were pruned before this hub first saw it starts above 1).

Conflict rule (docs/sync.md "Conflicts"): two entry redemptions of the same canonical id on the
same list, on two different boxes of one site, neither voided nor forced, where the ticket is
single-use (the event body carries no `entries`, or `entries` == 1). Multi-entry tickets are not
checked here: the boxes count their entries against the site's "used" delta. A conflict is a fact
row with a flag; both redemptions stay in history. A later void of either side marks it resolved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.store import open_db
from sync.hub.registry import (
    REGISTRY,
    RELOAD_PENDING,
    clear_reload_pending,
    load_registry,
    load_revoked,
    mark_reload_pending,
    mark_revoked,
    register_box,
    registry_mtime,
    registry_stamp,
    reload_pending,
)
from sync.hub.schema import HUB_DB, HUB_SCHEMA
from sync.protocol import Batch

log = logging.getLogger(__name__)

CACHE_KIB = 32 * 1024
MAX_PASSED = 255  # a USED entry's count is one byte
_encode_body = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # made once


def passed_count(value: Any) -> int:
    """A confirmation's `passed` as the row keeps it: 0 when it is no usable count."""
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    return max(0, min(value, MAX_PASSED))


@dataclass(frozen=True)
class Conflict:
    id: str
    site: str
    canonical_id: str
    list_id: str
    sides: tuple[dict[str, Any], dict[str, Any]]  # box, event_id, redemption_id, at

    def body(self) -> dict[str, Any]:
        return {
            "conflict_id": self.id,
            "site": self.site,
            "canonical_id": self.canonical_id,
            "list_id": self.list_id,
            "redemptions": list(self.sides),
            "rule": "single-use ticket redeemed on two boxes",
        }


@dataclass
class BatchResult:
    new: int = 0
    duplicates: int = 0
    acked_through: int = 0
    conflicts: list[Conflict] = field(default_factory=list)


class HubStore:
    """hub.db. Not thread-safe: one owner thread per instance."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        self.path = path
        self.conn: sqlite3.Connection = open_db(path, HUB_SCHEMA, create=create)
        # The events' id index and the redemptions take random keys: a group of batches dirties
        # pages all over them, which the default 2 MB cache would read back from the file.
        self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def close(self) -> None:
        self.conn.close()

    # -- events (call inside a transaction) ------------------------------------------------------

    def store_batch(self, batch: Batch, site: str, now: float) -> BatchResult:
        res = BatchResult()
        c = self.conn
        redemptions: list[str] = []
        box, epoch = batch.box, batch.epoch
        rows = [
            (box, epoch, e.seq, e.id, e.type, e.at, _encode_body(e.body), e.redemption_id, now)
            for e in batch.events
        ]
        insert = "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
        # All new (a first delivery): one statement for the batch. A resend (some already
        # stored) is undone and stored event by event, to tell the new ones from the others.
        c.execute("SAVEPOINT batch_rows")
        fresh = c.executemany(insert, rows).rowcount == len(rows)
        if not fresh:
            c.execute("ROLLBACK TO batch_rows")
        c.execute("RELEASE batch_rows")
        for e, row in zip(batch.events, rows, strict=True):
            if not fresh and c.execute(insert, row).rowcount == 0:
                res.duplicates += 1
                self._check_duplicate(batch, e.seq, e.id)
                continue
            res.new += 1
            rid = self._track_redemption(
                batch.box, site, e.type, e.id, e.at, e.body, e.redemption_id
            )
            if rid:
                redemptions.append(rid)
        res.acked_through = self._advance(batch, now)
        c.execute(
            "INSERT INTO boxes (box, site, last_seen) VALUES (?, ?, ?) ON CONFLICT (box) DO "
            "UPDATE SET site = excluded.site, last_seen = excluded.last_seen",
            (batch.box, site, now),
        )
        # After the whole batch, so a pending redemption voided in the same batch is no conflict.
        res.conflicts = self._detect(redemptions, now)
        return res

    def _check_duplicate(self, batch: Batch, seq: int, eid: str) -> None:
        row = self.conn.execute(
            "SELECT id FROM events WHERE box = ? AND epoch = ? AND seq = ?",
            (batch.box, batch.epoch, seq),
        ).fetchone()
        if row is not None and row[0] != eid:
            # The first one stays; a box reusing a seq is a bug on the box worth a loud line.
            log.warning(
                "box %s epoch %s seq %d sent again with another id (%s, kept %s)",
                batch.box,
                batch.epoch,
                seq,
                eid,
                row[0],
            )

    def _advance(self, batch: Batch, now: float) -> int:
        """The stream's new contiguous high-water mark."""
        c = self.conn
        low = batch.events[0].seq
        row = c.execute(
            "SELECT first_seq, acked_through FROM streams WHERE box = ? AND epoch = ?",
            (batch.box, batch.epoch),
        ).fetchone()
        if row is None:
            if low > 1:
                log.warning(
                    "box %s epoch %s: first batch seen starts at seq %d (earlier events acked "
                    "by another hub database, or pruned)",
                    batch.box,
                    batch.epoch,
                    low,
                )
            first, acked = low, low - 1
        else:
            first, acked = int(row[0]), int(row[1])
            if low < first:
                first = low
                acked = min(acked, low - 1)
        for (seq,) in c.execute(
            "SELECT seq FROM events WHERE box = ? AND epoch = ? AND seq > ? ORDER BY seq",
            (batch.box, batch.epoch, acked),
        ):
            if seq != acked + 1:
                break
            acked = seq
        c.execute(
            "INSERT INTO streams VALUES (?, ?, ?, ?, ?) ON CONFLICT (box, epoch) DO UPDATE SET "
            "first_seq = excluded.first_seq, acked_through = excluded.acked_through, "
            "last_at = excluded.last_at",
            (batch.box, batch.epoch, first, acked, now),
        )
        return acked

    def _track_redemption(
        self,
        box: str,
        site: str,
        etype: str,
        eid: str,
        at: float,
        body: dict[str, Any],
        event_rid: str | None = None,
    ) -> str | None:
        """Keep what conflict detection and the used delta need; return the id of a new
        redemption to check."""
        c = self.conn
        if etype == "redemption" and isinstance(body.get("id"), str):
            entries = body.get("entries", 1)
            # A redemption confirmed already says how many passed; a pending one keeps what a
            # confirmation stored before it said (a resend may bring them in either order).
            passed = body.get("passed") if body.get("state") == "confirmed" else None
            c.execute(
                "INSERT INTO redemptions (id, box, site, canonical_id, list_id, direction, "
                "single_use, forced, event_id, at, passed) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET box = excluded.box, site = excluded.site, "
                "canonical_id = excluded.canonical_id, list_id = excluded.list_id, "
                "direction = excluded.direction, single_use = excluded.single_use, "
                "forced = excluded.forced, event_id = excluded.event_id, at = excluded.at, "
                "passed = coalesce(excluded.passed, passed)",
                (
                    body["id"],
                    box,
                    site,
                    _text(body.get("canonical_id")),
                    _text(body.get("list_id", body.get("list"))),
                    _text(body.get("direction", "entry")),
                    int(entries == 1),
                    int(bool(body.get("forced"))),
                    eid,
                    at,
                    None if passed is None else passed_count(passed),
                ),
            )
            voided = body.get("state") == "voided"
            if voided:
                self._void(body["id"], box, at)
            return None if voided else str(body["id"])
        if etype == "redemption_voided" and isinstance(body.get("redemption_id"), str):
            # A void may overtake its redemption on a resend: remember it either way.
            c.execute(
                "INSERT INTO redemptions (id, box, voided) VALUES (?, ?, 1) "
                "ON CONFLICT (id) DO UPDATE SET voided = 1",
                (body["redemption_id"], box),
            )
            self._void(body["redemption_id"], box, at)
        if etype == "redemption_confirmed":
            rid = event_rid if event_rid is not None else body.get("redemption_id")
            if isinstance(rid, str):
                self._confirm(rid, box, site, body)
        return None

    def _confirm(self, rid: str, box: str, site: str, body: dict[str, Any]) -> None:
        """Store how many passed on the redemption's row (made here when the confirmation
        overtook its redemption on a resend: the redemption fills in the rest)."""
        if "passed" in body:
            passed = passed_count(body["passed"])
        else:  # an older box: everyone the redemption was for
            row = self.conn.execute(
                "SELECT e.body FROM redemptions r JOIN events e ON e.id = r.event_id "
                "WHERE r.id = ?",
                (rid,),
            ).fetchone()
            passed = passed_count(json.loads(row[0]).get("persons", 1) if row else 1)
        self.conn.execute(
            "INSERT INTO redemptions (id, box, site, passed) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET passed = excluded.passed",
            (rid, box, site, passed),
        )

    def _void(self, rid: str, box: str, at: float) -> None:
        self.conn.execute("UPDATE redemptions SET voided = 1 WHERE id = ?", (rid,))
        self.conn.execute(
            "UPDATE conflicts SET resolved_at = ?, note = ? WHERE resolved_at IS NULL "
            "AND (redemption_a = ? OR redemption_b = ?)",
            (at, f"redemption {rid} voided on {box}", rid, rid),
        )

    def _detect(self, rids: list[str], now: float) -> list[Conflict]:
        """Conflicts of the batch's new redemptions `rids` (one query for the whole batch)."""
        if not rids:
            return []
        c = self.conn
        rows = c.execute(
            "WITH mine (ord, id) AS (SELECT key, value FROM json_each(?)) "
            "SELECT me.id, me.box, me.site, me.canonical_id, me.list_id, me.event_id, me.at, "
            "o.id, o.box, o.event_id, o.at FROM mine JOIN redemptions me ON me.id = mine.id "
            "JOIN redemptions o ON o.site = me.site AND o.canonical_id = me.canonical_id "
            "AND o.list_id IS me.list_id AND o.box != me.box AND o.voided = 0 "
            "AND o.forced = 0 AND o.single_use = 1 AND o.direction = 'entry' "
            "WHERE me.voided = 0 AND me.forced = 0 AND me.single_use = 1 "
            "AND me.direction = 'entry' AND me.canonical_id IS NOT NULL "
            "ORDER BY mine.ord, o.at",
            (json.dumps(rids),),
        ).fetchall()
        out = []
        for rid, box, site, cid, lst, eid, at, orid, obox, oeid, oat in rows:
            mine = {"box": box, "event_id": eid, "redemption_id": rid, "at": at}
            theirs = {"box": obox, "event_id": oeid, "redemption_id": orid, "at": oat}
            a, b = sorted((mine, theirs), key=lambda s: str(s["event_id"]))
            conflict_id = hashlib.sha256(f"{a['event_id']}|{b['event_id']}".encode()).hexdigest()
            cur = c.execute(
                "INSERT INTO conflicts (id, site, canonical_id, list_id, box_a, event_a, "
                "redemption_a, box_b, event_b, redemption_b, detected_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                (
                    conflict_id[:32],
                    site,
                    cid,
                    lst or "",
                    a["box"],
                    a["event_id"],
                    a["redemption_id"],
                    b["box"],
                    b["event_id"],
                    b["redemption_id"],
                    now,
                ),
            )
            if cur.rowcount:
                out.append(Conflict(conflict_id[:32], site, cid, lst or "", (a, b)))
        return out

    # -- boxes and refusals --------------------------------------------------------------------

    def set_status(self, box: str, site: str, doc: dict[str, Any], now: float) -> None:
        online = int(doc.get("state") == "online")
        self.conn.execute(
            "INSERT INTO boxes (box, site, online, last_seen, status) VALUES (?,?,?,?,?) "
            "ON CONFLICT (box) DO UPDATE SET site = excluded.site, online = excluded.online, "
            "last_seen = excluded.last_seen, status = excluded.status",
            (box, site, online, now, json.dumps(doc, sort_keys=True)),
        )

    def refuse(self, box: str, reason: str, detail: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO refusals VALUES (?, ?, 1, ?, ?) ON CONFLICT (box, reason) DO UPDATE SET "
            "count = count + 1, last_at = excluded.last_at, last_detail = excluded.last_detail",
            (box, reason, now, detail[:200]),
        )

    # -- downlink ------------------------------------------------------------------------------

    def retire(self, box: str, now: float) -> int:
        """A revoked box: its queued downlink messages expire now (never sent) and it is offline.
        Returns how many messages were dropped."""
        cur = self.conn.execute(
            "UPDATE outgoing SET expires_at = ?, last_reason = 'revoked' "
            "WHERE box = ? AND accepted_at IS NULL AND expires_at > ?",
            (now, box, now),
        )
        self.conn.execute("UPDATE boxes SET online = 0 WHERE box = ?", (box,))
        return cur.rowcount

    def queue_down(
        self, msg_id: str, box: str, msg_type: str, payload: bytes, now: float, ttl_s: float
    ) -> bool:
        """Store a signed message for a box; False when that id is already queued."""
        cur = self.conn.execute(
            "INSERT INTO outgoing (id, box, type, payload, created_at, expires_at) "
            "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (msg_id, box, msg_type, payload, now, now + ttl_s),
        )
        return cur.rowcount > 0

    def pending_down(self, now: float, limit: int = 200) -> list[tuple[str, str, bytes]]:
        """(id, box, payload) of messages the broker has not accepted yet, oldest first."""
        rows = self.conn.execute(
            "SELECT id, box, payload FROM outgoing WHERE accepted_at IS NULL AND expires_at > ? "
            "ORDER BY created_at LIMIT ?",
            (now, limit),
        )
        return [(str(i), str(b), bytes(p)) for i, b, p in rows]

    def mark_down(self, msg_id: str, now: float, reason: str, accepted: bool) -> None:
        self.conn.execute(
            "UPDATE outgoing SET attempts = attempts + 1, last_reason = ?, "
            "accepted_at = CASE WHEN ? THEN ? ELSE accepted_at END WHERE id = ?",
            (reason, int(accepted), now, msg_id),
        )

    # -- reading -------------------------------------------------------------------------------

    def events(self, box: str) -> list[tuple[str, int, str, str]]:
        """(epoch, seq, id, type) of a box's stored events, in stream order."""
        rows = self.conn.execute(
            "SELECT epoch, seq, id, type FROM events WHERE box = ? ORDER BY epoch, seq", (box,)
        )
        return [(str(e), int(s), str(i), str(t)) for e, s, i, t in rows]

    def acked_through(self, box: str, epoch: str) -> int | None:
        row = self.conn.execute(
            "SELECT acked_through FROM streams WHERE box = ? AND epoch = ?", (box, epoch)
        ).fetchone()
        return None if row is None else int(row[0])

    def conflicts(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM conflicts ORDER BY detected_at, id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What `edge hub status` prints."""
        c = self.conn
        boxes: dict[str, dict[str, Any]] = {}
        for box, site, online, seen in c.execute(
            "SELECT box, site, online, last_seen FROM boxes ORDER BY box"
        ):
            boxes[box] = {"site": site, "online": bool(online), "last_seen": seen}
        for box, n in c.execute("SELECT box, count(*) FROM events GROUP BY box"):
            boxes.setdefault(box, {})["events"] = int(n)
        for box, epoch, acked, at in c.execute(
            "SELECT box, epoch, acked_through, last_at FROM streams ORDER BY last_at"
        ):
            boxes.setdefault(box, {})["last_ack"] = {
                "epoch": epoch,
                "acked_through": acked,
                "at": at,
            }
        # Expired messages are never sent (a revoked box's queue expires at once): not pending.
        pending = c.execute(
            "SELECT box, count(*) FROM outgoing WHERE accepted_at IS NULL AND expires_at > ? "
            "GROUP BY box",
            (time.time() if now is None else now,),
        )
        for box, n in pending:
            boxes.setdefault(box, {})["downlink_pending"] = int(n)
        refusals = [
            {"box": b, "reason": r, "count": n, "last_detail": d}
            for b, r, n, d in c.execute(
                "SELECT box, reason, count, last_detail FROM refusals ORDER BY box, reason"
            )
        ]
        return {"boxes": boxes, "conflicts": self.conflicts(), "refusals": refusals}


__all__ = [
    "HUB_DB",
    "HUB_SCHEMA",
    "REGISTRY",
    "RELOAD_PENDING",
    "BatchResult",
    "Conflict",
    "HubStore",
    "clear_reload_pending",
    "load_registry",
    "load_revoked",
    "mark_reload_pending",
    "mark_revoked",
    "register_box",
    "registry_mtime",
    "registry_stamp",
    "reload_pending",
]


def _text(value: Any) -> str | None:
    """A field the hub indexes, as text: a box's odd value (a number, an object) is kept as
    its JSON, never a bind error that would refuse the batch at every resend."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))[:200]
