"""Catching a box up with its site's bundles (docs/sync.md "Catch-up"), the hub's side.

Every bundle the hub issues for a site is kept in the site's archive (HUB/sites/SITE/bundles/,
`{seq:08d}-{snapshot|delta|used}.bundle`). When a box reports online (its retained status names
its `cache_seq` and its ledger's `epoch`), the hub works out what the box lacks: the chain of
deltas from its sequence when the archive has every link, otherwise the newest unexpired
snapshot and the deltas after it. Those go down as bundle chunks, followed by a `caught_up`
message naming the sequence they reach; a new or replacement box waits for it before READY, so
the redemptions the site's other boxes made (the snapshot's and the used deltas' USED entries)
are known before its first scan.

Message ids are derived from (box, epoch, bundle): the same box reporting online again with the
same state queues nothing new, and a re-imaged box (new epoch) gets everything again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge import bundle as fmt
from edge.errors import BundleRefused
from sync.hub.bundles import CHUNK_SIZE, bundle_id_of, chunk_messages
from sync.hub.issuer import Hub
from sync.hub.signing import sign_message
from sync.hub.store import HubStore

log = logging.getLogger(__name__)

BUNDLE_TTL_S = 86400.0
CAUGHT_UP_TTL_S = 3600.0
KEEP_SNAPSHOTS = 2  # the archive keeps this many snapshot generations and the deltas after them


@dataclass(frozen=True)
class Archived:
    path: Path
    seq: int
    base_seq: int | None
    expires_at: int

    @property
    def is_snapshot(self) -> bool:
        return self.base_seq is None


def archive_dir(hub: Hub, site: str) -> Path:
    return hub.site_dir(site) / "bundles"


def _header(path: Path) -> fmt.Header:
    with path.open("rb") as f:
        return fmt.BundleReader(f).header


def archived(hub: Hub, site: str) -> list[Archived]:
    """The site's archived bundles, by sequence (unreadable files are skipped and logged)."""
    out: list[Archived] = []
    directory = archive_dir(hub, site)
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.bundle")):
        try:
            h = _header(path)
        except (BundleRefused, OSError) as err:
            log.warning("archive %s: unreadable bundle %s: %s", site, path.name, err)
            continue
        out.append(Archived(path, h.seq, h.base_seq, h.expires_at))
    out.sort(key=lambda a: a.seq)
    return out


def archive_bundle(hub: Hub, site: str, path: Path) -> Path:
    """Keep a copy of a bundle the hub issued for `site` (a no-op for one already there), and
    drop the generations older than KEEP_SNAPSHOTS snapshots."""
    h = _header(path)
    kind = "snapshot" if h.base_seq is None else "delta"
    directory = archive_dir(hub, site)
    directory.mkdir(parents=True, exist_ok=True)
    if path.parent.resolve() == directory.resolve():
        dest = path
    else:
        dest = directory / f"{h.seq:08d}-{kind}.bundle"
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
    snapshots = [a.seq for a in archived(hub, site) if a.is_snapshot]
    if len(snapshots) > KEEP_SNAPSHOTS:
        keep_from = snapshots[-KEEP_SNAPSHOTS]
        for a in archived(hub, site):
            if a.seq < keep_from:
                a.path.unlink(missing_ok=True)
    return dest


def plan(bundles: Iterable[Archived], have: int | None, now: float) -> tuple[list[Archived], int]:
    """(the bundles a box at sequence `have` lacks, in import order; the sequence they reach).

    The delta chain from `have` when every link is there; else the newest unexpired snapshot
    and the chain after it; nothing when the box is as new as the archive."""
    live = [b for b in bundles if b.expires_at > now]
    deltas = {b.base_seq: b for b in live if not b.is_snapshot}

    def chain(start: int) -> list[Archived]:
        out, cur = [], start
        while cur in deltas:
            out.append(deltas[cur])
            cur = deltas[cur].seq
        return out

    newest = max((b.seq for b in live), default=0)
    if have is not None and have >= newest:
        return [], have
    if have is not None:
        links = chain(have)
        if links and links[-1].seq == newest:
            return links, newest
    snapshots = [b for b in live if b.is_snapshot and (have is None or b.seq > have)]
    if not snapshots:
        links = chain(have) if have is not None else []
        return links, links[-1].seq if links else (have or 0)
    snap = snapshots[-1]
    rest = chain(snap.seq)
    return [snap, *rest], rest[-1].seq if rest else snap.seq


def _stream(box: str, epoch: str) -> str:
    return hashlib.sha256(f"{box}\0{epoch}".encode()).hexdigest()[:12]


def queue_bundle(
    store: HubStore,
    hub: Hub,
    boxes: Iterable[str],
    path: Path,
    *,
    chunk_size: int = CHUNK_SIZE,
    id_prefix: str | None = None,
    now: float | None = None,
) -> tuple[str, int]:
    """Queue a bundle file in signed chunks for each box (call inside a transaction); returns
    (bundle id, messages queued: an id already queued is not queued twice)."""
    bundle_id = bundle_id_of(path)
    if chunk_size != CHUNK_SIZE:
        # Chunks are stored on the box by (bundle id, index): the same file cut another way
        # must not share the id, or a copy by another route would mix the two sets.
        bundle_id = f"{bundle_id[:24]}-{chunk_size}"
    chunks = chunk_messages(path, bundle_id, chunk_size)
    t0 = time.time() if now is None else now
    queued = 0
    for box in boxes:
        prefix = id_prefix or f"bundle-{bundle_id[:20]}"
        for i, (msg_type, body) in enumerate(chunks):
            msg_id = f"{prefix}-{i}-{box}" if id_prefix is None else f"{prefix}-{i}"
            t = t0 + i * 1e-6  # created_at keeps the chunks (and bundles) in order
            payload = sign_message(hub, msg_type, body, BUNDLE_TTL_S, msg_id, t)
            queued += store.queue_down(msg_id, box, msg_type, payload, t, BUNDLE_TTL_S)
    return bundle_id, queued


def queue_catch_up(
    store: HubStore, hub: Hub, box: str, site: str, have: int | None, epoch: str, now: float
) -> tuple[int, int]:
    """Queue what `box` (reporting sequence `have`) lacks and then `caught_up`; call inside a
    transaction. Returns (bundles queued, the sequence they reach)."""
    todo, reach = plan(archived(hub, site), have, now)
    stream = _stream(box, epoch)
    sent = 0
    t = now
    for b in todo:
        bid = bundle_id_of(b.path)
        _, n = queue_bundle(
            store, hub, [box], b.path, id_prefix=f"catch-{stream}-{bid[:16]}", now=t
        )
        sent += n > 0
        t += 1e-3
    # The box's sequence is in the id: a box that reconnects having advanced (its earlier
    # caught_up came before its imports finished) gets a fresh one; the same state, none.
    msg_id = f"caught-{stream}-{'n' if have is None else have}-{reach}"
    body = {"site_seq": reach, "bundles": len(todo)}
    payload = sign_message(hub, "caught_up", body, CAUGHT_UP_TTL_S, msg_id, t)
    store.queue_down(msg_id, box, "caught_up", payload, t, CAUGHT_UP_TTL_S)
    if todo:
        log.info(
            "box %s at seq %s: catch-up with %d bundles to seq %d", box, have, len(todo), reach
        )
    return sent, reach
