"""Keeping revocation in force on a serving hub: the CRL's nextUpdate, broker reloads still owed.

refresh_crl rewrites the device CA's CRL before its nextUpdate (`edge hub crl`, and hourly on a
serving hub); reload_if_pending makes the broker re-read the CRL while the flag file
(registry.RELOAD_PENDING) says a change may be unread; RevocationUpkeep runs these chores, and the
retries of failed revocations (sync/hub/revoke.py), on the serving hub's worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from sync.hub.registry import clear_reload_pending, mark_reload_pending, reload_pending
from sync.hub.revoke import BrokerReload, _told, revoke_serials, revoke_superseded
from sync.pki import CRL_REFRESH_S, Ca, PkiError, crl_next_update

log = logging.getLogger(__name__)

CRL_CHECK_S = 3600.0  # how often a serving hub looks at the CRL's nextUpdate
RETRY_MIN_S = 2.0  # a failed revocation or broker reload is retried after this, doubling
RETRY_MAX_S = 300.0


def reload_if_pending(hub_dir: Path, reload: BrokerReload) -> bool:
    """Reload the broker when a CRL change is still unread (the flag); True when reloaded."""
    token = reload_pending(hub_dir)
    if token is None:
        return False
    reload()
    clear_reload_pending(hub_dir, token)
    return True


def refresh_crl(
    hub_dir: Path, ca: Ca, reload: BrokerReload | None, *, force: bool = False
) -> tuple[bool, bool]:
    """Rewrite the CRL when fewer than CRL_REFRESH_S remain before its nextUpdate (or `force`),
    then reload the broker; a reload still owed for an earlier change is made too.
    Returns (rewritten, reloaded)."""
    t = time.time()
    try:
        due = force or crl_next_update(ca.crl_path) - t < CRL_REFRESH_S
    except PkiError:
        due = True  # missing or unreadable: Ca.refresh_crl writes a new one
    if due:
        token = mark_reload_pending(hub_dir, "CRL rewritten before its nextUpdate")
        if ca.refresh_crl(force=force, now=t):
            return True, _told(hub_dir, reload, token)
    return False, reload is not None and reload_if_pending(hub_dir, reload)


class RevocationUpkeep:
    """The serving hub's revocation chores, run on its worker thread (HubServer._tick):
    - a revocation that failed (after a renewal; a certificate signed while its box was being
      revoked) is kept and retried;
    - a broker reload still owed (the pending flag) is retried;
    - every `crl_check_s`, the CRL is rewritten when fewer than CRL_REFRESH_S remain.
    Failed retries back off from RETRY_MIN_S to RETRY_MAX_S, logged each time."""

    def __init__(
        self,
        hub_dir: Path,
        ca: Ca | None,
        reload: BrokerReload | None,
        *,
        crl_check_s: float = CRL_CHECK_S,
        count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.hub_dir, self.ca, self.reload = hub_dir, ca, reload
        self.crl_check_s = crl_check_s
        self._count = count or (lambda _key, _n: None)
        self._todo: dict[tuple[str, str], Callable[[], list[str]]] = {}  # (what, whose) -> retry
        self._retry_at = 0.0  # monotonic
        self._delay = RETRY_MIN_S
        self._crl_at = 0.0  # the first tick checks the CRL

    def superseded(self, box: str, serial: str | None) -> None:
        """revoke_superseded for a box's cert_renewed; kept for a retry when it fails."""
        ca = self.ca
        if ca is None:
            log.warning("hub: %s renewed its certificate; no device CA to revoke the old one", box)
            return
        self._run(
            ("superseded", box),
            lambda: revoke_superseded(self.hub_dir, box, serial, ca=ca, reload=self.reload),
        )

    def revoke_late(self, box: str, serial: str) -> None:
        """A certificate signed for `box` while it was being revoked: on the CRL with it."""
        ca = self.ca
        assert ca is not None  # it was signed by this CA
        self._run(
            ("late", f"{box}/{serial}"),
            lambda: revoke_serials(
                self.hub_dir,
                box,
                [serial],
                ca=ca,
                reload=self.reload,
                reason="box revoked during its renewal",
                at=time.time(),
            ),
        )

    def _run(self, key: tuple[str, str], fn: Callable[[], list[str]]) -> None:
        try:
            done = fn()
        except Exception:
            log.exception("hub: revocation (%s %s) failed; retried in %.0f s", *key, self._delay)
            self._count("revoke_failed", 1)
            self._todo[key] = fn
            self._backoff(time.monotonic())
            return
        self._count("certificates_revoked", len(done))

    def _backoff(self, now: float) -> None:
        self._retry_at = now + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX_S)

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._retry_at and (
            self._todo or (self.reload is not None and reload_pending(self.hub_dir) is not None)
        ):
            self._retry(now)
        if self.ca is not None and now >= self._crl_at:
            self._crl_at = now + self.crl_check_s
            try:
                rewritten, _ = refresh_crl(self.hub_dir, self.ca, self.reload)
            except Exception:
                log.exception("hub: keeping the CRL fresh failed; trying again soon")
                self._crl_at = now + min(self.crl_check_s, RETRY_MAX_S)
                return
            if rewritten:
                self._count("crl_refreshed", 1)

    def _retry(self, now: float) -> None:
        try:
            for key, fn in list(self._todo.items()):
                self._count("certificates_revoked", len(fn()))
                del self._todo[key]
                log.info("hub: revocation (%s %s) done on a retry", *key)
            if self.reload is not None and reload_if_pending(self.hub_dir, self.reload):
                log.info("hub: broker reloaded on a retry: the CRL is in force")
        except Exception as err:
            log.warning(
                "hub: revocation chores failed again (%s); next try in %.0f s", err, self._delay
            )
            self._count("revoke_retry_failed", 1)
            self._backoff(now)
            return
        self._delay = RETRY_MIN_S
