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

Before a door is unlocked its intent is durable: a pickup is `opening` (its redemption id and a
`locker_pickup_opening` event committed) until `mark_picked` or `abort_pickup`; a deposit holds
its door as `deposit` until `mint`. A crash in between is resolved at the next start (`recover`):
the pickup is recorded picked with the door's state unknown, the deposit's door is held for staff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Collection
from typing import Any

from edge.errors import InvalidTransition, NotFound
from edge.ledger import Ledger
from edge.pickup_codes import (
    _COLUMNS,
    DoorFlags,
    Lookup,
    Pickup,
    PickupCodeError,
    PickupStoreError,
    _pickup,
    new_code,
    parse_pickup_code,
)
from edge.store import transaction

log = logging.getLogger(__name__)

CTX_PICKUP = b"EDGE-PU1"
KEY_META = "pickup_key"
# A code is not handed out again while it is active or for this long after its last use, so an
# old slip cannot open a later customer's compartment.
REUSE_AFTER_S = 90 * 86400
MINT_ATTEMPTS = 64
STATES = ("active", "opening", "picked", "expired", "cancelled")
LIVE = "state IN ('active', 'opening')"  # states that own their code and their door
LOCKOUT_META = "locker_lockout:"  # + bank name: {"until", "streak"} of the wrong-code lockout


