"""Per-shard metrics: counters, gauges and histograms, gathered from every shard.

Theory of operation
-------------------
Every shard process has one :data:`registry` (a module global: shards are
processes, so "per module" is "per shard"). Code registers a metric once, by
name, and updates it on its hot path with a plain attribute increment::

    from shoal.runtime import metrics

    REQUESTS = metrics.registry.counter("kv_requests", "requests served", ["op"])
    GETS = REQUESTS.labels(op="get")      # look the child up once ...
    GETS.inc()                            # ... then each update is one += on a slot

A metric registered at import time of a module that the launcher imported
before forking exists, with its own zero values, on every shard.

State that a component already counts (the reactor's and the rings' ``stats``
dicts, a cache's hit counters, a network stack's drop counters) is exposed
without touching its hot path: ``registry.callback(...)`` takes a function
that reads the current value(s) when somebody scrapes, and nothing runs
between scrapes. This module registers such callbacks for the runtime itself
(reactor polls, sleeps, wake-ups, stalls, tasks; smp messages, records,
bytes, back-pressure waits) and so never edits the reactor or smp.

Gathering: :func:`gather` runs :func:`snapshot` on every shard through
``smp.map_reduce`` and merges the results, adding a ``shard`` label (first)
to every sample. A snapshot is plain tuples, so it crosses the rings as a
small pickle. :func:`render` turns gathered families into the Prometheus
text exposition format with prometheus-client (its metric families in a
one-shot custom collector, written by ``generate_latest``).

The runtime serves nothing itself: an HTTP endpoint is an app-template
extension above it (``shoal.net.prometheus`` adds ``--prometheus-port``).
"""
import asyncio
import math
from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from shoal.runtime import reactor, smp

__all__ = ["Registry", "Counter", "Gauge", "Histogram", "registry", "snapshot", "gather", "render",
           "count_tasks", "DEFAULT_BUCKETS"]

#: Latency buckets in seconds, 10 us .. 10 s, for histograms that give none.
DEFAULT_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class _Value:
    """One labelled time series of a counter or gauge: a number in a slot."""
    __slots__ = ("value",)

    def __init__(self):
        self.value = 0

    def inc(self, amount=1):
        self.value += amount

    def dec(self, amount=1):
        self.value -= amount

    def set(self, value):
        self.value = value


class _Buckets:
    """One labelled histogram series: a count per bucket (non-cumulative, the
    last one for +Inf) and the sum of observations."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value):
        # Bucket `le=b` holds observations <= b: the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Metric:
    kind = None

    def __init__(self, name, help, labelnames):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._children = {}
        self._unlabelled = None if self.labelnames else self.labels()

    def labels(self, *values, **named):
        """The series for these label values (by position or by name); create it
        on first use. Keep the result: updating it is the cheap part."""
        if named:
            if values:
                raise TypeError("give label values by position or by name, not both")
            try:
                values = tuple(named.pop(name) for name in self.labelnames)
            except KeyError as exc:
                raise ValueError(f"{self.name}: missing label {exc.args[0]!r}") from None
            if named:
                raise ValueError(f"{self.name}: unknown labels {sorted(named)}")
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, got {list(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only(self):
        if self._unlabelled is None:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: use .labels(...) first")
        return self._unlabelled

    def _samples(self):
        return [(key, child.value) for key, child in self._children.items()]


class Counter(_Metric):
    """A count that only goes up (reset only by a restart)."""
    kind = COUNTER

    def _new_child(self):
        return _Value()

    def inc(self, amount=1):
        self._only().value += amount

    @property
    def value(self):
        return self._only().value


class Gauge(Counter):
    """A value that goes up and down (items cached, connections open)."""
    kind = GAUGE

    def dec(self, amount=1):
        self._only().value -= amount

    def set(self, value):
        self._only().value = value


class Histogram(_Metric):
    """Observations counted into fixed buckets (upper bounds, sorted), plus their sum."""
    kind = HISTOGRAM

    def __init__(self, name, help, labelnames, buckets):
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct finite bounds, got {list(buckets)}")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self):
        return _Buckets(self.bounds)

    def observe(self, value):
        self._only().observe(value)

    def _samples(self):
        return [(key, child.bounds, list(child.counts), child.sum) for key, child in self._children.items()]


class _Callback:
    """A counter or gauge whose values are read by `read()` at scrape time."""

    def __init__(self, name, help, kind, read, labelnames):
        self.name, self.help, self.kind, self.read, self.labelnames = name, help, kind, read, tuple(labelnames)

    def _samples(self):
        values = self.read()
        if values is None:
            return []
        if not self.labelnames:
            return [((), values)]
        out = []
        for key, value in values.items():
            key = (key,) if isinstance(key, str) else tuple(key)
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {list(self.labelnames)}, its callback gave {key!r}")
            out.append((tuple(str(k) for k in key), value))
        return out


class Registry:
    """The metrics of one shard, by name. Names follow Prometheus rules; a
    counter's exposed samples get the ``_total`` suffix added."""

    def __init__(self):
        self._metrics = {}

    def _add(self, metric):
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name, help, labelnames=()):
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name, help, labelnames=()):
        return self._add(Gauge(name, help, labelnames))

    def histogram(self, name, help, labelnames=(), buckets=DEFAULT_BUCKETS):
        return self._add(Histogram(name, help, labelnames, buckets))

    def callback(self, name, help, kind, read, labelnames=()):
        """Register a counter or gauge read at scrape time. `read()` returns the
        value (no labels), or a mapping of label values (a tuple, or a str for
        one label) to values, or None for "no samples now"."""
        if kind not in (COUNTER, GAUGE):
            raise ValueError(f"a callback metric is a counter or a gauge, not {kind!r}")
        return self._add(_Callback(name, help, kind, read, labelnames))

    def remove(self, name):
        """Unregister `name` (a component that stops takes its metrics along)."""
        self._metrics.pop(name, None)

    def __contains__(self, name):
        return name in self._metrics

    def collect(self):
        """This registry's families as plain tuples ``(name, kind, help,
        labelnames, samples)``; see :func:`snapshot`."""
        return [(m.name, m.kind, m.help, m.labelnames, m._samples()) for m in self._metrics.values()]


