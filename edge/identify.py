"""The code stage of a decision: scanned text -> a verified Credential, or a CodeError deny.

Signature checks, rotating-code freshness and replay, short-code lookup by keyed hash and the
per-lane limit on failed numeric codes live here; the check-in rules come after (edge/rules.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.cache import CacheView
from edge.codes import (
    CodeError,
    RotatingCode,
    ShortCode,
    SignedTicket,
    Ticket,
    parse_code,
    short_code_hash,
    verify_ed25519,
)
from edge.config import Policy
from edge.rules import Credential
from edge.trust import USAGE_TICKETS


@dataclass(frozen=True)
class Identified:
    cred: Credential
    rotating_shown_at: int | None = None


def _credential(t: Ticket, kind: str) -> Credential:
    return Credential(
        kind=kind,
        canonical_id=t.canonical_id,
        site=t.site,
        product=t.product,
        valid_from=t.valid_from,
        valid_until=t.valid_until,
        entries=t.entries,
        persons=t.persons,
        slot=t.slot,
        zones=t.zones,
    )


class Identifier:
    """Turns scanned text into a verified credential against the active cache."""

    def __init__(
        self,
        site: str,
        policy: Policy,
        view: CacheView,
        rotating_seen: Callable[[str, int], bool],
    ) -> None:
        self.site = site
        self.policy = policy
        self.view = view
        self.rotating_seen = rotating_seen
        self._failures: dict[str, deque[float]] = {}

    def identify(self, text: str, lane: str, now: float, record_failure: bool) -> Identified:
        """Raises CodeError (its reason is a decision reason) for anything that is not good."""
        parsed = parse_code(text)
        if isinstance(parsed, ShortCode):
            return self._short(parsed, lane, now, record_failure)
        signed = parsed.signed if isinstance(parsed, RotatingCode) else parsed
        self._verify_ticket(signed, now)
        t = signed.ticket
        if isinstance(parsed, RotatingCode):
            self._check_rotating(parsed, t, now)
            return Identified(_credential(t, "rotating"), parsed.shown_at)
        if t.holder_key is not None:
            raise CodeError(
                "holder_required", "open the ticket in the app to show a live code", t.canonical_id
            )
        return Identified(_credential(t, "signed"))

    def note_failure(self, lane: str, now: float) -> None:
        self._failures.setdefault(lane, deque()).append(now)

    def _verify_ticket(self, signed: SignedTicket, now: float) -> None:
        st = self.view.state
        assert st is not None
        kid = signed.ticket.kid
        if kid in st.retired:
            raise CodeError("unknown_key", f"signing key {kid} has been retired")
        certs = st.keyring.candidates(kid, USAGE_TICKETS, self.site, now)
        if not certs:
            raise CodeError("unknown_key", f"no valid ticket-signing key {kid}")
        if not any(verify_ed25519(c.key, signed.signature, signed.signed_message) for c in certs):
            raise CodeError("bad_signature", "ticket signature does not verify")

    def _check_rotating(self, code: RotatingCode, t: Ticket, now: float) -> None:
        assert t.holder_key is not None
        holder = Ed25519PublicKey.from_public_bytes(t.holder_key)
        if not verify_ed25519(holder, code.holder_signature, code.holder_message):
            raise CodeError("bad_signature", "holder signature does not verify", t.canonical_id)
        age = now - code.shown_at
        skew, max_age = self.policy.rotating_max_skew_s, self.policy.rotating_max_age_s
        if not -skew <= age <= max_age + skew:
            msg = f"code shown {age:+.0f} s ago; refresh it"
            raise CodeError("stale_code", msg, t.canonical_id)
        if self.rotating_seen(t.canonical_id, code.shown_at):
            raise CodeError("replayed", "this display code was already scanned", t.canonical_id)

    def _short(self, code: ShortCode, lane: str, now: float, record_failure: bool) -> Identified:
        fails = self._failures.setdefault(lane, deque())
        window = self.policy.short_code_failure_window_s
        while fails and fails[0] < now - window:
            fails.popleft()
        if len(fails) >= self.policy.short_code_max_failures:
            raise CodeError("rate_limited", f"too many unknown numeric codes; wait {window:.0f} s")
        st = self.view.state
        assert st is not None
        row = self.view.short_code(short_code_hash(st.site_key, code.digits))
        if row is None:
            if record_failure:
                self.note_failure(lane, now)
            raise CodeError("unknown_code", "no such voucher or pickup code")
        cred = Credential(
            kind="short",
            canonical_id=row.code_id.hex(),
            site=self.site,
            product=row.product,
            valid_from=row.valid_from,
            valid_until=row.valid_until,
            entries=row.entries,
            persons=row.persons,
            slot=row.slot,
        )
        return Identified(cred)
