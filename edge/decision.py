"""The decision a lane, the CLI and the kiosk show: what happened and what a cashier needs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from edge.rules import Reason

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Decision:
    reason: Reason
    lane: str
    at: float
    detail: str = ""
    warnings: tuple[Reason, ...] = ()
    kind: str | None = None
    canonical_id: str | None = None
    redemption_id: str | None = None
    state: str | None = None  # ledger state when a redemption was written
    product: str | None = None
    product_name: str | None = None
    slot: tuple[int, int] | None = None
    remaining: int | None = None
    persons: int | None = None
    list_id: str | None = None
    cache_seq: int | None = None
    clock_suspect: bool = False
    forced: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def admit(self) -> bool:
        return self.reason is Reason.OK

    def with_(self, **changes: Any) -> Decision:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "decision": "admit" if self.admit else "deny",
            "reason": str(self.reason),
            "warnings": [str(w) for w in self.warnings],
            "detail": self.detail,
            "kind": self.kind,
            "canonical_id": self.canonical_id,
            "redemption_id": self.redemption_id,
            "state": self.state,
            "forced": self.forced,
            "product": self.product,
            "product_name": self.product_name,
            "slot": [iso(self.slot[0]), iso(self.slot[1])] if self.slot else None,
            "remaining": self.remaining,
            "persons": self.persons,
            "list": self.list_id,
            "lane": self.lane,
            "cache_seq": self.cache_seq,
            "clock_suspect": self.clock_suspect,
            "at": iso(self.at),
        }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
