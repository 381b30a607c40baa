"""The uplink half of the box's link (sync/link.py): batches in flight, PUBACKs, the hub's acks.

LinkUplink is a mixin of Link; its methods run on the link's worker thread. The worker reads the
outbox after the last seq it handed out (OutboxReader), keeps at most MAX_IN_FLIGHT batches
awaiting a broker PUBACK and at most WINDOW awaiting the hub's ack, sends a batch again when its
`due_at` passes, and drops outbox rows only when the hub's ack names them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from sync import protocol
from sync.link_store import LinkStore, OutboxReader
from sync.protocol import MAX_IN_FLIGHT, ProtocolError

log = logging.getLogger(__name__)

WINDOW = 2 * MAX_IN_FLIGHT  # batches awaiting the hub's ack
RECORD_EVERY_S = 0.5  # the hub's ack mark is written to the ledger at most this often
POLL_S = 5.0  # re-read the outbox even without notify(): a missed wake-up only costs time


@dataclass
class _Flight:
    """One batch between its first send and the hub's ack."""

    first: int
    last: int
    payload: bytes
    mid: int | None = None  # awaiting a broker PUBACK under this mid
    sent_at: float = 0.0
    due_at: float = 0.0  # (re)send when still unacked at this time
    failures: int = 0


class LinkUplink:
    """The uplink half of Link: the attributes below are Link's (worker state)."""

    store: LinkStore
    box: str
    clock: Callable[[], float]
    resend_after: float
    _client: mqtt.Client
    _connected: bool
    _since: float
    _acked: int
    _offset: float
    _reader: OutboxReader
    _flights: dict[int, _Flight]
    _by_mid: dict[int, int]
    _status_mid: int | None
    _last_poll: float
    _recorded: int  # the ack mark stored in the ledger
    _recorded_at: float  # monotonic

    if TYPE_CHECKING:

        def _set(self, **fields: Any) -> None: ...
        def _count(self, key: str, n: int = 1) -> None: ...
        def _error(self, text: str) -> None: ...
        def _refused(self, reason: str, detail: str) -> None: ...
        def _rotation_check(self, connected: bool) -> None: ...

    def _puback(self, mid: int, rc: ReasonCode) -> None:
        first = self._by_mid.pop(mid, None)
        if first is None:
            if mid == self._status_mid and rc.is_failure:
                self._error(f"status refused: {rc}")
            return  # a batch the hub acked meanwhile, or one sent again under a new mid
        f = self._flights[first]
        f.mid = None
        if rc.is_failure:
            # e.g. 0x87 not authorized, 0x97 quota: back to pending, retried with backoff
            f.failures += 1
            f.due_at = self.clock() + min(self.resend_after, 2.0**f.failures)
            log.warning("broker refused batch %d-%d: %s", f.first, f.last, rc)
            self._error(f"publish refused: {rc}")
            self._count("publish_refused")

    def _ack(self, payload: bytes) -> None:
        now = self.clock()
        try:
            ack = protocol.parse_ack(payload)
        except ProtocolError as err:
            self._refused(err.reason, f"ack: {err.detail}")
            return
        epoch = self.store.epoch
        if ack.epoch != epoch:
            log.info("ignoring an ack for epoch %s (this ledger is %s)", ack.epoch, epoch)
            return
        # The offset only from an ack of a batch sent on this connection moments ago, half
        # the round trip corrected: an ack the broker held while the box was offline carries
        # an old hub_time and would make the clock look hours wrong.
        through = ack.acked_through
        t0 = [f.sent_at for f in self._flights.values() if f.first <= through <= f.last]
        if t0 and t0[0] >= self._since and now - t0[0] < 10:
            self._offset = ack.hub_time - (t0[0] + now) / 2
            self.store.clock(self._offset)
            self._set(clock_offset_s=self._offset)
        if ack.acked_through > self._acked:
            self._acked = ack.acked_through
            for first in [k for k, f in self._flights.items() if f.last <= self._acked]:
                f = self._flights.pop(first)
                if f.mid is not None:
                    self._by_mid.pop(f.mid, None)
            self._reader.skip_through(self._acked)
            log.debug("hub acked through %d", self._acked)
        self._set(acked_through=self._acked, last_ack_at=now)

    def _record_acked(self, *, force: bool = False) -> None:
        """Record the hub's ack mark (one meta row), at most every RECORD_EVERY_S: the rows
        through it have left the outbox. The daemon deletes them (edge/outbox_sweep.py), on
        the thread its lanes write on."""
        if self._recorded >= self._acked:
            return
        now = time.monotonic()
        if not force and now - self._recorded_at < RECORD_EVERY_S:
            return
        self.store.acked(self.store.epoch, self._acked)
        self._recorded, self._recorded_at = self._acked, now
        self._set(outbox=self.store.depth())

    def _drop_due(self) -> float | None:
        """Seconds until the ack mark is due to be recorded (None: nothing to record)."""
        if self._recorded < self._acked:
            return self._recorded_at + RECORD_EVERY_S - time.monotonic()
        return None

    def _pump(self) -> None:
        self._rotation_check(connected=False)
        self._record_acked()
        now = self.clock()
        if now - self._last_poll >= POLL_S:
            self._last_poll = now
            self._reader.wake()
            self._set(outbox=self.store.depth())
        if self._connected:
            # Sent again first, in seq order, so the hub's high-water mark moves.
            for first in sorted(self._flights):
                if self._awaiting() >= MAX_IN_FLIGHT:
                    break
                f = self._flights[first]
                if f.due_at <= now:
                    self._send(f, again=True)
            while self._awaiting() < MAX_IN_FLIGHT and len(self._flights) < WINDOW:
                batch = self._reader.next_batch()
                if batch is None:
                    break
                new = _Flight(batch.events[0].seq, batch.events[-1].seq, batch.encode())
                self._flights[new.first] = new
                self._send(new, again=False)
        self._set(
            in_flight=self._awaiting(),
            pending_acks=sum(f.last - f.first + 1 for f in self._flights.values()),
        )

    def _awaiting(self) -> int:
        return len(self._by_mid)

    def _send(self, f: _Flight, *, again: bool) -> None:
        if f.mid is not None:
            self._by_mid.pop(f.mid, None)
        info = self._client.publish(protocol.up_events(self.box), f.payload, qos=1)
        # Not connected any more: paho keeps it and sends it after the reconnect; its PUBACK
        # comes through on_publish like any other.
        f.mid, f.sent_at = info.mid, self.clock()
        f.due_at = f.sent_at + self.resend_after
        self._by_mid[info.mid] = f.first
        self._count("resent_batches" if again else "sent_batches")
