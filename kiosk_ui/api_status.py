"""Kiosk API, the status screen (technician): edge's box status plus what a technician checks on
a visit: each device up or down with what to do, the cloud link, the code cache, the box's
certificate, the clock offset, the version and the HTTPS fingerprint."""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to locals of the router builder.

import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends

from edge.decision import iso
from kiosk_ui.api_base import tls_info, version
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)
DAY = 86400.0

# What to try when a device is down and its driver gave no hint of its own (as `edge doctor`).
CLASS_HINTS = {
    "scanner": "检查扫码器连接和串口权限 / check the scanner's cable and port permissions",
    "printer": "检查打印机电源、纸和连接 / check the printer's power, paper and cable",
    "gate": "检查闸机控制板电源、地址和波特率 / check the gate board's power, address and baud",
    "locker": "检查柜机控制板电源和地址 / check the locker board's power and address",
}
DOCTOR = "运行 edge doctor 查看详情 / run `edge doctor` for details"


def router(box: "Box", auth: "KioskAuth") -> APIRouter:
    r = APIRouter(tags=["kiosk-status"])

    @r.get("/status")
    async def status(_: Annotated[User, Depends(auth.require(Role.TECHNICIAN))]) -> dict[str, Any]:
        """Edge's status (GET /api/v1/status) and the technician's view of it."""
        st = await box.status()
        now = time.time()
        cloud: dict[str, Any] | None = st.get("cloud")
        devices = []
        for dev in st["devices"]:
            hint = dev.get("hint") or (
                "" if dev.get("up") else CLASS_HINTS.get(dev.get("class", ""), DOCTOR)
            )
            devices.append(dev | {"hint": hint})
        return st | {
            "devices": devices,
            "sync": _sync(box, st, cloud),
            "cache": st.get("cache"),
            "cert": _cert(cloud, now),
            "clock_offset_s": _offset(st, cloud),
            "version": version(),
            "tls": await tls_info(box),
        }

    return r


def _when(ts: Any) -> str | None:
    return iso(float(ts)) if isinstance(ts, int | float) and ts > 0 else None


def _sync(box: "Box", st: dict[str, Any], cloud: dict[str, Any] | None) -> dict[str, Any]:
    """The cloud link as the technician reads it. `since`: when the link came up (online);
    offline, the last time it was up if known."""
    cloud = cloud or {}
    return {
        "configured": box.config.sync is not None,
        "online": bool(cloud.get("connected")),
        "since": _when(cloud.get("since")),
        "outbox_depth": st.get("ledger", {}).get("outbox_depth"),
        "last_ack": _when(cloud.get("last_ack_at")),
        "last_error": cloud.get("last_error"),
    }


def _cert(cloud: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The box's client certificate for the cloud link, as the running link reads it; None
    when the box has no link (the daemon runs one whenever [sync] is configured)."""
    cert = (cloud or {}).get("certificate")
    if not isinstance(cert, dict) or not isinstance(cert.get("not_after"), int | float):
        return None
    not_after = float(cert["not_after"])
    return {
        "not_after": iso(not_after),
        "days_left": int((not_after - now) // DAY),
        "renewing": bool(cert.get("renewing")),
    }


def _offset(st: dict[str, Any], cloud: dict[str, Any] | None) -> float | None:
    """Cloud time minus box time, as last measured by the link (kept in the ledger)."""
    live = (cloud or {}).get("clock_offset_s")
    if isinstance(live, int | float):
        return round(float(live), 3)
    stored = st.get("clock", {}).get("offset_s")
    try:
        return round(float(stored), 3) if stored is not None else None
    except ValueError:
        return None
