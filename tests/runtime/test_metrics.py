"""Per-shard metrics: the registry, gathering from every shard, the Prometheus text, /metrics.

The registry tests need no shards. The app tests run 2-shard apps, make work
happen (cross-shard calls), and check that the counters moved, with every sample
labelled by its shard; the endpoint test scrapes /metrics over loopback with
urllib from shard 0's main (in a thread, so shard 0's loop keeps serving).
"""
import asyncio
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.net import api
from shoal.net.prometheus import PrometheusExtension, answer, stack_drops, stack_events
from shoal.runtime import ShardCrashed, metrics, run, smp

SCRAPE_S = 30


def parse(text):
    """{sample name: {frozenset(labels.items()): value}} of an exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return out


def by_shard(samples, **labels):
    """{shard: value} of the samples whose labels include `labels`."""
    want = set(labels.items())
    return {dict(key)["shard"]: value for key, value in samples.items() if want <= set(key)}


# ---- the registry, without shards ------------------------------------------------------

def test_counter_gauge_histogram_render_and_parse():
    reg = metrics.Registry()
    requests = reg.counter("kv_requests", "requests served", ["op"])
    gets = requests.labels(op="get")
    gets.inc()
    gets.inc(2)
    requests.labels("put").inc()
    items = reg.gauge("kv_items", "items held")
    items.set(5)
    items.dec()
    latency = reg.histogram("kv_latency_seconds", "time per request", buckets=[0.001, 0.01, 0.1])
    for value in (0.0005, 0.001, 0.005, 0.05, 3.0):
        latency.observe(value)
    reg.callback("kv_hits", "hits read at scrape time", metrics.COUNTER, lambda: {"a": 7, "b": 8}, ["key"])

    families = [(name, kind, help, ("shard", *labels), [(("3", *s[0]), *s[1:]) for s in samples])
                for name, kind, help, labels, samples in reg.collect()]
    samples = parse(metrics.render(families).decode())

    assert by_shard(samples["kv_requests_total"], op="get") == {"3": 3.0}
    assert by_shard(samples["kv_requests_total"], op="put") == {"3": 1.0}
    assert by_shard(samples["kv_items"]) == {"3": 4.0}
    # Buckets are cumulative and `le` is inclusive (0.001 falls in le="0.001").
    buckets = {dict(k)["le"]: v for k, v in samples["kv_latency_seconds_bucket"].items()}
    assert buckets == {"0.001": 2.0, "0.01": 3.0, "0.1": 4.0, "+Inf": 5.0}
    assert by_shard(samples["kv_latency_seconds_count"]) == {"3": 5.0}
    assert by_shard(samples["kv_latency_seconds_sum"]) == {"3": pytest.approx(3.0565)}
    assert by_shard(samples["kv_hits_total"], key="b") == {"3": 8.0}


def test_registry_refuses_misuse():
    reg = metrics.Registry()
    labelled = reg.counter("a", "a", ["op"])
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("a", "again")
    with pytest.raises(ValueError, match="use .labels"):
        labelled.inc()
    with pytest.raises(ValueError, match="takes labels"):
        labelled.labels("x", "y")
    with pytest.raises(ValueError, match="unknown labels"):
        labelled.labels(op="x", other="y")
    with pytest.raises(ValueError, match="buckets"):
        reg.histogram("h", "h", buckets=[1, 1])
    with pytest.raises(ValueError, match="counter or a gauge"):
        reg.callback("c", "c", metrics.HISTOGRAM, lambda: 1)
    reg.remove("a")
    assert "a" not in reg
    reg.gauge("a", "free again")


def test_shards_with_different_definitions_are_an_error():
    one = [("m", metrics.COUNTER, "m", ("shard",), [(("0",), 1)])]
    two = [("m", metrics.GAUGE, "m", ("shard",), [(("1",), 1)])]
    with pytest.raises(ValueError, match="differs between shards"):
        metrics._merge(one, two)


def test_http_answers_without_shards():
    """Requests that never reach gathering: wrong path, method, version, garbage."""
    async def all_answers():
        return [await answer(head) for head in (
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n", b"\xff\xfe\r\n\r\n", b"HEAD /other HTTP/1.0\r\n\r\n")]

    not_found, not_allowed, bad_version, garbage, head_only = asyncio.run(all_answers())
    assert not_found.startswith(b"HTTP/1.1 404 ") and not_found.endswith(b"/metrics\n")
    assert not_allowed.startswith(b"HTTP/1.1 405 ")
    assert bad_version.startswith(b"HTTP/1.1 505 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert head_only.startswith(b"HTTP/1.1 404 ") and head_only.endswith(b"\r\n\r\n")


class _NativeShaped:
    """A stack reporting counters in the native stack's layout."""
    name = "native"

    def counters(self):
        return {"ipv4": {"stats": {"rx-packets": 9}, "drops": {"bad-checksum": 2}, "tx_drops": {"no-route": 1}},
                "device": {"stats": {"rx-frames": 12}, "drops": {}}}


