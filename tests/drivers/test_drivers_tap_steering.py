"""Flow steering on a multi-queue TAP: the eBPF program and `flow_queue` agree, frame by frame.

The kernel in a test-made namespace sends UDP datagrams from many source ports and
TCP SYNs from many `connect` calls to shoal's address; every frame must arrive on
the queue `flow_queue` names, and everything that has no ports (ARP, ICMP) on
queue 0, where the stack's shard 0 takes care of it.
"""
import collections
import select
import time

import pytest

from shoal.drivers.netns import KernelPeer, unavailable
from shoal.drivers.steering import flow_queue, steering_instructions

pytestmark = [pytest.mark.root, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

SENDER = r"""
import socket, sys
host, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for sport in range(first, first + count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", sport))
    s.sendto(b"x", (host, 9999))
    s.close()
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect((host, 7000))
    except BlockingIOError:
        pass
    s.close()
"""


def collect(devices, want, timeout=30):
    """Read every queue until `want` frames of interest arrived; {queue: [frames]}."""
    got = collections.defaultdict(list)
    deadline = time.monotonic() + timeout
    total = 0
    while total < want and time.monotonic() < deadline:
        select.select([d.fileno() for d in devices], [], [], 0.2)
        for q, dev in enumerate(devices):
            for frame in dev.rx_burst(64):
                got[q].append(bytes(frame))
                total += 1
    return got


def ports(frame):
    ihl = (frame[14] & 0x0F) * 4
    l4 = 14 + ihl
    return int.from_bytes(frame[l4:l4 + 2], "big"), int.from_bytes(frame[l4 + 2:l4 + 4], "big")


def test_program_is_a_whole_number_of_instructions():
    code = steering_instructions()
    assert len(code) % 8 == 0 and len(code) // 8 == 22


def test_flow_queue_is_symmetric_and_spreads_even_ports():
    assert all(flow_queue(a, b, 4) == flow_queue(b, a, 4) for a in range(30000, 30100) for b in (80, 11211))
    spread = collections.Counter(flow_queue(sport, 80, 2) for sport in range(40000, 41000, 2))
    assert min(spread.values()) > 200  # of 500 even source ports (Linux's connect) reach both queues


@pytest.mark.parametrize("queues", [2, 3])
def test_kernel_frames_land_on_the_queue_flow_queue_names(queues):
    with KernelPeer(queues=queues, mac=bytes.fromhex("02aabbccdd02")) as peer:
        for dev in peer.devices:
            while dev.rx_burst(64):
                pass
        peer.run(["ip", "neigh", "replace", peer.shoal_ip, "lladdr", "02:aa:bb:cc:dd:02", "dev", peer.ifname])
        count = 40
        peer.run(["python3", "-c", SENDER, peer.shoal_ip, "41000", str(count)])
        peer.run(["ping", "-c", "1", "-W", "1", peer.shoal_ip], check=False)  # unanswered: ICMP only
        got = collect(peer.devices, want=2 * count + 1)
        seen = collections.Counter()
        for q, frames in got.items():
            for frame in frames:
                if frame[12:14] != b"\x08\x00":
                    assert q == 0, f"a non-IPv4 frame (EtherType {frame[12:14].hex()}) on queue {q}"
                    continue
                proto = frame[23]
                if proto in (6, 17):
                    sport, dport = ports(frame)
                    assert q == flow_queue(sport, dport, queues), f"{sport}->{dport} on queue {q}"
                    seen["udp" if proto == 17 else "tcp"] += 1
                else:
                    assert q == 0, f"IP protocol {proto} on queue {q}"
                    seen[proto] += 1
        assert seen["udp"] == count and seen["tcp"] >= count and seen[1] >= 1
        assert len(got) == queues, "every queue receives some of the flows"
