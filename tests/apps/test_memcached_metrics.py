"""shoal memcached's Prometheus metrics, scraped over loopback after pymemcache traffic.

The server runs as `python -m shoal.apps.memcached --smp 2 --prometheus-port 0`; the
port the endpoint got is read from its log line. Cache counters are read from the
shards' stores at scrape time, so they must agree exactly with memcached's own
``stats`` command and with the traffic the test made.
"""
import os
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymemcache.client.base import Client
from test_memcached_server import REPLY_S, ServerProcess

_ENDPOINT = re.compile(r"\[shard 0\] .*serving metrics on http://([\d.]+:\d+)/metrics")


class Server(ServerProcess):
    """The server process; ready once it logged its endpoint and its listening line."""

    def __init__(self, *args):
        self.endpoint = None
        super().__init__("--prometheus-port", "0", "--prometheus-address", "127.0.0.1", *args)

    def _read(self):
        listening = False
        for line in self.proc.stdout:
            self.output.append(line)
            found = _ENDPOINT.search(line)
            if found:
                self.endpoint = found.group(1)
            listening = listening or line.startswith("memcached: listening")
            if listening and self.endpoint:
                self.ready.set()

    def scrape(self):
        """{sample name: [(labels, value), ...]} from /metrics."""
        with urllib.request.urlopen(f"http://{self.endpoint}/metrics", timeout=REPLY_S) as response:
            text = response.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((sample.labels, sample.value))
        return out


def per_shard(samples, name, **labels):
    return {s["shard"]: v for s, v in samples[name] if labels.items() <= s.items()}


@pytest.fixture
def server():
    # 256 KiB over 2 shards: 128 KiB each, so a few hundred KiB of values evict.
    srv = Server("--smp", "2", "--overprovisioned", "--max-memory", "256k")
    try:
        yield srv
    finally:
        srv.stop()


def test_hits_misses_evictions_and_traffic_per_shard(server):
    before = server.scrape()
    client = Client(("127.0.0.1", server.port), default_noreply=False, timeout=REPLY_S, connect_timeout=REPLY_S)
    try:
        keys = [f"key-{i}".encode() for i in range(40)]
        for key in keys:
            assert client.set(key, b"v" * 100)
        hits = sum(client.get(key) is not None for key in keys)
        misses = sum(client.get(f"absent-{i}".encode()) is None for i in range(25))
        for i in range(600):  # ~600 KiB into 256 KiB: both shards must evict
            client.set(f"big-{i}".encode(), os.urandom(1024))
        stats = client.stats()
        after = server.scrape()
    finally:
        client.close()

    assert hits == 40 and misses == 25
    hit_counts = per_shard(after, "memcached_get_hits_total")
    miss_counts = per_shard(after, "memcached_get_misses_total")
    evictions = per_shard(after, "memcached_evictions_total")
    assert set(hit_counts) == set(miss_counts) == set(evictions) == {"0", "1"}
    assert sum(hit_counts.values()) == hits == stats[b"get_hits"]
    assert sum(miss_counts.values()) == misses == stats[b"get_misses"]
    assert all(count > 0 for count in evictions.values()), evictions
    assert sum(evictions.values()) == stats[b"evictions"]
    assert sum(per_shard(before, "memcached_evictions_total").values()) == 0
    limits = per_shard(after, "memcached_limit_bytes")
    assert limits == {"0": 128 * 1024, "1": 128 * 1024}
    assert all(0 < used <= 128 * 1024 for used in per_shard(after, "memcached_item_bytes").values())

    # One read per request here: every command was timed on the shard that parsed it.
    batches = per_shard(after, "memcached_batch_seconds_count")
    assert sum(batches.values()) >= 40 + 40 + 25 + 600
    # The posix stack counted the connection and its bytes on the shard that accepted it.
    accepted = per_shard(after, "shoal_net_events_total", stack="posix", layer="tcp", event="connections-accepted")
    received = per_shard(after, "shoal_net_events_total", stack="posix", layer="tcp", event="bytes-received")
    assert sum(accepted.values()) == 1
    assert sum(received.values()) > 600 * 1024
    # Requests for keys owned by the other shard crossed the rings.
    sent = per_shard(after, "shoal_smp_messages_total", direction="sent")
    assert all(count > 0 for count in sent.values()), sent
