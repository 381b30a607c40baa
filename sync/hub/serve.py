"""`edge hub serve`: the reference cloud side of sync protocol v1 (docs/sync.md).

It consumes every registered box's events through the broker, stores them idempotently
(sync/hub/store.py), acks each stream's contiguous high-water mark, records conflicts and tells
both boxes, keeps each box's online state, and delivers signed downlink messages from its
outgoing table. Small on purpose: it shows a cloud team what the boxes expect.

Threads: paho's network thread runs the callbacks, which only put tuples on a queue (and are
wrapped so an exception cannot kill that thread); one worker thread owns the database and every
publish(). The MQTT session is persistent (clean_start=False + SessionExpiryInterval, client id
"hub"), so events published while the hub is down wait in the broker, and incoming messages are
acked by hand only once stored (manual_ack): a hub stopped mid-batch gets it again.

Renewal: a registered box publishes a CSR on gw/ID/up/csr; with a Signer (the device CA) the hub
signs it for that box's identity (the topic's, which the broker's ACL ties to the connection's
certificate) and queues a `certificate` message. The message id comes from the CSR's hash, so the
box sending the same CSR again while the answer is on its way does not get a second certificate.

A downlink message leaves the outgoing table only when the broker accepted it with a plain
success. "No matching subscribers" (0x10) means the box has no session yet: the message stays and
is published again when the box reports online, or after RETRY_NO_SUBSCRIBER_S.

What each uplink message does (events, status, CSRs) is sync/hub/uplink.py (HubUplink, a mixin
of HubServer).
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.store import transaction
from sync import protocol
from sync.hub.bundles import CHUNK_SIZE, UsedDebounce, used_delta
from sync.hub.catchup import archive_bundle, queue_bundle
from sync.hub.crl_upkeep import CRL_CHECK_S, RevocationUpkeep
from sync.hub.enroll import Signer
from sync.hub.issuer import Hub
from sync.hub.registry import load_registry, load_revoked, registry_stamp
from sync.hub.revoke import BrokerReload
from sync.hub.signing import sign_message
from sync.hub.store import HUB_DB, HubStore
from sync.hub.uplink import HubUplink, is_events
from sync.pki import tls_client_context

log = logging.getLogger(__name__)

DAY = 86400
SESSION_EXPIRY_S = 7 * DAY
SUBSCRIPTION = "gw/+/up/#"
TICK_S = 0.2
RETRY_NO_SUBSCRIBER_S = 5.0
RETRY_FAILED_S = 30.0
BUNDLE_TTL_S = DAY
USED_DEBOUNCE_S = 1.0  # redemptions of one burst ride on one used delta
NO_MATCHING_SUBSCRIBERS = 0x10
MSG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
# Batches already queued are stored in one transaction (one fsync instead of one each): the
# broker hands the hub up to its max_inflight_messages (20) unacked messages at a time.
GROUP_MAX = 32


def queue_message(
    store: HubStore,
    hub: Hub,
    box: str,
    msg_type: str,
    body: dict[str, Any],
    ttl_s: float,
    msg_id: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a message and store it for `box` (in its own transaction); return its id. The
    TTL counts from now: a command queued for a box that comes back too late is dropped."""
    if msg_type not in protocol.DOWN_TYPES:
        raise ValueError(f"message type {msg_type!r}: one of {', '.join(protocol.DOWN_TYPES)}")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    msg_id = msg_id or secrets.token_hex(16)
    if not MSG_ID.fullmatch(msg_id):
        raise ValueError(f"message id {msg_id!r}: 1-100 of A-Z a-z 0-9 . _ : -")
    protocol.box_of(protocol.down_msg(box))  # raises ProtocolError for an impossible box id
    if box in load_revoked(hub.dir):
        raise ValueError(f"box {box!r} is revoked: nothing is queued for it / 设备已吊销")
    t = time.time() if now is None else now
    payload = sign_message(hub, msg_type, body, ttl_s, msg_id, t)
    with transaction(store.conn):
        if not store.queue_down(msg_id, box, msg_type, payload, t, ttl_s):
            raise ValueError(f"message id {msg_id} is already queued")
    return msg_id


