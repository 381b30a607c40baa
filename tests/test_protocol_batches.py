"""Uplink batches: at most MAX_BATCH_BYTES, consecutive, and the canonical JSON of the whole
document (the link joins each event's JSON, made once while sizing the batch, by orjson:
event_json; byte for byte but for the spelling of floats below 1e-4)."""

from __future__ import annotations

import json
import math
import random

from sync import protocol
from sync.protocol import VERSION, Batch, Event, batches, canonical, event_json, parse_batch


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


def test_event_json_is_canonical_for_what_the_box_writes_and_means_the_same_otherwise() -> None:
    # Floats of every shape, nesting, CJK, escapes: the same bytes as canonical().
    body = {
        "f": [0.1, -0.0, 5e-324, 123456789.123, 2.0**53, 1e16, 1e300],
        "k": {"b": None, "a": True},
    }
    doc = Event(1, "a" * 32, "passage", 1.8e9 + 0.125, body | {"s": '入口 "q"\\\n\t'}).to_json()
    assert event_json(doc) == canonical(doc)
    # orjson spells 1e-07 as 1e-7 and 1e-05 as 0.00001: the same numbers once parsed (the hub
    # parses, no one signs the uplink).
    small = {"x": 1e-7, "y": 1.5e-7, "z": 1e-05, "w": 1.2345e-05}
    assert event_json(small) == b'{"w":0.000012345,"x":1e-7,"y":1.5e-7,"z":0.00001}'
    assert json.loads(event_json(small)) == small
    # What orjson refuses goes through canonical(): keys that are not strings, huge integers.
    for odd in ({"k": {1: "one", 2: "two"}}, {"n": 2**70}):
        assert event_json(odd) == canonical(odd)
    # NaN is not JSON: null (json.dumps would write the token NaN).
    assert json.loads(event_json({"t": math.nan})) == {"t": None}


def test_a_batch_with_odd_events_still_encodes_and_parses() -> None:
    evs = [
        Event(1, "b" * 32, "audit", 1.8e9, {"counts": {1: 2}}),
        Event(2, "c" * 32, "audit", 1.8e9, {"n": 2**70, "f": 1e16}),
    ]
    (b,) = batches("wl-gate-01", "west-lake", "5f0c" * 4, evs)
    got = parse_batch(b.encode(), "wl-gate-01").events
    assert got[0].body == {"counts": {"1": 2}} and got[1].body == {"n": 2**70, "f": 1e16}
