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


# What each reason means to a cashier or visitor: (zh-CN, en).
REASON_TEXT: dict[Reason, tuple[str, str]] = {
    Reason.OK: ("验证通过", "Valid"),
    Reason.MALFORMED: ("无法识别的码", "Not a readable code"),
    Reason.BAD_SIGNATURE: ("码已被篡改或伪造", "Code is forged or damaged"),
    Reason.UNKNOWN_KEY: ("签发密钥未知或已停用", "Issued with an unknown or retired key"),
    Reason.UNKNOWN_CODE: ("查无此券码", "No such voucher or pickup code"),
    Reason.HOLDER_REQUIRED: ("请在 App 中出示动态码", "Show the live code in the app"),
    Reason.STALE_CODE: ("动态码已过期，请刷新", "Live code expired; refresh it"),
    Reason.REPLAYED: ("动态码已被扫描过", "This live code was already scanned"),
    Reason.RATE_LIMITED: ("错误尝试过多，请稍候", "Too many wrong codes; please wait"),
    Reason.NO_CACHE: ("设备尚未加载票务数据", "No ticket data loaded on this box"),
    Reason.WRONG_SITE: ("非本景区/门店的票", "Ticket is for another site"),
    Reason.REVOKED: ("票已作废", "Ticket was revoked"),
    Reason.BLOCKED: ("票已冻结", "Ticket is blocked"),
    Reason.NOT_ON_LIST: ("此入口不接受该票种", "This product is not valid here"),
    Reason.WRONG_ZONE: ("不适用于本区域", "Not valid for this zone"),
    Reason.CLOCK_SUSPECT: ("设备时钟异常", "Box clock cannot be trusted"),
    Reason.STALE_CACHE: ("票务数据过旧", "Ticket data on this box is out of date"),
    Reason.NOT_YET_VALID: ("尚未到使用日期", "Not valid yet"),
    Reason.EXPIRED: ("已过有效期", "Expired"),
    Reason.WRONG_SLOT: ("不在预约时段内", "Outside the booked time slot"),
    Reason.ALREADY_USED: ("已使用", "Already used"),
    Reason.USED_ELSEWHERE: ("已在其他入口使用", "Already used at another gate"),
    Reason.ENTRIES_EXHAUSTED: ("入园次数已用完", "No entries left"),
    Reason.PASSBACK: ("防潜回：请先出园", "Anti-passback: exit first"),
    Reason.CAPACITY_FULL: ("区域已满，请稍候", "Zone is full; please wait"),
}
