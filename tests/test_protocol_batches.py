"""Uplink batches: at most MAX_BATCH_BYTES, consecutive, and byte for byte the canonical JSON
of the whole document (the link joins each event's JSON, made once while sizing the batch)."""

from __future__ import annotations

import random

from sync import protocol
from sync.protocol import VERSION, Batch, Event, batches, canonical, parse_batch


def events(n: int) -> list[Event]:
    rng = random.Random(5)
    return [
        Event(
            seq=i + 1,
            id=f"{rng.getrandbits(128):032x}",
            type="redemption",
            at=1.8e9 + i / 7,
            body={"lane": "入口 gate", "pad": "x" * rng.randint(0, 900), "z": {"b": 1, "a": [i]}},
            redemption_id=None if i % 3 else f"{i:032x}",
        )
        for i in range(n)
    ]


def whole(b: Batch) -> bytes:
    doc = {"v": VERSION, "box": b.box, "site": b.site, "epoch": b.epoch}
    return canonical(doc | {"events": [e.to_json() for e in b.events]})


def test_batches_are_bounded_consecutive_and_the_canonical_document() -> None:
    evs = events(3000)
    out = list(batches("wl-gate-01", "west-lake", "5f0c" * 4, evs))
    assert len(out) > 3 and [e for b in out for e in b.events] == evs
    for b in out:
        payload = b.encode()
        assert len(payload) <= protocol.MAX_BATCH_BYTES
        assert payload == whole(b)
        # A batch made without the joined parts (the hub's tests, a resend) encodes the same.
        assert Batch(b.box, b.site, b.epoch, b.events).encode() == payload
        assert parse_batch(payload, "wl-gate-01").events == b.events
