"""The audit log of privileged actions (Box.audit, Box.audited): a row of the ledger's `audit`
table and its `audit` outbox event, written inside the caller's transaction so that an action and
its entry commit together or not at all. Runs on the database thread.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from edge.ledger import Ledger

KEYS = ("id", "at", "actor", "action", "target", "detail")


def write_entry(ledger: Ledger, actor: str, action: str, target: str, detail: str) -> None:
    """The audit row and its outbox event, inside the caller's transaction."""
    now = time.time()
    ledger.conn.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        (now, actor, action, target, detail),
    )
    ledger.append_event(
        "audit", {"actor": actor, "action": action, "target": target, "detail": detail}, now
    )


def recent_entries(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` entries, newest first."""
    cur = conn.execute(
        "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [dict(zip(KEYS, r, strict=True)) for r in cur]
