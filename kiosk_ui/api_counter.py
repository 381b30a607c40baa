"""Kiosk API, the counter (cashier): scan, the confirming tap, recent redemptions and their undo,
receipts, and the shift summary and close.

A scan typed (or wedge-scanned) at the kiosk is handed to the counter lane exactly like a scan
from the lane's own scanner (`Lane.submit`): same queue, same decision, the same event on the bus
(`source: "kiosk"`). An admissible voucher is not redeemed by the scan: the answer is `decision:
"confirm"` and the cashier's tap (`/counter/redeem`) redeems it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to locals of the router builder.

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge import shifts
from edge.decision import iso
from edge.errors import EdgeError, NotFound
from edge.lane_hold import ConfirmGone
from edge.rules import zone_info
from edge.spool_db import PENDING
from kiosk_ui.api_base import LaneName, body_schema, fail, json_body
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from edge.lanes import Lane
    from edge.ledger import Redemption
    from edge.service import RedemptionService
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)

Hex32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{32}$", description="32 hex digits")]
# A receipt job still waiting for (or on) its printer: it prints anyway, a reprint would be twice.
WAITING = (*PENDING, "sending")


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
    # The shift the screen shows: closed only if it is still the open one (two screens closing
    # at once close one shift, not two). Without it: whichever is open.
    shift_id: Annotated[int, Field(ge=1)] | None = None


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
        svc()
        lane = counter_lane(body.lane)
        rid = bytes.fromhex(body.redemption_id) if body.redemption_id else None
        actor = {"actor": user.name}
        if body.code is not None:
            out = await lane.redeem_code(body.code, rid, source="kiosk", extra=actor)
        else:
            assert body.confirm_token is not None
            try:
                out = await lane.redeem_held(body.confirm_token, rid, source="kiosk", extra=actor)
            except ConfirmGone as err:
                raise fail(
                    409,
                    "确认已失效，请重新扫码",
                    f"this confirm has expired, was used already or is for another lane than "
                    f"{lane.name}: scan the code again",
                ) from err
        if out.get("decision") == "admit":
            await note_actor(out.get("redemption_id"), user)
        return out

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

        def void_audited(audit: Callable[[str, str], None]) -> "Redemption":
            # The void and its audit entry commit together (one transaction).
            return service.void(rid, f"{why} ({user.name})", then=lambda: audit(rid_hex, why))

        done = await box.audited(void_audited, user.name, "void")
        await box.occupancy_changed()
        box.bus.publish("shift", change="void", redemption_id=rid_hex, actor=user.name)
        return done.as_json()

    @r.post("/receipt", openapi_extra=body_schema(ReceiptIn))
    async def receipt(
        user: Annotated[User, cashier], body: Annotated[ReceiptIn, Depends(json_body(ReceiptIn))]
    ) -> dict[str, Any]:
        """Print the redemption's receipt on the receipt printer; again: a marked reprint
        (audited `reprint`). A voided redemption gets no receipt."""
        service, rid_hex = svc(), body.redemption_id.lower()
        red = await box.db.call(service.ledger.get, bytes.fromhex(rid_hex))
        if red is None:
            raise fail(404, "查无此核销记录", f"no redemption {rid_hex}")
        if red.state == "voided":
            raise fail(409, "该核销已撤销，不能打印凭证", "this redemption was voided: no receipt")
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
            first = await spool.job(job_id)
            if first is None:  # the same id twice at once: the spool keeps one job
                return await spool.submit("redemption", data, target="receipt", job_id=job_id)
            if first["state"] in WAITING:  # it prints anyway
                return first | {"already_queued": True}
            try:
                job = await spool.reprint(job_id, user.name)
            except NotFound:  # printed so long ago that the spool pruned it: a new job
                job = await spool.submit("redemption", data, target="receipt")
        except (ValueError, EdgeError) as err:  # a bad template or target, an id conflict
            log.error("receipt for %s not queued: %s", rid_hex, err)
            raise fail(409, f"无法打印凭证：{err}", f"cannot print the receipt: {err}") from err
        await box.audit(user.name, "reprint", job_id, f"receipt again: job {job['id']}")
        return job

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

        def close_audited(audit: Callable[[str, str], None]) -> dict[str, Any]:
            return shifts.close(
                service, user.name, body.note, time.time(), shift_id=body.shift_id, audit=audit
            )

        try:
            summary = await box.audited(close_audited, user.name, "shift_close")
        except shifts.ShiftNotOpen as err:
            raise fail(
                409,
                f"班次 {err.shift_id} 已交班（当前班次 {err.open_id}），请刷新",
                f"shift {err.shift_id} is closed already (the open one is {err.open_id}): reload",
            ) from err
        sid = summary["shift_id"]
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
