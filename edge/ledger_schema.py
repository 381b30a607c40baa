"""The ledger's tables (edge/ledger.py), as migrations: a migration is appended, never edited, and
each runs once, in order, in one transaction (edge.store.Schema)."""

from __future__ import annotations

from edge.store import Schema

LEDGER_SCHEMA = Schema(
    "ledger",
    [
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE redemptions (
            id BLOB PRIMARY KEY,
            canonical_id TEXT NOT NULL,
            list_id TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('entry', 'exit')),
            kind TEXT NOT NULL,
            product TEXT NOT NULL,
            zone TEXT,
            persons INTEGER NOT NULL,
            passed INTEGER,
            state TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'voided')),
            forced INTEGER NOT NULL DEFAULT 0,
            note TEXT NOT NULL DEFAULT '',
            lane TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            business_day TEXT NOT NULL,
            valid_until INTEGER NOT NULL,
            cache_seq INTEGER NOT NULL,
            clock_suspect INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX redemptions_by_code ON redemptions (canonical_id, list_id);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id BLOB NOT NULL UNIQUE,
            type TEXT NOT NULL,
            redemption_id BLOB,
            body TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX outbox_by_redemption ON outbox (redemption_id);
        CREATE TABLE rotating_seen (
            canonical_id TEXT NOT NULL, shown_at INTEGER NOT NULL, seen_at REAL NOT NULL,
            PRIMARY KEY (canonical_id, shown_at)
        ) WITHOUT ROWID;
        CREATE INDEX rotating_seen_by_time ON rotating_seen (seen_at);
        CREATE TABLE occupancy (
            zone TEXT NOT NULL, business_day TEXT NOT NULL,
            entered INTEGER NOT NULL DEFAULT 0, exited INTEGER NOT NULL DEFAULT 0,
            pending INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (zone, business_day)
        ) WITHOUT ROWID;
        """,
        # 2: a confirmed exit takes out of its zone only the persons the zone had inside
        # (`counted`), so surplus exits (tailgaters, fire-mode free passage) cannot bank
        # places for later entries, and a void gives back exactly what was taken.
        """
        ALTER TABLE redemptions ADD COLUMN counted INTEGER;
        """,
        # 3: locker pickups minted on this box (edge/pickups.py; codes kept as keyed hashes
        # only), the state of locker doors that must outlive a restart (faulty, left open with
        # a parcel inside, parcel expired), and the audit log of privileged actions.
        """
        CREATE TABLE pickups (
            id BLOB PRIMARY KEY,
            code_hash BLOB NOT NULL,
            code_fp TEXT NOT NULL,
            device TEXT NOT NULL,
            door INTEGER NOT NULL,
            order_no TEXT NOT NULL,
            size TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('active', 'picked', 'expired', 'cancelled')),
            actor TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            redemption_id BLOB UNIQUE,
            lane TEXT NOT NULL DEFAULT '',
            replaces BLOB,
            note TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        CREATE INDEX pickups_by_code ON pickups (code_hash);
        CREATE UNIQUE INDEX pickups_active_code ON pickups (code_hash) WHERE state = 'active';
        CREATE UNIQUE INDEX pickups_active_door ON pickups (device, door) WHERE state = 'active';
        CREATE INDEX pickups_by_state ON pickups (state, expires_at);
        CREATE TABLE locker_doors (
            device TEXT NOT NULL,
            door INTEGER NOT NULL,
            fault TEXT NOT NULL DEFAULT '',
            held TEXT NOT NULL DEFAULT '' CHECK (held IN ('', 'open', 'expired')),
            order_no TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (device, door)
        ) WITHOUT ROWID;
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '',
            detail TEXT NOT NULL DEFAULT ''
        );
        """,
        # 4: durable intents before a locker door is unlocked, so a crash between the unlock
        # and its record loses nothing: a pickup is 'opening' (its redemption id and outbox
        # event committed) until the door is seen closed; a deposit holds its door as
        # 'deposit' until the code is minted. SQLite cannot alter a CHECK, so both tables are
        # rebuilt (rows kept); an 'opening' pickup still owns its code and its door.
        """
        CREATE TABLE pickups_v4 (
            id BLOB PRIMARY KEY,
            code_hash BLOB NOT NULL,
            code_fp TEXT NOT NULL,
            device TEXT NOT NULL,
            door INTEGER NOT NULL,
            order_no TEXT NOT NULL,
            size TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('active', 'opening', 'picked', 'expired', 'cancelled')),
            actor TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            redemption_id BLOB UNIQUE,
            lane TEXT NOT NULL DEFAULT '',
            replaces BLOB,
            note TEXT NOT NULL DEFAULT ''
        ) WITHOUT ROWID;
        INSERT INTO pickups_v4 (id, code_hash, code_fp, device, door, order_no, size, state,
            actor, created_at, expires_at, updated_at, redemption_id, lane, replaces, note)
            SELECT id, code_hash, code_fp, device, door, order_no, size, state, actor,
            created_at, expires_at, updated_at, redemption_id, lane, replaces, note FROM pickups;
        DROP TABLE pickups;
        ALTER TABLE pickups_v4 RENAME TO pickups;
        CREATE INDEX pickups_by_code ON pickups (code_hash);
        CREATE UNIQUE INDEX pickups_active_code ON pickups (code_hash)
            WHERE state IN ('active', 'opening');
        CREATE UNIQUE INDEX pickups_active_door ON pickups (device, door)
            WHERE state IN ('active', 'opening');
        CREATE INDEX pickups_by_state ON pickups (state, expires_at);
        CREATE TABLE locker_doors_v4 (
            device TEXT NOT NULL,
            door INTEGER NOT NULL,
            fault TEXT NOT NULL DEFAULT '',
            held TEXT NOT NULL DEFAULT '' CHECK (held IN ('', 'open', 'expired', 'deposit')),
            order_no TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL,
            PRIMARY KEY (device, door)
        ) WITHOUT ROWID;
        INSERT INTO locker_doors_v4 (device, door, fault, held, order_no, updated_at)
            SELECT device, door, fault, held, order_no, updated_at FROM locker_doors;
        DROP TABLE locker_doors;
        ALTER TABLE locker_doors_v4 RENAME TO locker_doors;
        """,
        # 5: the inbox of downlink messages from the cloud (sync/link_store.py): stored before
        # the broker's PUBACK so a crash re-delivers instead of losing one; handled once by id.
        """
        CREATE TABLE inbox (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            payload BLOB NOT NULL,
            received_at REAL NOT NULL,
            handled_at REAL,
            result TEXT
        ) WITHOUT ROWID;
        CREATE INDEX inbox_unhandled ON inbox (received_at) WHERE handled_at IS NULL;
        """,
        # 6: counter shifts (edge/shifts.py): one open shift at a time, its denies by reason
        # (the deny itself is only an outbox event, gone once the cloud acks it), who redeemed
        # at the kiosk, and an index for a lane's recent redemptions and a shift's window.
        """
        CREATE TABLE shifts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            opened_at REAL NOT NULL,
            closed_at REAL,
            closed_by TEXT NOT NULL DEFAULT '',
            note TEXT NOT NULL DEFAULT '',
            summary TEXT
        );
        CREATE UNIQUE INDEX shifts_one_open ON shifts ((closed_at IS NULL)) WHERE closed_at IS NULL;
        CREATE TABLE shift_denies (
            shift_id INTEGER NOT NULL REFERENCES shifts (id),
            lane TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (shift_id, lane, reason)
        ) WITHOUT ROWID;
        CREATE TABLE counter_actors (
            redemption_id BLOB PRIMARY KEY,
            actor TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX redemptions_by_lane_time ON redemptions (lane, created_at);
        """,
        # 7: denies per site business day, lane and reason (edge/denies.py: the gate screen's
        # counts survive a restart, unlike the decision metrics); voids found by when they
        # happened (a shift counts the voids made in it); and a first shift opened after
        # counter redemptions reaches back to them (before, they belonged to no shift).
        """
        CREATE TABLE deny_counts (
            day TEXT NOT NULL,
            lane TEXT NOT NULL,
            reason TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (day, lane, reason)
        ) WITHOUT ROWID;
        CREATE INDEX redemptions_voided ON redemptions (lane, updated_at) WHERE state = 'voided';
        UPDATE shifts SET opened_at = min(opened_at, coalesce(
            (SELECT min(created_at) FROM redemptions), opened_at))
            WHERE closed_at IS NULL AND (SELECT count(*) FROM shifts) = 1;
        """,
        # 8: redemptions per state, kept by triggers in the writing transaction. The status
        # (the kiosk's status screen asks every 5 s) counted them with a GROUP BY over every
        # redemption ever made: 300 ms at a million rows, on the thread the lanes wait for.
        """
        CREATE TABLE redemption_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO redemption_counts SELECT state, count(*) FROM redemptions GROUP BY state;
        CREATE TRIGGER redemption_counts_insert AFTER INSERT ON redemptions BEGIN
            INSERT INTO redemption_counts VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER redemption_counts_state AFTER UPDATE OF state ON redemptions
            WHEN OLD.state IS NOT NEW.state BEGIN
            UPDATE redemption_counts SET n = n - 1 WHERE state = OLD.state;
            INSERT INTO redemption_counts VALUES (NEW.state, 1)
                ON CONFLICT (state) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER redemption_counts_delete AFTER DELETE ON redemptions BEGIN
            UPDATE redemption_counts SET n = n - 1 WHERE state = OLD.state;
        END;
        """,
    ],
)
