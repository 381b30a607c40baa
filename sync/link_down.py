"""The downlink half of the box's link (sync/link.py): what arrives on gw/ID/down/#.

LinkDownlink is a mixin of Link; its methods run on the link's worker thread. The hub's acks go to
the uplink (sync/link_uplink.py); a signed message is verified (protocol.verify_down), stored in
the inbox, THEN acknowledged, then handed to `on_down` if it was new. One that cannot be stored is
not acknowledged (the broker delivers it again); one refused is counted, logged and acknowledged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from edge.trust import TrustAnchor
from sync import protocol
from sync.link_store import LinkStore
from sync.protocol import Down, ProtocolError

log = logging.getLogger(__name__)


class LinkDownlink:
    """The downlink half of Link: the attributes below are Link's (worker state, but `_lock`
    and `_st`, which status() reads from any thread)."""

    store: LinkStore
    box: str
    anchor: TrustAnchor
    clock: Callable[[], float]
    on_down: Callable[[Down], None]
    on_refused: Callable[[str, str], None] | None
    _client: mqtt.Client
    _lock: threading.Lock
    _st: dict[str, Any]
    _cb_gen: int
    _connected: bool
    _offset: float

    if TYPE_CHECKING:

        def _count(self, key: str, n: int = 1) -> None: ...
        def _error(self, text: str) -> None: ...
        def _ack(self, payload: bytes) -> None: ...

    def _message(self, gen: int, mid: int, qos: int, topic: str, payload: bytes) -> None:
        if topic == protocol.down_ack(self.box):
            self._ack(payload)
        elif topic == protocol.down_msg(self.box):
            if not self._downlink(payload):
                return  # not stored: no ack, the broker delivers it again after a reconnect
        else:
            self._refused("unknown_topic", topic[:120])
        # A mid belongs to one connection; after a reconnect the broker resends what was not
        # acked, and that copy is acked when it comes through here again.
        if qos and gen == self._cb_gen and self._connected:
            self._client.ack(mid, qos)

    def _downlink(self, payload: bytes) -> bool:
        try:
            # Expiry on the box's clock corrected by the offset to the hub's.
            now = self.clock() + self._offset
            down = protocol.verify_down(payload, self.anchor, self.store.site, now)
        except ProtocolError as err:
            self._refused(err.reason, err.detail)
            return True
        try:
            fresh = self.store.accept(down, payload)
        except Exception as err:
            log.exception("cannot store downlink message %s; not acknowledged", down.id)
            self._error(f"inbox: {type(err).__name__}: {err}")
            return False
        if not fresh:
            log.info("downlink %s %s delivered again; already stored", down.type, down.id)
            self._count("duplicates")
            return True
        self._count("received")
        try:
            self.on_down(down)
        except Exception:
            # It is in the inbox: the daemon handles what is left there after a restart.
            log.exception("on_down failed for %s %s", down.type, down.id)
        return True

    def _refused(self, reason: str, detail: str) -> None:
        log.warning("downlink refused (%s): %s", reason, detail)
        with self._lock:
            refused = self._st["refused"]
            refused[reason] = refused.get(reason, 0) + 1
        if self.on_refused is not None:
            try:
                self.on_refused(reason, detail)
            except Exception:
                log.exception("on_refused failed")
