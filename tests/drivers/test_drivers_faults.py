"""The fault injector: each fault kind, determinism per seed, virtual and real time."""
import asyncio
import random

import pytest

from shoal.drivers.base import Device, DevicePoller, Offloads
from shoal.drivers.faults import FaultInjector, Faults, cut_super_frame
from shoal.drivers.virtual import VirtualWire
from shoal.net.native.wire import ipv4 as wire_ipv4, tcp as wire_tcp
from shoal.net.native.wire import WireError
from shoal.net.native.wire.tcp import ACK, CWR, FIN, PSH, TcpSegment

SRC = b"\x02\x00\x00\x00\x00\x01"


def frame(n, size=64):
    return b"\xff" * 6 + SRC + b"\x88\xb5" + n.to_bytes(4, "big") + bytes(size - 18)


def ids(frames):
    return [int.from_bytes(f[14:18], "big") for f in frames]


class ManualClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_tx(faults, seed=1, count=1000, clock=None):
    """Send `count` frames through a tx fault injector; return what the far end got."""
    clock = clock or ManualClock()
    wire = VirtualWire(capacity=100_000)
    inj = FaultInjector(wire.a, seed, tx=faults, clock=clock)
    for i in range(0, count, 10):
        assert inj.tx_burst([frame(j) for j in range(i, min(count, i + 10))]) == min(10, count - i)
    return wire.b.rx_burst(10 * count), inj


def test_no_faults_is_transparent():
    got, inj = run_tx(Faults())
    assert ids(got) == list(range(1000)) and not inj.stats


def test_loss_drops_about_the_configured_fraction():
    got, inj = run_tx(Faults(loss=0.2))
    assert 130 < inj.stats["tx_lost"] < 270
    assert len(got) == 1000 - inj.stats["tx_lost"]
    assert ids(got) == sorted(ids(got))


def test_duplication_repeats_frames_next_to_each_other():
    got, inj = run_tx(Faults(duplicate=0.1))
    assert 50 < inj.stats["tx_duplicated"] < 150
    assert len(got) == 1000 + inj.stats["tx_duplicated"]
    assert sorted(set(ids(got))) == list(range(1000))
    assert ids(got) == sorted(ids(got))


def test_corruption_flips_exactly_one_bit():
    got, inj = run_tx(Faults(corrupt=0.05), count=400)
    assert len(got) == 400
    flipped = [(g, frame(i)) for i, g in enumerate(got) if g != frame(i)]
    assert len(flipped) == inj.stats["tx_corrupted"] > 5
    for g, original in flipped:
        diff = int.from_bytes(g, "big") ^ int.from_bytes(original, "big")
        assert bin(diff).count("1") == 1


def test_reordering_swaps_without_losing():
    got, inj = run_tx(Faults(reorder=0.1))
    assert inj.stats["tx_reordered"] > 30
    assert sorted(ids(got)) == list(range(1000))
    assert ids(got) != list(range(1000))
    # a held frame goes out right after the next one: every displacement is by one place
    out_of_place = [i for i, n in enumerate(ids(got)) if n != i]
    assert len(out_of_place) == 2 * inj.stats["tx_reordered"]


def test_reordered_frame_is_released_by_timeout_when_nothing_follows():
    clock = ManualClock()
    wire = VirtualWire()
    inj = FaultInjector(wire.a, 3, tx=Faults(reorder=1.0, reorder_timeout=0.5), clock=clock)
    inj.tx_burst([frame(1)])
    assert wire.b.rx_burst(8) == [] and inj.next_deadline() == 0.5
    clock.now = 0.4
    inj.tx_burst([])
    assert wire.b.rx_burst(8) == []
    clock.now = 0.5
    inj.tx_burst([])
    assert ids(wire.b.rx_burst(8)) == [1] and inj.next_deadline() is None


def test_delay_in_virtual_time():
    clock = ManualClock()
    wire = VirtualWire()
    inj = FaultInjector(wire.b, 5, rx=Faults(delay=0.1, jitter=0.05), clock=clock)
    wire.a.tx_burst([frame(i) for i in range(50)])
    assert inj.rx_burst(64) == []
    assert 0.1 <= inj.next_deadline() < 0.15
    clock.now = 0.099
    assert inj.rx_burst(64) == []
    clock.now = 0.15
    got = inj.rx_burst(64)
    assert sorted(ids(got)) == list(range(50))
    assert ids(got) != list(range(50))  # jitter reorders
    assert inj.stats["rx_delayed"] == 50 and inj.next_deadline() is None


