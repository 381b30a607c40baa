"""Counter shifts (交班): what the box's counter lanes decided since the last shift close.

One shift is open at a time. Each covers everything since the previous close: a close opens the
next shift at once, and the very first shift reaches back to the first counter redemption, so a
redemption never falls outside every shift. Its summary is read from durable sources in the
ledger:
- admits and persons by product: the redemptions made on counter lanes inside the shift's window
  [opened_at, closed_at) and not voided;
- voids: counter redemptions voided inside the window, whenever they were made (a void belongs
  to the shift in which the cashier undid it);
- denies by reason: `shift_denies`, a tally the box bumps for every counter deny
  (edge/denies.py, from `Box.observe`). The deny itself is only an outbox event (`scan_denied`),
  which leaves the ledger once the cloud acknowledges it, and the decision metrics restart with
  the box: neither can answer for a whole shift.

Closing checks that the shift asked for is still the open one, then writes the closed shift (with
its summary), its outbox event `shift_closed`, its audit entry and the next open shift in one
transaction. Everything here runs on the database thread (the ledger's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edge.decision import REASON_TEXT
from edge.errors import EdgeError
from edge.rules import Reason
from edge.service import RedemptionService
from edge.store import transaction

log = logging.getLogger(__name__)

VOID_TEXT = ("已撤销", "Voided")
# audit(target, detail): writes the audit entry inside the caller's transaction (Box.audited).
Audit = Callable[[str, str], None]


class ShiftNotOpen(EdgeError):
    """The shift asked to be closed is not the open one (closed meanwhile, e.g. at another
    screen)."""

    def __init__(self, shift_id: int, open_id: int) -> None:
        self.shift_id, self.open_id = shift_id, open_id
        super().__init__(f"shift {shift_id} is not open (the open shift is {open_id})")


def counter_lanes(svc: RedemptionService) -> list[str]:
    return sorted(n for n, lane in svc.config.lanes.items() if lane.kind == "counter")


def _open_id(svc: RedemptionService, now: float) -> tuple[int, float]:
    """The open shift (id, opened_at); opens one when none is (inside a transaction). A close
    opens the next one itself, so this opens only the first: it reaches back to the first
    counter redemption, which would otherwise belong to no shift."""
    conn = svc.ledger.conn
    row = conn.execute("SELECT id, opened_at FROM shifts WHERE closed_at IS NULL").fetchone()
    if row is not None:
        return int(row[0]), float(row[1])
    lanes = counter_lanes(svc)
    marks = ",".join("?" * len(lanes))
    (last_close,) = conn.execute("SELECT max(closed_at) FROM shifts").fetchone()
    (first,) = conn.execute(
        f"SELECT min(created_at) FROM redemptions WHERE lane IN ({marks})", lanes
    ).fetchone()
    start = last_close if last_close is not None else first if first is not None else now
    start = min(float(start), now)
    cur = conn.execute("INSERT INTO shifts (opened_at) VALUES (?)", (start,))
    assert cur.lastrowid is not None
    log.info("counter shift %d opened", cur.lastrowid)
    return int(cur.lastrowid), start


def count_deny(svc: RedemptionService, lane: str, reason: str, at: float) -> None:
    """Count one deny on a counter lane in the open shift (inside a transaction)."""
    shift_id, _ = _open_id(svc, at)
    svc.ledger.conn.execute(
        "INSERT INTO shift_denies (shift_id, lane, reason, count) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (shift_id, lane, reason) DO UPDATE SET count = count + 1",
        (shift_id, lane, reason),
    )


def note_actor(svc: RedemptionService, redemption_id: bytes, actor: str) -> None:
    """Who redeemed at the kiosk (shown in the recent list)."""
    with transaction(svc.ledger.conn):
        svc.ledger.conn.execute(
            "INSERT OR IGNORE INTO counter_actors (redemption_id, actor) VALUES (?, ?)",
            (redemption_id, actor),
        )


def current(svc: RedemptionService, now: float) -> dict[str, Any]:
    """The open shift's summary (opening a shift if none is open)."""
    with transaction(svc.ledger.conn):
        shift_id, opened_at = _open_id(svc, now)
    return _summary(svc, shift_id, opened_at, None)


def close(
    svc: RedemptionService,
    actor: str,
    note: str,
    now: float,
    *,
    shift_id: int | None = None,
    audit: Audit | None = None,
) -> dict[str, Any]:
    """Close the open shift (`shift_id`: only if it is still the open one, else ShiftNotOpen)
    and open the next: the closed row, its `shift_closed` outbox event, its audit entry and the
    new shift in one transaction. Returns the closed summary."""
    conn = svc.ledger.conn
    with transaction(conn):
        open_id, opened_at = _open_id(svc, now)
        if shift_id is not None and shift_id != open_id:
            raise ShiftNotOpen(shift_id, open_id)
        now = max(now, opened_at)
        summary = _summary(svc, open_id, opened_at, now) | {
            "closed_by": actor,
            "note": note,
            "device": svc.config.device,
        }
        conn.execute(
            "UPDATE shifts SET closed_at = ?, closed_by = ?, note = ?, summary = ? WHERE id = ?",
            (now, actor, note, json.dumps(summary, ensure_ascii=False), open_id),
        )
        svc.ledger.append_event("shift_closed", summary, now)
        if audit is not None:
            keys = ("admits", "denies", "voids", "opened_at", "closed_at")
            audit(f"shift {open_id}", json.dumps({k: summary[k] for k in keys}))
        conn.execute("INSERT INTO shifts (opened_at) VALUES (?)", (now,))
    log.info(
        "counter shift %d closed by %s: %d admits, %d denies, %d voids",
        open_id,
        actor,
        summary["admits"],
        summary["denies"],
        summary["voids"],
    )
    return summary


