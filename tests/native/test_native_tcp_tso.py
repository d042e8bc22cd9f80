"""TSO through the whole native stack, on the virtual clock: the layer turns it on for a
device that offers it, marks super-segments with ``gso_size``, and the data arrives intact
through a device that cuts them (as the TAP's kernel does) even over a faulty wire. The
same device finishes the checksums of the other segments (``tx_checksum``), which the
stack then leaves partial (`Packet.checksum_partial`).

The virtual wire itself offers no TSO, so there every segment stays within one MSS.
"""
import asyncio
import random
import struct

from shoal.drivers.base import DeviceWrapper, Offloads, frame_bytes, wire_bytes
from shoal.drivers.faults import FaultInjector, Faults
from shoal.drivers.virtual import VirtualWire
from shoal.net.native.stack import NativeStack
from shoal.net.native.tcp.connection import TSO_MAX_PAYLOAD
from shoal.net.native.wire import ipv4 as wire_ipv4
from shoal.net.native.wire import tcp as wire_tcp
from shoal.net.native.wire.checksum import pseudo_header_sum
from shoal.net.native.wire.tcp import CWR, FIN, PSH, TcpSegment

from test_native_tcp_virtual import (A_IP, B_IP, ManualClock, VirtualReactor, both_ways, run, static,
                                     test_config, two_stacks)

ETH = 14


def cut_frame(frame, gso_size):
    """The MTU-sized Ethernet frames a TSO device makes of one TCP/IPv4 super-frame.

    Each piece repeats the headers with the sequence number advanced and the IP ident
    incremented; PSH and FIN stay on the last piece, CWR on the first (Linux's
    tcp_gso_segment). Checksums are computed per piece: the stack left the super-frame's
    to the device, whose field holds only the pseudo-header sum (checked here).
    """
    data = bytes(frame_bytes(frame))
    ip, segment = wire_ipv4.parse(data[ETH:])
    assert struct.unpack_from("!H", segment, 16)[0] == pseudo_header_sum(ip.src, ip.dst, 6, len(segment))
    seg = wire_tcp.parse(segment)
    payload = bytes(seg.payload)
    out = []
    for i, off in enumerate(range(0, len(payload), gso_size)):
        piece = TcpSegment(seg.src_port, seg.dst_port, (seg.seq + off) & 0xFFFFFFFF, seg.ack, seg.flags,
                           seg.window, timestamp=seg.timestamp, sack=seg.sack,
                           payload=payload[off:off + gso_size])
        if off:
            piece.flags &= ~CWR
        if off + gso_size < len(payload):
            piece.flags &= ~(FIN | PSH)
        tcp = wire_tcp.build(piece, ip.src, ip.dst)
        out.append(data[:ETH] + wire_ipv4.build(ip.src, ip.dst, ip.proto, tcp, ident=(ip.ident + i) & 0xFFFF,
                                                ttl=ip.ttl, df=ip.df, tos=ip.tos))
    return out


class CuttingDevice(DeviceWrapper):
    """Offers TSO and cuts super-frames before they reach the wrapped device; offers
    ``tx_checksum`` and finishes the TCP checksums the stack left partial."""

    offloads = Offloads(tso=True, tx_checksum=True)

    def __init__(self, inner):
        super().__init__(inner)
        self.super_frames = 0
        self.sizes = []
        self.alone = 0  # frames marked to go alone (`Packet.alone`: retransmissions)
        self.finished = 0  # TCP frames whose checksum the stack left to the device
        self.summed_tcp = 0  # TCP frames the stack summed itself

    def _finish(self, frame):
        data = bytes(frame_bytes(frame))
        if data[12:14] != b"\x08\x00" or data[ETH + 9] != 6:
            return frame
        if not getattr(frame, "checksum_partial", False):
            self.summed_tcp += 1
            return frame
        ip, segment = wire_ipv4.parse(data[ETH:])
        assert struct.unpack_from("!H", segment, 16)[0] == pseudo_header_sum(ip.src, ip.dst, 6, len(segment))
        self.finished += 1
        return wire_bytes(frame)

    def tx_burst(self, frames):
        if not frames:
            return self.inner.tx_burst(frames)  # lets a fault injector release held frames
        taken = 0
        for frame in frames:
            gso_size = getattr(frame, "gso_size", 0)
            if gso_size:
                pieces = cut_frame(frame, gso_size)
                assert all(len(p) <= ETH + self.mtu for p in pieces)
                self.super_frames += 1
                self.sizes.append(len(frame) - ETH)
                self.inner.tx_burst(pieces)  # a full queue drops the rest, like a NIC ring
            elif not self.inner.tx_burst([self._finish(frame)]):
                break
            self.alone += bool(getattr(frame, "alone", False))
            taken += 1
        return taken


