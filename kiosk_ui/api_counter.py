"""Kiosk API, the counter (cashier): scan, the confirming tap, recent redemptions and their undo,
receipts, and the shift summary and close.

A scan typed (or wedge-scanned) at the kiosk is handed to the counter lane exactly like a scan
from the lane's own scanner (`Lane.submit`): same queue, same decision, the same event on the bus
(`source: "kiosk"`). An admissible voucher is not redeemed by the scan: the answer is `decision:
"confirm"` and the cashier's tap (`/counter/redeem`) redeems it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to locals of the router builder.

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import shifts
from edge.decision import iso
from edge.errors import EdgeError, NotFound
from edge.lane_text import display_line
from edge.rules import zone_info
from kiosk_ui.api_base import body_schema, fail, json_body
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from edge.lanes import Lane
    from edge.service import RedemptionService
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$", description="32 hex digits")]
LaneName = Annotated[str, Field(min_length=1, max_length=64)]


class ScanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=2048)]
    lane: LaneName | None = None  # default: the first counter lane


class RedeemIn(BaseModel):
    """`code` (typed) or `confirm_token` (from a `confirm` decision, e.g. the lane scanner's)."""

    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    confirm_token: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    lane: LaneName | None = None
    # Chosen by the UI once per tap: a retry of the same tap gets the recorded outcome.
    redemption_id: Hex32 | None = None

    @model_validator(mode="after")
    def one_of(self) -> "RedeemIn":
        if (self.code is None) == (self.confirm_token is None):
            raise ValueError("give either code or confirm_token")
        return self


class VoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    redemption_id: Hex32
    why: Annotated[str, Field(max_length=500)] = ""


class ReceiptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    redemption_id: Hex32


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: Annotated[str, Field(max_length=500)] = ""


def router(box: "Box", auth: "KioskAuth") -> APIRouter:
    r = APIRouter(prefix="/counter", tags=["kiosk-counter"])
    cashier = Depends(auth.require(Role.CASHIER))

    def svc() -> "RedemptionService":
        if box.svc is None or box.stopping:
            raise fail(503, "网关正在停止", "the gateway is stopping")
        return box.svc

    def counter_lane(name: str | None) -> "Lane":
        lanes = [n for n, lane in box.lanes.items() if lane.cfg.kind == "counter"]
        if name is None:
            if not lanes:
                raise fail(409, "本机没有柜台通道", "this box has no counter lane")
            name = lanes[0]
        lane = box.lanes.get(name)
        if lane is None or lane.cfg.kind != "counter":
            raise fail(
                422,
                f"不是柜台通道：{name}（可用：{'、'.join(lanes) or '无'}）",
                f"not a counter lane: {name} (counter lanes: {', '.join(lanes) or 'none'})",
            )
        return lane

    def site_time(ts: float) -> str:
        tz = zone_info(svc().view.site_clock.timezone)
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")

    async def note_actor(rid: str | None, user: User) -> None:
        if rid:
            await box.db.call(shifts.note_actor, svc(), bytes.fromhex(rid), user.name)

    @r.post("/scan", openapi_extra=body_schema(ScanIn))
    async def scan(
        user: Annotated[User, cashier], body: Annotated[ScanIn, Depends(json_body(ScanIn))]
    ) -> dict[str, Any]:
        """Decide on a code as the counter lane does: a ticket is redeemed at once, a voucher
        answers `confirm` (tap to redeem), a deny records nothing but its event."""
        svc()
        out = await counter_lane(body.lane).submit(body.code, source="kiosk")
        if out.get("decision") == "admit":
            await note_actor(out.get("redemption_id"), user)
        return out | {"needs_confirm": bool(out.get("needs_confirm"))}

    @r.post("/redeem", openapi_extra=body_schema(RedeemIn))
    async def redeem(
        user: Annotated[User, cashier], body: Annotated[RedeemIn, Depends(json_body(RedeemIn))]
    ) -> dict[str, Any]:
        """The confirming tap: redeem the code now (a voucher after its `confirm`: its code, or
        the event's `confirm_token` when the lane's own scanner read it)."""
        service, lane = svc(), counter_lane(body.lane)
        code = body.code
        if body.confirm_token is not None:
            code = lane.held_code(body.confirm_token)
            if code is None:
                raise fail(
                    409,
                    "确认已过期，请重新扫码",
                    f"this confirm has expired (or is for another lane than {lane.name}): "
                    "scan the code again",
                )
        assert code is not None
        rid = bytes.fromhex(body.redemption_id) if body.redemption_id else None
        async with lane.turn:  # in turn with the lane's scanner
            d = await box.db.call(service.redeem, code, lane.name, redemption_id=rid)
            box.observe(lane.name, d, None)
        if d.admit:
            await note_actor(d.redemption_id, user)
            await box.occupancy_changed()
        zh, en = display_line(d.reason)
        out = d.to_json() | {
            "source": "kiosk",
            "line_zh": zh,
            "line_en": en,
            "needs_confirm": False,
            "actor": user.name,
        }
        return lane._publish(out)

    @r.get("/recent")
    async def recent(
        user: Annotated[User, cashier], limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> list[dict[str, Any]]:
        """This box's newest counter redemptions; `voidable` for the asking user (a cashier
        within the undo window, a supervisor any time)."""
        rows = await box.db.call(shifts.recent, svc(), limit)
        window, now = box.config.policy.void_window_s, time.time()
        out = []
        for row in rows:
            until = row.pop("created_ts") + window
            live = row["state"] != "voided"
            row["void_until"] = iso(until)
            row["voidable"] = live and (user.role >= Role.SUPERVISOR or now < until)
            out.append(row)
        return out

    @r.post("/void", openapi_extra=body_schema(VoidIn))
    async def void(
        user: Annotated[User, cashier], body: Annotated[VoidIn, Depends(json_body(VoidIn))]
    ) -> dict[str, Any]:
        """Undo a redemption (the ticket is usable again). Audited `void`."""
        service, rid_hex = svc(), body.redemption_id.lower()
        rid = bytes.fromhex(rid_hex)
        red = await box.db.call(service.ledger.get, rid)
        if red is None:
            raise fail(404, "查无此核销记录", f"no redemption {rid_hex}")
        window = box.config.policy.void_window_s
        if user.role < Role.SUPERVISOR:
            lane = box.config.lanes.get(red.lane)
            if lane is None or lane.kind != "counter":
                raise fail(
                    403, "收银员只能撤销柜台核销", "a cashier can undo counter redemptions only"
                )
            if time.time() > red.created_at + window:
                raise fail(
                    403,
                    f"已超过 {window} 秒撤销时限，请主管撤销",
                    f"past the {window} s undo window: a supervisor can void it",
                )
        if red.state == "voided":
            return red.as_json() | {"already": True}
        if any(lane.inflight == rid_hex for lane in box.lanes.values()):
            raise fail(409, "游客正在通过闸机，请稍候", "the visitor is in the gate right now")
        why = body.why.strip() or "undone at the counter / 柜台撤销"
        done = await box.db.call(service.void, rid, f"{why} ({user.name})")
        await box.audit(user.name, "void", rid_hex, why)
        await box.occupancy_changed()
        box.bus.publish("shift", change="void", redemption_id=rid_hex, actor=user.name)
        return done.as_json()

    @r.post("/receipt", openapi_extra=body_schema(ReceiptIn))
    async def receipt(
        user: Annotated[User, cashier], body: Annotated[ReceiptIn, Depends(json_body(ReceiptIn))]
    ) -> dict[str, Any]:
        """Print the redemption's receipt on the receipt printer; again: a marked reprint."""
        service, rid_hex = svc(), body.redemption_id.lower()
        red = await box.db.call(service.ledger.get, bytes.fromhex(rid_hex))
        if red is None:
            raise fail(404, "查无此核销记录", f"no redemption {rid_hex}")
        spool = box.spool
        if spool is None or not box.config.printing.receipt:
            raise fail(
                409, "未配置小票打印机", "no receipt printer configured ([printing] receipt)"
            )
        names = await box.db.call(shifts.product_names, service)
        cid = red.canonical_id
        data = {
            "product": names.get(red.product, red.product)[:80],
            "fingerprint": f"{cid[:6]}...{cid[-4:]}" if len(cid) > 12 else cid,
            "time": site_time(red.created_at),
            "lane": red.lane,
            "persons": max(1, red.persons),
        }
        job_id = f"redemption-{rid_hex}"
        try:
            if await spool.job(job_id) is None:
                return await spool.submit("redemption", data, target="receipt", job_id=job_id)
            return await spool.reprint(job_id, user.name)
        except NotFound:  # printed so long ago that the spool pruned it: a new job
            return await spool.submit("redemption", data, target="receipt")
        except ValueError:  # still waiting for its printer: it prints anyway
            job = await spool.job(job_id)
            return (job or {}) | {"already_queued": True}

    @r.get("/shift")
    async def shift(_: Annotated[User, cashier]) -> dict[str, Any]:
        """The open shift: admits and persons by product, denies by reason, voids."""
        return _public(await box.db.call(shifts.current, svc(), time.time()))

    @r.post("/shift/close", openapi_extra=body_schema(CloseIn, required=False))
    async def close_shift(
        user: Annotated[User, cashier],
        body: Annotated[CloseIn, Depends(json_body(CloseIn, empty_ok=True))],
    ) -> dict[str, Any]:
        """Close the shift: recorded and synced (`shift_closed`), audited, the slip printed on
        the receipt printer; a new shift opens. A slip that cannot be queued does not undo the
        close: the answer says why (`print_error`)."""
        service = svc()
        summary = await box.db.call(shifts.close, service, user.name, body.note, time.time())
        sid = summary["shift_id"]
        detail = {k: summary[k] for k in ("admits", "denies", "voids", "opened_at", "closed_at")}
        await box.audit(user.name, "shift_close", f"shift {sid}", json.dumps(detail))
        job: dict[str, Any] | None = None
        error = None
        try:
            epoch = await box.db.call(service.ledger.meta, "epoch")
            data = shifts.slip_data(summary, user.name, site_time)
            if box.spool is None:
                raise ValueError("no print spool")
            job = await box.spool.submit(
                "shift_close", data, target="receipt", job_id=f"shift-{epoch}-{sid}"
            )
        except (ValueError, EdgeError) as err:
            log.error("shift %s closed, slip not queued: %s", sid, err)
            error = str(err)
        box.bus.publish("shift", change="closed", shift_id=sid, actor=user.name)
        return _public(summary) | {"print_job": job, "print_error": error}

    return r


def _public(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in ("opened_ts", "closed_ts")}
