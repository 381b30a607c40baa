"""The kiosk as a daemon extension (wired in by the composition root, edge/cli.py).

At each box start (the first, and after every reload) it opens the login store (kiosk.db, whose
sessions survive reloads and restarts) and registers one HTTP hook; the box's HTTP app then
carries the session routes, the kiosk API (/api/v1/kiosk) and the web UI (/kiosk/).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from kiosk_ui.auth_api import KioskAuth

if TYPE_CHECKING:
    from fastapi import FastAPI

    from edge.box import Box, Loop

log = logging.getLogger(__name__)


class Kiosk:
    """A daemon extension: `start(box)`, `loops()`, `stop()`."""

    def __init__(self, *, trusted_origins: tuple[str, ...] = ()) -> None:
        self.trusted_origins = trusted_origins
        self.box: Box | None = None
        self.auth: KioskAuth | None = None

    async def start(self, box: Box) -> None:
        self.box = box
        self.auth = await asyncio.to_thread(
            KioskAuth,
            box.config.state_dir,
            audit=self._audit,
            trusted_origins=self.trusted_origins,
        )
        box.http_hooks.append(self.install)

    def install(self, app: FastAPI) -> None:
        from kiosk_ui.api import build_router
        from kiosk_ui.web import install_web

        assert self.box is not None and self.auth is not None
        app.include_router(self.auth.router)
        app.include_router(build_router(self.box, self.auth))
        install_web(app)

    def loops(self) -> list[tuple[str, Loop]]:
        return []

    async def stop(self) -> None:
        auth, self.auth = self.auth, None
        if auth is not None:
            await asyncio.to_thread(auth.close)

    async def _audit(self, action: str, detail: dict[str, Any]) -> None:
        """Login, logout, failures, lockouts and refusals go to the box's audit log (synced)."""
        box = self.box
        if box is None or box.svc is None:
            raise RuntimeError("the box is not running")
        actor = str(detail.get("user") or "unknown")
        await box.audit(actor, f"kiosk_{action}", str(detail.get("addr", "")), json.dumps(detail))
