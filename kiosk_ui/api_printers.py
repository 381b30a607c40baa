"""Kiosk API, printers (supervisor): each printer's state and queue, the jobs held and why (paper
out, cover open), reprint (audited) and a test page. Under /api/v1/kiosk; see docs/kiosk.md
"API".

The print spool (edge/spool.py) does the work: a held job waits for its printer and prints by
itself once the printer is ready again (paper loaded), so there is no "retry" button; a reprint
is a new job under a REPRINT banner, refused for a job still waiting and for pickup slips (a lost
slip gets a new code from the locker screen instead).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to this module's locals.
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from edge.errors import NotFound
from edge.rules import zone_info
from edge.spool import PrintSpool
from kiosk_ui.api_base import NoBody, body_schema, fail, json_body, shown_name
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)

# What the spool's status poll reports, in words for the screen (drivers/printer HINTS).
PROBLEM_TEXT = {
    "paper out": "缺纸，请装纸 / paper out: load paper",
    "cover open": "纸仓盖未关 / cover open: close the printer cover",
    "cutter error": "切刀故障 / cutter error: clear the jam, power-cycle",
    "printer error": "打印机故障 / printer error: let the head cool, power-cycle",
    "offline": "打印机离线 / printer offline: check the error light",
}
NOT_ANSWERING = "打印机无响应，请检查电源和连接 / printer not answering: check its power and cable"


class ReprintIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    why: Annotated[str, Field(max_length=500)] = ""


def _problem_hint(problem: str) -> str:
    first = problem.split(",")[0].strip()
    return PROBLEM_TEXT.get(first, NOT_ANSWERING if problem else "")


def router(box: "Box", auth: "KioskAuth") -> APIRouter:
    api = APIRouter(tags=["kiosk: printers"])
    Supervisor = Annotated[User, Depends(auth.require(Role.SUPERVISOR))]

    def spool() -> PrintSpool:
        if box.spool is None:
            raise fail(503, "打印服务未启动", "the print spool is not running")
        return box.spool

    async def printer_json(sp: PrintSpool, name: str, depth: int) -> dict[str, Any]:
        slot = sp.printers[name]
        jobs = await sp.jobs(name, 200)
        held = [
            {"id": j["id"], "why": j["last_error"], "title": j["title"]}
            for j in jobs
            if j["state"] == "held"
        ]
        problem = sp.trouble().get(name, "")
        if not slot.up:
            state, hint = "down", slot.hint or NOT_ANSWERING
        elif problem:
            state = "attention"
            hint = held[0]["why"] if held else _problem_hint(problem)
        elif any(j["state"] == "sending" for j in jobs):
            state, hint = "printing", ""
        else:
            state, hint = "ready", ""
        return {
            "name": name,
            "up": slot.up,
            "state": state,
            "problem": problem or (slot.error if not slot.up else ""),
            "hint": hint,
            "queue": depth,
            "held": held,
        }

    @api.get("/printers")
    async def printers(
        user: Supervisor, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        """Each printer: up, state (ready | printing | attention | down), the problem and what
        to do, jobs waiting (`queue`), held jobs and why; plus the most recent jobs."""
        sp = spool()
        depths = await sp.queue_depths()
        out = [await printer_json(sp, name, depths.get(name, 0)) for name in sp.printers]
        return {"printers": out, "jobs": await sp.jobs(None, limit)}

    @api.post(
        "/printers/jobs/{job_id}/reprint", openapi_extra=body_schema(ReprintIn, required=False)
    )
    async def reprint(
        job_id: str,
        user: Supervisor,
        body: Annotated[ReprintIn, Depends(json_body(ReprintIn, empty_ok=True))],
    ) -> dict[str, Any]:
        """Print a finished (printed, failed, uncertain) job again as a new job with a REPRINT
        banner; audited with the user as actor."""
        sp = spool()
        shown = shown_name(job_id)
        if len(job_id) > 64:
            raise fail(404, f"没有打印任务 {shown}", f"no print job {shown}")
        try:
            job = await sp.reprint(job_id, user.name)
        except NotFound as err:
            raise fail(404, f"没有打印任务 {shown}", f"no print job {shown}") from err
        except ValueError as err:  # still waiting for its printer, a pickup slip
            raise fail(409, f"不能重印：{err}", f"cannot reprint: {err}") from err
        await box.audit(user.name, "reprint", job_id, body.why or f"new job {job['id']}")
        return job

    @api.post("/printers/{name}/test-page", openapi_extra=body_schema(NoBody, required=False))
    async def test_page(
        name: str,
        user: Supervisor,
        _: Annotated[NoBody, Depends(json_body(NoBody, empty_ok=True))],
    ) -> dict[str, Any]:
        """Queue the test page (Chinese text, large print, a QR code) on that printer."""
        sp = spool()
        if name not in sp.printers:
            shown = shown_name(name)
            raise fail(404, f"没有名为 {shown} 的打印机", f"no printer named {shown}")
        tz = zone_info(box.svc.view.site_clock.timezone) if box.svc is not None else None
        when = datetime.now(tz).strftime("%Y-%m-%d %H:%M:%S")
        log.info("test page on %s for %s", name, user.name)
        return await sp.submit(
            "test_page", {"printer": name, "time": when}, target=name, source="kiosk"
        )

    return api
