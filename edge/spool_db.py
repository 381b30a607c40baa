"""The print spool's SQLite file (spool.db): the jobs and their states.

Every method runs on the spool's own "spool-db" Runner thread, which created the connection; the
asyncio side (edge/spool.py) only awaits them. Each state change is one committed transaction
(WAL, synchronous=FULL: fsync'd) before the caller acts on it, so a job marked "sending" is on
disk before its bytes go to the printer, and a restart knows which jobs may have printed.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from drivers.printer.job import Job
from edge.store import Schema, open_db, transaction
from edge.templates import job_from_json, job_to_json, with_banner, without_banner

STATES = ("queued", "sending", "printed", "held", "incomplete", "uncertain", "failed")
PENDING = ("queued", "held")  # waiting for their printer
SOURCES = ("cloud", "kiosk", "redemption", "order", "locker")

SPOOL_SCHEMA = Schema(
    "spool",
    [
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order, kept across failover
            id TEXT NOT NULL UNIQUE,
            target TEXT NOT NULL,
            station TEXT,
            printer TEXT NOT NULL,
            template TEXT NOT NULL,
            title TEXT NOT NULL,
            data TEXT NOT NULL,
            document TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'sending', 'printed', 'held', 'incomplete', 'uncertain', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            first_attempt_at REAL,
            reprint_of TEXT,
            source TEXT NOT NULL,
            actor TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX jobs_pending ON jobs (printer, seq) WHERE state IN ('queued', 'held');
        CREATE INDEX jobs_by_printer ON jobs (printer, seq);
        """
    ],
)

# What jobs() and submit() hand out: no data or document (a pickup slip's data holds the code).
PUBLIC = (
    "id",
    "target",
    "station",
    "printer",
    "template",
    "title",
    "state",
    "attempts",
    "last_error",
    "created_at",
    "updated_at",
    "first_attempt_at",
    "reprint_of",
    "source",
    "actor",
)


JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in PUBLIC}


