"""The box's side of the cloud link (docs/sync.md): outbox events up, signed messages down.

Threads. paho's network thread runs every callback; the callbacks only put a tuple on a queue
(each is wrapped so that nothing can raise into paho and kill its thread). ONE worker thread, the
link's own, owns everything else: publish(), the batches in flight, the store (LinkStore: its
SQLite connection lives on this thread), the downlink's verification and manual acks.

Uplink. The outbox is the only source of truth (paho's queue is memory only). The worker reads
events after the last seq it handed out, groups consecutive seqs into batches of at most 128 KB
(protocol.batches), keeps at most MAX_IN_FLIGHT awaiting a broker PUBACK and at most WINDOW
awaiting the hub's ack. A failure PUBACK puts the batch back (retried with backoff); a success
PUBACK only means the broker has it (0x10 "no matching subscribers" is a success). Rows leave the
outbox only when the hub's application ack names them; a batch not acked `resend_after` seconds
after it was sent goes again (the hub dedupes by (epoch, seq)). After a reconnect without a
session, what was sent but not acked is sent again at once.

Downlink (manual ack). Verified (protocol.verify_down), stored in the inbox, THEN acknowledged;
then `on_down` if it was new. A message that cannot be stored is not acknowledged, so the broker
delivers it again after the next reconnect. A refused message (unsigned, bad signature, expired,
unknown version...) is logged, counted by reason and acknowledged anyway: redelivering it forever
would help no one.

Certificate rotation (`rotate`): the new chain is loaded into the live SSLContext and the client
reconnects on the same session; the first successful CONNACK after that resolves the future with
True. Without one within the timeout the old chain goes back into the context (the files are still
the old ones) and the future says False. The CSR itself goes up through `request_certificate`.

Reconnects: paho waits a fixed second; `_pre_connect` adds an exponential, jittered wait on
top, so a fleet does not reconnect in lockstep after a cloud outage.

The uplink's batches and acks are sync/link_uplink.py (LinkUplink), the downlink's messages
sync/link_down.py (LinkDownlink): both are mixins of Link, run by its worker.
"""

from __future__ import annotations

import importlib.metadata
import logging
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.trust import TrustAnchor
from sync import protocol
from sync.certs import tls_client_context
from sync.link_down import LinkDownlink
from sync.link_store import LedgerLinkStore, LinkStore, OutboxReader
from sync.link_uplink import POLL_S, LinkUplink, _Flight
from sync.protocol import MAX_IN_FLIGHT, Down

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 86400  # a box offline for up to a day still gets what was sent meanwhile
RESEND_AFTER_S = 30.0
STOP_STATUS_WAIT_S = 2.0
ROTATE_TIMEOUT_S = 30.0
RECONNECT_RESEND_S = 3.0  # unacked batches go again this soon after a reconnect


