"""Runner for the shared rule test vectors (edge/rule_vectors.json, traced to docs/rules.md).

The same file is run by the tests and by `edge hub vectors`, so the box and the cloud can show
they decide alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.rules import CheckInList, Context, Credential, Direction, Prior, SiteClock, evaluate

DEFAULT_FILE = Path(__file__).with_name("rule_vectors.json")


def _credential(d: dict[str, Any]) -> Credential:
    slot = d.get("slot")
    return Credential(
        kind=d.get("kind", "signed"),
        canonical_id=d.get("canonical_id", "00" * 16),
        site=d.get("site", "site-a"),
        product=d.get("product", "adult"),
        valid_from=d["valid_from"],
        valid_until=d["valid_until"],
        entries=d.get("entries", 1),
        persons=d.get("persons", 1),
        slot=(slot[0], slot[1]) if slot else None,
        zones=tuple(d.get("zones", ())),
    )


def _context(d: dict[str, Any]) -> Context:
    clock = d.get("site_clock", {})
    return Context(
        now=d["now"],
        site=d.get("site", "site-a"),
        direction=Direction(d.get("direction", "entry")),
        site_clock=SiteClock(clock.get("timezone", "UTC"), clock.get("rollover_hour", 0)),
        clock_suspect=d.get("clock_suspect", False),
        cache_stale=d.get("cache_stale", False),
        revoked=d.get("revoked", False),
        blocked=d.get("blocked", False),
        zone_capacity=d.get("zone_capacity"),
        zone_load=d.get("zone_load", 0),
    )


def run_vector(v: dict[str, Any]) -> str | None:
    """Run one vector; return a description of the mismatch, or None when it passes."""
    verdict = evaluate(
        _credential(v["credential"]),
        CheckInList.from_dict(v["list"]),
        [
            Prior(Direction(p["direction"]), p["at"], p.get("elsewhere", False))
            for p in v.get("priors", [])
        ],
        _context(v["context"]),
    )
    expect = v["expect"]
    got = {"reason": str(verdict.reason)}
    if "remaining" in expect:
        got["remaining"] = verdict.remaining  # type: ignore[assignment]
    if "warnings" in expect:
        got["warnings"] = [str(w) for w in verdict.warnings]  # type: ignore[assignment]
    if got != expect:
        return f"{v['id']} ({v['rule']}): expected {expect}, got {got}"
    return None


def run_vectors(path: Path | None = None) -> tuple[list[str], int]:
    doc = json.loads((path or DEFAULT_FILE).read_text(encoding="utf-8"))
    if doc.get("version") != 1:
        raise ValueError("unsupported rule vector file version")
    failures = [f for v in doc["vectors"] if (f := run_vector(v))]
    return failures, len(doc["vectors"])
