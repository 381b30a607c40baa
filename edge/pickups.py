"""Locker pickup codes minted on the box, and the locker doors' durable state, in the ledger.

Namespace: the cloud's short codes are 8-16 digits (edge.codes); a pickup code is exactly 7
digits (6 random digits from `secrets` + a Damm check digit), so no pickup code can ever equal a
cloud code and a scanned or typed string belongs to one namespace by its length alone. The QR on
the slip holds the same 7 digits. A typo fails the check digit and is refused as `malformed`
before any lookup.

Codes are stored only as a keyed hash (HMAC-SHA256 under a per-box secret kept in ledger meta,
created on first use); outbox bodies and logs carry a short fingerprint of that hash at most.
Every business write and its outbox event commit in one transaction. All methods run on the
thread that owns the ledger connection (the daemon's db Runner).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError, InvalidTransition, NotFound
from edge.ledger import Ledger
from edge.store import transaction
from edge.textcodec import damm_check_digit, damm_valid

log = logging.getLogger(__name__)

PICKUP_DIGITS = 7  # 6 random + 1 check digit; the cloud's short codes are 8-16 digits
CTX_PICKUP = b"EDGE-PU1"
KEY_META = "pickup_key"
# A code is not handed out again while it is active or for this long after its last use, so an
# old slip cannot open a later customer's compartment.
REUSE_AFTER_S = 90 * 86400
MINT_ATTEMPTS = 64
STATES = ("active", "picked", "expired", "cancelled")


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
    held: str  # 'open': left open with a parcel in; 'expired': parcel past its time; or ''
    order_no: str


_COLUMNS = (
    "id, code_fp, device, door, order_no, size, state, actor, created_at, expires_at, "
    "updated_at, redemption_id, lane, replaces, note"
)


def _pickup(row: sqlite3.Row | tuple[Any, ...]) -> Pickup:
    v = list(row)
    return Pickup(
        id=bytes(v[0]),
        code_fp=str(v[1]),
        device=str(v[2]),
        door=int(v[3]),
        order_no=str(v[4]),
        size=str(v[5]),
        state=str(v[6]),
        actor=str(v[7]),
        created_at=float(v[8]),
        expires_at=float(v[9]),
        updated_at=float(v[10]),
        redemption_id=None if v[11] is None else bytes(v[11]),
        lane=str(v[12]),
        replaces=None if v[13] is None else bytes(v[13]),
        note=str(v[14]),
    )


class PickupStore:
    """Pickups and door states in the ledger file. Call only on the ledger's thread."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.conn = ledger.conn
        self._key: bytes | None = None

    # -- codes ----------------------------------------------------------------------------------

    def _secret(self) -> bytes:
        if self._key is None:
            # OR IGNORE + read back: the first writer's key wins, whoever got there first.
            self.conn.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)", (KEY_META, secrets.token_hex(32))
            )
            value = self.ledger.meta(KEY_META)
            assert value is not None
            self._key = bytes.fromhex(value)
        return self._key

    def code_hash(self, digits: str) -> bytes:
        return hmac.new(
            self._secret(), CTX_PICKUP + digits.encode("ascii"), hashlib.sha256
        ).digest()[:16]

    def _fresh_code(self, now: float) -> tuple[str, bytes]:
        for _ in range(MINT_ATTEMPTS):
            code = new_code()
            h = self.code_hash(code)
            clash = self.conn.execute(
                "SELECT 1 FROM pickups WHERE code_hash = ? "
                "AND (state = 'active' OR updated_at > ?)",
                (h, now - REUSE_AFTER_S),
            ).fetchone()
            if clash is None:
                return code, h
        raise PickupStoreError(f"no unused pickup code found in {MINT_ATTEMPTS} draws")

    # -- pickups --------------------------------------------------------------------------------

    def mint(
        self,
        device: str,
        door: int,
        order_no: str,
        size: str,
        expires_at: float,
        now: float,
        *,
        actor: str = "",
    ) -> str:
        """Record a deposit in `door` and return its new pickup code (the only clear copy)."""
        with transaction(self.conn):
            code, pickup = self._insert(device, door, order_no, size, expires_at, now, actor, None)
        log.info("pickup minted locker=%s door=%d code=%s", device, door, pickup.code_fp)
        return code

    def _insert(
        self,
        device: str,
        door: int,
        order_no: str,
        size: str,
        expires_at: float,
        now: float,
        actor: str,
        replaces: bytes | None,
    ) -> tuple[str, Pickup]:
        code, h = self._fresh_code(now)
        pid = secrets.token_bytes(16)
        self.conn.execute(
            "INSERT INTO pickups (id, code_hash, code_fp, device, door, order_no, size, state, "
            "actor, created_at, expires_at, updated_at, replaces) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)",
            (
                pid,
                h,
                h[:3].hex(),
                device,
                door,
                order_no,
                size,
                actor,
                now,
                expires_at,
                now,
                replaces,
            ),
        )
        pickup = self.get(pid)
        self.ledger.append_event("locker_deposit", pickup.to_json(), now)
        return code, pickup

    def get(self, pickup_id: bytes) -> Pickup:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM pickups WHERE id = ?", (pickup_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"pickup {pickup_id.hex()}")
        return _pickup(row)

    def lookup(self, code: str, now: float) -> Lookup:
        """The active pickup a code names, or why not. Malformed text is never looked up."""
        try:
            digits = parse_pickup_code(code)
        except PickupCodeError as err:
            return Lookup("malformed", err.detail)
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM pickups WHERE code_hash = ? "
            "ORDER BY state = 'active' DESC, updated_at DESC LIMIT 1",
            (self.code_hash(digits),),
        ).fetchone()
        if row is None:
            return Lookup("unknown_code", "no pickup with this code")
        p = _pickup(row)
        if p.state == "active" and p.expires_at <= now:
            return Lookup("expired", "pickup time is over", p)
        reason = {
            "active": ("ok", ""),
            "picked": ("already_used", "already picked up"),
            "expired": ("expired", "pickup time is over"),
            "cancelled": ("revoked", "this code was replaced or cancelled"),
        }[p.state]
        return Lookup(reason[0], reason[1], p)

    def active(self, device: str) -> dict[int, Pickup]:
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM pickups WHERE device = ? AND state = 'active'", (device,)
        )
        return {p.door: p for p in map(_pickup, rows)}

    def mark_picked(
        self, pickup_id: bytes, now: float, lane: str, *, door_closed: bool = True
    ) -> Pickup:
        """The customer took the parcel: a confirmed redemption (its own 128-bit id) and its
        `locker_pickup` event. Idempotent: a picked pickup is returned unchanged."""
        with transaction(self.conn):
            p = self.get(pickup_id)
            if p.state == "picked":
                return p
            if p.state != "active":
                raise InvalidTransition(f"pickup {pickup_id.hex()} is {p.state}")
            rid = secrets.token_bytes(16)
            note = "" if door_closed else "door left open after pickup"
            self.conn.execute(
                "UPDATE pickups SET state = 'picked', redemption_id = ?, lane = ?, "
                "updated_at = ?, note = ? WHERE id = ?",
                (rid, lane, now, note, pickup_id),
            )
            p = self.get(pickup_id)
            body = p.to_json() | {"state": "confirmed", "door_closed": door_closed}
            self.ledger.append_event("locker_pickup", body, now, rid)
        return p

    def expire(self, now: float, device: str | None = None) -> list[Pickup]:
        """Active pickups past their time become expired; their doors are held (the parcel is
        still inside) until a technician opens them."""
        out: list[Pickup] = []
        with transaction(self.conn):
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM pickups WHERE state = 'active' AND expires_at <= ? "
                "AND (? IS NULL OR device = ?) ORDER BY expires_at",
                (now, device, device),
            ).fetchall()
            for p in map(_pickup, rows):
                self.conn.execute(
                    "UPDATE pickups SET state = 'expired', updated_at = ? WHERE id = ?", (now, p.id)
                )
                self._set_door(p.device, p.door, now, held="expired", order_no=p.order_no)
                p = self.get(p.id)
                self.ledger.append_event("locker_expired", p.to_json(), now)
                out.append(p)
        return out

    def cancel(self, pickup_id: bytes, now: float, why: str, actor: str = "") -> Pickup:
        """The code stops working (staff took the parcel back)."""
        with transaction(self.conn):
            p = self._cancel(pickup_id, now, why, actor)
        return p

    def _cancel(self, pickup_id: bytes, now: float, why: str, actor: str) -> Pickup:
        p = self.get(pickup_id)
        if p.state != "active":
            raise InvalidTransition(f"pickup {pickup_id.hex()} is {p.state}")
        self.conn.execute(
            "UPDATE pickups SET state = 'cancelled', updated_at = ?, note = ? WHERE id = ?",
            (now, why, pickup_id),
        )
        p = self.get(pickup_id)
        self.ledger.append_event("locker_cancelled", p.to_json() | {"by": actor}, now)
        return p

    def reissue(self, pickup_id: bytes, now: float, actor: str = "") -> tuple[str, Pickup]:
        """A re-sent code is a new code for the same parcel; the old one stops working."""
        with transaction(self.conn):
            old = self._cancel(pickup_id, now, "reissued", actor)
            return self._insert(
                old.device, old.door, old.order_no, old.size, old.expires_at, now, actor, old.id
            )

    # -- doors ----------------------------------------------------------------------------------

    def door_flags(self, device: str) -> dict[int, DoorFlags]:
        rows = self.conn.execute(
            "SELECT door, fault, held, order_no FROM locker_doors WHERE device = ?", (device,)
        )
        return {int(d): DoorFlags(str(f), str(h), str(o)) for d, f, h, o in rows}

    def _set_door(self, device: str, door: int, now: float, **fields: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO locker_doors (device, door, updated_at) VALUES (?, ?, ?)",
            (device, door, now),
        )
        for name, value in fields.items():  # names are this module's own keywords
            self.conn.execute(
                f"UPDATE locker_doors SET {name} = ?, updated_at = ? WHERE device = ? AND door = ?",
                (value, now, device, door),
            )

    def door_fault(
        self, device: str, door: int, why: str, now: float, *, pickup: Pickup | None = None
    ) -> None:
        """The door did not open: out of assignment until a technician opens it."""
        with transaction(self.conn):
            self._set_door(device, door, now, fault=why)
            body: dict[str, Any] = {"locker": device, "door": door, "why": why}
            if pickup is not None:
                body |= {"pickup_id": pickup.id.hex(), "order_no": pickup.order_no}
                body["code_still_valid"] = pickup.state == "active"
            self.ledger.append_event("locker_door_fault", body, now)

    def hold_open(self, device: str, door: int, order_no: str, why: str, now: float) -> None:
        """A door left open during a deposit: the parcel may be inside, so nobody else gets it."""
        with transaction(self.conn):
            self._set_door(device, door, now, held="open", order_no=order_no)
            body = {"locker": device, "door": door, "why": why, "order_no": order_no}
            self.ledger.append_event("locker_door_fault", body, now)

    def clear_door(self, device: str, door: int, now: float, actor: str) -> bool:
        """A technician opened the door: fault and hold are gone. True if there was one."""
        with transaction(self.conn):
            cur = self.conn.execute(
                "DELETE FROM locker_doors WHERE device = ? AND door = ?", (device, door)
            )
            if cur.rowcount:
                body = {"locker": device, "door": door, "by": actor}
                self.ledger.append_event("locker_door_ok", body, now)
        return cur.rowcount > 0
