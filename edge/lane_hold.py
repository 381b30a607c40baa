"""Vouchers read at a counter that wait for the cashier's confirming tap (edge/lanes.py).

The code is kept in memory only, under a random confirm token that the decision event carries
instead of the code. A token is good for one tap: `take` binds it to that tap's
redemption id. A retry of the same tap (same redemption id: a lost answer, a double click) gets
the outcome the tap recorded; any other use is refused (a replayed token would otherwise redeem a
multi-entry voucher again and again).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError

HOLD_S = 300.0  # how long a confirm stays good
MAX_HELD = 32  # per lane; the oldest goes beyond it


class ConfirmGone(EdgeError):
    """The confirm token is unknown, expired, for another lane, or already used by another tap."""


@dataclass
class Held:
    code: str
    until: float  # monotonic
    redemption_id: bytes | None = None  # set by the tap that used it
    outcome: dict[str, Any] | None = None  # what that tap answered, once it has


class HeldCodes:
    """One lane's held vouchers. Used on the event loop only (no locking needed)."""

    def __init__(self) -> None:
        self._items: dict[str, Held] = {}

    def hold(self, code: str) -> str:
        """Keep `code` for a tap; returns its confirm token (32 hex)."""
        self._prune()
        while len(self._items) >= MAX_HELD:  # the oldest goes (dicts keep insertion order)
            del self._items[next(iter(self._items))]
        token = secrets.token_hex(16)
        self._items[token] = Held(code, time.monotonic() + HOLD_S)
        return token

    def take(self, token: str, redemption_id: bytes) -> Held:
        """The held voucher for the tap `redemption_id`: the first tap uses the token up; the
        same tap again gets it again (its retry: `outcome` is set once the first has answered);
        anything else raises ConfirmGone."""
        self._prune()
        item = self._items.get(token)
        if item is None:
            raise ConfirmGone("this confirm has expired or is unknown")
        if item.redemption_id is None:
            item.redemption_id = redemption_id
        elif item.redemption_id != redemption_id:
            raise ConfirmGone("this confirm was already used")
        return item

    def _prune(self) -> None:
        now = time.monotonic()
        for token in [t for t, item in self._items.items() if item.until <= now]:
            del self._items[token]