def check_id(what: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        raise ValueError(f"{what}: 1-100 letters, digits or . _ : - (first a letter or digit)")


def new_row(
    job_id: str,
    target: str,
    station: str | None,
    printer: str,
    template: str,
    data: dict[str, Any],
    doc: Job,
    *,
    source: str,
    reprint_of: str | None,
    now: float,
    actor: str = "",
) -> dict[str, Any]:
    """A job as SpoolDB.insert takes it; `doc` is the rendered document, stored as printed."""
    return {
        "id": job_id,
        "target": target,
        "station": station,
        "printer": printer,
        "template": template,
        "title": doc.title,
        "data": data,
        "document": job_to_json(doc),
        "created_at": now,
        "reprint_of": reprint_of,
        "source": source,
        "actor": actor,
    }


def reprint_row(
    orig: dict[str, Any], job_id: str, printer: str, actor: str, now: float
) -> dict[str, Any]:
    """A reprint of a stored job: its document under one REPRINT banner naming the first job
    (a reprint of a reprint names the original too, and carries one banner, not two)."""
    doc = job_from_json(json.loads(orig["document"]))
    if orig["reprint_of"]:
        doc = without_banner(doc, orig["reprint_of"])
    root = orig["reprint_of"] or orig["id"]
    return new_row(
        job_id,
        orig["target"],
        orig["station"],
        printer,
        orig["template"],
        json.loads(orig["data"]),
        with_banner(doc, root),
        source=orig["source"],
        reprint_of=root,
        now=now,
        actor=actor,
    )


class SpoolDB:
    def __init__(self, path: Path) -> None:
        self.conn = open_db(path, SPOOL_SCHEMA, create=True, synchronous="FULL")
        self.conn.row_factory = sqlite3.Row

    def close(self) -> None:
        self.conn.close()

    def _row(self, job_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._row(job_id)

    def recover(self, now: float) -> list[dict[str, Any]]:
        """Jobs left "sending" by a stop mid-send become "uncertain": their bytes may have gone
        out, so they are never sent again on their own (staff decide and reprint)."""
        with transaction(self.conn):
            rows = self.conn.execute("SELECT id FROM jobs WHERE state = 'sending'").fetchall()
            self.conn.execute(
                "UPDATE jobs SET state = 'uncertain', updated_at = ?, last_error = "
                "'stopped while sending: may or may not have printed / 打印中断, 请核对后重印' "
                "WHERE state = 'sending'",
                (now,),
            )
        return [r for r in (self._row(row["id"]) for row in rows) if r is not None]

    def insert(self, jobs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
        """All of `jobs` in one transaction; a job whose id exists is left as it is and returned
        with False (the same id never prints twice)."""
        out = []
        with transaction(self.conn):
            for job in jobs:
                existing = self._row(job["id"])
                if existing is not None:
                    out.append((existing, False))
                    continue
                self.conn.execute(
                    "INSERT INTO jobs (id, target, station, printer, template, title, data, "
                    "document, state, created_at, updated_at, reprint_of, source, actor) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (
                        job["id"],
                        job["target"],
                        job["station"],
                        job["printer"],
                        job["template"],
                        job["title"],
                        json.dumps(job["data"], ensure_ascii=False),
                        json.dumps(job["document"], ensure_ascii=False),
                        job["created_at"],
                        job["created_at"],
                        job["reprint_of"],
                        job["source"],
                        job.get("actor", ""),
                    ),
                )
                row = self._row(job["id"])
                assert row is not None
                out.append((row, True))
        return out

    def next_job(self, printer: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT * FROM jobs WHERE printer = ? AND state IN ('queued', 'held') "
            "ORDER BY seq LIMIT 1",
            (printer,),
        ).fetchone()
        return dict(row) if row is not None else None

    def claim(self, job_id: str, printer: str, now: float) -> dict[str, Any] | None:
        """queued/held -> sending, committed before the bytes go out. None if the job has moved
        on (another printer, or no longer waiting)."""
        with transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE jobs SET state = 'sending', attempts = attempts + 1, updated_at = ?, "
                "first_attempt_at = COALESCE(first_attempt_at, ?) "
                "WHERE id = ? AND printer = ? AND state IN ('queued', 'held')",
                (now, now, job_id, printer),
            )
        return self._row(job_id) if cur.rowcount == 1 else None

    def set_state(self, job_id: str, state: str, now: float, error: str = "") -> dict[str, Any]:
        assert state in STATES
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE jobs SET state = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (state, error, now, job_id),
            )
        row = self._row(job_id)
        assert row is not None
        return row

    def note_wait(self, job_id: str, now: float, error: str) -> dict[str, Any]:
        """A waiting job's first attempt (for the failover clock) and why it still waits."""
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE jobs SET first_attempt_at = COALESCE(first_attempt_at, ?), "
                "last_error = ?, updated_at = ? WHERE id = ?",
                (now, error, now, job_id),
            )
        row = self._row(job_id)
        assert row is not None
        return row

    def station_jobs(self, printer: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT * FROM jobs WHERE printer = ? AND state IN ('queued', 'held') "
            "AND station IS NOT NULL ORDER BY seq",
            (printer,),
        ).fetchall()
        return [dict(r) for r in rows]

    def move(self, moves: list[tuple[str, str]], now: float, error: str) -> list[dict[str, Any]]:
        """Failover: each (job id, new printer), back to queued with a fresh failover clock."""
        with transaction(self.conn):
            for job_id, printer in moves:
                self.conn.execute(
                    "UPDATE jobs SET printer = ?, state = 'queued', first_attempt_at = NULL, "
                    "last_error = ?, updated_at = ? WHERE id = ? AND state IN ('queued', 'held')",
                    (printer, error, now, job_id),
                )
        return [r for r in (self._row(job_id) for job_id, _ in moves) if r is not None]

    def jobs(self, printer: str | None, limit: int) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?"
        args: tuple[Any, ...] = (limit,)
        if printer is not None:
            sql = "SELECT * FROM jobs WHERE printer = ? ORDER BY seq DESC LIMIT ?"
            args = (printer, limit)
        return [public(dict(r)) for r in self.conn.execute(sql, args).fetchall()]

    def depths(self) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT printer, COUNT(*) FROM jobs WHERE state IN ('queued', 'held') GROUP BY printer"
        ).fetchall()
        return {r[0]: r[1] for r in rows}
