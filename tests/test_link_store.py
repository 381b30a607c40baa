"""LedgerLinkStore.pending over a real ledger.db: what the link reads back from the outbox,
rows it cannot read included (they go up as what they are; the stream behind them goes on)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from edge.ledger import Ledger
from edge.store import transaction
from sync.link_store import LedgerLinkStore
from sync.protocol import batches, parse_batch


def test_pending_reads_every_row_even_nan_and_unreadable_ones(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    try:
        at = time.time()
        with transaction(ledger.conn):
            ledger.append_event("passage", {"lane": "入口", "n": 1, "f": 0.5}, at)
            # json.dumps writes NaN as the token NaN (not JSON): orjson refuses it, json reads it.
            ledger.append_event("occupancy", {"level": math.nan}, at)
            ledger.append_event("passage", {"n": 3}, at)
            ledger.conn.execute("UPDATE outbox SET body = '{not json' WHERE seq = 3")
            ledger.append_event("passage", {"n": 4}, at)
        store = LedgerLinkStore(ledger.path, box="wl-gate-01", site="west-lake")
        try:
            events = store.pending(0, 10)
            epoch = store.epoch
        finally:
            store.close()
    finally:
        ledger.close()
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[0].body == {"lane": "入口", "n": 1, "f": 0.5} and events[0].at == at
    assert math.isnan(events[1].body["level"])
    assert events[2].body == {"unreadable": "{not json"} and events[2].type == "passage"
    assert events[3].body == {"n": 4}
    # All four go up in one batch the hub can parse (the NaN as null: JSON has no NaN).
    (batch,) = batches("wl-gate-01", "west-lake", epoch, events)
    got = parse_batch(batch.encode(), "wl-gate-01").events
    assert [e.body for e in got] == [events[0].body, {"level": None}, events[2].body, {"n": 4}]