def _version() -> str:
    try:
        return importlib.metadata.version("edge-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Link(LinkUplink, LinkDownlink):
    def __init__(
        self,
        store: LinkStore,
        *,
        host: str,
        port: int,
        ca: Path,
        cert: Path,
        key: Path,
        anchor: TrustAnchor,
        on_down: Callable[[Down], None],
        on_refused: Callable[[str, str], None] | None = None,
        keepalive: int = 30,
        clock: Callable[[], float] = time.time,
        resend_after: float = RESEND_AFTER_S,
        backoff_max: float = 60.0,
        reconnect_pause_s: float = 1.0,
        status_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """`on_down(down)` and `on_refused(reason, detail)` run on the link's thread: hand the
        work over (e.g. loop.call_soon_threadsafe), do not block. `status_extra()` adds fields
        (e.g. cache_seq) to the retained online status. `reconnect_pause_s`: paho's fixed
        pause before each reconnect attempt; the growing, jittered backoff comes on top."""
        self.store = store
        self.box = store.box
        self.host, self.port, self.keepalive = host, port, keepalive
        self.anchor = anchor
        self.on_down, self.on_refused = on_down, on_refused
        self.clock = clock
        self.resend_after = resend_after
        self.backoff_max = backoff_max
        self.reconnect_pause_s = reconnect_pause_s
        self.status_extra = status_extra
        self.version = _version()
        self._q: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _st (read by status() from any thread)
        self._st: dict[str, Any] = dict.fromkeys(
            ("since", "outbox", "last_ack_at", "clock_offset_s", "last_error")
        )
        self._st.update(connected=False, refused={}, acked_through=0, pending_acks=0)
        self._st.update(dict.fromkeys(("in_flight", "sent_batches", "resent_batches"), 0))
        self._st.update(received=0, duplicates=0, publish_refused=0)
        self._worker: threading.Thread | None = None
        self._state = "new"  # new -> started -> stopped
        # Network-thread-only: connection generation and reconnect attempts since the last
        # successful CONNACK (for the jittered backoff).
        self._cb_gen = 0
        self._attempts = 0
        # Worker-only state.
        self._connected = False
        self._since = 0.0
        self._acked = 0
        self._reader = OutboxReader(store)
        self._flights: dict[int, _Flight] = {}  # by first seq
        self._by_mid: dict[int, int] = {}
        self._offset = 0.0
        self._status_mid: int | None = None
        self._last_poll = 0.0
        self._recorded, self._recorded_at = 0, 0.0
        self._chain = (cert, key)  # what goes back into the context if a rotation fails
        self._rotation: tuple[Future[bool], float] | None = None  # (result, deadline)
        self._ctx = tls_client_context(ca, cert, key)
        self._client = self._make_client()

    # -- paho ----------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.box,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        c.tls_set_context(self._ctx)  # kept: a certificate rotation reloads it in place
        c.will_set(protocol.up_status(self.box), _status_doc("offline"), qos=1, retain=True)
        c.max_inflight_messages_set(MAX_IN_FLIGHT)
        # The growing, jittered part is _pre_connect's. paho annotates int; it only adds and
        # compares the value, so a fraction of a second works.
        pause = self.reconnect_pause_s
        c.reconnect_delay_set(pause, pause)  # type: ignore[arg-type]
        c.on_log = self._guard(self._on_log)
        c.on_pre_connect = self._guard(self._pre_connect, passthrough=OSError)
        c.on_connect = self._guard(self._on_connect)
        c.on_disconnect = self._guard(self._on_disconnect)
        c.on_publish = self._guard(self._on_publish)
        c.on_subscribe = self._guard(self._on_subscribe)
        c.on_message = self._guard(self._on_message)
        return c

    @staticmethod
    def _guard(
        fn: Callable[..., None], passthrough: type[Exception] | None = None
    ) -> Callable[..., None]:
        def guarded(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as err:
                if passthrough is not None and isinstance(err, passthrough):
                    raise  # _pre_connect's "stopping": paho counts it as a failed connect
                log.exception("link callback %s failed", fn.__name__)

        return guarded

    def _on_log(self, _c: Any, _u: Any, level: int, text: str) -> None:
        # paho 2.2 logs a clean disconnect as an ERROR ("Client is not connected"): not one.
        # The same text while the link is down (a publish or ack meanwhile) is a symptom of
        # the outage, already said once: a warning.
        if level == mqtt.MQTT_LOG_ERR and not self._stop.is_set():
            if "not connected" in text:
                log.warning("paho: %s", text)
            else:
                log.error("paho: %s", text)
        elif level == mqtt.MQTT_LOG_WARNING:
            log.warning("paho: %s", text)
        else:
            log.debug("paho: %s", text)

    def _pre_connect(self, _c: Any, _u: Any) -> None:
        # Every attempt but a process's first waits: a reconnect after a cloud outage too,
        # or every box of a fleet would come back in the same second.
        if self._cb_gen or self._attempts:
            self._stop.wait(backoff_delay(self._attempts, self.backoff_max))
        if self._stop.is_set():
            raise OSError("link stopping")
        self._attempts += 1

    def _on_connect(self, _c: Any, _u: Any, flags: Any, rc: ReasonCode, _p: Any) -> None:
        if not rc.is_failure:
            self._attempts = 0
            self._cb_gen += 1
        self._q.put(("connect", rc, bool(flags.session_present)))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._q.put(("disconnect", rc))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        self._q.put(("puback", mid, rc))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self._q.put(("suback", rcs))

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._q.put(("message", self._cb_gen, msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"link already {self._state}")
        self._state = "started"
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._worker = threading.Thread(target=self._run, name=f"link-{self.box}", daemon=True)
        self._worker.start()
        self._client.connect_async(
            self.host, self.port, self.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()

    def notify(self) -> None:
        """New rows in the outbox: wake the publisher. Any thread."""
        self._q.put(("notify",))

    def stop(self) -> None:
        """Publish a clean offline status, disconnect (no last will), join both threads.
        Idempotent; any thread but the link's own."""
        with self._lock:
            state, self._state = self._state, "stopped"
        if state != "started":
            return
        self._stop.set()
        self._q.put(("stop",))
        if self._worker is not None:
            self._worker.join()
        self._client.loop_stop()
        self._client.disconnect()  # closes a socket left by a connect that raced the stop

    def publish_status(self) -> None:
        """Publish the retained online status again with fresh fields (when connected; the
        next connection publishes it anyway). Any thread."""
        self._q.put(("status",))

    def request_certificate(self, csr_pem: bytes) -> None:
        """Publish a renewal CSR on gw/ID/up/csr (when connected; the caller asks again later
        otherwise). Any thread."""
        doc = {"v": protocol.VERSION, "box": self.box, "csr": csr_pem.decode("ascii")}
        self._q.put(("csr", protocol.canonical(doc)))

    def rotate(self, cert: Path, key: Path, timeout: float = ROTATE_TIMEOUT_S) -> Future[bool]:
        """Swap a new certificate and key into the live connection; the future says whether a
        connection with them succeeded. Any thread."""
        fut: Future[bool] = Future()
        self._q.put(("rotate", cert, key, timeout, fut))
        return fut

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self._st)
            st["refused"] = dict(self._st["refused"])
        return st

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._st.update(kw)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._st[key] += n

    def _error(self, text: str) -> None:
        with self._lock:
            self._st["last_error"] = {"at": self.clock(), "error": text}

    # -- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        self._safely(self._resume)
        try:
            while True:
                try:
                    item = self._q.get(timeout=self._tick())
                except queue.Empty:
                    item = ("tick",)
                while True:  # handle everything that came in before publishing again
                    if item[0] == "stop":
                        self._shutdown()
                        return
                    self._safely(self._handle, item)
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                self._safely(self._pump)
        finally:
            self._safely(lambda: self._record_acked(force=True))  # what was acked last
            self.store.close()
            # Whoever waits on a rotation learns it did not happen.
            if self._rotation is not None:
                self._rotation[0].set_result(False)
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item[0] == "rotate":
                    item[-1].set_result(False)

    def _resume(self) -> None:
        """Go on after the ack mark an earlier run recorded (rows through it may still be in
        the outbox, waiting for the daemon's sweep): they are not sent again."""
        self._acked = self._recorded = self.store.acked_stored()
        self._reader.skip_through(self._acked)
        self._set(acked_through=self._acked, outbox=self.store.depth())

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as err:
            # A store error (disk full, locked too long) must not end the link: what was not
            # done is redone from the outbox and the broker's session.
            log.exception("link worker error")
            self._error(f"{type(err).__name__}: {err}")
            self._stop.wait(1.0)

    def _tick(self) -> float:
        due = [f.due_at for f in self._flights.values()]
        nearest = min(due) - self.clock() if due and self._connected else POLL_S
        if self._rotation is not None:
            nearest = min(nearest, self._rotation[1] - time.monotonic())
        drop = self._drop_due()
        if drop is not None:
            nearest = min(nearest, drop)
        return max(0.05, min(POLL_S, nearest))

    def _handle(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "puback":
            self._puback(item[1], item[2])
        elif kind == "message":
            self._message(*item[1:])
        elif kind == "notify":
            self._reader.wake()
        elif kind == "status":
            if self._connected:
                self._publish_status()
        elif kind == "csr":
            if self._connected:
                self._client.publish(protocol.up_csr(self.box), item[1], qos=1)
            else:
                log.info("renewal CSR not sent: the link is down (asked again later)")
        elif kind == "rotate":
            self._rotate(*item[1:])
        elif kind == "connect":
            self._connect(item[1], item[2])
        elif kind == "disconnect":
            if self._connected:
                log.warning("link to %s:%d lost: %s", self.host, self.port, item[1])
                self._error(f"disconnected: {item[1]}")
            self._connected = False
            self._set(connected=False)
        elif kind == "suback" and any(rc.is_failure for rc in item[1]):
            log.error("subscription to the downlink refused: %s", item[1])
            self._error(f"subscribe refused: {item[1]}")

    def _rotate(self, cert: Path, key: Path, timeout: float, fut: Future[bool]) -> None:
        if self._rotation is not None:
            fut.set_result(False)  # one at a time; the caller tries again
            return
        try:
            self._ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as err:
            log.error("cannot load the new certificate: %s", err)
            fut.set_result(False)
            return
        self._rotation = (fut, time.monotonic() + timeout)
        log.info("certificate rotated into the TLS context; reconnecting")
        self._connected = False
        self._set(connected=False)
        try:
            # The verified recipe (SYNC_RESEARCH.md section 1): same client, same session.
            self._client.reconnect()
        except (OSError, ssl.SSLError) as err:
            # paho's own loop keeps trying, with the new chain, until the deadline.
            log.warning("reconnect with the new certificate failed: %s", err)

    def _rotation_check(self, connected: bool) -> None:
        if self._rotation is None:
            return
        fut, deadline = self._rotation
        if connected:
            self._rotation = None
            log.info("connected with the new certificate")
            fut.set_result(True)
        elif time.monotonic() > deadline:
            self._rotation = None
            log.error("no connection with the new certificate; back to the old one")
            self._error("certificate rotation failed; old certificate restored")
            self._ctx.load_cert_chain(str(self._chain[0]), str(self._chain[1]))
            fut.set_result(False)

    def _connect(self, rc: ReasonCode, session_present: bool) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            self._error(f"connect refused: {rc}")
            return
        self._rotation_check(connected=True)
        now = self.clock()
        self._connected, self._since = True, now
        log.info("link up to %s:%d (session %s)", self.host, self.port, session_present)
        if not session_present:
            self._client.subscribe(f"gw/{self.box}/down/#", qos=1)
        for f in self._flights.values():
            if f.mid is not None:
                f.due_at = now + self.resend_after  # paho sends it again itself
            elif not session_present:
                f.due_at = now  # the hub's ack may have been lost with the old session
            else:
                # The broker has it, but the hub's ack may have died with the old connection
                # (a hub that was cut off too acks nothing meanwhile): ask again soon, not
                # after the full resend_after. A duplicate costs the hub a lookup.
                f.due_at = min(f.due_at, now + RECONNECT_RESEND_S)
        self._reader.wake()
        self._set(connected=True, since=now)
        self._publish_status()

    def _publish_status(self) -> None:
        extra = self.status_extra() if self.status_extra else {}
        doc = _status_doc(
            "online",
            version=self.version,
            outbox=self.store.depth(),
            epoch=self.store.epoch,
            **extra,
        )
        self._status_mid = self._client.publish(
            protocol.up_status(self.box), doc, qos=1, retain=True
        ).mid

    def _shutdown(self) -> None:
        if not self._connected:
            self._client.disconnect()
            return
        # A clean stop leaves no last will, so say "offline" ourselves (retained).
        mid = self._client.publish(
            protocol.up_status(self.box), _status_doc("offline", clean=True), qos=1, retain=True
        ).mid
        deadline = time.monotonic() + STOP_STATUS_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._q.get(timeout=left)
            except queue.Empty:
                break
            if (item[0] == "puback" and item[1] == mid) or item[0] == "disconnect":
                break
        self._client.disconnect()
        self._connected = False
        self._set(connected=False)


def backoff_delay(attempt: int, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0 after a lost connection): "full
    jitter", uniform in [0, min(cap, 2**attempt)], on top of paho's fixed second."""
    return rand() * min(cap, 2.0 ** min(attempt, 16))


def _status_doc(state: str, **fields: Any) -> bytes:
    return protocol.canonical({"v": protocol.VERSION, "state": state, **fields})


__all__ = ["LedgerLinkStore", "Link", "LinkStore", "backoff_delay"]
