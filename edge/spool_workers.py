"""The printers' side of the print spool: one supervised worker per printer, its status polls,
alerts, sends and station failover. edge/spool.py (PrintSpool) builds on it: storing, routing,
reprinting and pruning jobs.

A worker marks its job "sending" (committed) before any byte goes out and records the outcome:
printed, held (paper out, cover open: the queue waits with a device alert), queued again (the
printer did not answer: retried with backoff), or final without a second send (incomplete,
uncertain, failed). After `failover_after_s` a station's jobs move to the station's next working
printer, never to one that is down or in trouble itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from drivers.errors import DeviceTimeout, DriverError
from drivers.printer import HINTS, JobResult, Printer, PrinterNotReady
from drivers.printer.job import Job
from edge.bus import EventBus
from edge.config_sections import PrintingConfig
from edge.devices import DeviceDown, DeviceSlot
from edge.spool_db import SpoolDB
from edge.templates import job_from_json

log = logging.getLogger(__name__)
T = TypeVar("T")

Record = Callable[[str, dict[str, Any]], Awaitable[None]]
BACKOFF_MIN_S = 0.25
NO_REPLY = "打印机无响应 printer not answering: check its power, cable and network"
PARTLY = "可能打印不全, 请核对后重印 may be partly printed: check and reprint"
FAILOVER = "打印机故障, 已转备用打印机 moved to the station's backup printer"


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


class SpoolWorkers(ABC):
    """The workers and the printers' trouble state; PrintSpool supplies `_q` (spool.db)."""

    RESTART_MIN_S = BACKOFF_MIN_S  # a crashed worker's restart backoff ...
    RESTART_MAX_S = 30.0
    HEALTHY_S = 60.0  # ... starts over once the worker had been running this long

    def __init__(
        self,
        printing: PrintingConfig,
        printers: dict[str, DeviceSlot],
        bus: EventBus,
        record: Record | None,
        clock: Callable[[], float],
    ) -> None:
        self.printing = printing
        self.printers = printers
        self.bus = bus
        self._record = record
        self._clock = clock
        self._wake = {name: asyncio.Event() for name in printers}
        self._halt = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._trouble: dict[str, str] = {}  # printer -> the problem last alerted
        self._trouble_since: dict[str, float] = {}  # printer -> when it stopped printing
        self._active: dict[str, str] = {}  # station -> its printer after a failover

    @abstractmethod
    async def _q(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(db, *args)` on the spool-db thread (a SpoolDB method); PrintSpool provides it."""

    def trouble(self) -> dict[str, str]:
        """Printers not printing now (paper out, cover open, not answering) -> the problem."""
        return dict(self._trouble)

    # -- events --

    async def _changed(self, row: dict[str, Any], *, final: bool = False, **extra: Any) -> None:
        event = _event(row) | extra
        self.bus.publish("print", **event)
        if final:
            await self._report(row, event)

    async def _report(self, row: dict[str, Any], event: dict[str, Any] | None = None) -> None:
        """A final outcome into the cloud outbox, then marked reported in spool.db. A stop in
        between sends it again at the next start (the cloud dedupes on job and state)."""
        if self._record is not None:
            body = (event or _event(row)) | {
                k: row[k] for k in ("target", "source", "attempts", "reprint_of", "actor")
            }
            body["at"] = row["updated_at"]
            try:
                await self._record("print_result", body)
            except Exception:  # the outcome is in spool.db; prune() tries again
                log.exception("print result of job %s not recorded", row["id"])
                return
        await self._q(SpoolDB.mark_reported, row["id"])

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
        delay = self.RESTART_MIN_S
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                await self._worker(name)
                return
            except Exception:
                if time.monotonic() - started >= self.HEALTHY_S:
                    delay = self.RESTART_MIN_S  # it had been working: a new fault, not a loop
                log.exception("print worker %s crashed; restarting in %.2f s", name, delay)
                await self._rest(delay)
                delay = min(delay * 2, self.RESTART_MAX_S)

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
                    await self._failover(name)  # then rest too: this printer is still in trouble
                    await self._rest(delay := self._backoff(delay))
                    continue
            done, job = await self._send(slot, job)
            if done:
                delay = 0.0
                continue
            await self._failover(name)
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
        failed attempt), move its station jobs to each station's next working printer, and send
        the stations' new jobs there too. Direct-printer jobs stay and wait. One outbox record
        per failover (the bus has each job's move)."""
        now = self._clock()
        since = self._trouble_since.get(name)
        if since is None or now - since < self.printing.failover_after_s:
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
        moved = await self._q(SpoolDB.move, moves, now, error)
        rows = [r for r in moved if r["printer"] != name]  # not those finished meanwhile
        for row in rows:
            log.warning("print job %s: %s -> %s", row["id"], name, row["printer"])
            await self._changed(row, state="failover", from_printer=name)
            self._wake[row["printer"]].set()
        if self._record is not None and rows:
            body = {
                "printer": name,
                "error": self._trouble.get(name, ""),
                "to": sorted({r["printer"] for r in rows}),
                "jobs": [r["id"] for r in rows[:100]],
                "count": len(rows),
                "at": now,
            }
            try:
                await self._record("print_failover", body)
            except Exception:  # the moves are in spool.db and on the bus
                log.exception("print failover from %s not recorded", name)
        return True

    def _next_printer(self, station: str, current: str) -> str | None:
        """The station's next printer after `current` that works: open, and not in trouble.
        A printer left in trouble is never a target, so jobs never go back to the printer they
        were moved off until it has answered ready again (its trouble is cleared only then)."""
        names = [n for n in self.printing.stations.get(station, ()) if n in self.printers]
        start = names.index(current) + 1 if current in names else 0
        for n in names[start:] + names[:start]:
            if n != current and self.printers[n].up and n not in self._trouble:
                return n
        return None


def _event(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": row["id"],
        "printer": row["printer"],
        "state": row["state"],
        "error": row["last_error"],
        "station": row["station"],
        "template": row["template"],
    }