class PickupStore:
    """Pickups and door states in the ledger file. Call only on the ledger's thread. Opening it
    resolves the intents a crash left behind (`recovered` lists them for the staff's alerts)."""

    def __init__(self, ledger: Ledger, *, now: float | None = None) -> None:
        self.ledger = ledger
        self.conn = ledger.conn
        self._key: bytes | None = None
        self.recovered = self.recover(time.time() if now is None else now)

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
                f"SELECT 1 FROM pickups WHERE code_hash = ? AND ({LIVE} OR updated_at > ?)",
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
        """Record a deposit in `door` and return its new pickup code (the only clear copy); the
        door's `deposit` intent ends in the same transaction."""
        with transaction(self.conn):
            code, pickup = self._insert(device, door, order_no, size, expires_at, now, actor, None)
            self._set_held(device, door, now, "deposit", "")
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
        row = (pid, h, h[:3].hex(), device, door, order_no, size, actor, now, expires_at, now)
        self.conn.execute(
            "INSERT INTO pickups (id, code_hash, code_fp, device, door, order_no, size, state, "
            "actor, created_at, expires_at, updated_at, replaces) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)",
            (*row, replaces),
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
        """The live pickup a code names, or why not. Malformed text is never looked up. An
        `opening` pickup is `ok` here: the bank knows whether its door is still being opened."""
        try:
            digits = parse_pickup_code(code)
        except PickupCodeError as err:
            return Lookup("malformed", err.detail)
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM pickups WHERE code_hash = ? "
            f"ORDER BY {LIVE} DESC, updated_at DESC LIMIT 1",
            (self.code_hash(digits),),
        ).fetchone()
        if row is None:
            return Lookup("unknown_code", "no pickup with this code")
        return _judge(_pickup(row), now)

    def active(self, device: str) -> dict[int, Pickup]:
        """The pickups that own a door of `device` (active, or being picked up)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM pickups WHERE device = ? AND {LIVE}", (device,)
        )
        return {p.door: p for p in map(_pickup, rows)}

    def begin_pickup(self, pickup_id: bytes, lane: str, now: float) -> Lookup:
        """Before the door is unlocked: the pickup becomes `opening` with its redemption id, and
        a `locker_pickup_opening` event, in one transaction. Not `ok` when the pickup stopped
        being active since its lookup (expired, cancelled, ...)."""
        with transaction(self.conn):
            found = _judge(self.get(pickup_id), now)
            if not found.ok or found.pickup is None or found.pickup.state != "active":
                return found if not found.ok else Lookup("already_used", "door already opening")
            rid = secrets.token_bytes(16)
            self.conn.execute(
                "UPDATE pickups SET state = 'opening', redemption_id = ?, lane = ?, "
                "updated_at = ? WHERE id = ?",
                (rid, lane, now, pickup_id),
            )
            p = self.get(pickup_id)
            self.ledger.append_event("locker_pickup_opening", p.to_json(), now, rid)
        return Lookup("ok", "", p)

    def abort_pickup(self, pickup_id: bytes, now: float, why: str) -> Pickup:
        """The door did not open: the pickup is active again (the code stays valid) and the
        redemption announced by `begin_pickup` is voided."""
        with transaction(self.conn):
            p = self.get(pickup_id)
            if p.state != "opening":
                return p
            self.conn.execute(
                "UPDATE pickups SET state = 'active', redemption_id = NULL, updated_at = ? "
                "WHERE id = ?",
                (now, pickup_id),
            )
            body = self.get(pickup_id).to_json() | {"state": "voided", "why": why}
            body["redemption_id"] = p.redemption_id.hex() if p.redemption_id else None
            self.ledger.append_event("locker_pickup_voided", body, now, p.redemption_id)
            return self.get(pickup_id)

    def mark_picked(
        self, pickup_id: bytes, now: float, lane: str, *, door_closed: bool | None = True
    ) -> Pickup:
        """The customer took the parcel: a confirmed redemption (its own 128-bit id, the one
        `begin_pickup` announced) and its `locker_pickup` event. Idempotent: a picked pickup is
        returned unchanged. `door_closed` None: nobody saw the door after it opened."""
        with transaction(self.conn):
            return self._mark_picked(self.get(pickup_id), now, lane, door_closed)

    def _mark_picked(self, p: Pickup, now: float, lane: str, door_closed: bool | None) -> Pickup:
        if p.state == "picked":
            return p
        if p.state == "cancelled":
            raise InvalidTransition(f"pickup {p.id.hex()} is {p.state}")
        if p.state == "expired":  # expired while its door was open: the parcel is gone
            self._set_held(p.device, p.door, now, "expired", "")
        rid = p.redemption_id or secrets.token_bytes(16)
        note = "" if door_closed else "door left open after pickup"
        if door_closed is None:
            note = "the box stopped while the door was open: door not seen closed"
        self.conn.execute(
            "UPDATE pickups SET state = 'picked', redemption_id = ?, lane = ?, "
            "updated_at = ?, note = ? WHERE id = ?",
            (rid, lane or p.lane, now, note, p.id),
        )
        p = self.get(p.id)
        body = p.to_json() | {"state": "confirmed", "door_closed": door_closed}
        self.ledger.append_event("locker_pickup", body, now, rid)
        return p

    def expire(
        self, now: float, device: str | None = None, *, skip: Collection[int] = ()
    ) -> list[Pickup]:
        """Active pickups past their time become expired; their doors are held (the parcel is
        still inside) until a technician opens them. Doors in `skip` (of `device`, in use right
        now) wait for the next round."""
        out: list[Pickup] = []
        with transaction(self.conn):
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM pickups WHERE state = 'active' AND expires_at <= ? "
                "AND (? IS NULL OR device = ?) ORDER BY expires_at",
                (now, device, device),
            ).fetchall()
            for p in map(_pickup, rows):
                if device is not None and p.door in skip:
                    continue
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

    # -- start-up -------------------------------------------------------------------------------

    def recover(self, now: float) -> list[dict[str, Any]]:
        """Intents left by a crash, resolved on the safe side in one transaction: a pickup whose
        door was unlocked is recorded picked (door state unknown: staff to check); a deposit's
        door is held for staff (the parcel may be inside, no code exists)."""
        out: list[dict[str, Any]] = []
        with transaction(self.conn):
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM pickups WHERE state = 'opening'"
            ).fetchall()
            for p in map(_pickup, rows):
                self._mark_picked(p, now, p.lane, None)
                what = "the box stopped during a pickup: recorded picked, check the door"
                out.append(
                    {"locker": p.device, "door": p.door, "order_no": p.order_no, "what": what}
                )
            rows = self.conn.execute(
                "SELECT device, door, order_no FROM locker_doors WHERE held = 'deposit'"
            ).fetchall()
            for device, door, order_no in rows:
                what = "the box stopped during a deposit: parcel may be inside, no code"
                self._set_door(device, door, now, held="open")
                body = {"locker": device, "door": door, "why": what, "order_no": order_no}
                self.ledger.append_event("locker_door_fault", body, now)
                out.append(
                    {"locker": device, "door": int(door), "order_no": order_no, "what": what}
                )
        for item in out:
            log.warning("locker %s door %d: %s", item["locker"], item["door"], item["what"])
        return out

    def lockout(self, device: str) -> tuple[float, int]:
        """(until, streak) of the wrong-code lockout of `device`, kept across restarts."""
        doc = json.loads(self.ledger.meta(LOCKOUT_META + device) or "{}")
        return float(doc.get("until", 0.0)), int(doc.get("streak", 0))

    def set_lockout(self, device: str, until: float, streak: int, lane: str, now: float) -> None:
        with transaction(self.conn):
            doc = {"until": until, "streak": streak}
            self.ledger.set_meta(LOCKOUT_META + device, json.dumps(doc))
            body = {"locker": device, "lane": lane, "until": until, "lockout_s": until - now}
            self.ledger.append_event("locker_rate_limited", body, now)

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

    def _set_held(self, device: str, door: int, now: float, was: str, held: str) -> None:
        """Replace the hold `was` (only that one) by `held`; a row left empty goes."""
        self.conn.execute(
            "UPDATE locker_doors SET held = ?, updated_at = ? "
            "WHERE device = ? AND door = ? AND held = ?",
            (held, now, device, door, was),
        )
        self.conn.execute(
            "DELETE FROM locker_doors WHERE device = ? AND door = ? AND fault = '' AND held = ''",
            (device, door),
        )

    def begin_deposit(self, device: str, door: int, order_no: str, now: float) -> None:
        """Before a deposit's door is unlocked: the door is held as `deposit` for `order_no`."""
        with transaction(self.conn):
            self._set_door(device, door, now, held="deposit", order_no=order_no)

    def end_deposit(self, device: str, door: int, now: float) -> None:
        """The deposit's door did not open: nothing went in, the intent goes."""
        with transaction(self.conn):
            self._set_held(device, door, now, "deposit", "")

    def door_fault(
        self, device: str, door: int, why: str, now: float, *, pickup: Pickup | None = None
    ) -> None:
        """The door did not open: out of assignment until a technician opens it."""
        with transaction(self.conn):
            self._set_door(device, door, now, fault=why)
            body: dict[str, Any] = {"locker": device, "door": door, "why": why}
            if pickup is not None:
                body |= {"pickup_id": pickup.id.hex(), "order_no": pickup.order_no}
                body["code_still_valid"] = pickup.state in ("active", "opening")
            self.ledger.append_event("locker_door_fault", body, now)

    def hold_open(self, device: str, door: int, order_no: str, why: str, now: float) -> None:
        """A deposit's door left open, or a parcel in with no code: nobody else gets the door."""
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


def _judge(p: Pickup, now: float) -> Lookup:
    """What a pickup's code gets right now."""
    if p.state == "active" and p.expires_at <= now:
        return Lookup("expired", "pickup time is over", p)
    reason, detail = {
        "active": ("ok", ""),
        "opening": ("ok", "door opening"),
        "picked": ("already_used", "already picked up"),
        "expired": ("expired", "pickup time is over"),
        "cancelled": ("revoked", "this code was replaced or cancelled"),
    }[p.state]
    return Lookup(reason, detail, p)
