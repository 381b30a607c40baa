"""The print spool's SQLite file (spool.db): the jobs and their states.

Every method runs on the spool's own "spool-db" Runner thread, which created the connection; the
asyncio side (edge/spool.py) only awaits them. Each state change is one committed transaction
(WAL, synchronous=FULL: fsync'd) before the caller acts on it, so a job marked "sending" is on
disk before its bytes go to the printer, and a restart knows which jobs may have printed.

A final state commits with `reported = 0`; the spool sets it once the outcome is in the cloud
outbox, and sends what a crash left unreported at the next start. A pickup slip's code is masked
in the stored data and document in the transaction that makes the job final (secure_delete and a
WAL truncate keep the old bytes from lingering in the file). Final, reported jobs older than the
retention are pruned to a tombstone (id, content digest, outcome), so the file stays small and
the same id still never prints twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from drivers.printer.job import Job
from edge.errors import EdgeError
from edge.store import Schema, open_db, transaction
from edge.templates import (
    MASK,
    job_from_json,
    job_to_json,
    masked_data,
    scrub,
    with_banner,
    without_banner,
)

STATES = ("queued", "sending", "printed", "held", "incomplete", "uncertain", "failed")
PENDING = ("queued", "held")  # waiting for their printer
FINAL = ("printed", "incomplete", "uncertain", "failed")  # never sent again on their own
SOURCES = ("cloud", "kiosk", "redemption", "order", "locker")
PRUNED = "记录已过保留期清理 pruned after the retention period"
_FINAL_SQL = "('printed', 'incomplete', 'uncertain', 'failed')"

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
        """,
        # 2: outcome reporting, content digests, pruning with tombstones, codes scrubbed.
        # Rows from before count as reported (their outcome went out, or was lost before this).
        f"""
        ALTER TABLE jobs ADD COLUMN reported INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE jobs ADD COLUMN digest TEXT;
        CREATE INDEX jobs_unreported ON jobs (seq) WHERE reported = 0;
        CREATE INDEX jobs_final ON jobs (updated_at) WHERE state IN {_FINAL_SQL};
        CREATE TABLE pruned (
            id TEXT PRIMARY KEY,
            digest TEXT,
            target TEXT NOT NULL,
            station TEXT,
            printer TEXT NOT NULL,
            template TEXT NOT NULL,
            title TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            source TEXT NOT NULL,
            pruned_at REAL NOT NULL
        ) WITHOUT ROWID;
        UPDATE jobs SET
            document = replace(document, json_extract(data, '$.code'), '{MASK}'),
            data = json_set(data, '$.code', '{MASK}')
        WHERE template = 'pickup_slip' AND state IN {_FINAL_SQL} AND json_valid(data)
            AND json_type(data, '$.code') = 'text' AND json_extract(data, '$.code') <> '';
        """,
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