def test_stack_counters_become_events_and_drops_by_reason():
    assert api.installed_stack() is None
    assert stack_events() is None and stack_drops() is None  # no stack: no samples
    api.use_stack(_NativeShaped())
    try:
        events, drops = stack_events(), stack_drops()
    finally:
        api.use_stack(None)
    assert events == {("native", "ipv4", "rx-packets"): 9, ("native", "device", "rx-frames"): 12}
    assert drops == {("native", "ipv4", "rx", "bad-checksum"): 2, ("native", "ipv4", "tx", "no-route"): 1}


# ---- gathered from the shards of a running app -------------------------------------------

def echo(value):
    return value


PINGS = metrics.registry.counter("test_pings", "pings answered, per shard")


def ping():
    PINGS.inc()
    return smp.this_shard()


def test_gather_labels_every_sample_with_its_shard_and_counters_move():
    async def main():
        before = await metrics.gather()
        for i in range(50):
            await smp.submit_to(1, ping)
            await smp.submit_to(0, ping)
        await smp.submit_to(1, echo, b"x" * 200_000)  # larger than a ring record: several records
        after = await metrics.gather()
        return metrics.render(before).decode(), metrics.render(after).decode()

    # 64 KiB rings: records of 32 KiB, so the 200 kB message takes several.
    before, after = run(main, smp=2, argv=["--overprovisioned", "--smp-ring-kib", "64"])
    before, after = parse(before), parse(after)
    assert by_shard(after["test_pings_total"]) == {"0": 50.0, "1": 50.0}
    sent = by_shard(after["shoal_smp_messages_total"], direction="sent")
    received = by_shard(after["shoal_smp_messages_total"], direction="received")
    old_sent = by_shard(before["shoal_smp_messages_total"], direction="sent")
    # 51 requests went 0 -> 1 and 51 replies 1 -> 0 (the gathers add their own messages).
    assert sent["0"] - old_sent["0"] >= 51 and sent["1"] - old_sent["1"] >= 51
    assert received["1"] >= 51 and received["0"] >= 51
    records = by_shard(after["shoal_smp_records_total"], direction="sent")
    assert records["0"] > sent["0"]
    assert by_shard(after["shoal_smp_bytes_total"], direction="received")["1"] > 200_000
    for name in ("shoal_reactor_polls_total", "shoal_reactor_polls_with_work_total"):
        for shard, value in by_shard(after[name]).items():
            assert value > by_shard(before[name])[shard], (name, shard)
    assert set(by_shard(after["shoal_reactor_tasks"])) == {"0", "1"}
    # Every call from shard 0 to shard 1 is one observation of the round-trip histogram.
    calls = by_shard(after["shoal_smp_call_seconds_count"])
    assert calls["0"] - by_shard(before["shoal_smp_call_seconds_count"])["0"] >= 51
    slow = by_shard(after["shoal_smp_call_seconds_bucket"], le="+Inf")
    assert slow["0"] == calls["0"]
    assert set(by_shard(after["shoal_reactor_tasks_started_total"])) == {"0", "1"}


def _scrape(url):
    with urllib.request.urlopen(url, timeout=SCRAPE_S) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.mark.parametrize("backend", ["asyncio", "uvloop"])
def test_prometheus_endpoint_serves_all_shards_over_loopback(backend):
    extension = PrometheusExtension()

    async def main():
        for _ in range(20):
            await smp.submit_to(1, ping)
        url = f"http://127.0.0.1:{extension.address[1]}/metrics"
        first = await asyncio.to_thread(_scrape, url)
        for _ in range(30):
            await smp.submit_to(1, ping)
        second = await asyncio.to_thread(_scrape, url)
        try:
            await asyncio.to_thread(_scrape, url.replace("/metrics", "/other"))
        except urllib.error.HTTPError as exc:
            missing = exc.code
        return first, second, missing

    (status, content_type, first), (_, _, second), missing = run(
        main, smp=2, extensions=[extension],
        argv=["--overprovisioned", "--reactor-backend", backend,
              "--prometheus-port", "0", "--prometheus-address", "127.0.0.1"])
    assert status == 200 and content_type.startswith("text/plain; version=")
    assert missing == 404
    first, second = parse(first), parse(second)
    assert by_shard(first["test_pings_total"]) == {"0": 0.0, "1": 20.0}
    assert by_shard(second["test_pings_total"]) == {"0": 0.0, "1": 50.0}
    started = by_shard(second["shoal_reactor_tasks_started_total"])
    assert set(started) == {"0", "1"} and started["0"] >= 1
    for name in ("shoal_reactor_polls_total", "shoal_smp_messages_total", "shoal_reactor_sleeps_total"):
        assert {dict(k)["shard"] for k in second[name]} == {"0", "1"}, name


def test_endpoint_port_in_use_stops_the_app_naming_the_option():
    async def main():
        return "main must not run"

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ShardCrashed, match=rf"Address already in use: --prometheus-address/--prometheus-port "
                                               rf"127\.0\.0\.1:{port}"):
            run(main, smp=1, extensions=[PrometheusExtension()],
                argv=["--prometheus-port", str(port), "--prometheus-address", "127.0.0.1"])
