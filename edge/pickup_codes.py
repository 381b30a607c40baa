"""Pickup codes minted on the box: their format (7 digits with a Damm check digit, outside the
cloud's 8-16 digit space), what a customer reads for each result, and the records the pickup
store returns. The store itself is edge/pickups.py."""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError
from edge.textcodec import damm_check_digit, damm_valid

PICKUP_DIGITS = 7  # 6 random + 1 check digit; the cloud's short codes are 8-16 digits


# What a customer sees at the locker for each pickup result (zh-CN, en). The reasons: those a
# code can get (ok, malformed, unknown_code, expired, already_used, revoked, rate_limited) plus
# two that are the locker's, not the code's: door_fault (the door did not open) and locker_down
# (the board did not answer); with both the code stays valid.
LINES: dict[str, tuple[str, str]] = {
    "ok": (
        "{door}号柜门已打开，取件后请关好柜门",
        "Door {door} is open: take your parcel, close the door",
    ),
    "malformed": ("取件码无效，请核对后重新输入", "Not a pickup code: check it and try again"),
    "unknown_code": ("查无此取件码", "No such pickup code"),
    "expired": ("取件码已过期，请联系工作人员", "Pickup code expired: please ask the staff"),
    "already_used": ("该包裹已被取走", "This parcel was already picked up"),
    "revoked": ("取件码已失效，请使用新的取件码", "This code was replaced: use the new code"),
    "rate_limited": ("错误尝试过多，请稍候再试", "Too many wrong codes: please wait"),
    "door_fault": (
        "柜门未能打开，请联系工作人员，取件码仍然有效",
        "The door did not open: please ask the staff; your code is still valid",
    ),
    "locker_down": (
        "柜机暂不可用，取件码仍然有效",
        "Locker unavailable right now; your code is still valid",
    ),
}


class PickupCodeError(ValueError):
    """Text that is not a well-formed pickup code; `reason` is always `malformed`."""

    def __init__(self, detail: str) -> None:
        self.reason = "malformed"
        self.detail = detail
        super().__init__(f"malformed: {detail}")


class PickupStoreError(EdgeError):
    """The pickup store cannot do what was asked (e.g. no unused code left to mint)."""


def parse_pickup_code(text: str) -> str:
    """The 7 digits of a typed or scanned pickup code, or PickupCodeError (never a lookup)."""
    digits = text.strip()
    if not digits.isascii() or not digits.isdigit():
        raise PickupCodeError("a pickup code is 7 digits")
    if len(digits) != PICKUP_DIGITS:
        if len(digits) > PICKUP_DIGITS:
            raise PickupCodeError("8 or more digits: a cloud voucher code, not a pickup code")
        raise PickupCodeError("a pickup code has 7 digits")
    if not damm_valid(digits):
        raise PickupCodeError("check digit does not match (typing error?)")
    return digits


def is_pickup_code(text: str) -> bool:
    """True when `text` is in the pickup namespace (7 ASCII digits), valid check digit or not:
    a lane routes it here rather than to the cloud-code validator."""
    t = text.strip()
    return len(t) == PICKUP_DIGITS and t.isascii() and t.isdigit()


def new_code() -> str:
    body = f"{secrets.randbelow(10 ** (PICKUP_DIGITS - 1)):0{PICKUP_DIGITS - 1}d}"
    return body + damm_check_digit(body)


@dataclass(frozen=True)
class Pickup:
    id: bytes
    code_fp: str  # a short tag of the keyed hash, for logs and the outbox
    device: str
    door: int
    order_no: str
    size: str
    state: str
    actor: str
    created_at: float
    expires_at: float
    updated_at: float
    redemption_id: bytes | None
    lane: str
    replaces: bytes | None
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            "pickup_id": self.id.hex(),
            "code_fp": self.code_fp,
            "locker": self.device,
            "door": self.door,
            "order_no": self.order_no,
            "size": self.size,
            "state": self.state,
            "actor": self.actor,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "updated_at": self.updated_at,
            "redemption_id": self.redemption_id.hex() if self.redemption_id else None,
            "lane": self.lane,
            "replaces": self.replaces.hex() if self.replaces else None,
            "note": self.note,
        }


@dataclass(frozen=True)
class Lookup:
    """What a code names: `reason` is ok, malformed, unknown_code, expired, already_used or
    revoked (a code replaced by a re-sent one, or cancelled)."""

    reason: str
    detail: str = ""
    pickup: Pickup | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


@dataclass(frozen=True)
class DoorFlags:
    fault: str  # why the door is out of service; '' when it is fine
    held: str  # 'open': left open with a parcel in; 'expired': parcel past its time;
    # 'deposit': a deposit's door is unlocked, no code yet; or ''
    order_no: str


_COLUMNS = (
    "id, code_fp, device, door, order_no, size, state, actor, created_at, expires_at, "
    "updated_at, redemption_id, lane, replaces, note"
)


def _pickup(row: sqlite3.Row | tuple[Any, ...]) -> Pickup:
    v = list(row)
    rid, replaces = (None if x is None else bytes(x) for x in (v[11], v[13]))
    return Pickup(
        bytes(v[0]), str(v[1]), str(v[2]), int(v[3]), str(v[4]), str(v[5]), str(v[6]),
        str(v[7]), float(v[8]), float(v[9]), float(v[10]), rid, str(v[12]), replaces, str(v[14]),
    )  # fmt: skip
