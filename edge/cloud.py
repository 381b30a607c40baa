"""The daemon's cloud link (composition root: it wires sync/ into the box).

Outbox events go up through sync.link.Link, run in its own process (sync/link_proc.py, driven
by sync/link_client.py's LinkClient: its Python work must not hold the lanes' GIL); signed
downlink messages, already stored in the inbox by the link before their PUBACK, are handled here
on the loop: a print job goes to the spool under the message's id (printed once), a door command
to the locker bank (audited, actor "cloud"), a conflict report to the bus and the outbox. Each is
marked handled in the inbox; what is left unhandled by a crash is handled at the next start (and
what the link process stored but did not hand over before dying, when it is restarted).

Certificate renewal (sync/provision.py Renewal): a loop checks the live certificate at start and
then every minute (more often for a short-lived one); at two thirds of its life it makes a new
key and CSR (*.new in the state dir) and sends the CSR up. The hub's `certificate` message is
checked against the pending key, swapped into the live TLS connection, and only once a connection
with it has succeeded does it replace the live files. Expiry close without a renewal raises a
"cert" bus event and a `cert_expiring` outbox event (at most once a day).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from edge.bundle_inbox import BundleReceiver, active_seq
from edge.cloud_config import on_config, on_reload_command
from edge.config_sections import SyncConfig
from edge.store import transaction
from sync.certs import cert_info, renew_due
from sync.link_client import LinkClient
from sync.link_store import inbox_done, inbox_unhandled
from sync.protocol import Down, ProtocolError, load
from sync.provision import ProvisionError, Renewal, alert_due

if TYPE_CHECKING:
    from edge.box import Box, Loop

log = logging.getLogger(__name__)
NOTIFY_S = 0.2  # outbox rows are announced to the link at most this often
RENEW_CHECK_S = 60.0
ALERT_REPEAT_S = 86400.0
CAUGHT_UP_KEY = "caught_up"  # ledger meta: "SEQ AT" once the box first caught up with its site
CAUGHT_UP_WAIT_S = 60.0  # a `caught_up` waits this long for the bundles before it


class CloudLink:
    """A daemon extension: `start(box)`, `loops()`, `stop()`."""

    def __init__(self, cfg: SyncConfig) -> None:
        self.cfg = cfg
        self.link: LinkClient | None = None
        self.box: Box | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.renewal: Renewal | None = None
        self._csr_sent_at = 0.0
        self._rotating = False
        self._alerted_at: float | None = None
        self._deferred: list[Down] = []  # stored certificates, handled once the loops run
        self._bundles: BundleReceiver | None = None  # made at the first bundle_chunk
        self._caught_up: asyncio.Event | None = None  # set by the hub's `caught_up`
        self._waited = False  # the wait before READY happens once per process, not per reload
        self._handling: set[str] = set()  # downlink ids handed over and not yet marked done

    async def start(self, box: Box) -> None:
        self.box, self._loop = box, asyncio.get_running_loop()
        assert box.svc is not None
        config = box.config
        self.renewal = Renewal(self.cfg.cert, self.cfg.key, config.state_dir, config.device)
        await asyncio.to_thread(self.renewal.recover)
        # The link runs in its own process (sync/link_proc.py): its Python work must not hold
        # the GIL the lanes need during a drain.
        self.link = LinkClient(
            config.state_dir / "ledger.db",
            box=config.device,
            site=config.site,
            host=self.cfg.host,
            port=self.cfg.port,
            ca=self.cfg.ca,
            cert=self.cfg.cert,
            key=self.cfg.key,
            anchor=box.svc.anchor,
            on_down=self._from_link,
            on_refused=self._refused_from_link,
            on_restart=self._restarted,
            status_extra=lambda: {"cache_seq": box.stats.get("cache_seq")},
        )
        self.link.start()
        box.cloud_status = self.status
        await self._unhandled(at_start=True)
        await self._first_catch_up(box)

    async def _unhandled(self, at_start: bool) -> None:
        """Handle what the inbox holds unhandled: at start, what a crash left; after the link
        process restarted, what it stored but did not hand over before dying."""
        box = self.box
        assert box is not None and box.svc is not None
        conn = box.svc.ledger.conn
        for row in await box.db.call(inbox_unhandled, conn):
            if row.id in self._handling:  # handed over by the link: being handled
                continue
            if not at_start and not await box.db.call(_unhandled_row, conn, row.id):
                continue  # handled meanwhile (the list was read before)
            try:
                down = _stored(row.payload, row.id)
            except ProtocolError as err:
                await self._done(row.id, f"refused: {err}")
                continue
            if down.type == "certificate" and at_start:
                self._deferred.append(down)  # a swap waits for a connection: not at start
                continue
            self._handling.add(down.id)
            await self.handle(down)

    async def _first_catch_up(self, box: Box) -> None:
        """A new or replacement box (never caught up) waits, before READY, for the site's
        bundles and the uses made on the site's other boxes (docs/sync.md "Catch-up"); a box
        that was caught up before starts at once and catches up in the background."""
        self._caught_up = asyncio.Event()
        assert box.svc is not None
        ledger = box.svc.ledger
        before: str | None = await box.db.call(ledger.meta, CAUGHT_UP_KEY)
        if self.cfg.catch_up_s <= 0 or before or self._waited:
            return
        self._waited = True
        log.info(
            "new box: catching up with the site (up to %.0f s) before READY", self.cfg.catch_up_s
        )
        try:
            await asyncio.wait_for(self._caught_up.wait(), self.cfg.catch_up_s)
        except TimeoutError:
            log.warning(
                "not caught up with the site after %.0f s (cloud unreachable?): starting with "
                "the local cache; uses on other boxes arrive once the link is up",
                self.cfg.catch_up_s,
            )
            box.bus.publish("cloud", type="caught_up", result="timeout")

    async def _caught_up_msg(self, box: Box, body: dict[str, Any]) -> str:
        """The hub sent what this box lacked up to `site_seq`: wait until the imports reach it
        (bundles are handled as they arrive), then remember it."""
        target = body.get("site_seq")
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            return "refused: site_seq must be a number"
        svc = box.svc
        assert svc is not None
        ledger = svc.ledger
        deadline = time.monotonic() + CAUGHT_UP_WAIT_S
        while (seq := await box.db.call(active_seq, svc)) < target:
            if time.monotonic() > deadline:
                return f"incomplete: cache at seq {seq}, the site is at {target}"
            await asyncio.sleep(0.25)

        def mark() -> None:
            with transaction(ledger.conn):
                ledger.set_meta(CAUGHT_UP_KEY, f"{seq} {time.time():.0f}")

        await box.db.call(mark)
        if self._caught_up is not None:
            self._caught_up.set()
        log.info("caught up with the site: cache at seq %d", seq)
        return f"caught up at seq {seq}"

    def loops(self) -> list[tuple[str, Loop]]:
        return [("cloud-notify", self._notify_loop), ("cert-renewal", self._renew_loop)]

    async def stop(self) -> None:
        if self.link is not None:
            link, self.link = self.link, None
            await asyncio.to_thread(link.stop)

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.link.status() if self.link else {"connected": False}
        if self.renewal is not None:
            with contextlib.suppress(Exception):  # a status must not fail on a missing file
                info = cert_info(self.renewal.live_pem())
                st["certificate"] = {
                    "serial": format(info.serial, "x"),
                    "not_after": info.not_after,
                    "renewing": self.renewal.pending_csr() is not None,
                }
        return st

    # -- link thread -> loop ---------------------------------------------------------------

    def _from_link(self, down: Down) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._handling.add(down.id)
            asyncio.run_coroutine_threadsafe(self.handle(down), self._loop)

    def _restarted(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            asyncio.run_coroutine_threadsafe(self._unhandled(at_start=False), self._loop)

    def _refused_from_link(self, reason: str, detail: str) -> None:
        box = self.box
        if box is not None and self._loop is not None and not self._loop.is_closed():
            body = {"reason": reason, "detail": detail[:300]}
            asyncio.run_coroutine_threadsafe(box.record("downlink_refused", body), self._loop)

    async def _notify_loop(self, stop: asyncio.Event) -> None:
        """Wake the link when the box writes events (any bus event means the outbox may have
        grown); the link also re-reads the outbox every few seconds on its own."""
        assert self.box is not None
        sub = self.box.bus.subscribe(size=16)
        try:
            while not stop.is_set():
                if await sub.get(timeout=0.5) is not None and self.link is not None:
                    sub.pending()
                    self.link.notify()
                    await asyncio.sleep(NOTIFY_S)
        finally:
            sub.close()

    # -- certificate renewal -------------------------------------------------------------------

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        for down in self._deferred:
            await self.handle(down)
        self._deferred.clear()
        while not stop.is_set():
            try:
                interval = await self.check_certificate()
            except Exception:  # a missing or unreadable file: said, and tried again
                log.exception("certificate check failed")
                interval = RENEW_CHECK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def check_certificate(self, now: float | None = None) -> float:
        """Alert, and start or repeat a renewal when due. Returns seconds to the next check."""
        box, renewal = self.box, self.renewal
        assert box is not None and renewal is not None
        t = time.time() if now is None else now
        pem = await asyncio.to_thread(renewal.live_pem)
        info = cert_info(pem)
        interval = min(RENEW_CHECK_S, max(1.0, (info.not_after - info.not_before) / 30))
        if alert_due(pem, t) and (
            self._alerted_at is None or t - self._alerted_at > ALERT_REPEAT_S
        ):
            self._alerted_at = t
            body = {
                "serial": format(info.serial, "x"),
                "not_after": info.not_after,
                "left_s": round(info.not_after - t),
                "hint": "certificate not renewed: check the link to the hub / 证书即将过期",
            }
            log.warning("the link certificate expires in %.0f s and is not renewed", body["left_s"])
            await box.record("cert_expiring", body)  # first: the bus wakes the link
            box.bus.publish("cert", state="expiring", **body)
        if self._rotating or self.link is None or not renew_due(pem, t):
            return interval
        csr = await asyncio.to_thread(renewal.pending_csr)
        if csr is None or t - self._csr_sent_at >= 5 * interval:
            if csr is None:
                csr = await asyncio.to_thread(renewal.begin)
                log.info("certificate %x is due for renewal; CSR sent", info.serial)
            self.link.request_certificate(csr)
            self._csr_sent_at = t
        return interval

    async def _certificate(self, box: Box, down: Down) -> str:
        renewal, link = self.renewal, self.link
        assert renewal is not None
        pem = down.body.get("cert")
        if not isinstance(pem, str):
            return "refused: no certificate in the message"
        if link is None:
            return "refused: the link is stopping"
        try:
            serial = await asyncio.to_thread(renewal.accept, pem.encode(), time.time())
        except ProvisionError as err:
            return f"refused: {err}"
        self._rotating = True
        try:
            ok = await asyncio.wrap_future(link.rotate(renewal.new_cert, renewal.new_key))
        finally:
            self._rotating = False
        if not ok:
            await asyncio.to_thread(renewal.discard)
            return f"failed: no connection with certificate {serial}; the old one stays"
        await asyncio.to_thread(renewal.commit)
        self._alerted_at = None
        info = cert_info(pem.encode())
        body = {"serial": serial, "not_after": info.not_after}
        await box.record("cert_renewed", body)  # first: the bus wakes the link
        box.bus.publish("cert", state="renewed", **body)
        log.info("link certificate renewed: serial %s", serial)
        return f"installed certificate {serial}"

    # -- handling ----------------------------------------------------------------------------

    async def handle(self, down: Down) -> str:
        box = self.box
        assert box is not None
        try:
            result = await self._act(box, down)
        except Exception as err:  # a bad job or command is reported, never fatal
            log.warning("downlink %s %s failed: %s", down.type, down.id, err)
            result = f"failed: {err}"
        try:
            await self._done(down.id, result)
        finally:
            self._handling.discard(down.id)
        box.bus.publish("cloud", id=down.id, type=down.type, result=result)
        return result

    async def _act(self, box: Box, down: Down) -> str:
        body = down.body
        if down.type == "print":
            assert box.spool is not None
            job = await box.spool.submit(
                str(body["template"]),
                dict(body["data"]),
                target=str(body["target"]),
                job_id=down.id,
                source="cloud",
            )
            return f"queued as {job['id']} on {job['printer']}"
        if down.type == "command":
            return await self._command(box, down)
        if down.type == "bundle_chunk":  # stored, assembled, imported: edge/bundle_inbox.py
            if self._bundles is None:
                self._bundles = BundleReceiver(box.config.state_dir)
            return await self._bundles.handle(box, body)
        if down.type == "certificate":
            return await self._certificate(box, down)
        if down.type == "caught_up":
            return await self._caught_up_msg(box, body)
        if down.type == "conflict":
            await box.record("conflict_received", {"id": down.id, **body})
            box.bus.publish("conflict", **body)
            return "recorded"
        if down.type == "config":  # validated, stored, applied by a reload: edge/cloud_config.py
            return await on_config(box, down.id, body, self._done)
        return f"unsupported here: {down.type} (not built yet)"

    async def _command(self, box: Box, down: Down) -> str:
        body = down.body
        name = body.get("command")
        if name == "open_door":
            banks = box.lockers
            bank = banks.get(str(body.get("locker"))) if body.get("locker") else None
            if bank is None and len(banks) == 1:
                bank = next(iter(banks.values()))
            if bank is None:
                return "refused: name the locker (this box has several or none)"
            door = body.get("door")
            if not isinstance(door, int) or isinstance(door, bool):
                return "refused: door must be a number"
            out = await bank.open_door(door, "cloud", f"cloud command {down.id}")
            return f"door {door} {'opened' if out.get('opened') else 'did not open'}"
        if name == "request_status":  # the retained gw/ID/up/status carries it; refresh it
            if self.link is None:
                return "link down"
            await box.refresh_stats()  # cache_seq and outbox depth as of now
            self.link.publish_status()
            self.link.notify()
            return "status published"
        if name == "reload_config":  # re-read edge.toml and the stored cloud config
            return await on_reload_command(box, down.id, down.expired(time.time()), self._done)
        return f"unsupported command: {name}"

    async def _done(self, msg_id: str, result: str) -> None:
        box = self.box
        assert box is not None and box.svc is not None
        conn = box.svc.ledger.conn

        def mark() -> None:
            with transaction(conn):
                inbox_done(conn, msg_id, result, time.time())

        await box.db.call(mark)


def _unhandled_row(conn: sqlite3.Connection, msg_id: str) -> bool:
    row = conn.execute("SELECT handled_at FROM inbox WHERE id = ?", (msg_id,)).fetchone()
    return row is not None and row[0] is None


def _stored(payload: bytes, msg_id: str) -> Down:
    """A message the link verified before storing it (its signature is not checked again: the
    key may have expired since; its TTL is, by the handler of each type where it matters)."""
    doc = load(payload)
    return Down(msg_id, str(doc["type"]), float(doc["issued_at"]), float(doc["ttl_s"]), doc["body"])
