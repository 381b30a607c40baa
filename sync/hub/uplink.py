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
from sync.hub.store import HubStore
from sync.pki import CsrRefused, cert_info

log = logging.getLogger(__name__)

DAY = 86400
CONFLICT_TTL_S = 7 * DAY
CERT_TTL_S = 7 * DAY


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
        with transaction(self._db().conn):
            self._db().refuse(box, reason, detail, time.time())

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            box = protocol.box_of(topic)
        except protocol.ProtocolError as err:
            self._refuse("?", err.reason, err.detail)
            return
        what = topic.split("/", 2)[2]
        if what == "up/status" and not payload:
            return  # a retained status being cleared
        site = self._site_of(box)
        if site is None and box in self._revoked:
            why = self._revoked[box].get("reason", "")
            self._refuse(box, "revoked", f"{box} was revoked ({why}); {what} ignored")
        elif site is None:
            self._refuse(box, "unknown_box", f"{box} is not in the registry ({what})")
        elif what == "up/events":
            self._on_events(box, site, payload)
        elif what == "up/status":
            self._on_status(box, site, payload)
        elif what == "up/csr":
            self._on_csr(box, payload)
        else:
            self._refuse(box, "unknown_topic", topic[:120])

    def _on_events(self, box: str, site: str, payload: bytes) -> None:
        try:
            batch = protocol.parse_batch(payload, box)
        except protocol.ProtocolError as err:
            self._refuse(box, err.reason, err.detail)
            return
        if batch.site != site:
            self._refuse(box, "wrong_site", f"batch names {batch.site!r}; registered to {site!r}")
            return
        now = time.time()
        store = self._db()
        with transaction(store.conn):
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
        self._used.note(site, batch.events)
        self._count("batches")
        self._count("events_new", res.new)
        self._count("events_duplicate", res.duplicates)
        self._count("conflicts", len(res.conflicts))
        first, last = batch.events[0].seq, batch.events[-1].seq
        log.info(
            "batch box=%s epoch=%s seq=%d-%d new=%d dup=%d acked_through=%d",
            *(box, batch.epoch, first, last, res.new, res.duplicates, res.acked_through),
        )
        for c in res.conflicts:
            boxes = " and ".join(str(side["box"]) for side in c.sides)
            log.warning(
                "conflict %s: %s (%s) used on %s", c.id[:12], c.canonical_id, c.list_id, boxes
            )
        if self.connected.is_set():
            ack = protocol.encode_ack(batch.epoch, res.acked_through, time.time())
            self._client.publish(protocol.down_ack(box), ack, qos=1)
        if res.conflicts:
            self._next_tick = 0.0
        renewed = [e for e in batch.events if e.type == "cert_renewed"]
        if renewed:
            self._superseded(box, renewed[-1].body)

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
