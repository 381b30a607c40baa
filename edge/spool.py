"""The durable print spool: kitchen tickets, receipts and slips, each printed once per job id.

A job is validated and rendered once at submit, committed (fsync) to spool.db, and handed to its
printer's single worker, which an asyncio.Event wakes at once (no polling). The worker marks the
job "sending" (committed) before any byte goes out, so after a crash a job that may have printed
comes back "uncertain" and is never re-sent on its own; staff look and reprint (a new job with a
REPRINT banner). Paper out or cover open holds the printer's queue with a device alert until the
printer says it is ready again; a silent printer is retried with backoff, and a station's jobs
move to the station's next printer after `failover_after_s`.

State changes go to the bus ("print"); final outcomes also go through `record` (the daemon puts
them in the cloud outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from drivers.errors import DeviceTimeout, DriverError
from drivers.printer import HINTS, JobResult, Printer, PrinterNotReady
from drivers.printer.job import Job
from edge.bus import EventBus
from edge.config import PrintingConfig
from edge.devices import DeviceDown, DeviceSlot
from edge.errors import NotFound
from edge.runner import Runner
from edge.spool_db import PENDING, SOURCES, SpoolDB, check_id, new_row, public, reprint_row
from edge.templates import TemplateError, job_from_json, order_tickets, render

log = logging.getLogger(__name__)
T = TypeVar("T")

Record = Callable[[str, dict[str, Any]], Awaitable[None]]
BACKOFF_MIN_S = 0.25
RESTART_MAX_S = 30.0
CLOSE_GRACE_S = 3.0  # the daemon stops within 5 s: a job being sent gets this long to finish
NO_REPLY = "打印机无响应 printer not answering: check its power, cable and network"
PARTLY = "可能打印不全, 请核对后重印 may be partly printed: check and reprint"
FAILOVER = "打印机故障, 已转备用打印机 moved to the station's backup printer"

__all__ = ["PrintSpool", "TemplateError"]


class _NotSent(Exception):
    """The status poll before a job failed: nothing of the job went out."""

    def __init__(self, err: Exception) -> None:
        self.err = err
        super().__init__(str(err))


def _print_checked(printer: Printer, job: Job) -> JobResult:
    """On the printer's thread. The status poll first tells a dead printer (nothing sent: retry,
    fail over) from one that goes silent during the job (it may have printed: never re-sent)."""
    try:
        st = printer.status()
    except DriverError as err:
        raise _NotSent(err) from err
    if not st.ready:
        raise PrinterNotReady(printer.name, st, sent=False)
    return printer.print_job(job)


class PrintSpool:
    def __init__(
        self,
        path: Path,
        printing: PrintingConfig,
        printers: dict[str, DeviceSlot],
        bus: EventBus,
        record: Record | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.printing = printing
        self.printers = printers
        self.bus = bus
        self._record = record
        self._clock = clock
        self._runner = Runner("spool-db")
        self._db: SpoolDB | None = None
        self._open_lock = asyncio.Lock()
        self._wake = {name: asyncio.Event() for name in printers}
        self._halt = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        self._trouble: dict[str, str] = {}  # printer -> the problem last alerted
        self._trouble_since: dict[str, float] = {}  # printer -> when it stopped printing
        self._active: dict[str, str] = {}  # station -> its printer after a failover
        for station, names in printing.stations.items():
            missing = [n for n in names if n not in printers]
            if missing:
                log.warning("station %s: printers %s have no device", station, missing)

    # -- lifecycle --

    async def open(self) -> None:
        """Open spool.db; jobs left "sending" become "uncertain". Called on first use."""
        async with self._open_lock:
            if self._db is not None:
                return
            if self._closed:
                raise RuntimeError("the print spool is closed")
            db = await self._runner.call(SpoolDB, self.path)
            self._db = db
            uncertain = await self._q(SpoolDB.recover, self._clock())
        for row in uncertain:
            log.warning("print job %s was being sent at the last stop: uncertain", row["id"])
            await self._changed(row, final=True)

    async def _q(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(db, *args)` on the spool-db thread (a SpoolDB method)."""
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
            printer = self._active.get(station, names[0])
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
    ) -> dict[str, Any]:
        """Validate and render (nothing stored yet). Raises TemplateError or ValueError."""
        check_id("print job id", job_id, optional=True)
        check_id("reprint_of", reprint_of, optional=True)
        if source not in SOURCES:
            raise ValueError(f"print job source {source!r}: one of {', '.join(SOURCES)}")
        doc = render(template, data, reprint_of=reprint_of, shop=self.printing.shop)
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
        """Store a job durably and wake its printer. The same job_id again returns the existing
        job unchanged. Raises TemplateError (bad data) or ValueError (bad target, id, source)."""
        job = self._prepare(
            template, data, target=target, job_id=job_id, source=source, reprint_of=reprint_of
        )
        return (await self._insert([job]))[0]

    async def submit_order(self, order: dict[str, Any]) -> list[dict[str, Any]]:
        """One kitchen ticket per station, plus the full receipt at the counter. Job ids come
        from the order id, so a resubmitted order prints nothing twice. All jobs are stored
        together or none; a bad order (an unconfigured station ...) raises TemplateError."""
        tickets = order_tickets(
            order, self.printing.stations, receipt=bool(self.printing.receipt), now=self._clock()
        )
        jobs = [
            self._prepare(
                t.template,
                t.data,
                target=t.target,
                job_id=t.job_id,
                source="order",
                reprint_of=None,
            )
            for t in tickets
        ]
        return await self._insert(jobs)

    async def reprint(self, job_id: str, actor: str) -> dict[str, Any]:
        """A new job (new id) with the same document under a REPRINT banner naming the
        original. A job still waiting for its printer is refused: it will print anyway."""
        orig = await self._q(SpoolDB.get, job_id)
        if orig is None:
            raise NotFound(f"print job {job_id!r} not found")
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
        row = await self._q(SpoolDB.get, job_id)
        return public(row) if row is not None else None

    # -- events --

    async def _changed(self, row: dict[str, Any], *, final: bool = False, **extra: Any) -> None:
        event = {
            "job": row["id"],
            "printer": row["printer"],
            "state": row["state"],
            "error": row["last_error"],
            "station": row["station"],
            "template": row["template"],
        } | extra
        self.bus.publish("print", **event)
        if not final or self._record is None:
            return
        body = event | {k: row[k] for k in ("target", "source", "attempts", "reprint_of", "actor")}
        body["at"] = row["updated_at"]
        try:
            await self._record("print_result", body)
        except Exception:  # the outcome is in spool.db; a failed report must not stop printing
            log.exception("print result of job %s not recorded", row["id"])

    def _alert(self, slot: DeviceSlot, error: str, hint: str) -> None:
        if self._trouble.get(slot.name) == error:
            return
        self._trouble_since.setdefault(slot.name, self._clock())
        self._trouble[slot.name] = error
        log.warning("printer %s: %s (%s)", slot.name, error, hint)
        self.bus.publish(
            "device", device=slot.name, up=slot.up, error=error, hint=hint, alert="printer"
        )

    def _all_clear(self, slot: DeviceSlot) -> None:
        self._trouble_since.pop(slot.name, None)
        if self._trouble.pop(slot.name, None) is None:
            return
        log.info("printer %s: ready again", slot.name)
        self.bus.publish("device", device=slot.name, up=slot.up, error="", hint="", alert="")
        for station, names in self.printing.stations.items():
            if names[0] == slot.name and station in self._active:
                del self._active[station]
                log.info("station %s: back on its primary printer %s", station, slot.name)

    # -- the workers --

    async def _supervise(self, name: str) -> None:
        delay = BACKOFF_MIN_S
        while not self._halt.is_set():
            try:
                await self._worker(name)
                return
            except Exception:
                log.exception("print worker %s crashed; restarting in %.1f s", name, delay)
                await self._rest(delay)
                delay = min(delay * 2, RESTART_MAX_S)

    async def _rest(self, delay: float) -> None:
        """Back off (only a stop cuts it short: new jobs must not hammer a dead printer)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._halt.wait(), delay)

    def _backoff(self, delay: float) -> float:
        return min(max(delay * 2, BACKOFF_MIN_S), max(self.printing.retry_max_s, BACKOFF_MIN_S))

    async def _worker(self, name: str) -> None:
        slot, wake = self.printers[name], self._wake[name]
        delay = 0.0
        while not self._halt.is_set():
            wake.clear()  # before the query: a job committed after it sets the event again
            job = await self._q(SpoolDB.next_job, name)
            if job is None:
                if name not in self._trouble:
                    await wake.wait()
                    continue
                # Idle but in trouble: keep asking, so the alert clears and the station's new
                # jobs come back to this printer once it is fixed.
                delay = self._backoff(delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                if not wake.is_set():
                    await self._probe(slot, None)
                continue
            if name in self._trouble or job["state"] == "held":
                ready, job = await self._probe(slot, job)
                if not ready:
                    if not await self._failover(name):
                        await self._rest(delay := self._backoff(delay))
                    continue
            done, job = await self._send(slot, job)
            if done:
                delay = 0.0
            elif not await self._failover(name):
                await self._rest(delay := self._backoff(delay))

    async def _probe(
        self, slot: DeviceSlot, job: dict[str, Any] | None
    ) -> tuple[bool, dict[str, Any]]:
        """One status poll (no paper used). Not ready: alert, and note on the job why it waits."""
        try:
            st = await slot.call(Printer.status)
        except (DriverError, DeviceDown) as err:
            error, hint = str(err), NO_REPLY
        else:
            if st.ready:
                self._all_clear(slot)
                return True, job or {}
            error = ", ".join(st.problems)
            hint = HINTS.get(st.problems[0], "") if st.problems else ""
        self._alert(slot, error, hint)
        if job is None:
            return False, {}
        why = hint if job["state"] == "held" else f"{hint} ({error})"
        if job["first_attempt_at"] is None or job["last_error"] != why:
            job = await self._q(SpoolDB.note_wait, job["id"], self._clock(), why)
            await self._changed(job)
        return False, job

    async def _send(self, slot: DeviceSlot, job: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Claim (committed "sending"), print, record the outcome. True when the job is done
        with (printed or final), False when it waits for another try."""
        row = await self._q(SpoolDB.claim, job["id"], slot.name, self._clock())
        if row is None:
            return True, job  # moved or finished meanwhile
        await self._changed(row)
        state, error, final, extra = "printed", "", True, {}
        try:
            result = await slot.call(_print_checked, job_from_json(json.loads(row["document"])))
        except (_NotSent, DeviceDown) as err:
            self._alert(slot, str(err), NO_REPLY)
            state, error, final = "queued", f"{NO_REPLY} ({err})", False
        except PrinterNotReady as err:
            problem = ", ".join(err.status.problems) or "not ready"
            self._alert(slot, problem, err.hint)
            if err.sent:  # ran out mid-job: part of it may be on paper, never re-sent
                state, error = "incomplete", f"{err.hint or problem}; {PARTLY}"
            else:
                state, error, final = "held", err.hint or problem, False
        except DeviceTimeout as err:  # silent after the bytes went out: may have printed
            self._alert(slot, str(err), NO_REPLY)
            state, error = "uncertain", f"{err}; {PARTLY}"
        except (DriverError, ValueError) as err:
            state, error = "failed", str(err)
        except Exception as err:  # a bug: never leave the job "sending" for a second print
            log.exception("print job %s: unexpected error", row["id"])
            state, error = "uncertain", f"{type(err).__name__}: {err}"
        else:
            self._all_clear(slot)
            if result.warnings:
                extra = {"warnings": list(result.warnings)}
                error = ", ".join(result.warnings)
        log.info("print job %s on %s: %s %s", row["id"], slot.name, state, error)
        row = await self._q(SpoolDB.set_state, row["id"], state, self._clock(), error)
        await self._changed(row, final=final, **extra)
        return final, row

    async def _failover(self, name: str) -> bool:
        """Once a printer has not printed for failover_after_s (its trouble began with a job's
        failed attempt), move its station jobs to each station's next printer, and send the
        stations' new jobs there too. Direct-printer jobs stay and wait."""
        since = self._trouble_since.get(name)
        if since is None or self._clock() - since < self.printing.failover_after_s:
            return False
        moves: list[tuple[str, str]] = []
        for row in await self._q(SpoolDB.station_jobs, name):
            nxt = self._next_printer(row["station"], name)
            if nxt is not None:
                moves.append((row["id"], nxt))
                self._active[row["station"]] = nxt
        if not moves:
            return False
        error = f"{FAILOVER}: {name} ({self._trouble.get(name, '')})"
        for row in await self._q(SpoolDB.move, moves, self._clock(), error):
            log.warning("print job %s: %s -> %s", row["id"], name, row["printer"])
            await self._changed(row, final=True, state="failover", from_printer=name)
            self._wake[row["printer"]].set()
        return True

    def _next_printer(self, station: str, current: str) -> str | None:
        names = [n for n in self.printing.stations.get(station, ()) if n in self.printers]
        if current not in names:
            return names[0] if names else None
        nxt = names[(names.index(current) + 1) % len(names)]
        return None if nxt == current else nxt
