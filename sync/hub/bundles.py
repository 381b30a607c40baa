"""Bundles down the link (docs/sync.md "Downlink", type `bundle_chunk`), the hub's side.

A bundle file is cut into chunks, each its own signed downlink message, so a large snapshot
crosses the broker in pieces that the box stores as they come (edge/bundle_inbox.py) and
assembles once all are there: a lost connection resumes where it was, not from the start. Every
chunk names the whole file's sha256 and size, so the box verifies the assembled file before it
imports it (and the import verifies the bundle's own signature as for any bundle).

The site's "used" delta: the redemptions stored from the site's boxes (confirmed, not voided),
as USED entries of a signed delta bundle with the site's next sequence, sent to every box of
the site. A box ignores the entries whose redemption id is its own (edge/service.py), so a ticket
admitted at gate A is refused at gate B (`used_elsewhere`) once both have synced. Every box gets
every delta, the one whose redemptions it carries too: deltas chain on the site's sequence
(`base_seq`), so a box that skipped one would refuse all the later ones as `wrong_base`.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sync.hub.issuer import BundleContent, Hub
from sync.hub.store import HubStore
from sync.protocol import Event

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
USED_EXPIRES_DAYS = 30.0
USED_EVENT_TYPES = frozenset({"redemption", "redemption_confirmed", "redemption_voided"})
CURSOR_KEY = "used_through"  # in the site's state.json: received_at of the last event shipped


def bundle_id_of(bundle_file: Path) -> str:
    """A stable id for a bundle file (the same file gets the same id, so a chunk delivered twice
    lands on the same place on the box)."""
    return hashlib.sha256(bundle_file.read_bytes()).hexdigest()[:32]


def chunk_messages(
    bundle_file: Path, bundle_id: str, chunk_size: int = CHUNK_SIZE
) -> list[tuple[str, dict[str, Any]]]:
    """The downlink messages (type, body) carrying `bundle_file`, in order."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    data = bundle_file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    count = max(1, -(-len(data) // chunk_size))
    return [
        (
            "bundle_chunk",
            {
                "bundle_id": bundle_id,
                "index": i,
                "count": count,
                "sha256": digest,
                "size": len(data),
                "data": base64.b64encode(data[i * chunk_size : (i + 1) * chunk_size]).decode(),
            },
        )
        for i in range(count)
    ]


# -- the site's "used" delta ----------------------------------------------------------------------


def _site_boxes(store: HubStore, site: str) -> list[str]:
    return [str(b) for (b,) in store.conn.execute("SELECT box FROM boxes WHERE site = ?", (site,))]


def _used_entry(rid: str, row: tuple[Any, ...]) -> tuple[bytes, bytes, str, str, int, int] | None:
    """The USED entry for a redemption from its row (canonical_id, list_id, direction, voided,
    at, passed), or None when it is not (or no longer) a use: voided, not confirmed yet (passed
    NULL: sync/hub/store.py sets it as the confirmation is stored), nobody passed, or missing
    what the box keys on."""
    cid, list_id, direction, voided, at, passed = row
    if voided or not cid or not list_id or direction not in ("entry", "exit"):
        return None
    # None: still pending (the gate may not open, the box may void it); 0: nobody passed.
    if not isinstance(passed, int) or passed < 1:
        return None
    try:
        rid_b, cid_b = bytes.fromhex(rid), bytes.fromhex(str(cid))
    except ValueError:
        return None
    if len(rid_b) != 16 or len(cid_b) != 16:
        return None
    return (rid_b, cid_b, str(list_id), str(direction), min(passed, 255), int(at or 0))


