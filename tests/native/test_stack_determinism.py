"""Seeded simulations are reproducible: same seed, same capture, byte for byte.

Two stacks on a faulty virtual wire are stepped by hand in virtual time (a manual
clock shared by the stacks, the fault injector and the pcap writer; no reactor
sleeps), so every frame, fault and timer is a function of the seed alone.
"""
import asyncio
import io
import ipaddress
import random

from shoal.drivers.faults import FaultInjector, Faults
from shoal.drivers.pcap import PcapWriter
from shoal.drivers.virtual import VirtualWire
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack


class ManualClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class SteppedReactor:
    """Stands in for the shard reactor: the test calls `step` instead of sleeping."""

    sleeping = False

    def __init__(self):
        self.pollers = []

    def add_poller(self, poller):
        self.pollers.append(poller)

    def remove_poller(self, poller):
        self.pollers.remove(poller)

    def wake(self):
        pass

    def step(self):
        return any([p.poll() for p in self.pollers])


def config(ip):
    return NativeConfig("x", False, int(ipaddress.IPv4Address(ip)), 0xFFFFFF00, None, None, None)


def simulate(seed):
    """Run 100 UDP requests (some large, so fragmented) through a terrible wire; return the capture."""
    async def main():
        clock = ManualClock()
        reactor = SteppedReactor()
        wire = VirtualWire(randbytes=random.Random(seed).randbytes)
        capture = io.BytesIO()
        faults = Faults(loss=0.05, duplicate=0.05, reorder=0.1, corrupt=0.05, delay=0.001, jitter=0.004)
        dev_a = PcapWriter(FaultInjector(wire.a, seed, rx=faults, tx=faults, clock=clock), capture, clock=clock)
        a = NativeStack(dev_a, config("10.1.0.1"), rng=random.Random(seed), clock=clock)
        b = NativeStack(wire.b, config("10.1.0.2"), rng=random.Random(seed + 1), clock=clock)
        a.start(reactor)
        b.start(reactor)
        ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
        received = []

        async def server():
            while True:
                data, source = await cb.receive()
                received.append(bytes(data))
                await cb.send(source, data)

        task = asyncio.ensure_future(server())
        for i in range(100):
            await ca.send(("10.1.0.2", 7), b"%03d" % i * (1 if i % 10 else 1500))
            for _ in range(20):
                clock.now += 0.0005
                reactor.step()
                await asyncio.sleep(0)
        for _ in range(5000):  # drain: time passes until every held frame and timer is done
            clock.now += 0.01
            reactor.step()
            await asyncio.sleep(0)
        task.cancel()
        await a.stop()
        await b.stop()
        return capture.getvalue(), received, a.counters(), b.counters()

    return asyncio.run(main())


def test_same_seed_same_capture_and_counters():
    first = simulate(21)
    second = simulate(21)
    assert first == second
    capture, received, counters_a, counters_b = first
    sent = {b"%03d" % i * (1 if i % 10 else 1500) for i in range(100)}
    assert set(received) <= sent and 60 < len(set(received)) < 100  # some were lost, the rest arrived intact
    assert counters_b["ipv4"]["stats"]["reassembled"] >= 5
    other = simulate(22)
    assert other[0] != capture