def _guard(name: str, fn: Callable[..., None]) -> Callable[..., None]:
    """A paho callback that can never raise into the network thread."""

    def wrapper(*args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("hub: %s callback failed", name)

    return wrapper


class HubServer(HubUplink):
    """The hub's MQTT side. start() then close() (idempotent); send() from any thread."""

    def __init__(
        self,
        hub: Hub,
        *,
        host: str,
        port: int,
        ca: Path,
        cert: Path,
        key: Path,
        db_path: Path | None = None,
        registry: Mapping[str, str] | None = None,
        client_id: str = "hub",
        session_expiry_s: int = SESSION_EXPIRY_S,
        keepalive: int = 30,
        signer: Signer | None = None,
        broker_reload: BrokerReload | None = None,
        crl_check_s: float = CRL_CHECK_S,
    ) -> None:
        """`signer`: the device CA, to answer renewal CSRs (None: they are refused), to revoke
        the certificates a renewal superseded and to keep the CRL fresh (checked every
        `crl_check_s`); `broker_reload`: makes the broker re-read the CRL then
        (sync/hub/revoke.py)."""
        self.hub = hub
        self.signer = signer
        self.broker_reload = broker_reload
        self.host, self.port, self.keepalive = host, port, keepalive
        self.db_path = db_path or hub.dir / HUB_DB
        self._fixed = dict(registry) if registry is not None else None
        self._registry: dict[str, str] = dict(self._fixed or {})
        self._registry_stamp: tuple[int, int] | None = None
        self._revoked: dict[str, dict[str, Any]] = {}
        self._session_expiry_s = session_expiry_s
        self._q: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        self._client.tls_set_context(tls_client_context(ca, cert, key))
        self._client.max_inflight_messages_set(protocol.MAX_IN_FLIGHT)
        self._client.reconnect_delay_set(1, 10)
        c = self._client
        c.on_connect = _guard("connect", self._cb_connect)
        c.on_disconnect = _guard("disconnect", self._cb_disconnect)
        c.on_message = _guard("message", self._cb_message)
        c.on_publish = _guard("publish", self._cb_publish)
        c.on_subscribe = _guard("subscribe", self._cb_subscribe)
        # Worker state: touched only by the worker thread.
        self._store: HubStore | None = None
        self._pushback: tuple[Any, ...] | None = None  # taken from the queue, not a batch
        self._inflight: dict[int, tuple[str, str]] = {}  # mid -> (message id, box)
        self._cb_gen = 0  # successful CONNACKs (network thread): the packet ids' connection
        self._retry_at: dict[str, tuple[str, float]] = {}  # message id -> (box, when)
        self._next_tick = 0.0
        self._worker: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._closed = False
        self._used = UsedDebounce(USED_DEBOUNCE_S)  # sites owing a used delta (worker)
        # Revocation retries, broker reloads still owed, the CRL's nextUpdate (worker).
        self._upkeep = RevocationUpkeep(
            hub.dir,
            signer.ca if signer is not None else None,
            broker_reload,
            crl_check_s=crl_check_s,
            count=self._count,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._worker is not None:
            raise RuntimeError("hub server already started")
        ready = threading.Event()
        self._worker = threading.Thread(target=self._run, args=(ready,), name="hub-worker")
        self._worker.start()
        ready.wait()
        if self._start_error is not None:
            self._worker.join()
            raise self._start_error
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(
            self.host, self.port, self.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until connected and subscribed (or the session already held the subscription)."""
        if not self.subscribed.wait(timeout):
            raise TimeoutError(f"hub not subscribed to {SUBSCRIPTION} after {timeout} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            # Messages still queued were never acked: the broker delivers them again.
            self._q.put(("stop",))
            self._worker.join()
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Counters: events_new, events_duplicate, batches, conflicts, refused_<reason>..."""
        with self._stats_lock:
            return dict(self._stats)

    def send(
        self,
        box: str,
        msg_type: str,
        body: dict[str, Any],
        ttl_s: float,
        msg_id: str | None = None,
        timeout: float = 10.0,
    ) -> str:
        """Sign and queue a downlink message (stored before it is published); its id."""
        if self._worker is None or self._closed:
            raise RuntimeError("hub server is not running")
        fut: Future[str] = Future()
        self._q.put(("send", box, msg_type, body, ttl_s, msg_id, fut))
        return fut.result(timeout)

    # -- paho callbacks (network thread: enqueue only) -------------------------------------------

    def _cb_connect(self, _c: Any, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if not rc.is_failure:
            self._cb_gen += 1
        self._q.put(("connect", bool(flags.session_present), rc))

    def _cb_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connected.clear()
        self._q.put(("disconnect", rc))

    def _cb_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._q.put(("message", msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._cb_gen))

    def _cb_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._q.put(("puback", mid, rc))

    def _cb_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        if all(not rc.is_failure for rc in rcs):
            self.subscribed.set()
        else:
            log.error("hub: subscription to %s refused: %s", SUBSCRIPTION, rcs)

    # -- worker --------------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        try:
            self._store = HubStore(self.db_path)
        except BaseException as err:
            self._start_error = err
            ready.set()
            return
        ready.set()
        try:
            while True:
                item, self._pushback = self._pushback, None
                if item is None:
                    try:
                        item = self._q.get(timeout=TICK_S)
                    except queue.Empty:
                        item = None
                if item is not None and item[0] == "stop":
                    break
                try:
                    if item is not None:
                        self._handle(item)
                    if time.monotonic() >= self._next_tick:
                        self._next_tick = time.monotonic() + TICK_S
                        self._tick()
                except Exception:
                    log.exception("hub: handling %s failed", item[0] if item else "tick")
        finally:
            self._store.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def _db(self) -> HubStore:
        assert self._store is not None
        return self._store

    def _group(self, first: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """`first` (a batch) and the batches queued right behind it, up to GROUP_MAX; never
        waits. Anything else stops the group and is handled next, in its order."""
        group = [first]
        while len(group) < GROUP_MAX:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item[0] != "message" or not is_events(item[1]):
                self._pushback = item
                break
            group.append(item)
        return group

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "message":
            group = self._group(item) if is_events(item[1]) else [item]
            try:
                if is_events(item[1]):
                    self._on_event_messages([m[2] for m in group], [m[1] for m in group])
                else:
                    self._on_message(item[1], item[2])
            finally:
                # Only now: stored (committed), or refused for good. After a failure too: the
                # box resends what was not app-acked, and an unacked message would hold a
                # broker slot. A packet id belongs to one connection: a message received before
                # a reconnect comes again on the new one and is acked then, never under a
                # reused id.
                for _, _, _, mid, qos, gen in group:
                    if qos > 0 and gen == self._cb_gen:
                        self._client.ack(mid, qos)
        elif kind == "puback":
            self._on_puback(item[1], item[2])
        elif kind == "send":
            _, box, msg_type, body, ttl_s, msg_id, fut = item
            try:
                fut.set_result(
                    queue_message(self._db(), self.hub, box, msg_type, body, ttl_s, msg_id)
                )
            except Exception as err:
                fut.set_exception(err)
            self._next_tick = 0.0
        elif kind == "call":  # publish_bundle: a function run on the database's thread
            _, fn, fut = item
            try:
                fut.set_result(fn())
            except Exception as err:
                fut.set_exception(err)
            self._next_tick = 0.0
        elif kind == "connect":
            self._on_connect(item[1], item[2])
        elif kind == "disconnect":
            log.warning("hub: disconnected from the broker (%s)", item[1])
            self._inflight.clear()

    def _on_connect(self, session_present: bool, rc: ReasonCode) -> None:
        if rc.is_failure:
            log.error("hub: broker refused the connection: %s", rc)
            return
        log.info(
            "hub: connected to %s:%d (session present: %s)", self.host, self.port, session_present
        )
        self._inflight.clear()  # republished below; a box drops a second copy by id
        self.connected.set()
        if session_present:
            self.subscribed.set()
        else:
            self._client.subscribe(SUBSCRIPTION, qos=1)
        self._next_tick = 0.0

    def _tick(self) -> None:
        self._reload_registry()
        self._upkeep.tick()  # runs while disconnected too: an expired CRL locks the hub out
        self._publish_used()
        self._flush(time.time())

    def _reload_registry(self) -> None:
        stamp = registry_stamp(self.hub.dir)
        if stamp != self._registry_stamp:
            self._registry_stamp = stamp
            self._revoked = load_revoked(self.hub.dir)
            base = self._fixed if self._fixed is not None else load_registry(self.hub.dir)
            self._registry = {b: s for b, s in base.items() if b not in self._revoked}
            log.info("hub: %d boxes registered", len(self._registry))

    def _site_of(self, box: str) -> str | None:
        # Checked before every message (one stat): `edge hub register` may have just added the
        # box, `edge hub revoke` just revoked it; nothing of a revoked box is stored after that.
        self._reload_registry()
        return self._registry.get(box)

    # -- downlink ------------------------------------------------------------------------------

    def _flush(self, now: float) -> None:
        if not self.connected.is_set():
            return
        busy = {m for m, _ in self._inflight.values()}
        for msg_id, box, payload in self._db().pending_down(now):
            if len(self._inflight) >= protocol.MAX_IN_FLIGHT:
                return
            retry = self._retry_at.get(msg_id)
            if msg_id in busy or (retry is not None and retry[1] > now):
                continue
            info = self._client.publish(protocol.down_msg(box), payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # disconnected: everything waits for the next connect
            self._inflight[info.mid] = (msg_id, box)

    def _on_puback(self, mid: int, rc: ReasonCode) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            return  # an ack, or a message from before a reconnect
        msg_id, box = sent
        now = time.time()
        store = self._db()
        if rc.value == NO_MATCHING_SUBSCRIBERS:
            self._retry_at[msg_id] = (box, now + RETRY_NO_SUBSCRIBER_S)
            reason, accepted = "no_subscribers", False
            log.info("downlink %s for %s: box has no session yet; kept", msg_id, box)
        elif rc.is_failure:
            self._retry_at[msg_id] = (box, now + RETRY_FAILED_S)
            reason, accepted = f"refused:{rc}", False
            log.warning("downlink %s for %s refused by the broker: %s", msg_id, box, rc)
        else:
            self._retry_at.pop(msg_id, None)
            reason, accepted = "accepted", True
            self._count("downlink_sent")
        with transaction(store.conn):
            store.mark_down(msg_id, now, reason, accepted)

    # -- bundles (sync/hub/bundles.py) -----------------------------------------------------------

    def publish_bundle(
        self, site_or_box: str, path: Path, *, chunk_size: int = CHUNK_SIZE, timeout: float = 30.0
    ) -> str:
        """Queue a bundle file, in signed chunks, for one box or every box of a site (stored
        before it is published, TTL a day); returns the bundle id."""
        if self._worker is None or self._closed:
            raise RuntimeError("hub server is not running")
        fut: Future[str] = Future()
        self._q.put(("call", lambda: self._queue_bundle(site_or_box, path, chunk_size), fut))
        return fut.result(timeout)

    def _queue_bundle(self, site_or_box: str, path: Path, chunk_size: int = CHUNK_SIZE) -> str:
        self._reload_registry()
        if site_or_box in self._registry:
            boxes = [site_or_box]
        else:
            boxes = sorted(b for b, s in self._registry.items() if s == site_or_box)
        if not boxes:
            raise ValueError(f"{site_or_box!r} is neither a registered box nor a site with boxes")
        if site_or_box not in self._registry:  # a site's bundle: a box joining later needs it
            path = archive_bundle(self.hub, site_or_box, path)
        store = self._db()
        with transaction(store.conn):
            bundle_id, n = queue_bundle(store, self.hub, boxes, path, chunk_size=chunk_size)
        log.info("bundle %s (%d messages) queued for %s", bundle_id, n, ", ".join(boxes))
        return bundle_id

    def _publish_used(self) -> None:
        for site in self._used.due():
            try:
                path = used_delta(self.hub, self._db(), site)
                if path is not None:
                    self._queue_bundle(site, path)
                    self._count("used_deltas")
            except Exception:
                log.exception("hub: used delta for site %s failed", site)