def _summary(
    svc: RedemptionService, shift_id: int, opened_at: float, closed_at: float | None
) -> dict[str, Any]:
    conn = svc.ledger.conn
    lanes = counter_lanes(svc)
    marks = ",".join("?" * len(lanes))
    end = float("inf") if closed_at is None else closed_at
    rows = conn.execute(
        f"SELECT product, count(*), sum(coalesce(passed, persons)) FROM redemptions "
        f"WHERE lane IN ({marks}) AND created_at >= ? AND created_at < ? AND state != 'voided' "
        "GROUP BY product ORDER BY product",
        (*lanes, opened_at, end),
    ).fetchall()
    # By the time of the void (a voided row's updated_at; it never changes again).
    (voids,) = conn.execute(
        f"SELECT count(*) FROM redemptions WHERE lane IN ({marks}) AND state = 'voided' "
        "AND updated_at >= ? AND updated_at < ?",
        (*lanes, opened_at, end),
    ).fetchone()
    names = product_names(svc)
    by_product = []
    for product, n, persons in rows:
        by_product.append(
            {
                "product": product,
                "product_name": names.get(product, product),
                "count": int(n),
                "persons": int(persons or 0),
            }
        )
    by_product.sort(key=lambda p: (-p["count"], p["product"]))
    by_reason = []
    for reason, n in conn.execute(
        "SELECT reason, sum(count) FROM shift_denies WHERE shift_id = ? GROUP BY reason "
        "ORDER BY sum(count) DESC, reason",
        (shift_id,),
    ):
        zh, en = reason_text(str(reason))
        by_reason.append({"reason": reason, "count": int(n), "zh": zh, "en": en})
    return {
        "shift_id": shift_id,
        "opened_at": iso(opened_at),
        "closed_at": iso(closed_at) if closed_at is not None else None,
        "opened_ts": opened_at,
        "closed_ts": closed_at,
        "lanes": lanes,
        "by_product": by_product,
        "by_reason": by_reason,
        "admits": sum(p["count"] for p in by_product),
        "persons": sum(p["persons"] for p in by_product),
        "denies": sum(r["count"] for r in by_reason),
        "voids": int(voids),
    }


def recent(svc: RedemptionService, limit: int) -> list[dict[str, Any]]:
    """The newest redemptions on counter lanes, with who redeemed them at the kiosk."""
    lanes = counter_lanes(svc)
    marks = ",".join("?" * len(lanes))
    rows = svc.ledger.conn.execute(
        "SELECT r.id, r.created_at, r.product, r.kind, r.state, r.lane, r.persons, r.forced, "
        f"a.actor FROM redemptions r LEFT JOIN counter_actors a ON a.redemption_id = r.id "
        f"WHERE r.lane IN ({marks}) ORDER BY r.created_at DESC LIMIT ?",
        (*lanes, limit),
    ).fetchall()
    names = product_names(svc)
    return [
        {
            "redemption_id": bytes(rid).hex(),
            "at": iso(at),
            "created_ts": at,
            "product": product,
            "product_name": names.get(product, product),
            "kind": kind,
            "state": state,
            "lane": lane,
            "persons": persons,
            "forced": bool(forced),
            "actor": actor,
        }
        for rid, at, product, kind, state, lane, persons, forced, actor in rows
    ]


def product_names(svc: RedemptionService) -> dict[str, str]:
    st = svc.view.state
    if st is None:
        return {}
    return {pid: str(p.get("name") or pid) for pid, p in st.products.items()}


def reason_text(reason: str) -> tuple[str, str]:
    try:
        return REASON_TEXT[Reason(reason)]
    except ValueError:
        return (reason, reason)


def slip_data(summary: dict[str, Any], cashier: str, fmt: Any) -> dict[str, Any]:
    """The `shift_close` print template's data; `fmt(ts)` formats a time in the site's zone.
    By result: admits, each deny reason, voids; the total is every decision counted."""
    by_product: dict[str, int] = {}
    for p in summary["by_product"]:
        label = str(p["product_name"])[:60]
        by_product[label] = by_product.get(label, 0) + int(p["count"])
    ok_zh, ok_en = REASON_TEXT[Reason.OK]
    by_reason = {f"{ok_zh} {ok_en}": int(summary["admits"])}
    for r in summary["by_reason"]:
        by_reason[f"{r['zh']} {r['en']}"[:60]] = int(r["count"])
    by_reason[f"{VOID_TEXT[0]} {VOID_TEXT[1]}"] = int(summary["voids"])
    return {
        "cashier": cashier,
        "opened_at": fmt(summary["opened_ts"]),
        "closed_at": fmt(summary["closed_ts"]),
        "by_product": by_product,
        "by_reason": by_reason,
        "total": sum(by_reason.values()),
    }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")
