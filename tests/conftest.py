"""Shared fixtures: a real hub and a real box on disk (no mocks), and a leak guard."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.codes import Ticket
from edge.config import load, render_minimal
from edge.service import RedemptionService
from sync.hub.issuer import BundleContent, Hub, ShortCodeSpec, random_short_code

SITE = "site-a"
NOW = 1_777_600_800  # 2026-05-01T02:00:00Z, 10:00 in Asia/Shanghai
HOUR = 3600


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"test left threads running: {leaked}"


@dataclass
class Box:
    root: Path
    hub: Hub
    home: Path
    now: float = NOW
    services: list[RedemptionService] = field(default_factory=list)

    def config_text(self, extra: str = "") -> None:
        text = render_minimal(SITE, "box-1", "trust-anchor.json") + extra
        (self.home / "edge.toml").write_text(text)

    def service(self) -> RedemptionService:
        svc = RedemptionService(load(self.home / "edge.toml", self.home), clock=lambda: self.now)
        self.services.append(svc)
        return svc

    def ticket(self, **kw: Any) -> tuple[str, Ticket]:
        base: dict[str, Any] = dict(
            kid=self.hub.active_kid(),
            ticket_id=secrets.token_bytes(16),
            site=SITE,
            product="adult",
            valid_from=NOW - HOUR,
            valid_until=NOW + 8 * HOUR,
        )
        t = Ticket(**(base | kw))
        return self.hub.mint_ticket(t), t

    def short(self, **kw: Any) -> ShortCodeSpec:
        base: dict[str, Any] = dict(
            code=random_short_code(12),
            code_id=secrets.token_bytes(16),
            product="adult",
            valid_from=NOW - HOUR,
            valid_until=NOW + 8 * HOUR,
        )
        return ShortCodeSpec(**(base | kw))

    def bundle(
        self, content: BundleContent, *, snapshot: bool, name: str | None = None, **kw: Any
    ) -> Path:
        out = self.root / (name or f"b{secrets.token_hex(3)}.bundle")
        kw.setdefault("now", int(self.now))
        self.hub.write_bundle(SITE, out, content, snapshot=snapshot, **kw)
        return out

    def snapshot(self, **kw: Any) -> Path:
        content = BundleContent(
            site_info={"timezone": "Asia/Shanghai", "rollover_hour": 4},
            products=[{"id": "adult", "name": "成人票 Adult"}],
            lists=kw.pop("lists", [{"id": "default", "products": ["*"]}]),
            zones=kw.pop("zones", []),
            short_codes=kw.pop("short_codes", []),
            revocations=kw.pop("revocations", []),
        )
        return self.bundle(content, snapshot=True, **kw)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    hub = Hub.init(tmp_path / "hub", keys=2, not_before=NOW - 30 * 86400)
    home = tmp_path / "box"
    home.mkdir()
    (home / "trust-anchor.json").write_text((tmp_path / "hub" / "trust-anchor.json").read_text())
    b = Box(tmp_path, hub, home)
    b.config_text()
    yield b
    for svc in b.services:
        svc.close()
