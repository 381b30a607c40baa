"""A small Prometheus registry rendering the text exposition format 0.0.4 (no dependency).

The daemon's `/metrics` page: decisions by reason, scan-to-actuator latency, outbox depth, print
queue per printer, device up, cache age, occupancy per zone. Counters, gauges and histograms are
updated from the loop and from device worker threads, so every metric has its own lock. Values
that live elsewhere (a queue's length, a cache's age) are `gauge_fn`s, read when the page is
rendered: a callback that fails costs only its own samples, never the page, and is counted in
`edge_metrics_errors_total{metric=...}`.

Label values are arbitrary text (escaped on output); a sample with the wrong label names is a
programming error and raises ValueError at the call site.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
ERRORS_METRIC: Final = "edge_metrics_errors_total"
# Prometheus' own defaults, in seconds: fine enough below 25 ms for the gate latency target.
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

LabelKey = tuple[str, ...]
GaugeFnResult = Mapping[tuple[str, ...], float] | float


def format_value(v: float) -> str:
    """Go-style float text, as Prometheus writes it: `3`, `0.25`, `+Inf`, `NaN`."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class _Metric(ABC):
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Iterable[str]) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
        if isinstance(labels, str):  # labels="printer" would become p, r, i, ...
            raise ValueError(f"{name}: labels must be a sequence of names, not {labels!r}")
        names = tuple(labels)
        for label in names:
            if not _LABEL_RE.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: bad label name {label!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: duplicate label names in {names}")
        self.name = name
        self.help = help
        self.label_names: LabelKey = names
        self._label_set = frozenset(names)
        self._lock = threading.Lock()

    def sample_names(self) -> tuple[str, ...]:
        return (self.name,)

    def _key(self, labels: Mapping[str, object]) -> LabelKey:
        if labels.keys() != self._label_set:
            raise ValueError(
                f"{self.name}: labels {sorted(labels)} given, expected {list(self.label_names)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    @abstractmethod
    def _render(self) -> list[str]:
        """The metric's sample lines."""


class _ValueMetric(_Metric):
    """One float per label set; unlabelled metrics start at 0 so they are on the page at once."""

    def __init__(self, name: str, help: str, labels: Iterable[str]) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelKey, float] = {} if self.label_names else {(): 0.0}

    def value(self, **labels: object) -> float:
        """Current value (0 for a label set never touched)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def _render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self._header()
        lines += [
            f"{self.name}{_labels_text(self.label_names, k)} {format_value(v)}" for k, v in items
        ]
        return lines


class Counter(_ValueMetric):
    """Only goes up. `inc(0, reason="expired")` makes a series visible before its first event."""

    kind = "counter"

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        if not amount >= 0:  # also rejects NaN
            raise ValueError(f"{self.name}: a counter cannot go down (inc by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_ValueMetric):
    kind = "gauge"

    def set(self, v: float, /, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(v)

    def inc(self, amount: float = 1, /, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1, /, **labels: object) -> None:
        self.inc(-amount, **labels)


class GaugeFn(_Metric):
    """A gauge whose samples come from a callback at render time.

    With no labels the callback may return a number; with labels it returns
    {(label values...): number}. It runs on the thread rendering the page (the loop), so it
    must be cheap and must not block: read a value someone else keeps up to date.
    """

    kind = "gauge"

    def __init__(
        self, name: str, help: str, fn: Callable[[], GaugeFnResult], labels: Iterable[str]
    ) -> None:
        super().__init__(name, help, labels)
        self._fn = fn

    def collect(self) -> list[tuple[LabelKey, float]]:
        """Call the callback and check its result; raises whatever is wrong with it."""
        result = self._fn()
        if isinstance(result, int | float):
            if self.label_names:
                raise ValueError(f"{self.name}: got a single number, labels {self.label_names}")
            return [((), float(result))]
        if not isinstance(result, Mapping):
            raise TypeError(f"{self.name}: callback returned {type(result).__name__}")
        samples: list[tuple[LabelKey, float]] = []
        for key, v in result.items():
            if not isinstance(key, tuple) or len(key) != len(self.label_names):
                raise ValueError(f"{self.name}: key {key!r} does not match {self.label_names}")
            if not isinstance(v, int | float):  # bool is an int: device up = True works
                raise TypeError(f"{self.name}: value {v!r} for {key!r} is not a number")
            samples.append((tuple(str(k) for k in key), float(v)))
        return sorted(samples)

    def render_collected(self, samples: list[tuple[LabelKey, float]]) -> list[str]:
        lines = self._header()
        lines += [
            f"{self.name}{_labels_text(self.label_names, k)} {format_value(v)}" for k, v in samples
        ]
        return lines

    def _render(self) -> list[str]:
        return self.render_collected(self.collect())


class Histogram(_Metric):
    """Cumulative buckets (`le` inclusive), `_sum` and `_count`; `+Inf` is always the last."""

    kind = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Iterable[float], labels: Iterable[str]
    ) -> None:
        super().__init__(name, help, labels)
        if "le" in self.label_names:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        bounds = [float(b) for b in buckets]
        if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
            bounds.pop()
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError(f"{name}: bucket bounds must be finite (+Inf is added)")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must be strictly increasing: {bounds}")
        self.bounds: tuple[float, ...] = tuple(bounds)
        # Per label set: counts per bucket (not cumulative; the last slot is +Inf), sum.
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}
        if not self.label_names:
            self._counts[()] = [0] * (len(self.bounds) + 1)
            self._sums[()] = 0.0

    def sample_names(self) -> tuple[str, ...]:
        return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")

    def observe(self, v: float, /, **labels: object) -> None:
        if math.isnan(v):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        slot = bisect.bisect_left(self.bounds, v)  # le is inclusive: v == bound lands in it
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.bounds) + 1)
                self._sums[key] = 0.0
            counts[slot] += 1
            self._sums[key] += v

    def _render(self) -> list[str]:
        with self._lock:
            snapshot = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        lines = self._header()
        names = (*self.label_names, "le")
        les = [format_value(b) for b in self.bounds] + ["+Inf"]
        for key, counts, total in snapshot:
            running = 0
            for le, n in zip(les, counts, strict=True):
                running += n
                lines.append(f"{self.name}_bucket{_labels_text(names, (*key, le))} {running}")
            labels = _labels_text(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {format_value(total)}")
            lines.append(f"{self.name}_count{labels} {running}")
        return lines


class Registry:
    """The set of metrics one `/metrics` page shows, in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []
        self._taken: set[str] = set()
        # Not in `_metrics`: rendered last, so it includes the failures of this very render.
        self._errors = Counter(
            ERRORS_METRIC, "Metric callbacks that failed while rendering /metrics.", ("metric",)
        )
        self._taken.add(ERRORS_METRIC)
        self._failing: set[str] = set()

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            clash = self._taken.intersection((metric.name, *metric.sample_names()))
            if clash:
                raise ValueError(f"metric name already registered: {sorted(clash)[0]}")
            self._taken.update((metric.name, *metric.sample_names()))
            self._metrics.append(metric)

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        metric = Counter(name, help, labels)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        metric = Gauge(name, help, labels)
        self._add(metric)
        return metric

    def gauge_fn(
        self,
        name: str,
        help: str,
        fn: Callable[[], GaugeFnResult],
        labels: Iterable[str] = (),
    ) -> GaugeFn:
        metric = GaugeFn(name, help, fn, labels)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        labels: Iterable[str] = (),
    ) -> Histogram:
        metric = Histogram(name, help, buckets, labels)
        self._add(metric)
        return metric

    def errors(self, metric: str) -> float:
        """How many renders failed to collect `metric` so far."""
        return self._errors.value(metric=metric)

    def render(self) -> str:
        """The whole page. Callbacks run here, outside the registry lock (they may take theirs)."""
        with self._lock:
            metrics = list(self._metrics)
        lines: list[str] = []
        for metric in metrics:
            if isinstance(metric, GaugeFn):
                lines += self._render_fn(metric)
            else:
                lines += metric._render()
        lines += self._errors._render()
        return "\n".join(lines) + "\n"

    def _render_fn(self, metric: GaugeFn) -> list[str]:
        try:
            samples = metric.collect()
        except Exception as err:
            self._errors.inc(metric=metric.name)
            # Logged when it starts failing, not on every scrape (every 15 s forever).
            with self._lock:
                first = metric.name not in self._failing
                self._failing.add(metric.name)
            if first:
                log.warning(
                    "metric %s: callback failed: %s",
                    metric.name,
                    err,
                    exc_info=True,
                    extra={"metric": metric.name},
                )
            samples = []
        else:
            with self._lock:
                recovered = metric.name in self._failing
                self._failing.discard(metric.name)
            if recovered:
                log.info("metric %s: callback works again", metric.name)
        return metric.render_collected(samples)
