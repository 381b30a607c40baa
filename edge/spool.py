"""The durable print spool: kitchen tickets, receipts and slips, each printed once per job id.

A job is validated and rendered once at submit, committed (fsync) to spool.db, and handed to its
printer's single worker (edge/spool_workers.py), which an asyncio.Event wakes at once (no
polling). The worker marks the job "sending" (committed) before any byte goes out, so after a
crash a job that may have printed comes back "uncertain" and is never re-sent on its own; staff
look and reprint (a new job with a REPRINT banner). Paper out or cover open holds the printer's
queue with a device alert until the printer says it is ready again; a silent printer is retried
with backoff, and a station's jobs move to the station's next working printer after
`failover_after_s` (never to one that is down or in trouble itself).

State changes go to the bus ("print"); final outcomes also go through `record` (the daemon puts
them in the cloud outbox), marked reported in spool.db once recorded and sent again at the next
start when a stop came in between. `prune` (from the daemon's maintenance) drops final jobs older
than `keep_days` to an id tombstone. A pickup slip is never reprinted from here: its code is
masked once the job is final, and a lost slip means a new code from the locker (reissue).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, TypeVar

from edge.bus import EventBus
from edge.config_sections import PrintingConfig
from edge.devices import DeviceSlot
from edge.errors import NotFound
from edge.runner import Runner
from edge.spool_db import (
    PENDING,
    SOURCES,
    JobIdConflict,
    SpoolDB,
    check_id,
    new_row,
    public,
    reprint_row,
)
from edge.spool_workers import Record, SpoolWorkers
from edge.templates import TemplateError, order_tickets, render

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_GRACE_S = 3.0  # the daemon stops within 5 s: a job being sent gets this long to finish
DAY_S = 86400.0
PRUNE_BATCH = 500  # rows per transaction: the workers' own writes get a turn in between
REPORT_RETRY_S = 60.0  # an outcome unreported this long is sent again by prune()
GONE = "打印机已从配置中移除 printer no longer configured"
NO_SLIP_REPRINT = (
    "取货凭条不能重印, 请在柜机补发取件码 a pickup slip is not reprinted from the print spool: "
    "reissue the code from the locker (the old code stops working)"
)

__all__ = ["JobIdConflict", "PrintSpool", "TemplateError"]


class PrintSpool(SpoolWorkers):
    def __init__(
        self,
        path: Path,
        printing: PrintingConfig,
        printers: dict[str, DeviceSlot],
        bus: EventBus,
        record: Record | None = None,
        clock: Callable[[], float] = time.time,
        *,
        site_tz: Callable[[], tzinfo] | None = None,
        keep_days: float = 30.0,
    ) -> None:
        """`site_tz` gives the site's timezone for the times printed on tickets (asked at each
        job: a bundle can change it); UTC without it. Final jobs are pruned after `keep_days`."""
        super().__init__(printing, printers, bus, record, clock)
        self.path = path
        self._tz = site_tz or (lambda: UTC)
        self.keep_days = keep_days
        self._runner = Runner("spool-db")
        self._db: SpoolDB | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        for station, names in printing.stations.items():
            missing = [n for n in names if n not in printers]
            if missing:
                log.warning("station %s: printers %s have no device", station, missing)

    # -- lifecycle --

    async def open(self) -> None:
        """Open spool.db; jobs left "sending" become "uncertain", jobs waiting for a printer no
        longer configured go to the target's printer now (or fail), outcomes a stop kept from
        the outbox are sent. Called on first use; the workers start after it."""
        async with self._open_lock:
            if self._db is not None:
                return
            if self._closed:
                raise RuntimeError("the print spool is closed")
            db = await self._runner.call(SpoolDB, self.path)
            self._db = db
            now = self._clock()
            for row in await self._q(SpoolDB.recover, now):
                log.warning("print job %s was being sent at the last stop: uncertain", row["id"])
                await self._changed(row)  # reported with the rest just below
            for row in await self._q(SpoolDB.stranded, list(self.printers)):
                await self._reroute(row, now)
            for row in await self._q(SpoolDB.unreported, math.inf):
                await self._report(row)

    async def _reroute(self, row: dict[str, Any], now: float) -> None:
        """A waiting job whose printer left the config: its target's printer now, else failed
        (a final state staff see, and can reprint to another target)."""
        try:
            printer = self._route(row["target"])[0]
        except ValueError as err:
            log.warning("print job %s: %s %s: failed", row["id"], GONE, row["printer"])
            row = await self._q(SpoolDB.set_state, row["id"], "failed", now, f"{GONE}: {err}")
            await self._changed(row, final=True)
            return
        log.warning("print job %s: %s %s: -> %s", row["id"], GONE, row["printer"], printer)
        why = f"{GONE} ({row['printer']}) -> {printer}"
        for moved in await self._q(SpoolDB.move, [(row["id"], printer)], now, why):
            await self._changed(moved)

    async def _q(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            await self.open()
        assert self._db is not None
        return await self._runner.call(fn, self._db, *args)

    async def run(self, stop: asyncio.Event) -> None:
        """Run one supervised worker per printer until `stop` (or close())."""
        await self.open()
        for name in self.printers:
            if name not in self._tasks:
                self._tasks[name] = asyncio.create_task(self._supervise(name), name=f"spool-{name}")
        waits = {asyncio.create_task(stop.wait()), asyncio.create_task(self._halt.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await self._stop_workers(CLOSE_GRACE_S)

    async def _stop_workers(self, grace: float) -> None:
        """Take no new job; let a job being sent finish for up to `grace` seconds."""
        self._halt.set()
        for wake in self._wake.values():
            wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                log.warning("print worker %s still busy at stop: cancelled", task.get_name())
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """Stop the workers and close spool.db. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._stop_workers(grace)
        async with self._open_lock:
            db, self._db = self._db, None
        try:
            if db is not None:
                await self._runner.call(db.close)
        finally:
            self._runner.close()

    # -- submitting --

    def _route(self, target: str) -> tuple[str, str | None]:
        """The printer (and station) for a target: a printer name, "station:NAME", "receipt"."""
        station = None
        if not isinstance(target, str):
            raise ValueError("print target must be text")
        if target == "receipt":
            if not self.printing.receipt:
                raise ValueError("no receipt printer configured (printing.receipt)")
            printer = self.printing.receipt
        elif target.startswith("station:"):
            station = target.removeprefix("station:")
            names = self.printing.stations.get(station)
            if not names:
                known = ", ".join(self.printing.stations) or "none configured"
                raise ValueError(f"unknown print station {station!r} (stations: {known})")
            have = [n for n in names if n in self.printers] or list(names)
            printer = self._active.get(station, have[0])
        else:
            printer = target
        if printer not in self.printers:
            raise ValueError(
                f"unknown print target {target!r}: use a printer "
                f"({', '.join(self.printers) or 'none configured'}), 'station:NAME' or 'receipt'"
            )
        return printer, station

    def _prepare(
        self,
        template: str,
        data: dict[str, Any],
        *,
        target: str,
        job_id: str | None,
        source: str,
        reprint_of: str | None,
        stamped: Collection[str] = (),
    ) -> dict[str, Any]:
        """Validate and render (nothing stored yet). Raises TemplateError or ValueError."""
        check_id("print job id", job_id, optional=True)
        check_id("reprint_of", reprint_of, optional=True)
        if source not in SOURCES:
            raise ValueError(f"print job source {source!r}: one of {', '.join(SOURCES)}")
        shop, tz = self.printing.shop, self._tz()
        doc = render(template, data, reprint_of=reprint_of, shop=shop, tz=tz)
        printer, station = self._route(target)
        return new_row(
            job_id or uuid.uuid4().hex,
            target,
            station,
            printer,
            template,
            data,
            doc,
            source=source,
            reprint_of=reprint_of,
            now=self._clock(),
            stamped=stamped,
        )

    async def _insert(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row, new in await self._q(SpoolDB.insert, jobs):
            if new:
                await self._changed(row)
                self._wake[row["printer"]].set()
            out.append(public(row))
        return out

    async def submit(
        self,
        template: str,
        data: dict[str, Any],
        *,
        target: str,
        job_id: str | None = None,
        source: str = "kiosk",
        reprint_of: str | None = None,
    ) -> dict[str, Any]:
        """Store a job durably and wake its printer. The same job_id again with the same content
        returns the existing job unchanged (also once pruned); with other content it raises
        JobIdConflict. Raises TemplateError (bad data) or ValueError (bad target, id, source)."""
        job = self._prepare(
            template, data, target=target, job_id=job_id, source=source, reprint_of=reprint_of
        )
        return (await self._insert([job]))[0]

    async def submit_order(self, order: dict[str, Any]) -> list[dict[str, Any]]:
        """One kitchen ticket per station, plus the full receipt at the counter. Job ids come
        from the order id, so a resubmitted order prints nothing twice. All jobs are stored
        together or none; a bad order (an unconfigured station ...) raises TemplateError, the
        same order id with other items JobIdConflict."""
        tickets = order_tickets(
            order,
            self.printing.stations,
            receipt=bool(self.printing.receipt),
            now=self._clock(),
            tz=self._tz(),
        )
        jobs = [
            self._prepare(
                t.template,
                t.data,
                target=t.target,
                job_id=t.job_id,
                source="order",
                reprint_of=None,
                stamped=t.stamped,
            )
            for t in tickets
        ]
        return await self._insert(jobs)

    async def reprint(self, job_id: str, actor: str) -> dict[str, Any]:
        """A new job (new id) with the same document under a REPRINT banner naming the
        original. A job still waiting for its printer is refused: it will print anyway. So is a
        pickup slip: its code may have been replaced or revoked, and the spool no longer holds
        it once printed (ValueError: reissue the code from the locker)."""
        orig = await self._q(SpoolDB.get, job_id)
        if orig is None:
            if await self._q(SpoolDB.tombstone, job_id) is not None:
                raise NotFound(
                    f"print job {job_id!r} was pruned after {self.keep_days:g} days: "
                    "nothing left to reprint"
                )
            raise NotFound(f"print job {job_id!r} not found")
        if orig["template"] == "pickup_slip":
            raise ValueError(NO_SLIP_REPRINT)
        if orig["state"] in (*PENDING, "sending"):
            raise ValueError(
                f"print job {job_id} is still {orig['state']}: it prints when its printer is "
                "ready; reprint it only after it has printed or failed"
            )
        printer = orig["printer"]
        if printer not in self.printers:  # the config changed since
            printer = self._route(orig["target"])[0]
        job = reprint_row(orig, uuid.uuid4().hex, printer, str(actor)[:100], self._clock())
        log.info("reprint of print job %s by %s", job["reprint_of"], actor)
        return (await self._insert([job]))[0]

    # -- reading --

    async def jobs(self, printer: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first; a held job's last_error says why (缺纸 paper out ...)."""
        return await self._q(SpoolDB.jobs, printer, max(1, min(int(limit), 1000)))

    async def queue_depths(self) -> dict[str, int]:
        """Jobs waiting (queued or held) per printer."""
        depths = await self._q(SpoolDB.depths)
        return {name: depths.get(name, 0) for name in self.printers} | depths

    async def job(self, job_id: str) -> dict[str, Any] | None:
        """A job, or what is left of it once pruned; None for an unknown id."""
        row = await self._q(SpoolDB.get, job_id) or await self._q(SpoolDB.tombstone, job_id)
        return public(row) if row is not None else None

    # -- maintenance --

    async def prune(self, now: float) -> int:
        """Periodic (the daemon's maintenance): send outcomes whose report failed, drop final
        jobs older than keep_days to an id tombstone, and cut the WAL so masked codes leave
        no old copy behind. Returns how many jobs were pruned."""
        if self._closed:
            return 0
        for row in await self._q(SpoolDB.unreported, now - REPORT_RETRY_S):
            await self._report(row)
        before, total = now - self.keep_days * DAY_S, 0
        while (n := await self._q(SpoolDB.prune, before, now, PRUNE_BATCH)) > 0:
            total += n
            if n < PRUNE_BATCH:
                break
        await self._q(SpoolDB.truncate_wal)
        if total:
            log.info("pruned %d print job(s) older than %g days", total, self.keep_days)
        return total
