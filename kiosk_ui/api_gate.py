"""Kiosk API, gate supervisor: the lanes live, deny counts, zones, manual open, force admit and
emergency free passage (all under /api/v1/kiosk; see docs/kiosk.md "API").

Every action is the box's own (edge/box.py: manual_open, force_admit, set_emergency), audited
with the session's user as actor, never a name from the body. Free passage also needs the user's
PIN again (counted towards the lockout like a login) and an explicit confirmation. It can never
clear the hardware fire input: the answer and the overview say when a fire alarm is active.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to this module's locals.
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from edge import denies
from edge.devices import DeviceDown
from edge.errors import Stopping
from kiosk_ui.api_base import LaneName, body_schema, fail, json_body, shown_name
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)

Note = Annotated[str, Field(max_length=500)]
FIRE_LINE = (
    "消防报警有效：闸机保持常开，本界面无法解除",
    "fire alarm active: the gates stay open; it cannot be cleared from here",
)


class OpenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    persons: Annotated[int, Field(ge=1, le=100)] = 1
    note: Note = ""


class ForceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=2048)]
    lane: LaneName
    note: Annotated[str, Field(min_length=1, max_length=500)]


class EmergencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool
    pin: Annotated[str, Field(pattern=r"^[0-9]{4,12}$", description="the user's own PIN")]
    confirm: bool
    note: Note = ""


@contextmanager
def _gate_errors() -> Iterator[None]:
    """The box's refusals in the kiosk's words; anything a driver raises is left to the HTTP
    app's handler (502 with the device), never a 500."""
    try:
        yield
    except DeviceDown as err:
        hint = f"（{err.hint}）" if err.hint else ""
        raise fail(503, f"闸机离线{hint}", f"the gate is down: {err.error}") from err
    except Stopping as err:
        raise fail(503, "网关正在停止", "the gateway is stopping") from err
    except ValueError as err:  # a locker lane, a lane in fire mode, a lane without a gate
        raise fail(409, f"无法执行：{err}", f"refused: {err}") from err


def router(box: "Box", auth: "KioskAuth") -> APIRouter:
    api = APIRouter(tags=["kiosk: gate"])
    Supervisor = Annotated[User, Depends(auth.require(Role.SUPERVISOR))]

    def lane_or_404(name: str) -> None:
        if name not in box.lanes:
            shown = shown_name(name)
            raise fail(404, f"没有名为 {shown} 的通道", f"no lane named {shown}")

    def fire_lanes() -> list[str]:
        return [n for n, lane in box.lanes.items() if lane.state.fire]

    def gate_state() -> dict[str, Any]:
        gates = [lane for lane in box.lanes.values() if lane.cfg.kind == "gate"]
        fire = fire_lanes()
        out: dict[str, Any] = {
            "emergency": any(lane.state.emergency for lane in gates),
            "fire": bool(fire),
            "fire_lanes": fire,
        }
        if fire:
            out |= {"fire_zh": FIRE_LINE[0], "fire_en": FIRE_LINE[1]}
        return out

    @api.get("/gate/overview")
    async def overview(user: Supervisor) -> dict[str, Any]:
        """Lanes (last decision, fire, emergency), today's deny counts by lane and reason (the
        site's business day, `deny_day`; kept in the ledger), occupancy per zone against its
        thresholds, and whether free passage or a fire alarm is on."""
        if box.svc is None:
            raise fail(503, "网关正在停止", "the gateway is stopping")
        await box.refresh_stats()
        day, counts = await box.db.call(denies.today, box.svc, time.time())
        return {
            "lanes": box.lanes_json(),
            "deny_counts": {name: counts.get(name, {}) for name in box.lanes},
            "deny_day": day,
            "zones": [z.to_json() for z in box.zones],
            **gate_state(),
        }

    @api.post("/gate/lanes/{lane}/open", openapi_extra=body_schema(OpenIn, required=False))
    async def manual_open(
        lane: str,
        user: Supervisor,
        body: Annotated[OpenIn, Depends(json_body(OpenIn, empty_ok=True))],
    ) -> dict[str, Any]:
        """Let `persons` through with no ticket (audited with the user as actor). During a
        fire alarm nothing is sent (the gate is open anyway): `passed` 0, `fire` true."""
        lane_or_404(lane)
        if box.lanes[lane].gate is None:
            shown = shown_name(lane)
            raise fail(409, f"通道 {shown} 没有闸机", f"lane {shown} has no gate")
        with _gate_errors():
            out = await box.manual_open(lane, user.name, body.persons, body.note)
        return out | {"actor": user.name}

    @api.post("/gate/force-admit", openapi_extra=body_schema(ForceIn))
    async def force_admit(
        user: Supervisor, body: Annotated[ForceIn, Depends(json_body(ForceIn))]
    ) -> dict[str, Any]:
        """Override a deny with a reason: recorded and synced as forced, audited, and on a
        gate lane the gate opens like for a scan. A code that does not verify stays denied."""
        lane_or_404(body.lane)
        with _gate_errors():
            out = await box.force_admit(body.code, body.lane, user.name, body.note)
        return out | {"actor": user.name}

    @api.post("/gate/emergency", openapi_extra=body_schema(EmergencyIn))
    async def emergency(
        request: Request,
        user: Supervisor,
        body: Annotated[EmergencyIn, Depends(json_body(EmergencyIn))],
    ) -> dict[str, Any]:
        """Emergency free passage on every gate lane, on or off: the user's own PIN again and
        `confirm: true`. Audited. A hardware fire alarm stays active whatever is chosen here."""
        if not body.confirm:
            raise fail(400, "请确认此操作", "confirm must be true")
        if not await auth.verify_user_pin(user.name, body.pin, request):
            raise fail(403, "PIN错误", "wrong PIN")
        with _gate_errors():
            await box.set_emergency(body.on, user.name, body.note)
        state = gate_state()
        out = {"lanes": box.lanes_json(), "actor": user.name, **state}
        if state["fire"] and not body.on:
            log.warning("free passage off by %s; fire alarm still active on %s", user.name, state)
        return out

    return api
