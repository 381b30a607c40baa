"""Kiosk API, the locker wall: every bank's grid, deposit (cashier), open a door and re-send a
pickup code (supervisor). Under /api/v1/kiosk; see docs/kiosk.md "API".

The work is the box's (edge/lockers.py LockerBank): a deposit opens a free compartment, waits for
the staff to close it (up to the bank's door_close_timeout_s), mints the pickup code and prints
the slip on the receipt printer. Door opens and re-sends are audited by the bank with the
session's user as actor.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to this module's locals.
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from edge.errors import Stopping
from edge.locker_errors import DoorNotClosed, LockerError, LockerFull, LockerUnavailable
from edge.lockers import LockerBank
from kiosk_ui.api_base import NoBody, body_schema, fail, json_body, shown_name
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_no: Annotated[str, Field(min_length=1, max_length=64)]
    size: Annotated[str, Field(min_length=1, max_length=16)] | None = None


class OpenDoorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    why: Annotated[str, Field(min_length=1, max_length=500)]


@contextmanager
def _locker_errors(bank: str) -> Iterator[None]:
    """The bank's refusals in the kiosk's words (never a 500)."""
    try:
        yield
    except LockerFull as err:
        zh_size, en_size = (f"{err.size} 号", f" of size {err.size}") if err.size else ("", "")
        raise fail(
            409, f"柜机 {bank} 没有空闲的{zh_size}格口", f"no free compartment{en_size} at {bank}"
        ) from err
    except DoorNotClosed as err:
        raise fail(
            409,
            f"{err.door}号柜门未关闭，格口已为订单 {err.order_no} 保留，请关门后联系主管",
            str(err),
        ) from err
    except LockerUnavailable as err:
        raise fail(503, "柜机无响应，请检查柜机电源和连接", str(err)) from err
    except Stopping as err:
        raise fail(503, "网关正在停止", "the gateway is stopping") from err
    except LockerError as err:  # bad order number, a door in use, no active pickup ...
        raise fail(409, f"柜机操作未完成：{err}", str(err)) from err


def router(box: "Box", auth: "KioskAuth") -> APIRouter:
    api = APIRouter(tags=["kiosk: lockers"])
    Cashier = Annotated[User, Depends(auth.require(Role.CASHIER))]
    Supervisor = Annotated[User, Depends(auth.require(Role.SUPERVISOR))]

    def bank_or_404(name: str) -> LockerBank:
        bank = box.lockers.get(name)
        if bank is None:
            shown = shown_name(name)
            raise fail(404, f"没有名为 {shown} 的柜机", f"no locker bank named {shown}")
        return bank

    def door_or_404(bank: LockerBank, name: str, door: str) -> int:
        n = int(door) if door.isascii() and door.isdigit() and len(door) <= 6 else None
        if n is None or n not in bank.size_of:
            shown, first, last = shown_name(door), bank.doors[0], bank.doors[-1]
            raise fail(
                404,
                f"柜机 {name} 没有 {shown} 号门（{first}-{last}）",
                f"locker {name} has no door {shown} ({first}-{last})",
            )
        return n

    @api.get("/lockers")
    async def grids(user: Cashier) -> dict[str, Any]:
        """Every bank's doors: state free | occupied | open | fault | expired, size, order."""
        out: dict[str, Any] = {}
        for name, bank in box.lockers.items():
            out[name] = await bank.grid()
        return {"banks": out}

    @api.post("/lockers/{bank}/deposit", openapi_extra=body_schema(DepositIn))
    async def deposit(
        bank: str, user: Cashier, body: Annotated[DepositIn, Depends(json_body(DepositIn))]
    ) -> dict[str, Any]:
        """Put an order in a free compartment (of `size` if given): the door opens, the answer
        comes once it is closed again, with the pickup code; the slip prints on the receipt
        printer (`printed` says whether it was queued)."""
        target = bank_or_404(bank)
        if body.size is not None and body.size not in target.cfg.sizes:
            sizes = ", ".join(target.cfg.sizes)
            raise fail(
                422,
                f"柜机 {bank} 没有 {shown_name(body.size)} 尺寸（可选：{sizes}）",
                f"locker {bank} has no size {shown_name(body.size)} (sizes: {sizes})",
            )
        with _locker_errors(bank):
            return await target.deposit(body.order_no, body.size, user.name)

    @api.post("/lockers/{bank}/doors/{door}/open", openapi_extra=body_schema(OpenDoorIn))
    async def open_door(
        bank: str,
        door: str,
        user: Supervisor,
        body: Annotated[OpenDoorIn, Depends(json_body(OpenDoorIn))],
    ) -> dict[str, Any]:
        """Open one door with a reason (audited before the door moves and with the result); a
        door that opens has its fault or hold cleared."""
        target = bank_or_404(bank)
        n = door_or_404(target, bank, door)
        with _locker_errors(bank):
            return await target.open_door(n, user.name, body.why)

    @api.post(
        "/lockers/{bank}/doors/{door}/reissue", openapi_extra=body_schema(NoBody, required=False)
    )
    async def reissue(
        bank: str,
        door: str,
        user: Supervisor,
        _: Annotated[NoBody, Depends(json_body(NoBody, empty_ok=True))],
    ) -> dict[str, Any]:
        """A new pickup code for the parcel in `door` (the old one stops working), printed on a
        new slip; audited."""
        target = bank_or_404(bank)
        n = door_or_404(target, bank, door)
        with _locker_errors(bank):
            return await target.reissue(n, user.name)

    return api
