"""The /metrics page (Prometheus text 0.0.4) and the daemon's structured log lines.

The page is checked the way Prometheus reads it: a small parser below turns the rendered text
back into samples, so an escaping or layout mistake fails here rather than on a scrape.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.logfmt import setup_logging
from edge.metrics import ERRORS_METRIC, Registry

# --- a tiny text-format parser ---------------------------------------------------------------

_SAMPLE_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass
class Page:
    help: dict[str, str] = field(default_factory=dict)
    type: dict[str, str] = field(default_factory=dict)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def get(self, name: str, **labels: str) -> float:
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {self.samples}"
        return found[0]

    def series(self, name: str) -> list[dict[str, str]]:
        return [ls for n, ls, _ in self.samples if n == name]


def _parse_labels(text: str, i: int) -> tuple[dict[str, str], int]:
    """Parse `{a="x",b="y"}` starting at text[i] == '{'; return labels and the index after '}'."""
    labels: dict[str, str] = {}
    i += 1
    while text[i] != "}":
        eq = text.index("=", i)
        name = text[i:eq]
        assert text[eq + 1] == '"', text
        i = eq + 2
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                value.append(_UNESCAPE[text[i + 1]])  # KeyError on an invalid escape
                i += 2
            else:
                value.append(text[i])
                i += 1
        labels[name] = "".join(value)
        i += 1
        if text[i] == ",":
            i += 1
    return labels, i + 1


def parse(page: str) -> Page:
    assert page.endswith("\n")
    out = Page()
    for line in page.splitlines():
        if line.startswith("# HELP "):
            name, _, text = line[7:].partition(" ")
            out.help[name] = text.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}, line
            out.type[name] = kind
        else:
            m = _SAMPLE_NAME.match(line)
            assert m, f"not a sample line: {line!r}"
            labels: dict[str, str] = {}
            i = m.end()
            if line[i] == "{":
                labels, i = _parse_labels(line, i)
            assert line[i] == " ", line
            out.samples.append((m.group(), labels, float(line[i + 1 :])))
    return out


# --- counters and gauges ---------------------------------------------------------------------


def test_counter_by_reason_and_unlabelled_counter_starts_at_zero() -> None:
    reg = Registry()
    decisions = reg.counter("edge_decisions_total", "Decisions by reason.", labels=("reason",))
    reg.counter("edge_scans_total", "Scans read.")
    decisions.inc(reason="ok")
    decisions.inc(reason="ok")
    decisions.inc(3, reason="expired")
    decisions.inc(0, reason="capacity_full")  # visible before its first event

    page = parse(reg.render())
    assert page.type["edge_decisions_total"] == "counter"
    assert page.help["edge_decisions_total"] == "Decisions by reason."
    assert page.get("edge_decisions_total", reason="ok") == 2
    assert page.get("edge_decisions_total", reason="expired") == 3
    assert page.get("edge_decisions_total", reason="capacity_full") == 0
    assert page.get("edge_scans_total") == 0
    assert decisions.value(reason="expired") == 3
    with pytest.raises(ValueError, match="cannot go down"):
        decisions.inc(-1, reason="ok")


def test_labelled_gauges_and_gauge_fns() -> None:
    reg = Registry()
    queue = reg.gauge("edge_print_queue", "Jobs waiting per printer.", labels=("printer",))
    queue.set(4, printer="hot")
    queue.set(1, printer="bar")
    queue.inc(printer="bar")
    queue.dec(3, printer="hot")
    zones = {"main": 120, "garden": 7}
    reg.gauge_fn(
        "edge_zone_occupancy",
        "People inside per zone.",
        lambda: {(z,): n for z, n in zones.items()},
        labels=("zone",),
    )
    reg.gauge_fn("edge_outbox_depth", "Events not yet synced.", lambda: 42)
    reg.gauge_fn(
        "edge_device_up", "1 when the device is open.", lambda: {("gate-1",): True}, ("device",)
    )

    page = parse(reg.render())
    assert page.get("edge_print_queue", printer="hot") == 1
    assert page.get("edge_print_queue", printer="bar") == 2
    assert page.get("edge_zone_occupancy", zone="main") == 120
    assert page.get("edge_outbox_depth") == 42
    assert page.get("edge_device_up", device="gate-1") == 1
    assert page.type["edge_zone_occupancy"] == "gauge"
    zones["main"] = 121  # read at render time, not at registration
    assert parse(reg.render()).get("edge_zone_occupancy", zone="main") == 121


def test_failing_gauge_fn_leaves_the_rest_of_the_page_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = Registry()
    reg.counter("edge_scans_total", "Scans read.").inc(5)

    def cache_age() -> float:
        raise OSError("cache file gone")

    reg.gauge_fn("edge_cache_age_seconds", "Age of the code cache.", cache_age)
    reg.gauge_fn("edge_queue", "Bad shape.", lambda: {("a", "b"): 1.0}, labels=("printer",))
    reg.gauge_fn("edge_outbox_depth", "Events not yet synced.", lambda: 3)

    with caplog.at_level(logging.WARNING, logger="edge.metrics"):
        reg.render()
        page = parse(reg.render())
    assert page.get("edge_scans_total") == 5
    assert page.get("edge_outbox_depth") == 3
    assert page.series("edge_cache_age_seconds") == []
    assert page.type["edge_cache_age_seconds"] == "gauge"
    assert page.get(ERRORS_METRIC, metric="edge_cache_age_seconds") == 2
    assert page.get(ERRORS_METRIC, metric="edge_queue") == 2
    assert page.type[ERRORS_METRIC] == "counter"
    # Logged when it starts failing, not once per scrape.
    failing = [r for r in caplog.records if "edge_cache_age_seconds" in r.getMessage()]
    assert len(failing) == 1


# --- histograms ------------------------------------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inf_equals_count() -> None:
    reg = Registry()
    lat = reg.histogram(
        "edge_scan_to_gate_seconds", "Scan to gate command.", buckets=(0.01, 0.02, 0.05)
    )
    for v in (0.004, 0.01, 0.015, 0.03, 0.2, 7.0):
        lat.observe(v)

    page = parse(reg.render())
    assert page.type["edge_scan_to_gate_seconds"] == "histogram"
    buckets = {ls["le"]: v for n, ls, v in page.samples if n == "edge_scan_to_gate_seconds_bucket"}
    # 0.01 is inclusive: le="0.01" holds 0.004 and 0.01.
    assert [float(le) for le in buckets] == [0.01, 0.02, 0.05, math.inf]
    assert list(buckets.values()) == [2, 3, 4, 6]
    assert page.get("edge_scan_to_gate_seconds_count") == 6
    assert buckets["+Inf"] == page.get("edge_scan_to_gate_seconds_count")
    assert page.get("edge_scan_to_gate_seconds_sum") == pytest.approx(7.259)


def test_labelled_histogram_series_are_separate() -> None:
    reg = Registry()
    lat = reg.histogram("lat_seconds", "Latency.", buckets=(1, 2), labels=("lane",))
    lat.observe(0.5, lane="entry")
    lat.observe(1.5, lane="exit")
    lat.observe(9, lane="exit")
    page = parse(reg.render())
    assert page.get("lat_seconds_bucket", lane="entry", le="1") == 1
    assert page.get("lat_seconds_bucket", lane="entry", le="+Inf") == 1
    assert page.get("lat_seconds_bucket", lane="exit", le="1") == 0
    assert page.get("lat_seconds_bucket", lane="exit", le="2") == 1
    assert page.get("lat_seconds_bucket", lane="exit", le="+Inf") == 2
    assert page.get("lat_seconds_count", lane="exit") == 2
    assert page.get("lat_seconds_sum", lane="exit") == 10.5


# --- escaping and validation -----------------------------------------------------------------


def test_label_values_and_help_are_escaped() -> None:
    reg = Registry()
    c = reg.counter("edge_errors_total", 'Errors by "kind".\nSecond line \\ here.', ("kind",))
    odd = 'paper "out"\\\nline2 纸尽'
    c.inc(kind=odd)
    text = reg.render()
    sample_lines = [line for line in text.splitlines() if line.startswith("edge_errors_total")]
    assert len(sample_lines) == 1  # the newline did not split the sample
    page = parse(text)
    assert page.get("edge_errors_total", kind=odd) == 1
    assert page.help["edge_errors_total"] == 'Errors by "kind".\nSecond line \\ here.'


def test_bad_names_and_wrong_labels_raise() -> None:
    reg = Registry()
    for bad in ("", "9lives", "edge-scans", "edge scans"):
        with pytest.raises(ValueError, match="bad metric name"):
            reg.counter(bad, "x")
    with pytest.raises(ValueError, match="bad label name"):
        reg.gauge("ok_name", "x", labels=("bad-label",))
    with pytest.raises(ValueError, match="sequence of names"):
        reg.gauge("ok_name", "x", labels="printer")
    with pytest.raises(ValueError, match="reserved"):
        reg.histogram("h", "x", labels=("le",))
    with pytest.raises(ValueError, match="increasing"):
        reg.histogram("h", "x", buckets=(0.1, 0.05))

    c = reg.counter("edge_decisions_total", "x", labels=("reason", "lane"))
    with pytest.raises(ValueError, match="expected"):
        c.inc(reason="ok")  # lane missing
    with pytest.raises(ValueError, match="expected"):
        c.inc(reason="ok", lane="entry", door="1")
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("edge_decisions_total", "x")
    reg.histogram("edge_lat", "x")
    with pytest.raises(ValueError, match="already registered"):
        reg.counter("edge_lat_count", "x")  # would collide with the histogram's samples
    with pytest.raises(ValueError, match="already registered"):
        reg.counter(ERRORS_METRIC, "x")
    assert parse(reg.render()).series("edge_decisions_total") == []


def test_concurrent_updates_from_eight_threads_are_exact() -> None:
    reg = Registry()
    lat = reg.histogram("lat_seconds", "x", buckets=(0.01, 0.1), labels=("lane",))
    hits = reg.counter("hits_total", "x", labels=("lane",))
    n = 5000
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for k in range(n):
            lat.observe(0.005 if k % 2 else 0.05, lane=f"l{i % 2}")
            hits.inc(lane=f"l{i % 2}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    pages = []
    while any(t.is_alive() for t in threads):
        pages.append(reg.render())  # rendering while others write must not break or tear
    for t in threads:
        t.join()

    page = parse(reg.render())
    for lane in ("l0", "l1"):
        assert page.get("hits_total", lane=lane) == 4 * n
        assert page.get("lat_seconds_count", lane=lane) == 4 * n
        assert page.get("lat_seconds_bucket", lane=lane, le="0.01") == 2 * n
        assert page.get("lat_seconds_bucket", lane=lane, le="+Inf") == 4 * n
    for text in pages:
        mid = parse(text)
        for lane in {ls["lane"] for ls in mid.series("lat_seconds_count")}:
            assert mid.get("lat_seconds_bucket", lane=lane, le="+Inf") == mid.get(
                "lat_seconds_count", lane=lane
            )


# --- structured logs -------------------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Opaque:
    def __str__(self) -> str:
        return "<opaque thing>"


def test_json_line_carries_extra_fields_and_exceptions(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log = logging.getLogger("edge.lane")
    log.info(
        "decision %s",
        "deny",
        extra={
            "lane": "entry",
            "reason": "expired",
            "latency_ms": 4.25,
            "code": "a1b2c3d4e5",
            "where": Path("/srv/x"),
            "thing": Opaque(),
            "nan": float("nan"),
            "ts": "caller's own ts",
            "line": "请通行\nplease pass",
        },
    )
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.exception("print job failed", extra={"job": "j-7"})
    log.debug("bad args %d", "not a number")

    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # one line per record, traceback included
    first, second, third = (json.loads(line) for line in lines)
    assert TS.fullmatch(first["ts"])
    assert first["level"] == "INFO"
    assert first["logger"] == "edge.lane"
    assert first["msg"] == "decision deny"
    assert first["lane"] == "entry"
    assert first["reason"] == "expired"
    assert first["latency_ms"] == 4.25
    assert first["where"] == "/srv/x"
    assert first["thing"] == "<opaque thing>"
    assert first["nan"] == "nan"
    assert first["ts_"] == "caller's own ts"  # did not overwrite the record's time
    assert first["line"] == "请通行\nplease pass"
    assert "exc" not in first
    assert second["level"] == "ERROR"
    assert second["job"] == "j-7"
    assert "Traceback" in second["exc"]
    assert "ZeroDivisionError: division by zero" in second["exc"]
    assert third["level"] == "DEBUG"
    assert "bad args" in third["msg"]


def test_text_format_is_logfmt_style(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out)
    log = logging.getLogger("edge.spool")
    log.debug("not shown at INFO")
    log.warning(
        "printer down",
        extra={"printer": "hot", "status": "paper out", "held": 3, "ok": False, "note": ""},
    )
    try:
        raise RuntimeError("cover open")
    except RuntimeError:
        log.error("job failed", exc_info=True, extra={"job": "j-1"})

    text = out.getvalue()
    first, *rest = text.splitlines()
    ts, level, logger, rest_of_line = first.split(" ", 3)
    assert TS.fullmatch(ts)
    assert (level, logger) == ("WARNING", "edge.spool")
    assert rest_of_line == 'printer down printer=hot status="paper out" held=3 ok=false note=""'
    assert rest[0].endswith("ERROR edge.spool job failed job=j-1")
    assert rest[1] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: cover open"
    assert "not shown" not in text


def test_setup_logging_installs_one_handler_and_checks_its_arguments(root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    setup_logging("INFO", "json", stream=second)
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("edge").info("once")
    assert first.getvalue() == ""
    assert [json.loads(line)["msg"] for line in second.getvalue().splitlines()] == ["once"]
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "xml")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("LOUD", "json")
