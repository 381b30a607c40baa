"""The reference hub's tables (hub.db, sync/hub/store.py), as migrations: a migration is appended,
never edited, and each runs once, in order, in one transaction (edge.store.Schema)."""

from __future__ import annotations

from edge.store import Schema

HUB_DB = "hub.db"

HUB_SCHEMA = Schema(
    "hub",
    [
        """
        CREATE TABLE events (
            box TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
            id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, at REAL NOT NULL, body TEXT NOT NULL,
            redemption_id TEXT, received_at REAL NOT NULL,
            PRIMARY KEY (box, epoch, seq)
        ) WITHOUT ROWID;
        CREATE TABLE streams (
            box TEXT NOT NULL, epoch TEXT NOT NULL,
            first_seq INTEGER NOT NULL, acked_through INTEGER NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (box, epoch)
        ) WITHOUT ROWID;
        CREATE TABLE boxes (
            box TEXT PRIMARY KEY, site TEXT NOT NULL DEFAULT '',
            online INTEGER NOT NULL DEFAULT 0, last_seen REAL,
            status TEXT NOT NULL DEFAULT '{}'
        ) WITHOUT ROWID;
        CREATE TABLE redemptions (
            id TEXT PRIMARY KEY, box TEXT NOT NULL, site TEXT NOT NULL DEFAULT '',
            canonical_id TEXT, list_id TEXT, direction TEXT,
            single_use INTEGER NOT NULL DEFAULT 1, forced INTEGER NOT NULL DEFAULT 0,
            event_id TEXT, at REAL, voided INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;
        CREATE INDEX redemptions_by_code ON redemptions (site, canonical_id, list_id);
        CREATE TABLE conflicts (
            id TEXT PRIMARY KEY, site TEXT NOT NULL, canonical_id TEXT NOT NULL,
            list_id TEXT NOT NULL,
            box_a TEXT NOT NULL, event_a TEXT NOT NULL, redemption_a TEXT NOT NULL,
            box_b TEXT NOT NULL, event_b TEXT NOT NULL, redemption_b TEXT NOT NULL,
            detected_at REAL NOT NULL, resolved_at REAL, note TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        CREATE TABLE outgoing (
            id TEXT PRIMARY KEY, box TEXT NOT NULL, type TEXT NOT NULL, payload BLOB NOT NULL,
            created_at REAL NOT NULL, expires_at REAL NOT NULL,
            accepted_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
            last_reason TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        CREATE INDEX outgoing_pending ON outgoing (accepted_at, created_at);
        CREATE TABLE refusals (
            box TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
            last_at REAL NOT NULL, last_detail TEXT NOT NULL,
            PRIMARY KEY (box, reason)
        ) WITHOUT ROWID;
        """,
        # The used delta looks up each redemption's confirmation and reads the events stored
        # since its cursor: without these, a 100k-event drain made it quadratic (bench sync).
        """
        CREATE INDEX events_by_redemption ON events (redemption_id, type);
        CREATE INDEX events_by_received ON events (received_at);
        """,
        # How many passed, on the redemption's row (set as its confirmation is stored), so the
        # used delta reads one row per redemption instead of event bodies: NULL while pending,
        # else the persons who passed (0: none, or a count that is no number). Rows stored
        # before: from their events, as the delta read them (the confirmed redemption event's
        # `passed`, else the latest confirmation's, else the redemption's `persons`, else 1).
        """
        ALTER TABLE redemptions ADD COLUMN passed INTEGER;
        UPDATE redemptions SET passed = (
            SELECT CASE
                WHEN json_type(c.body, '$.passed') IS NULL THEN coalesce((
                    SELECT CASE json_type(o.body, '$.persons')
                        WHEN 'integer' THEN max(0, min(json_extract(o.body, '$.persons'), 255))
                        ELSE 0 END
                    FROM events o WHERE o.id = redemptions.event_id
                        AND json_type(o.body, '$.persons') IS NOT NULL), 1)
                WHEN json_type(c.body, '$.passed') = 'integer'
                    THEN max(0, min(json_extract(c.body, '$.passed'), 255))
                ELSE 0 END
            FROM events c WHERE c.type = 'redemption_confirmed' AND c.redemption_id = redemptions.id
            ORDER BY c.at DESC LIMIT 1);
        UPDATE redemptions SET passed = (
            SELECT CASE json_type(o.body, '$.passed')
                WHEN 'integer' THEN max(0, min(json_extract(o.body, '$.passed'), 255)) ELSE 0 END
            FROM events o WHERE o.id = redemptions.event_id)
        WHERE EXISTS (
            SELECT 1 FROM events o WHERE o.id = redemptions.event_id
                AND json_extract(o.body, '$.state') = 'confirmed'
                AND json_type(o.body, '$.passed') != 'null');
        """,
    ],
)