def used_entries(
    store: HubStore, site: str, since: float
) -> tuple[list[tuple[bytes, bytes, str, str, int, int]], float]:
    """USED entries for the redemptions of the site's boxes whose redemption or confirmation
    the hub stored after `since` (received_at), and the new cursor."""
    boxes = _site_boxes(store, site)
    if not boxes:
        return [], since
    marks = ",".join("?" * len(boxes))
    # One query: each redemption id once (the body's `id` or `redemption_id` when it is a
    # string, else the event's, read by SQLite's JSON functions: no body reaches Python) with
    # its row, where the hub keeps how many passed.
    rows = store.conn.execute(
        "SELECT t.rid, t.received_at, r.canonical_id, r.list_id, r.direction, r.voided, r.at, "
        "r.passed FROM (SELECT rid, max(received_at) AS received_at FROM (SELECT received_at, CASE "
        "WHEN json_type(body, '$.' || key) = 'text' THEN json_extract(body, '$.' || key) "
        "ELSE redemption_id END AS rid FROM (SELECT received_at, body, redemption_id, "
        "CASE type WHEN 'redemption' THEN 'id' ELSE 'redemption_id' END AS key "
        # By the cursor's index: led by box, the planner would read the boxes' whole history.
        f"FROM events INDEXED BY events_by_received WHERE received_at > ? "
        f"AND type IN ('redemption', 'redemption_confirmed') AND box IN ({marks}))) "
        "GROUP BY rid) AS t LEFT JOIN redemptions AS r ON r.id = t.rid",
        (since, *boxes),
    ).fetchall()
    cursor = max([since, *(float(row[1]) for row in rows)])
    # A redemption the hub has no row for comes back as NULLs: no canonical id, no entry.
    found = (_used_entry(row[0], row[2:]) for row in rows if isinstance(row[0], str))
    entries = [e for e in found if e is not None]
    entries.sort(key=lambda e: e[0])  # key order: the box appends to its B-tree
    return entries, cursor


def used_delta(
    hub: Hub, store: HubStore, site: str, since: float | None = None, now: float | None = None
) -> Path | None:
    """Write the site's next delta bundle with the uses stored since `since` (default: the
    cursor the last delta recorded); None when there is nothing new. The cursor moves only once
    the bundle is written."""
    state = hub.site_state(site)
    start = float(state.get(CURSOR_KEY, 0.0)) if since is None else since
    entries, cursor = used_entries(store, site, start)
    if not entries:
        if cursor > start:
            state[CURSOR_KEY] = cursor
            hub.save_site_state(site, state)
        return None
    if state.get("seq", 0) < 1:
        log.warning("site %s has no bundle yet; its used delta waits for a snapshot", site)
        return None
    out_dir = hub.site_dir(site) / "bundles"
    out_dir.mkdir(parents=True, exist_ok=True)
    seq = int(state["seq"]) + 1
    out = out_dir / f"{seq:08d}-used.bundle"
    t = int(time.time() if now is None else now)
    hub.write_bundle(
        site,
        out,
        BundleContent(used=entries),
        snapshot=False,
        now=t,
        expires_days=USED_EXPIRES_DAYS,
    )
    state = hub.site_state(site)  # write_bundle saved the new seq
    state[CURSOR_KEY] = cursor
    hub.save_site_state(site, state)
    log.info("site %s: used delta seq %d with %d uses", site, seq, len(entries))
    return out


class UsedDebounce:
    """Which sites owe a used delta: a batch with redemption events marks its site due after
    `delay_s`, and later batches in that window ride on the same delta. While a site's boxes
    send more than `drain_rate` events a second (a box draining the backlog of an outage: a
    live gate makes a few a second), the window is `drain_delay_s`: every box of the site
    imports each delta, and a delta a second costs each box's lanes more than the late
    news is worth (those uses were made while the box was offline anyway). Worker only."""

    def __init__(
        self, delay_s: float = 1.0, drain_delay_s: float = 10.0, drain_rate: float = 200.0
    ) -> None:
        self.delay_s, self.drain_delay_s, self.drain_rate = delay_s, drain_delay_s, drain_rate
        self._due: dict[str, float] = {}
        self._rate: dict[str, tuple[float, float]] = {}  # site: (window start, events in it)

    def note(self, site: str, events: Sequence[Event], now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        start, n = self._rate.get(site, (t, 0.0))
        if t - start >= 1.0:
            start, n = t, 0.0
        n += len(events)
        self._rate[site] = (start, n)
        if not any(e.type in USED_EVENT_TYPES for e in events):
            return
        delay = self.drain_delay_s if n > self.drain_rate else self.delay_s
        self._due.setdefault(site, t + delay)

    def due(self, now: float | None = None) -> list[str]:
        t = time.monotonic() if now is None else now
        sites = [s for s, at in self._due.items() if at <= t]
        for s in sites:
            del self._due[s]
        return sites


def snapshot_used(db: Path, site: str) -> list[tuple[bytes, bytes, str, str, int, int]]:
    """Every use the hub holds for the site (for a snapshot: it replaces the box's whole cache,
    so it must repeat what the used deltas told the box). Empty when there is no hub database."""
    if not db.exists():
        return []
    store = HubStore(db, create=False)
    try:
        return used_entries(store, site, 0.0)[0]
    finally:
        store.close()
