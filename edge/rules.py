"""Check-in rules: one pure implementation, shared test vectors.

The rule table is docs/rules.md; its vectors are edge/rule_vectors.json.

`evaluate` sees only facts (the verified credential, the list, earlier redemptions of the same
canonical id on the same list, and a context) and returns a verdict. It does no I/O, so the box,
the hub and the tests all run exactly the same decision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Reason(StrEnum):
    """The closed set of decision reasons (documented in docs/rules.md)."""

    OK = "ok"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    UNKNOWN_CODE = "unknown_code"
    HOLDER_REQUIRED = "holder_required"
    STALE_CODE = "stale_code"
    REPLAYED = "replayed"
    RATE_LIMITED = "rate_limited"
    NO_CACHE = "no_cache"
    WRONG_SITE = "wrong_site"
    REVOKED = "revoked"
    BLOCKED = "blocked"
    NOT_ON_LIST = "not_on_list"
    WRONG_ZONE = "wrong_zone"
    CLOCK_SUSPECT = "clock_suspect"
    STALE_CACHE = "stale_cache"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    WRONG_SLOT = "wrong_slot"
    ALREADY_USED = "already_used"
    USED_ELSEWHERE = "used_elsewhere"
    ENTRIES_EXHAUSTED = "entries_exhausted"
    PASSBACK = "passback"
    CAPACITY_FULL = "capacity_full"


class Direction(StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


class FailMode(StrEnum):
    OPEN = "open"  # admit, with a warning
    CLOSED = "closed"  # deny


class Passback(StrEnum):
    OFF = "off"
    HARD = "hard"  # no second entry until an exit is recorded
    TIMED = "timed"  # no second entry within `passback_minutes` of the last one


_LIST_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


@dataclass(frozen=True)
class CheckInList:
    id: str
    name: str = ""
    products: frozenset[str] | None = None  # None: every product of the site
    zone: str | None = None
    entries_per_day: bool = False
    anti_passback: Passback = Passback.OFF
    passback_minutes: int = 0
    slot_grace_before_min: int = 0
    slot_grace_after_min: int = 0
    clock_fail: FailMode = FailMode.OPEN
    stale_fail: FailMode = FailMode.OPEN

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckInList:
        """Build from the bundle's JSON form. Raises ValueError naming the bad key."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"list: unknown keys {sorted(unknown)}")
        list_id = d.get("id")
        if not isinstance(list_id, str) or not _LIST_ID.fullmatch(list_id):
            raise ValueError("list.id: 1-32 of A-Z a-z 0-9 . _ -")
        products = d.get("products", ["*"])
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            raise ValueError(f"list {list_id}.products: a list of product ids or ['*']")
        try:
            lst = cls(
                id=list_id,
                name=_typed(d, "name", str, ""),
                products=None if "*" in products else frozenset(products),
                zone=d.get("zone"),
                entries_per_day=_typed(d, "entries_per_day", bool, False),
                anti_passback=Passback(d.get("anti_passback", "off")),
                passback_minutes=_typed(d, "passback_minutes", int, 0),
                slot_grace_before_min=_typed(d, "slot_grace_before_min", int, 0),
                slot_grace_after_min=_typed(d, "slot_grace_after_min", int, 0),
                clock_fail=FailMode(d.get("clock_fail", "open")),
                stale_fail=FailMode(d.get("stale_fail", "open")),
            )
        except ValueError as err:
            raise ValueError(f"list {list_id}: {err}") from err
        if lst.zone is not None and not isinstance(lst.zone, str):
            raise ValueError(f"list {list_id}.zone: a zone id or absent")
        if lst.anti_passback is Passback.TIMED and lst.passback_minutes <= 0:
            raise ValueError(f"list {list_id}.passback_minutes: > 0 for timed anti-passback")
        return lst

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "products": ["*"] if self.products is None else sorted(self.products),
            "zone": self.zone,
            "entries_per_day": self.entries_per_day,
            "anti_passback": str(self.anti_passback),
            "passback_minutes": self.passback_minutes,
            "slot_grace_before_min": self.slot_grace_before_min,
            "slot_grace_after_min": self.slot_grace_after_min,
            "clock_fail": str(self.clock_fail),
            "stale_fail": str(self.stale_fail),
        }


def _typed(d: Mapping[str, Any], key: str, typ: type, default: Any) -> Any:
    value = d.get(key, default)
    if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
        raise ValueError(f"{key}: expected {typ.__name__}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{key}: must not be negative")
    return value


@dataclass(frozen=True)
class Credential:
    """What a verified code grants, whatever its kind. `entries == 0`: unlimited."""

    kind: str
    canonical_id: str
    site: str
    product: str
    valid_from: int
    valid_until: int
    entries: int = 1
    persons: int = 1
    slot: tuple[int, int] | None = None
    zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prior:
    """An earlier live (pending or confirmed) redemption of the same id on the same list."""

    direction: Direction
    at: float
    elsewhere: bool = False


