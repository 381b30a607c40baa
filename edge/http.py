"""The daemon's HTTP server: /healthz, /metrics and the JSON API under /api/v1 (OpenAPI at /docs).

The API is what the kiosk UI and the CLI's state-changing commands use while the daemon runs (it
is then the only writer). It listens on 127.0.0.1 by default and every /api/v1 call carries the
box's local token (`Authorization: Bearer ...`, the owner-only file `api-token` in the state
directory). Bad bodies get a 4xx with a clear message, never a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from drivers.errors import DriverError
from edge.devices import DeviceDown
from edge.errors import BundleRefused, EdgeError, InvalidTransition, NotFound, Stopping

if TYPE_CHECKING:
    from edge.box import Box
    from edge.lockers import LockerBank

Code = Annotated[str, Field(min_length=1, max_length=2048)]
Name = Annotated[str, Field(min_length=1, max_length=64)]
Note = Annotated[str, Field(max_length=500)]


class CodeIn(BaseModel):
    code: Code
    lane: Name = "counter"


class RedeemIn(CodeIn):
    redemption_id: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$")] | None = None


class ScanIn(BaseModel):
    code: Code


class ForceIn(CodeIn):
    actor: Name
    note: Annotated[str, Field(min_length=1, max_length=500)]


class VoidIn(BaseModel):
    redemption_id: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$")]
    why: Note = "undone at the counter"
    actor: Name = "cashier"


class OpenIn(BaseModel):
    actor: Name
    persons: Annotated[int, Field(ge=1, le=100)] = 1
    note: Note = ""


class EmergencyIn(BaseModel):
    on: bool
    actor: Name
    note: Note = ""


class JobIn(BaseModel):
    template: Name
    data: dict[str, Any]
    target: Name
    id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class OrderItem(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    qty: Annotated[int, Field(ge=1, le=999)]
    price_cents: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    station: Name | None = None  # none: on the receipt only (drinks from the counter fridge)
    note: Note = ""


class OrderIn(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    table: Annotated[str, Field(max_length=32)] = ""
    items: Annotated[list[OrderItem], Field(min_length=1, max_length=200)]


class ActorIn(BaseModel):
    actor: Name
    why: Note = ""


class BundleIn(BaseModel):
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    at: str | None = None


class DepositIn(BaseModel):
    order_no: Annotated[str, Field(min_length=1, max_length=64)]
    size: Name | None = None
    actor: Name = "staff"


def create_app(box: Box) -> FastAPI:
    app = FastAPI(title="Edge gateway / 边缘网关", version="1", docs_url="/docs")

    async def auth(authorization: Annotated[str, Header()] = "") -> None:
        scheme, _, token = authorization.partition(" ")
        good = len(box.token) >= 32 and hmac.compare_digest(token.encode(), box.token.encode())
        if scheme.lower() != "bearer" or not good:
            raise HTTPException(401, "missing or wrong API token (state directory: api-token)")

    @app.exception_handler(KeyError)
    async def not_found(_: Request, err: KeyError) -> JSONResponse:
        return JSONResponse({"detail": str(err.args[0]) if err.args else "not found"}, 404)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 400)

    @app.exception_handler(EdgeError)
    async def edge_error(_: Request, err: EdgeError) -> JSONResponse:
        status = 404 if isinstance(err, NotFound) else 503 if isinstance(err, Stopping) else 409
        return JSONResponse({"detail": str(err), "error": type(err).__name__}, status)

    @app.exception_handler(DeviceDown)
    async def device_down(_: Request, err: DeviceDown) -> JSONResponse:
        return JSONResponse({"detail": str(err), "hint": err.hint}, 503)

    @app.exception_handler(DriverError)
    async def driver_error(_: Request, err: DriverError) -> JSONResponse:
        return JSONResponse({"detail": str(err), "device": err.device}, 502)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = not box.stopping and await box.health_check(timeout=2.0)
        alarms = box.alarms()  # the outbox backlog: degraded, still serving (200)
        body = {
            "status": "stopping"
            if box.stopping
            else ("ok" if ok and not box.degraded() and not alarms else "degraded"),
            "devices_down": box.degraded(),
            "alarms": alarms,
            "database": ok,
        }
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text, ctype = await box.render_metrics()
        return PlainTextResponse(text, media_type=ctype)

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(auth)])

    @api.get("/status")
    async def status() -> dict[str, Any]:
        return await box.status()

    @api.post("/validate")
    async def validate(body: CodeIn) -> dict[str, Any]:
        box._lane(body.lane)
        assert box.svc is not None
        d = await box.db.call(box.svc.validate, body.code, body.lane)
        return d.to_json()

    @api.post("/redeem")
    async def redeem(body: RedeemIn) -> dict[str, Any]:
        lane = box._lane(body.lane)
        if lane.cfg.kind != "counter":
            raise ValueError(
                f"lane {body.lane} is a {lane.cfg.kind} lane: use /lanes/{body.lane}/scan"
            )
        assert box.svc is not None
        rid = bytes.fromhex(body.redemption_id) if body.redemption_id else None
        d = await box.db.call(box.svc.redeem, body.code, body.lane, redemption_id=rid)
        box.observe(body.lane, d, None)
        if d.admit:
            await box.occupancy_changed()
        return lane.publish(d.to_json() | {"source": "api"})

    @api.post("/lanes/{lane}/scan")
    async def scan(lane: str, body: ScanIn) -> dict[str, Any]:
        return await box._lane(lane).submit(body.code, source="api")

    @api.post("/void")
    async def void(body: VoidIn) -> dict[str, Any]:
        assert box.svc is not None
        if any(lane.inflight == body.redemption_id.lower() for lane in box.lanes.values()):
            raise HTTPException(409, "the visitor is in the gate right now; wait for the passage")
        try:
            r = await box.db.call(box.svc.void, bytes.fromhex(body.redemption_id), body.why)
        except InvalidTransition as err:
            raise HTTPException(409, str(err)) from err
        await box.audit(body.actor, "void", body.redemption_id, body.why)
        return r.as_json()

    @api.post("/force-admit")
    async def force_admit(body: ForceIn) -> dict[str, Any]:
        return await box.force_admit(body.code, body.lane, body.actor, body.note)

    @api.get("/lanes")
    async def lanes() -> dict[str, Any]:
        return box.lanes_json()

    @api.post("/lanes/{lane}/open")
    async def manual_open(lane: str, body: OpenIn) -> dict[str, Any]:
        return await box.manual_open(lane, body.actor, body.persons, body.note)

    @api.post("/emergency")
    async def emergency(body: EmergencyIn) -> dict[str, Any]:
        return await box.set_emergency(body.on, body.actor, body.note)

    @api.get("/occupancy")
    async def occupancy() -> list[dict[str, Any]]:
        await box.refresh_stats()
        return [z.to_json() for z in box.zones]

    @api.get("/print/jobs")
    async def print_jobs(
        printer: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100
    ) -> list[dict[str, Any]]:
        assert box.spool is not None
        return await box.spool.jobs(printer, limit)

    @api.post("/print/jobs")
    async def print_job(body: JobIn) -> dict[str, Any]:
        assert box.spool is not None
        return await box.spool.submit(
            body.template, body.data, target=body.target, job_id=body.id, source="kiosk"
        )

    @api.post("/print/orders")
    async def print_order(body: OrderIn) -> list[dict[str, Any]]:
        assert box.spool is not None
        return await box.spool.submit_order(body.model_dump(exclude_none=True))

    @api.post("/print/jobs/{job_id}/reprint")
    async def reprint(job_id: str, body: ActorIn) -> dict[str, Any]:
        assert box.spool is not None
        job = await box.spool.reprint(job_id, body.actor)
        await box.audit(body.actor, "reprint", job_id, body.why)
        return job

    @api.get("/lockers/{bank}")
    async def locker_grid(bank: str) -> list[dict[str, Any]]:
        return await _bank(box, bank).grid()

    @api.post("/lockers/{bank}/deposit")
    async def deposit(bank: str, body: DepositIn) -> dict[str, Any]:
        return await _bank(box, bank).deposit(body.order_no, body.size, body.actor)

    @api.post("/lockers/{bank}/doors/{door}/open")
    async def open_door(bank: str, door: int, body: ActorIn) -> dict[str, Any]:
        return await _bank(box, bank).open_door(door, body.actor, body.why)

    @api.post("/lockers/{bank}/open-all")
    async def open_all(bank: str, body: ActorIn) -> Any:
        return await _bank(box, bank).open_all(body.actor, body.why)

    @api.post("/bundles/import")
    async def import_bundle(body: BundleIn) -> dict[str, Any]:
        at = None
        if body.at:
            try:
                at = datetime.fromisoformat(body.at).timestamp()
            except ValueError as err:
                raise HTTPException(
                    422, f"at: ISO 8601 with a UTC offset, not {body.at!r}"
                ) from err
        try:
            r = await box.import_bundle(Path(body.path), at)
        except BundleRefused as err:
            return {"schema": 1, "decision": "refused", "reason": err.reason, "detail": err.detail}
        return {
            "schema": 1,
            "decision": "applied",
            "reason": "ok",
            "seq": r.seq,
            "kind": r.kind,
            "counts": r.counts,
            "cache_seq": r.seq,
        }

    @api.post("/config/reload", status_code=202)
    async def reload_config() -> dict[str, Any]:
        """Re-read edge.toml (and the stored cloud config): 409 with the reason when it does
        not load (the running config stays), else 202 and the box restarts with it."""
        from edge.cloud_config import ConfigRefused, ReloadRequest, from_disk, refused

        if box.reload is None or box.stopping:
            raise Stopping("the gateway is stopping / 网关正在停止")
        req = ReloadRequest("api", wait=False)
        try:  # checked here too, so the caller hears the reason
            await asyncio.to_thread(from_disk, box.config)
        except ConfigRefused as err:
            await refused(box, req, err)
            raise HTTPException(409, f"refused: {err}") from err
        return {"result": await box.reload(req)}

    @api.get("/audit")
    async def audit(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return await box.audit_log(limit)

    @api.get("/events")
    async def events(topics: str = "") -> StreamingResponse:
        """Server-sent events: every bus event (or the comma-separated `topics`)."""
        sub = box.bus.subscribe(set(topics.split(",")) - {""} or None)

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while not box.stopping:
                    event = await sub.get(timeout=15.0)
                    if event is None:
                        yield ": keep-alive\n\n"
                        continue
                    payload = json.dumps(event.to_json(), ensure_ascii=False, default=str)
                    yield f"event: {event.topic}\nid: {event.seq}\ndata: {payload}\n\n"
            except asyncio.CancelledError:
                pass
            finally:
                sub.close()

        return StreamingResponse(stream(), media_type="text/event-stream")

    app.include_router(api)
    for hook in box.http_hooks:  # the kiosk's login, API and web UI (composition root)
        hook(app)
    return app


def _bank(box: Box, name: str) -> LockerBank:
    bank = box.lockers.get(name)
    if bank is None:
        raise KeyError(f"no locker bank named {name!r}")
    return bank