class JobIdConflict(EdgeError):
    """A job id that is already taken by a job with other content (template, data or target):
    the new job is refused instead of being taken for a duplicate and silently not printed."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"print job id {job_id!r} is already used by a different job (template, data or "
            "target differ): send it under a new id / 打印任务号已被其他内容占用, 请换新任务号"
        )


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in PUBLIC}


def digest(template: str, target: str, data: dict[str, Any], stamped: Collection[str] = ()) -> str:
    """What makes two submissions under one id the same job: template, target and data, less
    the fields the box stamped in (an order's print time) and with secrets masked (a pickup
    code must not be recoverable from a stored hash)."""
    content = {k: v for k, v in masked_data(template, data).items() if k not in stamped}
    text = json.dumps([template, target, content], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


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
    stamped: Collection[str] = (),
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
        "digest": digest(template, target, data, stamped),
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
        # Scrubbed codes and pruned rows are overwritten, not left in free space of the file.
        self.conn.execute("PRAGMA secure_delete = ON")
        self._dirty = True  # a scrub or a prune (or a migration) since the last WAL truncate

    def close(self) -> None:
        self.conn.close()

    def _row(self, job_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._row(job_id)

    def tombstone(self, job_id: str) -> dict[str, Any] | None:
        """A pruned job as the listing showed it (no attempts, errors or actor any more)."""
        row = self.conn.execute("SELECT * FROM pruned WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        out = dict.fromkeys(PUBLIC) | dict(row)
        out |= {"attempts": 0, "last_error": PRUNED, "actor": ""}
        return out

    def _finalized(self, job_id: str) -> None:
        """Inside the transaction that makes a job final: mask its secrets (a pickup code)."""
        row = self._row(job_id)
        if row is None:
            return
        masked = scrub(row["template"], json.loads(row["data"]), json.loads(row["document"]))
        if masked is None:
            return
        data, doc = masked
        self.conn.execute(
            "UPDATE jobs SET data = ?, document = ? WHERE id = ?",
            (json.dumps(data, ensure_ascii=False), json.dumps(doc, ensure_ascii=False), job_id),
        )
        self._dirty = True

    def recover(self, now: float) -> list[dict[str, Any]]:
        """Jobs left "sending" by a stop mid-send become "uncertain": their bytes may have gone
        out, so they are never sent again on their own (staff decide and reprint)."""
        with transaction(self.conn):
            rows = self.conn.execute("SELECT id FROM jobs WHERE state = 'sending'").fetchall()
            self.conn.execute(
                "UPDATE jobs SET state = 'uncertain', updated_at = ?, reported = 0, last_error = "
                "'stopped while sending: may or may not have printed / 打印中断, 请核对后重印' "
                "WHERE state = 'sending'",
                (now,),
            )
            for row in rows:
                self._finalized(row["id"])
        return [r for r in (self._row(row["id"]) for row in rows) if r is not None]

    def insert(self, jobs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
        """All of `jobs` in one transaction; a job whose id exists (or was pruned) with the same
        content is left as it is and returned with False (the same id never prints twice). An
        id taken by other content raises JobIdConflict, and nothing is stored."""
        out = []
        with transaction(self.conn):
            for job in jobs:
                existing = self._row(job["id"]) or self.tombstone(job["id"])
                if existing is not None:
                    # Rows from before digests were kept have none: taken as the same job.
                    if existing["digest"] not in (None, job["digest"]):
                        raise JobIdConflict(job["id"])
                    out.append((existing, False))
                    continue
                self.conn.execute(
                    "INSERT INTO jobs (id, target, station, printer, template, title, data, "
                    "document, state, created_at, updated_at, reprint_of, source, actor, "
                    "reported, digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, 0, ?)",
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
                        job["digest"],
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
        """A final state commits unreported, with the job's secrets masked."""
        assert state in STATES
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE jobs SET state = ?, last_error = ?, updated_at = ?, "
                "reported = CASE WHEN ? THEN 0 ELSE reported END WHERE id = ?",
                (state, error, now, state in FINAL, job_id),
            )
            if state in FINAL:
                self._finalized(job_id)
        row = self._row(job_id)
        assert row is not None
        return row

    def mark_reported(self, job_id: str) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE jobs SET reported = 1 WHERE id = ?", (job_id,))

    def unreported(self, before: float) -> list[dict[str, Any]]:
        """Final jobs whose outcome is not in the outbox yet (a stop or an outbox failure came
        between the state and its report), final before `before`."""
        rows = self.conn.execute(
            f"SELECT * FROM jobs WHERE reported = 0 AND state IN {_FINAL_SQL} "
            "AND updated_at < ? ORDER BY seq",
            (before,),
        ).fetchall()
        return [dict(r) for r in rows]

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

    def stranded(self, printers: Collection[str]) -> list[dict[str, Any]]:
        """Waiting jobs for printers that are no longer configured."""
        rows = self.conn.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'held') ORDER BY seq"
        ).fetchall()
        return [dict(r) for r in rows if r["printer"] not in printers]

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

    def prune(self, before: float, now: float, limit: int) -> int:
        """Up to `limit` final, reported jobs last changed before `before` become tombstones."""
        with transaction(self.conn):
            ids = [
                r[0]
                for r in self.conn.execute(
                    f"SELECT id FROM jobs WHERE state IN {_FINAL_SQL} AND updated_at < ? "
                    "AND reported = 1 ORDER BY updated_at LIMIT ?",
                    (before, limit),
                )
            ]
            for job_id in ids:
                self.conn.execute(
                    "INSERT INTO pruned (id, digest, target, station, printer, template, title, "
                    "state, created_at, updated_at, source, pruned_at) "
                    "SELECT id, digest, target, station, printer, template, title, state, "
                    "created_at, updated_at, source, ? FROM jobs WHERE id = ?",
                    (now, job_id),
                )
                self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self._dirty = self._dirty or bool(ids)
        return len(ids)

    def truncate_wal(self, force: bool = False) -> None:
        """Copy the WAL into the file and cut it to zero bytes, so a scrubbed code's old page
        does not linger in the WAL (only after scrubs or prunes, unless `force`)."""
        if self._dirty or force:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self._dirty = False

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