@dataclass(frozen=True)
class SiteClock:
    timezone: str = "UTC"
    rollover_hour: int = 0

    def business_day(self, at: float) -> date:
        """The business day `at` falls in: local date, with days starting at `rollover_hour`."""
        local = datetime.fromtimestamp(at, tz=UTC).astimezone(zone_info(self.timezone))
        return (local - timedelta(hours=self.rollover_hour)).date()


def zone_info(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown timezone {name!r}") from err


@dataclass(frozen=True)
class Context:
    now: float
    site: str
    direction: Direction = Direction.ENTRY
    site_clock: SiteClock = field(default_factory=SiteClock)
    clock_suspect: bool = False
    cache_stale: bool = False
    revoked: bool = False
    blocked: bool = False
    zone_capacity: int | None = None
    zone_load: int = 0  # persons inside plus persons in pending entries


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    warnings: tuple[Reason, ...] = ()
    remaining: int | None = None  # entries left after this one; None: unlimited / not counted
    detail: str = ""

    @property
    def admit(self) -> bool:
        return self.reason is Reason.OK


def evaluate(cred: Credential, lst: CheckInList, priors: Sequence[Prior], ctx: Context) -> Verdict:
    """Decide one scan. The order of checks is the order of the table in docs/rules.md."""
    if cred.site != ctx.site:
        return Verdict(Reason.WRONG_SITE, detail=f"ticket is for site {cred.site}")
    if ctx.revoked:
        return Verdict(Reason.REVOKED)
    if ctx.blocked:
        return Verdict(Reason.BLOCKED)
    if lst.products is not None and cred.product not in lst.products:
        return Verdict(Reason.NOT_ON_LIST, detail=f"product {cred.product} not on list {lst.id}")
    if lst.zone is not None and cred.zones and lst.zone not in cred.zones:
        return Verdict(Reason.WRONG_ZONE, detail=f"valid for {', '.join(cred.zones)}")
    warnings: list[Reason] = []
    for flag, mode, reason in (
        (ctx.clock_suspect, lst.clock_fail, Reason.CLOCK_SUSPECT),
        (ctx.cache_stale, lst.stale_fail, Reason.STALE_CACHE),
    ):
        if flag:
            if mode is FailMode.CLOSED:
                return Verdict(reason)
            warnings.append(reason)
    if ctx.now < cred.valid_from:
        return Verdict(Reason.NOT_YET_VALID, tuple(warnings))
    if ctx.now >= cred.valid_until:
        return Verdict(Reason.EXPIRED, tuple(warnings))
    last = max(priors, key=lambda p: p.at, default=None)
    inside = last is not None and last.direction is Direction.ENTRY
    if ctx.direction is Direction.EXIT:
        if lst.anti_passback is Passback.HARD and not inside:
            return Verdict(Reason.PASSBACK, tuple(warnings), detail="no entry recorded")
        return Verdict(Reason.OK, tuple(warnings))
    return _entry(cred, lst, priors, ctx, tuple(warnings), last, inside)


def _entry(
    cred: Credential,
    lst: CheckInList,
    priors: Sequence[Prior],
    ctx: Context,
    warnings: tuple[Reason, ...],
    last: Prior | None,
    inside: bool,
) -> Verdict:
    entries = [p for p in priors if p.direction is Direction.ENTRY]
    if lst.entries_per_day:
        today = ctx.site_clock.business_day(ctx.now)
        entries = [p for p in entries if ctx.site_clock.business_day(p.at) == today]
    # A time slot governs the first entry; re-entries of a multi-entry ticket are not re-slotted.
    if cred.slot and not any(p.direction is Direction.ENTRY for p in priors):
        start = cred.slot[0] - lst.slot_grace_before_min * 60
        end = cred.slot[1] + lst.slot_grace_after_min * 60
        if not start <= ctx.now <= end:
            when = "not started" if ctx.now < start else "over"
            return Verdict(Reason.WRONG_SLOT, warnings, detail=f"time slot {when}")
    if cred.entries and len(entries) >= cred.entries:
        if all(p.elsewhere for p in entries):
            return Verdict(Reason.USED_ELSEWHERE, warnings, remaining=0)
        reason = Reason.ALREADY_USED if cred.entries == 1 else Reason.ENTRIES_EXHAUSTED
        return Verdict(reason, warnings, remaining=0)
    if inside and last is not None:
        if lst.anti_passback is Passback.HARD:
            return Verdict(Reason.PASSBACK, warnings, detail="already inside")
        if lst.anti_passback is Passback.TIMED and ctx.now - last.at < lst.passback_minutes * 60:
            return Verdict(Reason.PASSBACK, warnings, detail="entered moments ago")
    if ctx.zone_capacity is not None and ctx.zone_load + cred.persons > ctx.zone_capacity:
        return Verdict(Reason.CAPACITY_FULL, warnings)
    remaining = cred.entries - len(entries) - 1 if cred.entries else None
    return Verdict(Reason.OK, warnings, remaining=remaining)
