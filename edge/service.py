"""Redemption service: validate (dry run), redeem, confirm, void and force-admit.

Bad input never raises out of here: a scan that cannot be decoded, verified or found becomes a
deny with a reason. Decisions key on the canonical id from the verified payload. A redemption and
its outbox event are committed in one fsync'd transaction before the caller may move an actuator.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.cache import CacheStore, CacheView, ImportResult
from edge.clock import ClockFacts, clock_suspect
from edge.codes import CodeError, code_fingerprint
from edge.config import BoxConfig
from edge.config_sections import LaneConfig
from edge.decision import Decision, iso
from edge.errors import InvalidTransition, NotFound
from edge.identify import Identified, Identifier
from edge.ledger import Ledger, Redemption
from edge.rules import Context, Reason, Verdict, evaluate
from edge.store import transaction
from edge.trust import TrustAnchor

log = logging.getLogger(__name__)
Ignore = Callable[[str], bool]


def _ignored(d: Decision, ignore: Ignore | None) -> bool:
    return ignore is not None and d.canonical_id is not None and ignore(d.canonical_id)


class RedemptionService:
    def __init__(
        self, config: BoxConfig, *, full_check: bool = False, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.anchor = TrustAnchor.load(config.trust_anchor)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.cache = CacheStore(config.state_dir, self.anchor, config.site)
        self.view: CacheView = self.cache.view(full_check=full_check)
        self.ledger = Ledger(config.state_dir / "ledger.db", full_check=full_check)
        if self.ledger.meta("created_at") is None:
            with transaction(self.ledger.conn):
                self.ledger.set_meta("created_at", repr(clock()))
        self.identifier = Identifier(
            config.site, config.policy, self.view, self.ledger.rotating_seen
        )

    def close(self) -> None:
        self.view.close()
        self.ledger.close()

    # -- public API -----------------------------------------------------------------------------

    def validate(
        self, text: str, lane: str, at: float | None = None, *, ignore: Ignore | None = None
    ) -> Decision:
        """Dry run: what `redeem` would decide now, without writing anything."""
        now = self.clock() if at is None else at
        d = self._decide(text, self._lane(lane), now, record_failure=True)[0]
        if _ignored(d, ignore):
            return d.with_(extra={"duplicate": True})
        self._log(d, text, "validate")
        return d

    def redeem(
        self,
        text: str,
        lane: str,
        *,
        redemption_id: bytes | None = None,
        at: float | None = None,
        confirm_now: bool | None = None,
        ignore: Ignore | None = None,
        hold_vouchers: bool = False,
    ) -> Decision:
        """Decide and, on admit, durably record a redemption (PENDING, or CONFIRMED at a counter).

        `redemption_id` is reused by every retry of the same scan: a retry returns the recorded
        decision instead of redeeming twice. `ignore(canonical_id)` True (a lane's visitor still
        at the reader) returns the decision marked `extra["duplicate"]` and writes nothing.
        `hold_vouchers` (a counter scan): an admissible voucher (a short numeric code, kind
        "short") is not redeemed; its decision comes back marked `extra["needs_confirm"]` and
        nothing is written (the cashier's confirming tap redeems it).
        """
        now = self.clock() if at is None else at
        cfg = self._lane(lane)
        rid = redemption_id or secrets.token_bytes(16)
        confirm = cfg.kind == "counter" if confirm_now is None else confirm_now
        with transaction(self.ledger.conn):
            done = self.ledger.get(redemption_id) if redemption_id is not None else None
            decision, ident = self._decide(text, cfg, now, record_failure=done is None)
            if done is None and _ignored(decision, ignore):
                return decision.with_(extra={"duplicate": True})
            if done is not None:
                decision = self._retry(done, decision)
            elif decision.admit and hold_vouchers and decision.kind == "short":
                decision = decision.with_(extra={"needs_confirm": True})
            elif decision.admit and ident is not None:
                decision = self._record(decision, ident, cfg, rid, now, confirm, forced=False)
            else:
                self.ledger.append_event("scan_denied", self._deny_body(decision, text), now)
        self._log(decision, text, "redeem")
        return decision

    def force_admit(
        self,
        text: str,
        lane: str,
        *,
        note: str,
        actor: str,
        redemption_id: bytes | None = None,
        at: float | None = None,
    ) -> Decision:
        """A supervisor overrides a rule deny. The code must still verify; recorded as forced.
        A retry reuses `redemption_id` and gets the recorded outcome."""
        if not note.strip() or not actor.strip():
            raise ValueError("a forced admit needs the supervisor and a reason")
        now = self.clock() if at is None else at
        cfg = self._lane(lane)
        with transaction(self.ledger.conn):
            decision, ident = self._decide(text, cfg, now, record_failure=False)
            done = self.ledger.get(redemption_id) if redemption_id is not None else None
            if done is not None:
                return self._retry(done, decision)
            if ident is None:
                self._log(decision, text, "force_admit")
                return decision
            overrode = decision.reason
            decision = decision.with_(
                reason=Reason.OK,
                forced=True,
                detail=f"forced by {actor}: {note} (overrode {overrode})",
            )
            decision = self._record(
                decision,
                ident,
                cfg,
                redemption_id or secrets.token_bytes(16),
                now,
                cfg.kind == "counter",
                forced=True,
                note=f"{actor}: {note} [overrode {overrode}]",
            )
        self._log(decision, text, "force_admit")
        return decision

    def confirm(
        self, redemption_id: bytes, passed: int | None = None, at: float | None = None
    ) -> Redemption:
        """The visitor went through (`passed` persons of a group; default all). With
        `passed=0` nobody went through: that is a void, so the ticket stays usable."""
        if passed is not None and passed <= 0:
            return self.void(redemption_id, "nobody passed", at)
        now = self.clock() if at is None else at
        with transaction(self.ledger.conn):
            r = self._require(redemption_id)
            if r.state == "confirmed":
                return r
            if r.state != "pending":
                raise InvalidTransition(f"redemption {redemption_id.hex()} is {r.state}")
            n = r.persons if passed is None else max(0, min(passed, r.persons))
            counted = self._exit_counted(r, n)
            self.ledger.move_occupancy(r, "confirmed", n, counted)
            self.ledger.set_state(r.id, "confirmed", n, now, "", counted)
            self.ledger.append_event(
                "redemption_confirmed", {"redemption_id": r.id.hex(), "passed": n}, now, r.id
            )
        return self._require(redemption_id)

    def void(
        self,
        redemption_id: bytes,
        why: str,
        at: float | None = None,
        *,
        then: Callable[[], None] | None = None,
    ) -> Redemption:
        """Compensation: nobody passed (or a cashier's undo). The ticket is usable again.
        `then()` runs inside the void's transaction when this call voided it (not when it was
        voided already): an audit entry that must commit with the void, or not at all."""
        now = self.clock() if at is None else at
        with transaction(self.ledger.conn):
            r = self._require(redemption_id)
            if r.state == "voided":
                return r
            self.ledger.move_occupancy(r, "voided", r.passed)
            self.ledger.set_state(r.id, "voided", r.passed, now, why, r.counted)
            self.ledger.append_event(
                "redemption_voided", {"redemption_id": r.id.hex(), "why": why}, now, r.id
            )
            if then is not None:
                then()
        return self._require(redemption_id)

    def zone_full(self, zone_id: str | None, zone: dict[str, Any] | None = None) -> int | None:
        """The zone's capacity: the config's `full` threshold if set, else the bundle's."""
        if zone_id is None:
            return None
        cfg = self.config.zones.get(zone_id)
        if cfg is not None and cfg.full is not None:
            return cfg.full
        if zone is None:
            st = self.view.state
            zone = st.zones.get(zone_id, {}) if st is not None else {}
        cap = zone.get("capacity")
        return int(cap) if isinstance(cap, int) else None

    def pending(self) -> list[Redemption]:
        """Redemptions still waiting for their passage."""
        return self.ledger.pending()

    def record_event(self, kind: str, body: dict[str, Any], at: float | None = None) -> None:
        """An event for the cloud (passage, alert, print result) in its own transaction."""
        now = self.clock() if at is None else at
        with transaction(self.ledger.conn):
            self.ledger.append_event(kind, body, now)

    def import_bundle(self, path: Path, at: float | None = None) -> ImportResult:
        """Verify and activate a bundle. Raises BundleRefused; the active cache then stays."""
        now = self.clock() if at is None else at
        result = self.cache.import_file(path, now)
        with transaction(self.ledger.conn):
            self.ledger.append_event(
                "bundle_applied", {"seq": result.seq, "kind": result.kind}, now
            )
        return result

    def record_clock_offset(self, offset_s: float, at: float | None = None) -> None:
        """Sync reports cloud time minus box time, measured at `at` (box time)."""
        now = self.clock() if at is None else at
        with transaction(self.ledger.conn):
            self.ledger.set_meta("clock_offset_s", repr(float(offset_s)))
            self.ledger.set_meta("clock_offset_at", repr(now))

    def clock_status(self, now: float) -> str | None:
        def num(key: str) -> float | None:
            value = self.ledger.meta(key)
            return None if value is None else float(value)

        issued = float(self.view.state.issued_at) if self.view.state else 0.0
        facts = ClockFacts(
            high_water=max(num("high_water") or 0.0, issued),
            offset_s=num("clock_offset_s"),
            offset_at=num("clock_offset_at"),
            since=num("created_at") or now,
        )
        return clock_suspect(now, facts, self.config.policy.clock)

    def status(self, at: float | None = None) -> dict[str, Any]:
        now = self.clock() if at is None else at
        has_cache = self.view.refresh()
        st = self.view.state
        cache: dict[str, Any] = {"active": has_cache}
        if st is not None:
            age = now - st.issued_at
            cache.update(
                seq=st.seq,
                issued_at=iso(st.issued_at),
                expires_at=iso(st.expires_at),
                age_s=round(age),
                stale=self._stale(now),
                lists=sorted(st.lists),
                counts=self.view.counts(),
            )
        why = self.clock_status(now)
        return {
            "schema": 1,
            "site": self.config.site,
            "device": self.config.device,
            "trust_anchor": self.anchor.fingerprint,
            "cache": cache,
            "clock": {
                "suspect": why is not None,
                "why": why,
                "offset_s": self.ledger.meta("clock_offset_s"),
            },
            "ledger": {
                "redemptions": self.ledger.counts(),
                "outbox_depth": self.ledger.outbox_depth(),
                "epoch": self.ledger.meta("epoch"),
            },
            "lanes": {
                n: {"kind": c.kind, "list": c.list_id, "direction": str(c.direction)}
                for n, c in self.config.lanes.items()
            },
        }

    # -- internals ------------------------------------------------------------------------------

    def _lane(self, name: str) -> LaneConfig:
        try:
            return self.config.lanes[name]
        except KeyError:
            raise ValueError(f"no lane named {name!r} in {self.config.path}") from None

    def _require(self, rid: bytes) -> Redemption:
        r = self.ledger.get(rid)
        if r is None:
            raise NotFound(f"no redemption {rid.hex()}")
        return r

    def _stale(self, now: float) -> bool:
        st = self.view.state
        assert st is not None
        return now - st.issued_at > self.config.policy.stale_cache_s or now >= st.expires_at

    def _decide(
        self, text: str, lane: LaneConfig, now: float, record_failure: bool
    ) -> tuple[Decision, Identified | None]:
        base = Decision(reason=Reason.OK, lane=lane.name, at=now, list_id=lane.list_id)
        try:
            if not self.view.refresh():
                return base.with_(reason=Reason.NO_CACHE, detail="no bundle imported yet"), None
            st = self.view.state
            assert st is not None
            base = base.with_(cache_seq=st.seq)
            ident = self.identifier.identify(text, lane.name, now, record_failure)
        except CodeError as err:
            reason = Reason(err.reason)
            if record_failure and reason is Reason.MALFORMED and text.isdigit():
                self.identifier.note_failure(lane.name, now)
            return base.with_(reason=reason, detail=err.detail, canonical_id=err.canonical_id), None
        cred = ident.cred
        product = st.products.get(cred.product, {})
        base = base.with_(
            kind=cred.kind,
            canonical_id=cred.canonical_id,
            product=cred.product,
            product_name=product.get("name"),
            slot=cred.slot,
            persons=cred.persons,
        )
        suspect = self.clock_status(now) is not None
        base = base.with_(clock_suspect=suspect)
        lst = self.view.lists.get(lane.list_id)
        if lst is None:
            return base.with_(
                reason=Reason.NOT_ON_LIST,
                detail=f"check-in list {lane.list_id} is not in the cache",
            ), ident
        cid = bytes.fromhex(cred.canonical_id)
        local = self.ledger.priors(cred.canonical_id, lst.id)
        # The cloud echoes our own redemptions back in the site's "used" delta: any of ours, in
        # any state (a voided one must not come back as a use elsewhere), is not another box's.
        seen = self.ledger.redemption_ids(cred.canonical_id, lst.id)
        priors = [p for _, p in local]
        priors += [p for rid, p in self.view.used_elsewhere(cid, lst.id) if rid not in seen]
        zone = st.zones.get(lst.zone or "", {})
        ctx = Context(
            now=now,
            site=self.config.site,
            direction=lane.direction,
            site_clock=self.view.site_clock,
            clock_suspect=suspect,
            cache_stale=self._stale(now),
            revoked=self.view.is_revoked(cid),
            blocked=self.view.is_blocked(cid),
            zone_capacity=self.zone_full(lst.zone, zone),
            zone_load=self.ledger.zone_load(lst.zone, self._day(now)) if lst.zone else 0,
        )
        verdict: Verdict = evaluate(cred, lst, priors, ctx)
        return base.with_(
            reason=verdict.reason,
            warnings=verdict.warnings,
            remaining=verdict.remaining,
            detail=verdict.detail,
        ), ident

    def _day(self, at: float) -> str:
        return self.view.site_clock.business_day(at).isoformat()

    def _record(
        self,
        d: Decision,
        ident: Identified,
        lane: LaneConfig,
        rid: bytes,
        now: float,
        confirm: bool,
        *,
        forced: bool,
        note: str = "",
    ) -> Decision:
        cred = ident.cred
        lst = self.view.lists[lane.list_id]
        day = self._day(now)
        state = "confirmed" if confirm else "pending"
        r = Redemption(
            id=rid,
            canonical_id=cred.canonical_id,
            list_id=lst.id,
            direction=str(lane.direction),
            kind=cred.kind,
            product=cred.product,
            zone=lst.zone,
            persons=cred.persons,
            passed=cred.persons if confirm else None,
            state=state,
            forced=forced,
            note=note,
            lane=lane.name,
            created_at=now,
            updated_at=now,
            business_day=day,
            valid_until=cred.valid_until,
            cache_seq=d.cache_seq or 0,
            clock_suspect=d.clock_suspect,
        )
        if confirm:
            r = replace(r, counted=self._exit_counted(r, cred.persons))
        self.ledger.insert(r)
        self.ledger.move_occupancy(replace(r, state="voided"), r.state, r.passed, r.counted)
        if ident.rotating_shown_at is not None:
            keep = (
                self.config.policy.rotating_max_age_s + 2 * self.config.policy.rotating_max_skew_s
            )
            self.ledger.remember_rotating(cred.canonical_id, ident.rotating_shown_at, now, keep)
        high = float(self.ledger.meta("high_water") or 0)
        self.ledger.set_meta("high_water", repr(max(high, now)))
        body = r.as_json() | {"warnings": [str(w) for w in d.warnings], "entries": cred.entries}
        self.ledger.append_event("redemption", body, now, rid)
        return d.with_(redemption_id=rid.hex(), state=state)

    def _exit_counted(self, r: Redemption, passed: int) -> int | None:
        """How many of an exit's persons the zone had inside (entries may have been missed:
        tailgaters, fire-mode free passage); None for entries and zoneless lists."""
        if r.direction != "exit" or not r.zone:
            return None
        return min(passed, self.ledger.zone_inside(r.zone, r.business_day))

    def _retry(self, done: Redemption, fresh: Decision) -> Decision:
        """A retry of a redemption id already recorded: its recorded outcome, never a second
        redemption (whatever the code would get now: a rate-limited lane or a voucher removed
        since cannot turn a recorded admit into an error). A voided one stays voided (a new scan
        gets a new id); an id reused for a different code is refused."""
        if fresh.canonical_id is not None and fresh.canonical_id != done.canonical_id:
            return fresh.with_(
                reason=Reason.MALFORMED,
                warnings=(),
                detail=f"redemption id {done.id.hex()} already belongs to another code",
            )
        if done.state == "voided":
            return fresh.with_(
                reason=Reason.ALREADY_USED,
                warnings=(),
                redemption_id=done.id.hex(),
                state=done.state,
                detail="this redemption was voided; scan again for a new one",
            )
        return self._from_record(done, fresh.lane, fresh.at, "already recorded (retry)")

    def _from_record(self, r: Redemption, lane: str, now: float, detail: str) -> Decision:
        return Decision(
            reason=Reason.OK,
            lane=lane,
            at=now,
            detail=detail,
            kind=r.kind,
            canonical_id=r.canonical_id,
            redemption_id=r.id.hex(),
            state=r.state,
            product=r.product,
            persons=r.persons,
            list_id=r.list_id,
            cache_seq=r.cache_seq,
            clock_suspect=r.clock_suspect,
            forced=r.forced,
        )

    @staticmethod
    def _deny_body(d: Decision, text: str) -> dict[str, Any]:
        return {
            "reason": str(d.reason),
            "lane": d.lane,
            "canonical_id": d.canonical_id,
            "code_fp": code_fingerprint(text),
            "list": d.list_id,
            "detail": d.detail,
        }

    @staticmethod
    def _log(d: Decision, text: str, op: str) -> None:
        # DEBUG: a lane logs the one decision line (with its latency) itself.
        log.debug(
            "%s lane=%s decision=%s reason=%s code=%s id=%s",
            op,
            d.lane,
            "admit" if d.admit else "deny",
            d.reason,
            code_fingerprint(text),
            d.canonical_id or "-",
        )
