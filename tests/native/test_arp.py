"""ARP protocol logic with a fake clock: cache, aging, resolution queue, retries, replies, announcements."""
import errno

from shoal.net.native.arp import BROADCAST_IP, Arp
from shoal.net.native.packet import Packet
from shoal.net.native.wire import arp as wire_arp
from shoal.net.native.wire import ethernet

MAC_US = bytes.fromhex("020000000001")
MAC_PEER = bytes.fromhex("020000000002")
US, PEER, OTHER = 0x0A000001, 0x0A000002, 0x0A000003


def _arp(now=0.0, **kw):
    a = Arp(MAC_US, announce_count=0, **kw)
    a.set_address(US, now)
    return a


def _drain(a):
    """The frames on `tx` as (EthernetFrame, ArpPacket or payload bytes)."""
    out = []
    while a.tx:
        p = a.tx.popleft()
        f = ethernet.parse(p.linearize())
        body = wire_arp.parse(f.payload) if f.ethertype == ethernet.ETHERTYPE_ARP else bytes(f.payload)
        out.append((f, body))
        p.release()
    return out


def _frame_payload(op, sha, spa, tha, tpa):
    return memoryview(wire_arp.build(op, sha, spa, tha, tpa))


def test_announcements_at_start():
    a = Arp(MAC_US, announce_count=2, announce_interval=2.0)
    assert a.poll_at() is None
    a.set_address(US, 10.0)
    (f, p), = _drain(a)
    assert f.dst == ethernet.BROADCAST and p.op == wire_arp.OP_REQUEST and p.spa == p.tpa == US
    assert a.poll_at() == 12.0
    a.poll(11.9)
    assert _drain(a) == []
    a.poll(12.0)
    assert len(_drain(a)) == 1 and a.poll_at() is None


def test_replies_to_requests_for_our_address_and_learns_requester():
    a = _arp()
    a.receive(_frame_payload(wire_arp.OP_REQUEST, MAC_PEER, PEER, bytes(6), US), 1.0)
    (f, p), = _drain(a)
    assert f.dst == MAC_PEER and p == (wire_arp.OP_REPLY, MAC_US, US, MAC_PEER, PEER)
    assert a.lookup(PEER, 1.0) == MAC_PEER
    a.receive(_frame_payload(wire_arp.OP_REQUEST, MAC_PEER, PEER, bytes(6), OTHER), 1.0)
    assert _drain(a) == [] and a.stats["not-for-us"] == 1


def test_resolution_queues_then_flushes_in_order():
    a = _arp()
    for i in range(3):
        assert a.output(Packet(bytes([i])), PEER, 0.0) is False
    (f, req), = _drain(a)  # one request for three packets
    assert f.dst == ethernet.BROADCAST and req.tpa == PEER and req.op == wire_arp.OP_REQUEST
    a.receive(_frame_payload(wire_arp.OP_REPLY, MAC_PEER, PEER, MAC_US, US), 0.5)
    frames = _drain(a)
    assert [body for _, body in frames] == [b"\x00", b"\x01", b"\x02"]
    assert all(f.dst == MAC_PEER and f.ethertype == ethernet.ETHERTYPE_IPV4 for f, _ in frames)
    assert a.output(Packet(b"x"), PEER, 0.6) is True and a.pending == {}


def test_queue_is_bounded_dropping_oldest():
    released = []
    a = _arp(queue_limit=2)
    for i in range(4):
        a.output(Packet(bytes([i]), release=lambda i=i: released.append(i)), PEER, 0.0)
    assert released == [0, 1] and a.drops["resolution-queue-full"] == 2
    _drain(a)
    a.receive(_frame_payload(wire_arp.OP_REPLY, MAC_PEER, PEER, MAC_US, US), 0.1)
    assert [body for _, body in _drain(a)] == [b"\x02", b"\x03"]


def test_retries_then_gives_up_failing_waiting_sends():
    errors, released = [], []
    a = _arp(retry_interval=1.0, max_requests=3)
    a.output(Packet(b"x", release=lambda: released.append(1)), PEER, 0.0, on_error=errors.append)
    assert len(_drain(a)) == 1 and a.poll_at() == 1.0
    a.poll(0.99)
    assert _drain(a) == []
    a.poll(1.0)
    a.poll(2.0)
    assert len(_drain(a)) == 2 and errors == []
    a.poll(3.0)
    assert _drain(a) == [] and released == [1]
    assert [e.errno for e in errors] == [errno.EHOSTUNREACH]
    assert a.pending == {} and a.poll_at() is None and a.drops["unresolved"] == 1


def test_pending_table_bounded():
    errors = []
    a = _arp(max_pending=2)
    for ip in (PEER, OTHER, OTHER + 1):
        a.output(Packet(b"x"), ip, 0.0, on_error=errors.append)
    assert len(a.pending) == 2 and [e.errno for e in errors] == [errno.ENOBUFS]


def test_entries_expire_and_are_refreshed_by_unicast_poll():
    a = _arp(reachable_time=60.0, refresh_window=5.0)
    a.learn(PEER, MAC_PEER, 0.0)
    assert a.lookup(PEER, 54.0) == MAC_PEER and _drain(a) == []
    assert a.lookup(PEER, 56.0) == MAC_PEER
    (f, p), = _drain(a)  # one unicast poll, not one per lookup
    assert f.dst == MAC_PEER and p.tpa == PEER
    assert a.lookup(PEER, 57.0) == MAC_PEER and _drain(a) == []
    a.receive(_frame_payload(wire_arp.OP_REPLY, MAC_PEER, PEER, MAC_US, US), 58.0)
    assert a.lookup(PEER, 110.0) == MAC_PEER  # refreshed until 118
    assert a.lookup(PEER, 118.0) is None and PEER not in a.cache


def test_merge_updates_known_senders_only():
    a = _arp()
    a.learn(PEER, MAC_PEER, 0.0)
    new_mac = bytes.fromhex("020000000009")
    a.receive(_frame_payload(wire_arp.OP_REQUEST, new_mac, PEER, bytes(6), OTHER), 1.0)  # not for us
    assert a.lookup(PEER, 1.0) == new_mac
    a.receive(_frame_payload(wire_arp.OP_REQUEST, new_mac, OTHER + 5, bytes(6), OTHER), 1.0)
    assert a.lookup(OTHER + 5, 1.0) is None  # RFC 826: unknown senders are learned only when we are the target


def test_cache_is_bounded():
    a = _arp(max_entries=3)
    for i in range(5):
        a.learn(PEER + i, MAC_PEER, float(i))
    assert len(a.cache) == 3 and a.stats["evictions"] == 2 and PEER not in a.cache


def test_bad_input_is_counted_never_raised():
    a = _arp()
    a.receive(memoryview(b"\x00\x01"), 0.0)
    a.receive(_frame_payload(wire_arp.OP_REQUEST, b"\x01" + MAC_PEER[1:], PEER, bytes(6), US), 0.0)
    a.receive(_frame_payload(wire_arp.OP_REQUEST, MAC_US, PEER, bytes(6), US), 0.0)
    a.receive(_frame_payload(wire_arp.OP_REPLY, MAC_PEER, US, MAC_US, US), 0.0)
    assert dict(a.drops) == {"truncated": 1, "multicast-sender": 1, "own-frame": 1, "address-conflict": 1}
    assert _drain(a) == []


def test_broadcast_output_needs_no_resolution():
    a = Arp(MAC_US, announce_count=0)
    assert a.output(Packet(b"dhcp"), BROADCAST_IP, 0.0) is True
    (f, body), = _drain(a)
    assert f.dst == ethernet.BROADCAST and body == b"dhcp"
