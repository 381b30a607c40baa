"""The box's own metrics on /metrics (edge/box.py): decisions by lane and reason, scan-to-actuator
latency, and gauges read from the box's state when the page is rendered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.metrics import Counter, Histogram, Registry

if TYPE_CHECKING:
    from edge.box import Box

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def register(m: Registry, box: Box) -> tuple[Counter, Histogram]:
    """Add the box's metrics to `m`; returns the decisions counter and the latency histogram
    (Box.observe feeds them)."""
    decisions = m.counter(
        "edge_decisions_total", "Decisions by lane and reason", labels=("lane", "reason")
    )
    latency = m.histogram(
        "edge_scan_to_actuator_seconds",
        "From a scan to the gate command (or the decision where nothing moves)",
        buckets=LATENCY_BUCKETS,
        labels=("lane",),
    )
    m.gauge_fn(
        "edge_outbox_depth", "Events waiting for the cloud", lambda: box.stats["outbox_depth"]
    )
    m.gauge_fn(
        "edge_print_queue",
        "Print jobs queued or held, per printer",
        lambda: {(p,): float(n) for p, n in box.stats["print_queue"].items()},
        labels=("printer",),
    )
    m.gauge_fn(
        "edge_device_up",
        "1 when the device is open and answering",
        lambda: {(n, s.device_class): float(s.up) for n, s in box.slots.items()},
        labels=("device", "class"),
    )
    m.gauge_fn(
        "edge_cache_age_seconds",
        "Age of the active code bundle",
        lambda: float(box.stats["cache_age_s"] if box.stats["cache_age_s"] is not None else -1),
    )
    m.gauge_fn(
        "edge_zone_occupancy",
        "Persons inside (confirmed) per zone",
        lambda: {(z.zone,): float(z.inside) for z in box.zones},
        labels=("zone",),
    )
    m.gauge_fn(
        "edge_zone_pending",
        "Entries admitted, passage not yet seen, per zone",
        lambda: {(z.zone,): float(z.pending) for z in box.zones},
        labels=("zone",),
    )
    return decisions, latency
