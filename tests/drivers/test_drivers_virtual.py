"""The in-process and shared-memory virtual wires, and the poller adapter over them."""
import asyncio
import multiprocessing
import os
import random
import select
import time

import pytest

from shoal.drivers.base import DevicePoller
from shoal.drivers.virtual import SharedWire, VirtualWire

BROADCAST = b"\xff" * 6


def frame(src_mac, n, size=64):
    """An Ethernet frame to broadcast with EtherType 0x88b5 (local experimental) carrying `n`."""
    payload = n.to_bytes(4, "big") + bytes((n + i) & 0xFF for i in range(size - 18))
    return BROADCAST + src_mac + b"\x88\xb5" + payload


def test_in_process_wire_carries_frames_both_ways_in_order():
    with VirtualWire() as wire:
        sent = [frame(wire.a.mac, i) for i in range(10)]
        assert wire.a.tx_burst(sent) == 10
        assert wire.b.pending() == 10
        assert wire.b.rx_burst(4) == sent[:4]
        assert wire.b.rx_burst(100) == sent[4:]
        assert wire.b.rx_burst(100) == []
        back = [frame(wire.b.mac, 99)]
        assert wire.b.tx_burst(back) == 1
        assert wire.a.rx_burst(8) == back
        assert wire.a.stats["tx_frames"] == 10 and wire.b.stats["rx_frames"] == 10


def test_scatter_frames_are_joined_and_copied():
    with VirtualWire() as wire:
        header = bytearray(frame(wire.a.mac, 1)[:14])
        body = bytearray(b"payload-bytes" * 4)
        assert wire.a.tx_burst([[header, memoryview(body)]]) == 1
        body[:] = b"X" * len(body)  # the sender reuses its buffer: the frame on the wire must not change
        (got,) = wire.b.rx_burst(1)
        assert got == bytes(header) + b"payload-bytes" * 4


def test_full_queue_is_back_pressure_not_loss():
    with VirtualWire(capacity=3) as wire:
        frames = [frame(wire.a.mac, i) for i in range(5)]
        assert wire.a.tx_burst(frames) == 3
        assert wire.a.tx_burst(frames[3:]) == 0
        assert wire.b.rx_burst(10) == frames[:3]
        assert wire.a.tx_burst(frames[3:]) == 2
        assert wire.b.rx_burst(10) == frames[3:]


def test_mtu_is_enforced_like_a_nic():
    with VirtualWire(mtu=100) as wire:
        ok = frame(wire.a.mac, 1, size=14 + 100)
        too_big = frame(wire.a.mac, 2, size=14 + 101)
        tagged = BROADCAST + wire.a.mac + b"\x81\x00\x00\x05" + b"\x88\xb5" + bytes(100)
        assert wire.a.tx_burst([ok, too_big, tagged]) == 3
        assert wire.b.rx_burst(10) == [ok, tagged]
        assert wire.a.stats["tx_oversize"] == 1


def test_eventfd_becomes_readable_when_frames_arrive():
    with VirtualWire() as wire:
        fd = wire.b.fileno()
        assert wire.b.arm()
        wire.a.tx_burst([frame(wire.a.mac, 1)])
        assert os.eventfd_read(fd) == 1
        assert not wire.b.arm()  # a frame waits: sleeping now would lose a wake-up
        wire.b.rx_burst(1)
        assert wire.b.arm()


def test_poller_moves_bursts_and_keeps_unsent_frames():
    with VirtualWire(capacity=2) as wire:
        received, outbox = [], [frame(wire.a.mac, i) for i in range(5)]

        def pull(n):
            batch = outbox[:n]
            del outbox[:n]
            return batch

        poller = DevicePoller(wire.a, received.extend, pull, batch=4)
        wire.b.tx_burst([frame(wire.b.mac, 100)])
        assert poller.poll()
        assert received == [frame(wire.b.mac, 100)]
        assert poller.has_pending_tx()  # 4 pulled, 2 taken by the full peer queue
        assert [f[14:18] for f in wire.b.rx_burst(10)] == [bytes([0, 0, 0, 0]), bytes([0, 0, 0, 1])]
        assert poller.poll()
        assert [f[14:18] for f in wire.b.rx_burst(10)] == [bytes([0, 0, 0, 2]), bytes([0, 0, 0, 3])]
        assert poller.poll()
        assert [f[14:18] for f in wire.b.rx_burst(10)] == [bytes([0, 0, 0, 4])]
        assert not poller.poll()


def test_poller_interrupt_mode_wakes_a_sleeping_loop():
    async def main():
        wire = VirtualWire()
        received = []
        poller = DevicePoller(wire.b, received.extend, lambda n: [])
        fd = poller.enter_interrupt_mode()
        loop = asyncio.get_running_loop()
        woke = loop.create_future()
        loop.add_reader(fd, lambda: woke.done() or woke.set_result(True))
        loop.call_soon(wire.a.tx_burst, [frame(wire.a.mac, 7)])
        await asyncio.wait_for(woke, 10)
        loop.remove_reader(fd)
        poller.exit_interrupt_mode()
        assert poller.poll() and received == [frame(wire.a.mac, 7)]
        poller.close()
        wire.close()

    asyncio.run(main())