def test_mtu_fault_drops_big_frames():
    wire = VirtualWire()
    inj = FaultInjector(wire.a, 0, tx=Faults(mtu=100))
    assert inj.tx_burst([frame(1, size=114), frame(2, size=115)]) == 2
    assert ids(wire.b.rx_burst(4)) == [1] and inj.stats["tx_oversize"] == 1


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_seed_same_faults_different_seed_different_faults(seed):
    faults = Faults(loss=0.05, duplicate=0.05, reorder=0.05, corrupt=0.05, delay=0.01, jitter=0.02)

    def run(s):
        clock = ManualClock()
        wire = VirtualWire(capacity=100_000)
        inj = FaultInjector(wire.a, s, tx=faults, clock=clock)
        for i in range(0, 500, 7):
            inj.tx_burst([frame(j) for j in range(i, min(500, i + 7))])
            clock.now += 0.003
        clock.now += 1
        inj.tx_burst([])
        return wire.b.rx_burst(100_000), dict(inj.stats)

    first, stats = run(seed)
    assert run(seed) == (first, stats)
    assert run(seed + 1) != (first, stats)
    assert all(stats[k] > 0 for k in ("tx_lost", "tx_duplicated", "tx_reordered", "tx_corrupted"))


def test_rx_and_tx_decisions_are_independent_streams():
    """Interleaving receive calls must not change which transmitted frames are lost."""
    def run(extra_rx_calls):
        wire = VirtualWire(capacity=100_000)
        inj = FaultInjector(wire.a, 9, rx=Faults(loss=0.3), tx=Faults(loss=0.3))
        for i in range(200):
            if extra_rx_calls:
                wire.b.tx_burst([frame(i)])
                inj.rx_burst(4)
            inj.tx_burst([frame(i)])
        return ids(wire.b.rx_burst(1000))

    assert run(False) == run(True)


def test_tx_backlog_bounds_what_the_injector_takes():
    wire = VirtualWire(capacity=2)
    inj = FaultInjector(wire.a, 0, backlog=3)
    assert inj.tx_burst([frame(i) for i in range(10)]) == 3  # 2 on the wire, 1 waiting here
    assert not inj.arm()
    assert inj.tx_burst([frame(i) for i in range(3, 10)]) == 2
    assert ids(wire.b.rx_burst(10)) == [0, 1]
    assert inj.tx_burst([]) == 0
    assert ids(wire.b.rx_burst(10)) == [2, 3]


def test_poller_sleeps_until_a_delayed_frame_is_due():
    """Real time: interrupt mode sets a loop timer that makes the poller's fd readable on time."""
    async def main():
        wire = VirtualWire()
        inj = FaultInjector(wire.b, 1, rx=Faults(delay=0.05))
        received = []
        poller = DevicePoller(inj, received.extend, lambda n: [])
        wire.a.tx_burst([frame(1)])
        assert not poller.poll()  # arrived, but held back
        loop = asyncio.get_running_loop()
        start = loop.time()
        fd = poller.enter_interrupt_mode()
        woke = loop.create_future()
        loop.add_reader(fd, lambda: woke.done() or woke.set_result(loop.time()))
        await asyncio.wait([woke], timeout=10)
        loop.remove_reader(fd)
        poller.exit_interrupt_mode()
        assert woke.done() and woke.result() - start >= 0.05
        assert poller.poll() and ids(received) == [1]
        poller.close()
        wire.close()

    asyncio.run(main())


# -- TSO super-frames ------------------------------------------------------------------

ETH = 14
MSS = 1448
A_IP, B_IP = wire_ipv4.addr("10.9.0.1"), wire_ipv4.addr("10.9.0.2")


class SuperFrame(bytes):
    """A transmit frame marked for TSO, as the stack's `Packet` with ``gso_size`` set."""

    def __new__(cls, data, gso_size):
        frame = super().__new__(cls, data)
        frame.gso_size = gso_size
        return frame


class Recorder(Device):
    """A TSO device that keeps what it is given, untouched (gso_size included)."""

    mac = bytes.fromhex("020000000001")
    mtu = 1500
    offloads = Offloads(tso=True)

    def __init__(self):
        self.sent = []

    def tx_burst(self, frames):
        self.sent.extend(frames)
        return len(frames)


def tcp_frame(payload, flags=ACK | PSH, seq=0xFFFFF000, ident=0xFFFE):
    """An Ethernet + IPv4 (DF) + TCP (with timestamps) frame, checksums correct."""
    seg = TcpSegment(40000, 80, seq, 7, flags, 512, timestamp=(1, 2), payload=payload)
    ip = wire_ipv4.build(A_IP, B_IP, 6, wire_tcp.build(seg, A_IP, B_IP), ident=ident, ttl=64, df=True, tos=2)
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip


