"""The kiosk API under /api/v1/kiosk: the bootstrap, the live event stream, and the routers of
each screen (counter, gate, lockers, printers, status). Every route needs a kiosk session
(`auth.require(role)`); edge's own /api/v1 (bearer token) is untouched.

kiosk_ui calls edge's services (the Box) only: never a driver, never SQL.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# Depends(...) refer to locals of the router builder.

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from kiosk_ui import api_counter, api_gate, api_lockers, api_printers, api_status
from kiosk_ui.api_base import dumps, tls_info, version
from kiosk_ui.users import Role, User

if TYPE_CHECKING:
    from edge.box import Box
    from kiosk_ui.auth_api import KioskAuth

log = logging.getLogger(__name__)

PREFIX = "/api/v1/kiosk"
# What the screens listen to. "audit" stays off the stream: its details are for the log.
TOPICS = frozenset(
    {"decision", "lane", "passage", "occupancy", "crowd", "locker", "print", "device", "cloud",
     "shift"}
)  # fmt: skip
KEEPALIVE_S = 15.0
POLL_S = 0.5
# An open stream asks again this often whether its session is still live: a logout, an idle
# expiry or a disabled user ends it (the cookie was checked only when it opened).
SESSION_CHECK_S = 5.0


def build_router(box: "Box", auth: "KioskAuth") -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["kiosk"])
    anyone = Depends(auth.require(Role.CASHIER))

    @router.get("/bootstrap")
    async def bootstrap(user: Annotated[User, anyone]) -> dict[str, Any]:
        """What the UI needs once after login: who, where, which lanes, banks, printers, zones."""
        lanes = box.lanes_json()
        kinds = {name: lane.cfg.kind for name, lane in box.lanes.items()}
        return {
            "user": user.name,
            "role": user.role.label,
            "site": box.config.site,
            "device": box.config.device,
            "version": version(),
            "lanes": lanes,
            "counter_lanes": [n for n, k in kinds.items() if k == "counter"],
            "gate_lanes": [n for n, k in kinds.items() if k == "gate"],
            "banks": list(box.lockers),
            "printers": [n for n, s in box.slots.items() if s.device_class == "printer"],
            "zones": [z.to_json() for z in box.zones],
            "void_window_s": box.config.policy.void_window_s,
            "tls": await tls_info(box),
        }

    @router.get("/events", response_class=StreamingResponse)
    async def events(
        request: Request,
        _: Annotated[User, anyone],
        topics: Annotated[str, Query(max_length=200)] = "",
    ) -> StreamingResponse:
        """Server-sent events (`event: <topic>`, `id: <seq>`, `data: <json>`) of the screens'
        topics, or the comma-separated `topics` among them. Ends when the box stops, and when
        the session ends (logout, expiry): it is checked again every few seconds."""
        wanted = {t for t in topics.split(",") if t} & TOPICS or set(TOPICS)
        sub = box.bus.subscribe(wanted)

        async def stream() -> AsyncIterator[str]:
            # Wakes every POLL_S to notice a stopping box (the server waits for open streams
            # before the box closes the bus); a comment line every KEEPALIVE_S keeps proxies
            # and the browser from timing the stream out.
            quiet = 0.0
            checked = time.monotonic()
            try:
                yield "retry: 2000\n: connected\n\n"
                while not box.stopping and not sub.closed:
                    if time.monotonic() - checked >= SESSION_CHECK_S:
                        if not await auth.session_alive(request):
                            log.info("event stream ended: its session is over")
                            break
                        checked = time.monotonic()
                    event = await sub.get(timeout=POLL_S)
                    if event is None:
                        quiet += POLL_S
                        if quiet >= KEEPALIVE_S:
                            quiet = 0.0
                            yield ": keep-alive\n\n"
                        continue
                    quiet = 0.0
                    payload = dumps(event.to_json())
                    yield f"event: {event.topic}\nid: {event.seq}\ndata: {payload}\n\n"
            except asyncio.CancelledError:
                pass
            finally:
                sub.close()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    router.include_router(api_counter.router(box, auth))
    router.include_router(api_gate.router(box, auth))
    router.include_router(api_lockers.router(box, auth))
    router.include_router(api_printers.router(box, auth))
    router.include_router(api_status.router(box, auth))
    return router