def readable(fd):
    return bool(select.select([fd], [], [], 0)[0])


def test_poller_refuses_to_sleep_through_work():
    async def main():
        wire = VirtualWire(capacity=1)
        poller = DevicePoller(wire.a, list, lambda n: [frame(wire.a.mac, 1), frame(wire.a.mac, 2)])
        fd = poller.enter_interrupt_mode()
        assert not readable(fd)
        poller.exit_interrupt_mode()
        poller.poll()  # the peer queue takes one frame, one waits in the poller
        assert poller.has_pending_tx()
        assert readable(poller.enter_interrupt_mode())
        poller.exit_interrupt_mode()
        wire.b.tx_burst([frame(wire.b.mac, 3)])  # the device itself has a frame
        poller.pull = lambda n: []
        wire.b.rx_burst(8)
        poller.poll()
        assert not poller.has_pending_tx()
        wire.b.tx_burst([frame(wire.b.mac, 4)])
        assert readable(poller.enter_interrupt_mode())
        poller.exit_interrupt_mode()
        poller.close()

    asyncio.run(main())


def test_shard_reactor_sleeps_and_wakes_for_frames():
    """The runtime's reactor drives the poller: it sleeps when idle and a frame wakes it."""
    reactor_mod = pytest.importorskip("shoal.runtime.reactor")

    async def main():
        loop = asyncio.get_running_loop()
        reactor = reactor_mod.Reactor(loop, idle_poll_time=0.001)
        wire = VirtualWire()
        got = loop.create_future()
        poller = DevicePoller(wire.b, lambda frames: got.done() or got.set_result(frames), lambda n: [])
        reactor.add_poller(poller)
        reactor.start()
        try:
            for _ in range(1000):
                if reactor.sleeping:
                    break
                await asyncio.sleep(0.005)
            assert reactor.sleeping
            wire.a.tx_burst([frame(wire.a.mac, 5)])
            assert await asyncio.wait_for(got, 10) == [frame(wire.a.mac, 5)]
            assert reactor.stats["wakeups"] >= 1
        finally:
            reactor.close()
            poller.close()
            wire.close()

    asyncio.run(main())


def shm_names():
    return {n for n in os.listdir("/dev/shm") if n.startswith("shoal-wire-")}


def test_shared_wire_in_one_process_and_no_leak():
    before = shm_names()
    wire = SharedWire(slots=4)
    assert wire.name.startswith("shoal-wire-") and wire.name in shm_names()
    frames = [frame(wire.a.mac, i, size=60 + i) for i in range(6)]
    assert wire.a.tx_burst(frames) == 4  # four slots: back-pressure
    assert wire.b.pending() == 4
    assert wire.b.rx_burst(3) == frames[:3]
    assert wire.a.tx_burst(frames[4:]) == 2
    assert wire.b.rx_burst(10) == [frames[3]] + frames[4:]
    assert wire.b.tx_burst([frames[0]]) == 1 and wire.a.rx_burst(1) == [frames[0]]
    wire.close()
    wire.close()
    assert shm_names() == before


def test_shared_wire_refuses_oversize_and_wakes_sleeper():
    with SharedWire(mtu=200, slots=8) as wire:
        assert wire.a.tx_burst([frame(wire.a.mac, 1, size=14 + 201)]) == 1
        assert wire.a.stats["tx_oversize"] == 1 and wire.b.rx_burst(8) == []
        assert wire.b.arm()
        wire.a.tx_burst([frame(wire.a.mac, 2)])
        assert os.eventfd_read(wire.b.fileno()) == 1
        wire.b.disarm()
        assert not wire.b.arm()  # the frame is still there
        wire.b.disarm()


def _echo_child(port, count):
    """Child process: echo `count` frames back, sleeping on the port's eventfd when idle."""
    echoed = 0
    while echoed < count:
        frames = port.rx_burst(32)
        if not frames:
            if port.arm():
                select.select([port.fileno()], [], [], 5)
            port.disarm()
            continue
        out = [f[6:12] + f[:6] + f[12:] for f in frames]
        while out:
            n = port.tx_burst(out)
            del out[:n]
        echoed += len(frames)
    os._exit(0)


def test_shared_wire_across_processes_with_sleep_and_wake():
    before = shm_names()
    count = 3000
    rng = random.Random(7)
    with SharedWire(slots=64) as wire:
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_echo_child, args=(wire.b, count))
        child.start()
        try:
            sent, got = 0, []
            expected = [frame(wire.a.mac, i, size=rng.randrange(60, 1514)) for i in range(count)]
            deadline = time.monotonic() + 60
            while len(got) < count and time.monotonic() < deadline:
                if sent < count:
                    sent += wire.a.tx_burst(expected[sent:sent + 16])
                frames = wire.a.rx_burst(64)
                got.extend(frames)
                if not frames and sent == count and wire.a.arm():
                    select.select([wire.a.fileno()], [], [], 1)
                wire.a.disarm()
            assert len(got) == count
            assert got == [f[6:12] + f[:6] + f[12:] for f in expected]
            child.join(30)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
                child.join()
    assert shm_names() == before