def parse_tcp(frame):
    """(ip header, tcp segment) of `frame`; raises `WireError` on any bad checksum."""
    ip, segment = wire_ipv4.parse(frame[ETH:])
    return ip, wire_tcp.parse(segment, ip.src, ip.dst)


def test_cut_super_frame_makes_the_segments_the_device_would():
    """Each piece: MSS of payload, sequence and IP ident counting up (both wrap here),
    FIN and PSH on the last piece only, CWR on the first only, valid checksums."""
    payload = random.Random(5).randbytes(5 * MSS + 100)
    pieces = cut_super_frame(tcp_frame(payload, flags=ACK | PSH | FIN | CWR), MSS)
    assert len(pieces) == 6
    got = b""
    for i, piece in enumerate(pieces):
        ip, seg = parse_tcp(piece)
        assert len(piece) <= ETH + 1500 and ip.ident == (0xFFFE + i) & 0xFFFF and ip.df and ip.tos == 2
        assert seg.seq == (0xFFFFF000 + len(got)) & 0xFFFFFFFF and seg.timestamp == (1, 2)
        assert seg.flags == ACK | (CWR if i == 0 else 0) | (PSH | FIN if i == 5 else 0)
        got += bytes(seg.payload)
    assert got == payload


def test_cut_super_frame_leaves_what_the_device_would_send_as_it_is():
    one_segment = tcp_frame(bytes(MSS))
    assert cut_super_frame(one_segment, MSS) == [one_segment]
    not_tcp = b"\xff" * 6 + SRC + b"\x08\x06" + bytes(3000)
    assert cut_super_frame(not_tcp, MSS) == [not_tcp]


def test_super_frames_keep_their_gso_size_through_the_injector():
    device = Recorder()
    inj = FaultInjector(device, 1, tx=Faults(duplicate=0.5, reorder=0.2))
    frames = [SuperFrame(tcp_frame(bytes(3 * MSS), seq=i * 3 * MSS), MSS) for i in range(40)]
    assert inj.tx_burst(frames) == 40
    inj.tx_burst([])
    assert all(getattr(f, "gso_size", 0) == MSS for f in device.sent) and len(device.sent) > 40
    assert sorted(set(device.sent)) == sorted(frames)


def test_mtu_fault_measures_the_segments_of_a_super_frame():
    device = Recorder()
    inj = FaultInjector(device, 1, tx=Faults(mtu=1500))
    big = SuperFrame(tcp_frame(bytes(20 * MSS)), MSS)
    too_big_segments = SuperFrame(tcp_frame(bytes(20 * MSS)), 1500)
    assert inj.tx_burst([big, too_big_segments]) == 2
    assert device.sent == [big] and inj.stats["tx_oversize"] == 1


@pytest.mark.parametrize("seed", range(8))
def test_corrupting_a_super_frame_spoils_one_wire_segment_detectably(seed):
    """The device would recompute the checksums of a flipped super-frame, so the injector
    cuts it and flips one bit in one cut segment: every other segment arrives as the
    device would have sent it, and the flipped one differs in one bit and (unless the bit
    is in its Ethernet header, which the link's FCS would catch) fails a checksum."""
    payload = random.Random(seed).randbytes(10 * MSS + 7)
    original = tcp_frame(payload)
    device = Recorder()
    inj = FaultInjector(device, seed, tx=Faults(corrupt=1.0))
    assert inj.tx_burst([SuperFrame(original, MSS)]) == 1
    expected = cut_super_frame(original, MSS)
    assert len(device.sent) == len(expected) == 11
    assert not any(getattr(f, "gso_size", 0) for f in device.sent)
    changed = [(got, want) for got, want in zip(device.sent, expected) if got != want]
    assert len(changed) == 1 and inj.stats["tx_corrupted"] == inj.stats["tx_cut"] == 1
    got, want = changed[0]
    diff = int.from_bytes(got, "big") ^ int.from_bytes(want, "big")
    assert bin(diff).count("1") == 1
    if diff.bit_length() <= (len(got) - ETH) * 8:  # the flipped bit lies beyond the Ethernet header
        with pytest.raises(WireError):
            parse_tcp(got)


def test_corrupted_super_frames_are_deterministic_per_seed():
    def run(seed):
        device = Recorder()
        inj = FaultInjector(device, seed, tx=Faults(corrupt=0.3, duplicate=0.1))
        rng = random.Random(3)
        inj.tx_burst([SuperFrame(tcp_frame(rng.randbytes(4 * MSS), seq=i * 4 * MSS), MSS) for i in range(30)])
        return [bytes(f) for f in device.sent], dict(inj.stats)

    assert run(4) == run(4) and run(4) != run(5)
