"""Drains through the box's real Link: a full outbox straight to the broker, the same through the
fault proxy shaped to a slow WAN, and the catch-up after a partition.

Each drain: a fresh ledger (its own epoch) with the outbox filled (not timed), a fresh hub
database and hub process (`edge hub serve`), then the Link is started. The figure is the time
from `link.start()` (TLS handshake included) to the hub's application ack naming the last seq;
the link deletes the acked rows as that ack arrives, so the outbox is empty then. Afterwards the
hub's database must hold every event of the stream.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

from bench.stats import Figures, Noise, median, progress, wait_quiet
from bench.sync_hub import HubProc, hub_counts, prepare_hub_db
from bench.sync_kit import (
    PER_TX,
    SITE,
    Lab,
    SyncSizes,
    epoch_of,
    fill_outbox,
    outbox_bytes,
    redemption_events,
    wait_acked,
    wire_bytes,
)
from edge.ledger import Ledger
from edge.store import transaction
from sync.link import Link
from tests.faultproxy import FaultProxy

RATE_BPS = 2_000_000
RTT_MS = 100


@dataclass
class Drained:
    seconds: float | None  # None: not acked within the time allowed
    acked: int
    stored: int
    status: dict[str, Any]
    hub_cpu_s: float
    hub_rss_mb: float
    link_cpu_s: float  # this process (the link's threads) from link.start() to the last ack
    wire_up: int = 0  # bytes box -> broker through the proxy (TLS and MQTT included)
    wire_down: int = 0


def drain(
    lab: Lab, name: str, n: int, timeout: float, workaround: bool, proxy: FaultProxy | None = None
) -> Drained:
    """Fill a fresh ledger with n events, then time the link draining it to a fresh hub."""
    work = lab.work / name
    work.mkdir()
    ledger, box = work / "ledger.db", f"bench-{name}"
    lab.register(box)
    last, _ = fill_outbox(ledger, n)
    prepare_hub_db(work / "hub.db", workaround)
    hub = HubProc(lab.hub.dir, lab.broker, work / "hub.db", work / "hub.log").start()
    link: Link | None = None
    try:
        host, port = (proxy.host, proxy.port) if proxy else (lab.broker.host, lab.broker.port)
        up0, down0 = (proxy.bytes_up, proxy.bytes_down) if proxy else (0, 0)
        link = lab.link(ledger, box, host=host, port=port)
        cpu0 = _own_cpu_s()
        t0 = time.monotonic()
        link.start()
        t1 = wait_acked(link, last, timeout)
        link_cpu = _own_cpu_s() - cpu0
        status = link.status()
        up, down = (proxy.bytes_up - up0, proxy.bytes_down - down0) if proxy else (0, 0)
        cpu, rss = hub.cpu_s(), hub.peak_rss_mb()
    finally:
        if link is not None:
            link.stop()
        hub.stop()
    problems = hub.problems()
    if problems:
        progress(f"  hub log: {dict(problems)}")
    stored, acked = hub_counts(work / "hub.db", box, epoch_of(ledger))
    took = None if t1 is None else t1 - t0
    return Drained(took, acked, stored, status, cpu, rss, link_cpu, up, down)


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _report(d: Drained, n: int, label: str) -> None:
    st = d.status
    took = "NOT drained" if d.seconds is None else f"{d.seconds:.2f} s"
    progress(
        f"  {label}: {took}; hub acked {d.acked}/{n}, stored {d.stored}; batches sent "
        f"{st['sent_batches']}, resent {st['resent_batches']}; downlink messages "
        f"{st['received']}; cpu: hub {d.hub_cpu_s:.1f} s (peak rss {d.hub_rss_mb:.0f} MB), "
        f"link {d.link_cpu_s:.1f} s"
    )


def drain_phase(lab: Lab, sizes: SyncSizes, f: Figures, workaround: bool) -> None:
    n = sizes.drain
    times: list[float] = []
    hub_cpu: list[float] = []
    link_cpu: list[float] = []
    stored_ok = True
    for i in range(sizes.drain_repeats):
        wait_quiet(sizes.quiet_s)
        noise = Noise()
        d = drain(lab, f"drain-{i}", n, sizes.drain_timeout_s, workaround)
        _report(d, n, f"drain {i + 1}/{sizes.drain_repeats} ({noise.describe()})")
        stored_ok = stored_ok and d.stored == n
        if d.seconds is None:
            progress(f"  not drained in {sizes.drain_timeout_s:.0f} s: no more repeats")
            f.add("drain_100k_acked_in_time", d.acked, "count", 0)
            times.append(float("nan"))
            break
        times.append(d.seconds)
        hub_cpu.append(d.hub_cpu_s)
        link_cpu.append(d.link_cpu_s)
    f.add("drain_100k_s", median(times), "s")
    f.add("drain_100k_max_s", max(times), "s")
    f.add("drain_100k_events_per_s", n / median(times), "1/s", 0)
    f.add("drain_100k_hub_cpu_s", median(hub_cpu), "s", 2)
    f.add("drain_100k_link_cpu_s", median(link_cpu), "s", 2)
    f.add("drain_100k_all_stored", int(stored_ok), "bool", 0)
    if workaround and sizes.unpatched_cap_s > 0:
        # The same drain on the hub's schema as it is: how far it gets in the time allowed.
        d = drain(lab, "drain-no-index", n, sizes.unpatched_cap_s, False)
        _report(
            d, n, f"drain on the hub's own schema (no index), cut at {sizes.unpatched_cap_s:.0f} s"
        )
        f.add("drain_100k_no_index_s", d.seconds or float("nan"), "s")
        f.add("drain_100k_no_index_acked", d.acked, "count", 0)
        # What that hub did not get to waits in its broker session ("hub", persistent): the
        # next hub process would be handed it. A fresh broker starts the next phase clean.
        lab.broker.restart()


def shaped_phase(lab: Lab, sizes: SyncSizes, f: Figures, workaround: bool) -> None:
    """The drain through the proxy at 100 ms round trip and 2 Mbit/s each way."""
    n = sizes.shaped
    probe = lab.work / "shaped-size.db"
    fill_outbox(probe, min(n, 10_000))  # bytes per event, from a sample of the same events
    rows, body = outbox_bytes(probe)
    batch_b = wire_bytes(probe, "bench-shaped", SITE) / rows
    implied = n * batch_b * 8 / RATE_BPS
    progress(
        f"  outbox JSON {body / rows:.0f} B/event, batch payload {batch_b:.0f} B/event: "
        f"{implied:.0f} s for the payload alone at {RATE_BPS / 1e6:g} Mbit/s"
    )
    with FaultProxy(lab.broker.host, lab.broker.port) as proxy:
        proxy.shape(rtt_ms=RTT_MS, rate_bps=RATE_BPS)
        d = drain(lab, "shaped", n, sizes.shaped_timeout_s, workaround, proxy)
    _report(d, n, f"shaped drain ({RTT_MS} ms RTT, {RATE_BPS / 1e6:g} Mbit/s)")
    acked = max(1, d.acked)
    progress(
        f"  on the wire (TLS, MQTT): up {d.wire_up / acked:.0f} B/event, "
        f"down {d.wire_down / acked:.0f} B/event"
    )
    f.add("drain_100k_shaped_s", float("nan") if d.seconds is None else d.seconds, "s", 1)
    if d.seconds is None:
        f.add("drain_100k_shaped_acked", d.acked, "count", 0)
    f.add("shaped_events", n, "count", 0)
    f.add("shaped_payload_bytes_per_event", batch_b, "B", 0)
    f.add("shaped_wire_up_bytes_per_event", d.wire_up / acked, "B", 0)
    f.add("shaped_wire_down_bytes_per_event", d.wire_down / acked, "B", 0)
    f.add("shaped_payload_only_s", implied, "s", 1)


def catchup_phase(lab: Lab, sizes: SyncSizes, f: Figures, workaround: bool) -> None:
    """A link connected through the proxy with its outbox empty; the proxy partitions it and N
    events are written meanwhile (Ledger.append_event, as the daemon writes them); then the
    partition heals. Figure: heal -> the hub's ack of the last event.

    blackhole: nothing flows and nothing is closed (a WAN dropping packets, shorter than the
    keepalive): the held bytes go on after the heal. reset: the connection is cut and new ones
    are refused; the link reconnects with its jittered backoff, which is part of the figure."""
    f.add("catchup_events", sizes.catchup, "count", 0)
    f.add("catchup_partition_s", sizes.partition_s, "s", 1)
    for mode in ("blackhole", "reset"):
        total: list[float] = []
        reconnect: list[float] = []
        for i in range(sizes.catchup_repeats):
            wait_quiet(sizes.quiet_s)
            got = _catchup(lab, f"catchup-{mode}-{i}", sizes, mode, workaround)
            if got is None:
                total.append(float("nan"))
                break
            total.append(got[0])
            reconnect.append(got[1])
        key = "catchup_10k" if mode == "blackhole" else "catchup_10k_after_reset"
        f.add(f"{key}_s", median(total), "s")
        f.add(f"{key}_max_s", max(total), "s")
        if mode == "reset":
            f.add(f"{key}_reconnect_s", median(reconnect), "s")


def _catchup(
    lab: Lab, name: str, sizes: SyncSizes, mode: str, workaround: bool
) -> tuple[float, float] | None:
    """(heal -> last event acked, heal -> link connected again) seconds; None if not caught up."""
    n = sizes.catchup
    work = lab.work / name
    work.mkdir()
    ledger_path, box = work / "ledger.db", f"bench-{name}"
    lab.register(box)
    fill_outbox(ledger_path, 0)
    prepare_hub_db(work / "hub.db", workaround)
    hub = HubProc(lab.hub.dir, lab.broker, work / "hub.db", work / "hub.log").start()
    link: Link | None = None
    proxy = FaultProxy(lab.broker.host, lab.broker.port).start()
    ledger = Ledger(ledger_path)
    done: float | None = None
    up: float | None = None
    try:
        link = lab.link(ledger_path, box, host=proxy.host, port=proxy.port)
        link.start()
        deadline = time.monotonic() + 20
        while not link.status()["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the link did not connect")
            time.sleep(0.02)
        proxy.set_mode(mode)
        cut = time.monotonic()
        last = _append(ledger, n)
        link.notify()
        time.sleep(max(0.0, cut + sizes.partition_s - time.monotonic()))
        saw_it = not link.status()["connected"]
        proxy.set_mode("pass")
        healed = time.monotonic()
        deadline = healed + sizes.drain_timeout_s
        while done is None and time.monotonic() < deadline:
            st = link.status()
            if up is None and st["connected"]:
                up = time.monotonic()
            if st["acked_through"] >= last:
                done = time.monotonic()
            time.sleep(0.005)
        st = link.status()
    finally:
        ledger.close()
        if link is not None:
            link.stop()
        proxy.close()
        hub.stop()
    stored, _ = hub_counts(work / "hub.db", box, epoch_of(ledger_path))
    if done is None:
        progress(f"  {name}: NOT caught up {sizes.drain_timeout_s:.0f} s after the heal: {st}")
        return None
    reconnect = (up or healed) - healed
    progress(
        f"  {name}: {mode} for {sizes.partition_s:.0f} s (link saw it: {saw_it}); caught up "
        f"{done - healed:.2f} s after the heal (connected again after {reconnect:.2f} s); "
        f"stored {stored}/{n}; batches resent {st['resent_batches']}"
    )
    return done - healed, reconnect


def _append(ledger: Ledger, n: int) -> int:
    """n events into a ledger the link is reading, as the daemon writes them; the last seq."""
    t = time.time()
    events = redemption_events(n, t)
    for start in range(0, n, PER_TX):
        with transaction(ledger.conn):
            for etype, body, rid in events[start : start + PER_TX]:
                ledger.append_event(etype, body, t, rid)
    return int(ledger.conn.execute("SELECT max(seq) FROM outbox").fetchone()[0])
