"""What the reference hub does with each message a box publishes: events, status, renewal CSRs.

HubUplink is a mixin of HubServer (sync/hub/serve.py); its methods run on the hub's worker thread,
which owns the database. Events are stored and acked (sync/hub/store.py), conflicts reported to
both boxes, an online status triggers the catch-up (sync/hub/catchup.py) and a CSR is signed for
the topic's box and answered with a `certificate` message. A message that cannot be used is
refused: counted per box and reason in hub.db, logged, never raised.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from edge.store import transaction
from sync import protocol
from sync.hub.bundles import UsedDebounce
from sync.hub.catchup import queue_catch_up
from sync.hub.crl_upkeep import RevocationUpkeep
from sync.hub.enroll import Signer, record_issued
from sync.hub.issuer import Hub
from sync.hub.registry import load_revoked
from sync.hub.signing import sign_message
from sync.hub.store import BatchResult, HubStore
from sync.pki import CsrRefused, cert_info

log = logging.getLogger(__name__)

DAY = 86400
CONFLICT_TTL_S = 7 * DAY
CERT_TTL_S = 7 * DAY


def is_events(topic: str) -> bool:
    """gw/ID/up/events: a batch, which the worker may store in a group with others."""
    return topic.split("/", 2)[2:] == ["up/events"]


class HubUplink:
    """The uplink half of HubServer: the attributes below are HubServer's (worker state)."""

    hub: Hub
    signer: Signer | None
    connected: threading.Event
    _client: mqtt.Client
    _revoked: dict[str, dict[str, Any]]
    _used: UsedDebounce
    _upkeep: RevocationUpkeep
    _retry_at: dict[str, tuple[str, float]]
    _next_tick: float

    if TYPE_CHECKING:

        def _count(self, key: str, n: int = 1) -> None: ...
        def _db(self) -> HubStore: ...
        def _site_of(self, box: str) -> str | None: ...

    def _refuse(self, box: str, reason: str, detail: str) -> None:
        self._count(f"refused_{reason}")
        log.warning("hub: refused a message from %s: %s (%s)", box, reason, detail)
        store = self._db()
        if store.conn.in_transaction:  # a group of batches (_on_event_messages): part of it
            store.refuse(box, reason, detail, time.time())
            return
        with transaction(store.conn):
            store.refuse(box, reason, detail, time.time())

    def _sender(self, topic: str, payload: bytes) -> tuple[str, str, str] | None:
        """(box, site, what) of a message to act on; None when it was refused or is nothing."""
        try:
            box = protocol.box_of(topic)
        except protocol.ProtocolError as err:
            self._refuse("?", err.reason, err.detail)
            return None
        what = topic.split("/", 2)[2]
        if what == "up/status" and not payload:
            return None  # a retained status being cleared
        site = self._site_of(box)
        if site is None and box in self._revoked:
            why = self._revoked[box].get("reason", "")
            self._refuse(box, "revoked", f"{box} was revoked ({why}); {what} ignored")
        elif site is None:
            self._refuse(box, "unknown_box", f"{box} is not in the registry ({what})")
        else:
            return box, site, what
        return None

    def _on_message(self, topic: str, payload: bytes) -> None:
        if is_events(topic):
            self._on_event_messages([payload], [topic])
            return
        sender = self._sender(topic, payload)
        if sender is None:
            return
        box, site, what = sender
        if what == "up/status":
            self._on_status(box, site, payload)
        elif what == "up/csr":
            self._on_csr(box, payload)
        else:
            self._refuse(box, "unknown_topic", topic[:120])

    def _on_event_messages(self, payloads: list[bytes], topics: list[str]) -> None:
        """Store several up/events messages in one transaction (one fsync for the group, not
        one per batch), each in its own savepoint so a batch that fails to store rolls back
        alone; then, committed, ack each stream's high-water mark. An ack means stored: none
        is published before the commit, and a failed batch is not acked (the box resends it)."""
        store = self._db()
        stored: list[tuple[protocol.Batch, BatchResult]] = []
        with transaction(store.conn):
            for topic, payload in zip(topics, payloads, strict=True):
                store.conn.execute("SAVEPOINT message")
                try:
                    got = self._store_events(topic, payload)
                except Exception:
                    store.conn.execute("ROLLBACK TO message")
                    self._count("batches_failed")
                    log.exception("hub: storing a batch on %s failed; not acked", topic)
                    got = None
                store.conn.execute("RELEASE message")
                if got is not None:
                    stored.append(got)
        self._count("event_groups")
        acks: dict[tuple[str, str], int] = {}
        for batch, res in stored:
            self._stored(batch, res)
            key = (batch.box, batch.epoch)
            acks[key] = max(acks.get(key, 0), res.acked_through)
        if self.connected.is_set():
            for (box, epoch), acked_through in acks.items():
                ack = protocol.encode_ack(epoch, acked_through, time.time())
                self._client.publish(protocol.down_ack(box), ack, qos=1)
        for batch, _ in stored:
            renewed = [e for e in batch.events if e.type == "cert_renewed"]
            if renewed:
                self._superseded(batch.box, renewed[-1].body)

    def _store_events(
        self, topic: str, payload: bytes
    ) -> tuple[protocol.Batch, BatchResult] | None:
        """Store one batch (inside the group's transaction); None when it was refused."""
        sender = self._sender(topic, payload)
        if sender is None:
            return None
        box, site, _ = sender
        try:
            batch = protocol.parse_batch(payload, box)
        except protocol.ProtocolError as err:
            self._refuse(box, err.reason, err.detail)
            return None
        if batch.site != site:
            self._refuse(box, "wrong_site", f"batch names {batch.site!r}; registered to {site!r}")
            return None
        now = time.time()
        store = self._db()
        res = store.store_batch(batch, site, now)
        for conflict in res.conflicts:
            for side in conflict.sides:
                target = str(side["box"])
                if target in self._revoked:
                    continue  # a revoked box gets nothing more
                msg_id = f"conflict-{conflict.id[:24]}-{target}"
                payload_down = sign_message(
                    self.hub, "conflict", conflict.body(), CONFLICT_TTL_S, msg_id, now
                )
                store.queue_down(msg_id, target, "conflict", payload_down, now, CONFLICT_TTL_S)
        return batch, res

    def _stored(self, batch: protocol.Batch, res: BatchResult) -> None:
        """What follows a committed batch: counters, the log, the site's used delta."""
        self._used.note(batch.site, batch.events)  # the registered site: checked
        self._count("batches")
        self._count("events_new", res.new)
        self._count("events_duplicate", res.duplicates)
        self._count("conflicts", len(res.conflicts))
        first, last = batch.events[0].seq, batch.events[-1].seq
        log.info(
            "batch box=%s epoch=%s seq=%d-%d new=%d dup=%d acked_through=%d",
            *(batch.box, batch.epoch, first, last, res.new, res.duplicates, res.acked_through),
        )
        for c in res.conflicts:
            boxes = " and ".join(str(side["box"]) for side in c.sides)
            log.warning(
                "conflict %s: %s (%s) used on %s", c.id[:12], c.canonical_id, c.list_id, boxes
            )
        if res.conflicts:
            self._next_tick = 0.0

    def _superseded(self, box: str, body: dict[str, Any]) -> None:
        """A box works with its renewed certificate: revoke its older ones (idempotent). The
        batch is acked already: a failure is kept and retried by the upkeep, not dropped."""
        serial = body.get("serial")
        self._upkeep.superseded(box, serial if isinstance(serial, str) else None)

    def _on_status(self, box: str, site: str, payload: bytes) -> None:
        try:
            doc = protocol.load(payload)
        except protocol.ProtocolError as err:
            self._refuse(box, err.reason, err.detail)
            return
        state = doc.get("state")
        if state not in ("online", "offline"):
            self._refuse(box, "malformed", f"status state {state!r}")
            return
        with transaction(self._db().conn):
            self._db().set_status(box, site, doc, time.time())
        log.info("box %s is %s", box, state)
        if state == "online":
            self._catch_up(box, site, doc)
            # Its session exists now: what "no matching subscribers" held back goes again.
            for msg_id in [m for m, (b, _) in self._retry_at.items() if b == box]:
                del self._retry_at[msg_id]
            self._next_tick = 0.0

    def _catch_up(self, box: str, site: str, doc: dict[str, Any]) -> None:
        """Queue the bundles an online box lacks, then `caught_up` (sync/hub/catchup.py)."""
        have, epoch = doc.get("cache_seq"), doc.get("epoch")
        if have is not None and (not isinstance(have, int) or isinstance(have, bool)):
            self._refuse(box, "malformed", f"status cache_seq {have!r}")
            return
        try:
            store = self._db()
            with transaction(store.conn):
                queue_catch_up(store, self.hub, box, site, have, str(epoch or "-"), time.time())
        except Exception:
            log.exception("hub: catch-up for %s failed", box)

    def _on_csr(self, box: str, payload: bytes) -> None:
        """A renewal request: sign it for the topic's box, answer with a `certificate`."""
        try:
            doc = protocol.load(payload)
            csr = doc.get("csr")
            if doc.get("box") != box or not isinstance(csr, str):
                raise protocol.ProtocolError("malformed", "csr: {v, box (the topic's), csr}")
        except protocol.ProtocolError as err:
            self._refuse(box, err.reason, err.detail)
            return
        if self.signer is None:
            self._refuse(box, "no_ca", "this hub runs without a device CA (--device-ca)")
            return
        store = self._db()
        msg_id = f"cert-{hashlib.sha256(csr.encode()).hexdigest()[:32]}"
        now = time.time()
        row = store.conn.execute(
            "SELECT accepted_at, expires_at FROM outgoing WHERE id = ?", (msg_id,)
        ).fetchone()
        if row is not None and row[0] is None and row[1] > now:
            log.info("renewal CSR from %s again; its certificate is on its way", box)
            return
        if row is not None:
            msg_id = f"{msg_id}-{int(now)}"  # delivered or expired: the box asks again
        try:
            cert = self.signer.sign(csr.encode(), box)
        except CsrRefused as err:
            self._refuse(box, f"csr_{err.reason}", err.detail)
            return
        serial = record_issued(self.hub.dir, box, cert, "renewal", now)  # for revocation
        body = {"cert": cert.decode("ascii")}
        signed = sign_message(self.hub, "certificate", body, CERT_TTL_S, msg_id, now)
        with transaction(store.conn):
            # `edge hub revoke` may have run since the check before this message: it reads the
            # box's certificates after its registry change, and its retire() waits for this
            # transaction, so the certificate is either seen here or revoked and retired there.
            revoked = box in load_revoked(self.hub.dir)
            if not revoked:
                store.queue_down(msg_id, box, "certificate", signed, now, CERT_TTL_S)
        if revoked:
            self._upkeep.revoke_late(box, serial)
            self._refuse(box, "revoked", f"{box} was revoked while its CSR was signed")
            return
        self._count("certificates_issued")
        log.info("renewed the certificate of %s (serial %x)", box, cert_info(cert).serial)
        self._next_tick = 0.0