registry = Registry()
"""This shard's registry."""


def snapshot(shard=None):
    """This shard's families with a leading ``shard`` label on every sample.

    Counter/gauge samples are ``(labelvalues, value)``; histogram samples are
    ``(labelvalues, bounds, counts, sum)`` with non-cumulative counts."""
    shard = str(smp.this_shard() if shard is None else shard)
    out = []
    for name, kind, help, labelnames, samples in registry.collect():
        out.append((name, kind, help, ("shard", *labelnames), [((shard, *s[0]), *s[1:]) for s in samples]))
    return out


def _merge(acc, more):
    by_name = {family[0]: family for family in acc}
    merged = list(acc)
    for family in more:
        name, kind, help, labelnames, samples = family
        mine = by_name.get(name)
        if mine is None:
            merged.append(family)
            by_name[name] = family
            continue
        if (mine[1], mine[3]) != (kind, labelnames):
            raise ValueError(f"metric {name!r} differs between shards: {mine[1]} {list(mine[3])} "
                             f"vs {kind} {list(labelnames)}")
        mine[4].extend(samples)
    return merged


async def gather():
    """Every shard's snapshot, merged by name (``smp.map_reduce``), in shard order."""
    return await smp.map_reduce(snapshot, reduce=_merge, initial=[])


class _OneShot:
    """A prometheus-client custom collector over already gathered families."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        for name, kind, help, labelnames, samples in self._families:
            if kind == HISTOGRAM:
                family = HistogramMetricFamily(name, help, labels=labelnames)
                for labels, bounds, counts, total in samples:
                    cumulative, buckets = 0, []
                    for bound, count in zip((*bounds, math.inf), counts):
                        cumulative += count
                        buckets.append((floatToGoString(bound), cumulative))
                    family.add_metric(labels, buckets, total)
            else:
                cls = CounterMetricFamily if kind == COUNTER else GaugeMetricFamily
                family = cls(name, help, labels=labelnames)
                for labels, value in samples:
                    family.add_metric(labels, value)
            yield family


def render(families):
    """The Prometheus text exposition (format 0.0.4) of `families`, as bytes."""
    target = CollectorRegistry(auto_describe=False)
    target.register(_OneShot(families))
    return generate_latest(target)


# ---- the runtime's own metrics ------------------------------------------------------

_tasks_started = _Value()
_counted_loop = None


def count_tasks(loop):
    """Count the tasks started on `loop` (``shoal_reactor_tasks_started``).

    asyncio has no such counter, so this wraps the loop's task factory: one
    increment per task created, nothing per step. Idempotent per loop."""
    global _counted_loop
    factory = loop.get_task_factory()
    _counted_loop = loop
    if getattr(factory, "shoal_counting", False):
        return

    def counting_factory(loop, coro, **kwargs):
        _tasks_started.value += 1
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    counting_factory.shoal_counting = True
    loop.set_task_factory(counting_factory)


def _reactor_stat(key):
    def read():
        current = reactor._current
        return None if current is None else current.stats[key]
    return read


def _smp_stat(what):
    def read():
        stats = smp.stats()
        if stats is None:
            return None
        if what == "backpressure_waits":
            return stats[what]
        return {"sent": stats[f"{what}_sent"], "received": stats[f"{what}_received"]}
    return read


def _alive_tasks():
    current = reactor._current
    return None if current is None else len(asyncio.all_tasks(current.loop))


def _tasks_started_read():
    current = reactor._current
    if current is None or current.loop is not _counted_loop:
        return None  # nobody counts on this shard: no sample rather than a false 0
    return _tasks_started.value


def _register_runtime(target):
    for key, name, help in (
            ("ticks", "shoal_reactor_polls", "reactor poll rounds (every poller polled once per round)"),
            ("polls_with_work", "shoal_reactor_polls_with_work", "poll rounds in which a poller did work"),
            ("sleeps", "shoal_reactor_sleeps", "times the reactor went to sleep in epoll after idling"),
            ("wakeups", "shoal_reactor_wakeups", "times the reactor woke from sleep"),
            ("stalls", "shoal_reactor_stalls", "stalls longer than --blocked-reactor-notify-ms")):
        target.callback(name, help, COUNTER, _reactor_stat(key))
    target.callback("shoal_reactor_tasks", "asyncio tasks alive on the shard", GAUGE, _alive_tasks)
    target.callback("shoal_reactor_tasks_started", "asyncio tasks created on the shard (when counted: "
                    "see shoal.runtime.metrics.count_tasks)", COUNTER, _tasks_started_read)
    for what, help in (("messages", "cross-shard messages"), ("records", "ring records (a message "
                       "larger than a record takes several)"), ("bytes", "bytes through the rings")):
        target.callback(f"shoal_smp_{what}", help, COUNTER, _smp_stat(what), ["direction"])
    target.callback("shoal_smp_backpressure_waits", "cross-shard calls that waited for a full outbox to drain",
                    COUNTER, _smp_stat("backpressure_waits"))
    calls = target.histogram("shoal_smp_call_seconds", "round trip of submit_to calls to other shards")
    smp._call_observer = calls.observe


_register_runtime(registry)