async def cutting_stacks(seed=1, faults=None):
    """Stacks A and B over a virtual wire, each behind a `CuttingDevice` (A's wire end
    also behind a fault injector); returns (a, b, devices, clock, stop)."""
    clock = ManualClock()
    reactor = VirtualReactor(clock)
    wire = VirtualWire(mtu=1500, randbytes=random.Random(seed).randbytes)
    end_a = wire.a if faults is None else FaultInjector(wire.a, seed, rx=faults, tx=faults, clock=clock)
    dev_a, dev_b = CuttingDevice(end_a), CuttingDevice(wire.b)
    a = NativeStack(dev_a, static(A_IP), rng=random.Random(seed), clock=clock, tcp_config=test_config())
    b = NativeStack(dev_b, static(B_IP), rng=random.Random(seed + 1), clock=clock, tcp_config=test_config())
    reactor.stacks = [a, b]
    reactor.devices = [end_a]
    a.start(reactor)
    b.start(reactor)
    task = asyncio.ensure_future(reactor.run())

    async def stop():
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await a.stop()
        await b.stop()
    return a, b, (dev_a, dev_b), stop


def check_transfer(faults):
    async def main():
        a, b, devices, stop = await cutting_stacks(faults=faults)
        try:
            assert a.tcp.config.tso_max == TSO_MAX_PAYLOAD == b.tcp.config.tso_max
            await both_ways(a, b, 2 << 20, 1 << 20)
            for stack, dev in zip((a, b), devices):
                stats = stack.counters()["tcp"]["stats"]
                assert dev.super_frames > 0 and stats["tso-segments-sent"] == dev.super_frames
                assert dev.finished > 0 and dev.summed_tcp == 0  # every other segment left to the device
                assert all(n <= 0xFFFF for n in dev.sizes)  # an IPv4 datagram at most
            return a.counters()["tcp"]["stats"], devices[0].sizes, devices[0].alone
        finally:
            await stop()
    return asyncio.run(asyncio.wait_for(main(), 120))


def test_super_segments_cut_by_the_device_arrive_intact():
    stats, sizes, alone = check_transfer(None)
    assert stats.get("retransmit", 0) == 0 and alone == 0
    assert max(sizes) > 30 * 1448  # the window opened: segments of tens of MSS


def test_super_segments_over_a_lossy_reordering_wire():
    stats, _sizes, alone = check_transfer(Faults(loss=0.02, reorder=0.02, duplicate=0.01, corrupt=0.01))
    assert stats["retransmit"] > 0
    # each retransmission left as a frame of its own, for a device that merges segments
    # into super-frames (`vnet.coalesce`); nothing else did
    assert alone == stats["retransmit"]


def test_virtual_wire_offers_no_tso_and_segments_stay_within_the_mss():
    async def main():
        async with two_stacks() as (a, b, _clock):
            assert a.tcp.config.tso_max == 0 and b.tcp.config.tso_max == 0
            await both_ways(a, b, 300_000, 100_000)
            assert "tso-segments-sent" not in a.counters()["tcp"]["stats"]
            assert a.device.stats["tx_oversize"] == 0
    run(main())


def test_super_segments_take_the_one_pack_path(monkeypatch):
    """A super-segment of an established connection is built like any of its segments, all
    three headers in one pack (`Ipv4.send_tcp`), with the idents its pieces will use
    skipped; the device cuts it all the same (`cut_frame` checks every piece)."""
    from shoal.net.native.wire import tcp_frame

    built = {"one pack": 0, "long way": 0}

    def counting(name, fn):
        def wrapper(*args):
            seg = args[10] if name == "one pack" else args[2]
            built[name] += len(seg.payload) > 1448
            return fn(*args)
        return wrapper
    monkeypatch.setattr(tcp_frame, "emit", counting("one pack", tcp_frame.emit))
    monkeypatch.setattr(wire_tcp, "emit_header", counting("long way", wire_tcp.emit_header))
    stats, _sizes, _alone = check_transfer(None)
    assert built["one pack"] >= stats["tso-segments-sent"] > 0  # (A's; B sends some too)
    assert built["long way"] == 0
