"""The hub's bundle input file (TOML or JSON): lists, products, zones, short codes, revocations.

[site]            timezone = "Asia/Shanghai", rollover_hour = 4
[[products]]      id, name
[[zones]]         id, name, capacity
[[lists]]         id, products = ["*"] | [...], zone, entries_per_day, anti_passback, ...
[[short_codes]]   code, product, valid_from, valid_until (ISO 8601 with offset), entries,
                  persons, kind = "voucher" | "pickup", slot_start, slot_end
revocations = [canonical ids], blocked = [...], unblocked = [...], remove_lists = [...]
retire_keys = [kid, ...]
[[used]]          redemption_id, canonical_id, list, direction, persons, at
"""

from __future__ import annotations

import json
import secrets
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from sync.hub.issuer import BundleContent, ShortCodeSpec

_KEYS = {
    "site",
    "products",
    "zones",
    "lists",
    "short_codes",
    "revocations",
    "blocked",
    "unblocked",
    "remove_lists",
    "retire_keys",
    "used",
    "remove_short_codes",
}


def parse_time(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError as err:
            raise ValueError(f"{what}: expected ISO 8601 time with UTC offset") from err
    if dt.tzinfo is None:
        raise ValueError(f"{what}: time {value!r} needs a UTC offset (e.g. +08:00)")
    return int(dt.timestamp())


def _ids(doc: dict[str, Any], key: str) -> list[bytes]:
    try:
        out = [bytes.fromhex(x) for x in doc.get(key, [])]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: canonical ids are 32 hex digits") from err
    if any(len(x) != 16 for x in out):
        raise ValueError(f"{key}: canonical ids are 32 hex digits")
    return out


def load_input(path: Path) -> BundleContent:
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    unknown = set(doc) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    shorts = [
        ShortCodeSpec(
            code=str(s["code"]),
            code_id=bytes.fromhex(s["id"]) if "id" in s else secrets.token_bytes(16),
            product=s["product"],
            valid_from=parse_time(s["valid_from"], "short_codes.valid_from"),
            valid_until=parse_time(s["valid_until"], "short_codes.valid_until"),
            entries=int(s.get("entries", 1)),
            persons=int(s.get("persons", 1)),
            kind=s.get("kind", "voucher"),
            slot=(parse_time(s["slot_start"], "slot_start"), parse_time(s["slot_end"], "slot_end"))
            if "slot_start" in s
            else None,
        )
        for s in doc.get("short_codes", [])
    ]
    used = [
        (
            bytes.fromhex(u["redemption_id"]),
            bytes.fromhex(u["canonical_id"]),
            u["list"],
            u.get("direction", "entry"),
            int(u.get("persons", 1)),
            parse_time(u["at"], "used.at"),
        )
        for u in doc.get("used", [])
    ]
    return BundleContent(
        site_info=doc.get("site"),
        products=list(doc.get("products", [])),
        zones=list(doc.get("zones", [])),
        lists=list(doc.get("lists", [])),
        remove_lists=list(doc.get("remove_lists", [])),
        short_codes=shorts,
        remove_short_codes=[str(c) for c in doc.get("remove_short_codes", [])],
        revocations=_ids(doc, "revocations"),
        blocked=_ids(doc, "blocked"),
        unblocked=_ids(doc, "unblocked"),
        used=used,
        retire_kids=[int(k) for k in doc.get("retire_keys", [])],
    )


DEFAULT_LIST = {"id": "default", "name": "全部票种 All products", "products": ["*"]}
