"""Code texts to scan, by kind: signed tickets, rotating display codes and short codes."""

from __future__ import annotations

import time

from bench.fixture import Fixture
from edge.codes import display_rotating
from sync.hub.issuer import load_private

KINDS = ("signed", "rotating", "short")


class CodeSource:
    """Hands out codes from the fixture's pools.

    `purpose` "validate" cycles through its pools (a dry run may see a code again); "redeem" hands
    out each code once, so every redemption admits a distinct ticket. Rotating codes are made
    just before use, as a phone shows them (signing happens outside the timed call).
    """

    def __init__(self, fixture: Fixture, purpose: str) -> None:
        self.pools = {k: fixture.pools[f"{k}_{purpose}"] for k in KINDS}
        self.cycle = purpose == "validate"
        self.holder = load_private(fixture.holder_key)
        self.used = dict.fromkeys(KINDS, 0)

    def capacity(self, kind: str) -> int:
        return len(self.pools[kind])

    def next(self, kind: str) -> str:
        pool = self.pools[kind]
        i = self.used[kind]
        if i >= len(pool) and not self.cycle:
            raise IndexError(f"{kind} pool of {len(pool)} codes is used up")
        self.used[kind] = i + 1
        text = pool[i % len(pool)]
        if kind == "rotating":
            return display_rotating(text, self.holder, int(time.time()))
        return text
