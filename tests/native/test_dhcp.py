"""DHCP client state machine (RFC 2131, with RFC 5227's address check) against a scripted
server and scripted ARP traffic, with a fake clock."""
import random
import struct

import pytest

from hypothesis import given, settings, strategies as st

from shoal.net.native import dhcp
from shoal.net.native.wire import arp as wire_arp
from shoal.net.native.wire import dhcp as wire

MAC = bytes.fromhex("020000000042")
SERVER, ADDR, GW, MASK = 0x0A000001, 0x0A000032, 0x0A0000FE, 0xFFFFFF00
BCAST = 0xFFFFFFFF
OTHER_MAC = bytes.fromhex("02aabbccddee")


def u32(v):
    return struct.pack("!I", v)


def _client(**kw):
    """A client without the address check (``probe_num=0``) unless asked: the lease-timing
    tests bind at the ACK; the probing tests further down use the RFC 5227 defaults."""
    kw.setdefault("probe_num", 0)
    return dhcp.DhcpClient(MAC, random.Random(7), hostname="shoal", **kw)


def _sent(c):
    """The messages the client queued, parsed: [(dst, DhcpMessage)]."""
    out = []
    while c.tx:
        dst, raw = c.tx.popleft()
        out.append((dst, wire.parse(memoryview(raw))))
    return out


def _reply(req, kind, *, yiaddr=ADDR, lease=3600, server=SERVER, options=None, xid=None, chaddr=None):
    opts = [(wire.OPT_MESSAGE_TYPE, bytes([kind])), (wire.OPT_SERVER_ID, u32(server))]
    if kind != wire.NAK:
        opts += options if options is not None else [
            (wire.OPT_LEASE_TIME, u32(lease)), (wire.OPT_SUBNET_MASK, u32(MASK)), (wire.OPT_ROUTER, u32(GW)),
            (wire.OPT_DNS, u32(SERVER) + u32(GW))]
    return memoryview(wire.build(wire.OP_REPLY, req.xid if xid is None else xid, chaddr or req.chaddr, opts,
                                 yiaddr=0 if kind == wire.NAK else yiaddr))


def _bind(c, now=0.0, **kw):
    """Run DISCOVER/OFFER/REQUEST/ACK; returns the lease."""
    c.start(now)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER, **kw), now)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.ACK, **kw), now)
    ev = c.events.popleft()
    assert ev.kind == "bound"
    return ev.lease


def test_discover_offer_request_ack():
    c = _client()
    c.start(100.0)
    (dst, disc), = _sent(c)
    assert dst == BCAST and disc.op == wire.OP_REQUEST and disc.message_type == wire.DISCOVER
    assert disc.chaddr == MAC and disc.flags & wire.FLAG_BROADCAST and c.state == dhcp.SELECTING
    assert disc.options[wire.OPT_CLIENT_ID] == b"\x01" + MAC and disc.options[wire.OPT_HOSTNAME] == b"shoal"
    assert wire.OPT_ROUTER in disc.options[wire.OPT_PARAMETER_LIST]
    c.receive(_reply(disc, wire.OFFER), 101.0)
    (dst, req), = _sent(c)
    assert dst == BCAST and req.message_type == wire.REQUEST and req.xid == disc.xid and req.secs == 1
    assert req.option_u32(wire.OPT_REQUESTED_IP) == ADDR and req.option_u32(wire.OPT_SERVER_ID) == SERVER
    assert req.ciaddr == 0 and c.state == dhcp.REQUESTING
    c.receive(_reply(req, wire.ACK), 101.5)
    ev, = c.events
    assert ev.kind == "bound" and c.state == dhcp.BOUND
    lease = ev.lease
    assert (lease.address, lease.netmask, lease.gateway, lease.server, lease.dns) == (ADDR, MASK, GW, SERVER, (SERVER, GW))
    assert lease.obtained == 101.0 and lease.expires == 3701.0  # RFC 2131 4.4.1: from the REQUEST's time
    assert c.poll_at() == 101.0 + 1800.0


def test_discover_backoff_doubles_to_64s_with_jitter():
    c = _client()
    c.start(0.0)
    _sent(c)
    now, delays = 0.0, []
    for _ in range(7):
        nxt = c.poll_at()
        delays.append(nxt - now)
        now = nxt
        c.poll(now - 0.001)
        assert not c.tx  # nothing before the deadline
        c.poll(now)
        assert [m.message_type for _, m in _sent(c)] == [wire.DISCOVER]
    for got, base in zip(delays, [4, 8, 16, 32, 64, 64, 64]):
        assert base - 1 <= got <= base + 1


def test_requesting_gives_up_and_restarts():
    c = _client(request_retries=3)
    c.start(0.0)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER), 0.0)
    _sent(c)
    for _ in range(2):
        c.poll(c.poll_at())
        assert [m.message_type for _, m in _sent(c)] == [wire.REQUEST]
    c.poll(c.poll_at())
    (_, again), = _sent(c)
    assert again.message_type == wire.DISCOVER and again.xid != disc.xid and c.state == dhcp.SELECTING


def test_renew_at_t1_unicast_then_ack():
    c = _client()
    lease = _bind(c)
    assert c.poll_at() == 1800.0
    c.poll(1800.0)
    (dst, req), = _sent(c)
    assert dst == SERVER and req.ciaddr == ADDR and c.state == dhcp.RENEWING
    assert wire.OPT_REQUESTED_IP not in req.options and wire.OPT_SERVER_ID not in req.options
    assert not req.flags & wire.FLAG_BROADCAST
    c.receive(_reply(req, wire.ACK), 1801.0)
    ev, = c.events
    assert ev.kind == "renewed" and ev.lease.obtained == 1800.0 and c.poll_at() == 3600.0
    assert lease.address == ev.lease.address


def test_unanswered_renewal_rebinds_then_expires():
    c = _client()
    _bind(c, lease=1000)  # T1 500, T2 875, expiry 1000
    times, kinds = [], []
    while c.state != dhcp.SELECTING:
        now = c.poll_at()
        c.poll(now)
        for dst, m in _sent(c):
            times.append(now)
            kinds.append((c.state, dst, m.message_type))
    # RFC 2131 4.4.5: retransmit after half the time left until T2 (then until expiry),
    # at least 60 s apart, never past T2 (expiry): 375/2, 187.5/2, then 60 s, then T2 ...
    assert times == [500.0, 687.5, 781.25, 841.25, 875.0, 937.5, 997.5, 1000.0]
    assert [k[:2] for k in kinds] == [(dhcp.RENEWING, SERVER)] * 4 + [(dhcp.REBINDING, BCAST)] * 3 + [(dhcp.SELECTING, BCAST)]
    assert kinds[-1][2] == wire.DISCOVER
    ev, = c.events
    assert ev.kind == "lost" and c.lease is None


def test_rebinding_ack_from_any_server():
    c = _client()
    _bind(c, lease=1000)
    for t in (500.0, 687.5, 781.25, 841.25, 875.0):
        c.poll(t)
    (dst, req), = _sent(c)[-1:]
    assert c.state == dhcp.REBINDING and dst == BCAST
    c.receive(_reply(req, wire.ACK, server=0x0A000002), 880.0)
    ev, = c.events
    assert ev.kind == "renewed" and ev.lease.server == 0x0A000002


def test_nak_while_requesting_restarts_and_while_renewing_loses_lease():
    c = _client()
    c.start(0.0)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER), 0.0)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.NAK), 0.0)
    (_, again), = _sent(c)
    assert again.message_type == wire.DISCOVER and not c.events and c.stats["naks"] == 1
    c = _client()
    _bind(c)
    c.poll(1800.0)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.NAK), 1800.0)
    ev, = c.events
    assert ev.kind == "lost" and c.state == dhcp.SELECTING


def test_server_times_and_defaults():
    c = _client()
    lease = _bind(c, options=[(wire.OPT_LEASE_TIME, u32(1000)), (wire.OPT_RENEWAL_TIME, u32(100)),
                              (wire.OPT_REBINDING_TIME, u32(200)), (wire.OPT_ROUTER, u32(0x0B000001))])
    assert (lease.t1, lease.t2) == (100, 200) and lease.gateway == 0 and lease.netmask == 0xFF000000
    c = _client()
    lease = _bind(c, options=[(wire.OPT_LEASE_TIME, u32(1000)), (wire.OPT_RENEWAL_TIME, u32(900)),
                              (wire.OPT_REBINDING_TIME, u32(800))])
    assert (lease.t1, lease.t2) == (500, 875)  # inconsistent T1/T2 replaced by the defaults
    c = _client()
    _bind(c, lease=dhcp.INFINITE)
    assert c.poll_at() is None


def test_ignores_foreign_and_malformed_replies():
    c = _client()
    c.start(0.0)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER, xid=disc.xid + 1), 0.0)
    c.receive(_reply(disc, wire.OFFER, chaddr=bytes(6)), 0.0)
    c.receive(_reply(disc, wire.ACK), 0.0)
    c.receive(_reply(disc, wire.OFFER, yiaddr=0), 0.0)
    c.receive(memoryview(wire.build(wire.OP_REQUEST, disc.xid, MAC, [])), 0.0)
    c.receive(memoryview(b"junk"), 0.0)
    assert c.state == dhcp.SELECTING and not c.tx and not c.events
    assert dict(c.drops) == {"unexpected-reply": 1, "not-our-chaddr": 1,
                             "unexpected-type-5-in-SELECTING": 1, "unusable-offer": 1, "not-a-reply": 1,
                             "truncated": 1}


def test_ack_without_lease_time_is_unusable():
    c = _client()
    c.start(0.0)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER), 0.0)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.ACK, options=[]), 0.0)
    assert c.state == dhcp.REQUESTING and c.drops["unusable-ack"] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 255))
def test_garbage_never_raises(junk, kind):
    c = _client()
    c.start(0.0)
    (_, disc), = _sent(c)
    c.receive(memoryview(junk), 0.0)
    c.receive(memoryview(wire.build(wire.OP_REPLY, disc.xid, MAC, [(53, bytes([kind])), (54, junk[:4]), (51, junk[4:7])],
                                    yiaddr=ADDR)), 0.0)
    c.poll(100.0)



# -- address check after the ACK (RFC 2131 section 3.1 step 5, RFC 5227 section 2.1.1) --------

def _probing_client(**kw):
    return dhcp.DhcpClient(MAC, random.Random(7), **kw)


def _ack(c, now=0.0):
    """DISCOVER/OFFER/REQUEST/ACK; returns the REQUEST (the client is then PROBING)."""
    c.start(now)
    (_, disc), = _sent(c)
    c.receive(_reply(disc, wire.OFFER), now)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.ACK), now)
    return req


def _arp(op, sha, spa, tpa, tha=bytes(6)):
    return memoryview(wire_arp.build(op, sha, spa, tha, tpa))


def _probes(c):
    out = []
    while c.arp_tx:
        out.append(wire_arp.parse(memoryview(c.arp_tx.popleft())))
    return out


def _run_probes(c):
    """Poll at each deadline until the client leaves PROBING; returns the probe times."""
    times = []
    while c.state == dhcp.PROBING:
        now = c.poll_at()
        c.poll(now)
        times.extend(now for _ in _probes(c))
    return times


def test_ack_is_probed_before_the_address_is_used():
    c = _probing_client()
    _ack(c, 10.0)
    assert c.state == dhcp.PROBING and c.probing and not c.events and not c.arp_tx and c.lease is None
    first = c.poll_at()
    assert 10.0 <= first <= 11.0  # PROBE_WAIT: a random 0..1 s before the first probe
    c.poll(first - 0.001)
    assert not c.arp_tx
    c.poll(first)
    probe, = _probes(c)
    # a probe: a request from our MAC with sender IP 0 for the offered address, target MAC 0
    assert (probe.op, probe.sha, probe.spa, probe.tha, probe.tpa) == (wire_arp.OP_REQUEST, MAC, 0, bytes(6), ADDR)
    times = [first] + _run_probes(c)
    assert len(times) == 3 and all(1.0 <= b - a <= 2.0 for a, b in zip(times, times[1:]))  # PROBE_MIN..MAX
    ev, = c.events
    assert ev.kind == "bound" and ev.lease.address == ADDR and c.state == dhcp.BOUND
    assert c.stats["probes"] == 3 and c.stats["probes-passed"] == 1 and not c.tx
    # bound ANNOUNCE_WAIT (2 s) after the last probe; the lease still runs from the REQUEST
    assert ev.lease.obtained == 10.0 and c.poll_at() == 10.0 + 1800.0


def test_bound_only_after_announce_wait():
    c = _probing_client()
    _ack(c)
    for _ in range(3):
        c.poll(c.poll_at())
    last = c.poll_at() - 2.0
    c.poll(last + 1.999)
    assert c.state == dhcp.PROBING and not c.events
    c.poll(last + 2.0)
    assert c.state == dhcp.BOUND


@pytest.mark.parametrize("claim", ["reply-from-holder", "request-from-holder", "other-hosts-probe"])
def test_a_claim_on_the_address_declines_it_and_restarts_after_ten_seconds(claim):
    c = _probing_client()
    req = _ack(c)
    c.poll(c.poll_at())
    _probes(c)
    now = c.poll_at() - 0.5
    packet = {"reply-from-holder": _arp(wire_arp.OP_REPLY, OTHER_MAC, ADDR, 0, MAC),
              "request-from-holder": _arp(wire_arp.OP_REQUEST, OTHER_MAC, ADDR, SERVER),
              "other-hosts-probe": _arp(wire_arp.OP_REQUEST, OTHER_MAC, 0, ADDR)}[claim]
    c.arp_received(packet, now)
    (dst, decline), = _sent(c)
    # RFC 2131 section 4.4.4 and table 5: broadcast, the ACK's xid, ciaddr 0, requested
    # address and server identifier; no parameter list or maximum message size
    assert dst == BCAST and decline.message_type == wire.DECLINE and decline.xid == req.xid
    assert decline.ciaddr == 0 and decline.option_u32(wire.OPT_REQUESTED_IP) == ADDR
    assert decline.option_u32(wire.OPT_SERVER_ID) == SERVER
    assert wire.OPT_PARAMETER_LIST not in decline.options and wire.OPT_MAX_MESSAGE_SIZE not in decline.options
    assert OTHER_MAC.hex(":").encode() in decline.options[wire.OPT_MESSAGE]
    assert c.state == dhcp.INIT and not c.events and c.lease is None and c.stats["declines"] == 1
    assert not c.probing and c.poll_at() == now + 10.0
    c.poll(now + 9.999)
    assert not c.tx and not c.arp_tx
    c.poll(now + 10.0)
    (dst, disc), = _sent(c)
    assert disc.message_type == wire.DISCOVER and disc.xid != req.xid and c.state == dhcp.SELECTING


@pytest.mark.parametrize("packet", [
    _arp(wire_arp.OP_REQUEST, MAC, 0, ADDR),                   # our own probe, looped back
    _arp(wire_arp.OP_REQUEST, OTHER_MAC, GW, SERVER),          # someone else's business
    _arp(wire_arp.OP_REPLY, OTHER_MAC, GW, 0, MAC),
    _arp(wire_arp.OP_REPLY, OTHER_MAC, 0, ADDR),               # not a probe: a reply from nobody
    memoryview(b"\x00\x01\x08\x00"),                          # truncated
], ids=["own-probe", "other-request", "other-reply", "zero-sender-reply", "truncated"])
def test_other_arp_traffic_is_not_a_conflict(packet):
    c = _probing_client()
    _ack(c)
    c.poll(c.poll_at())
    c.arp_received(packet, c.poll_at() - 0.1)
    assert c.state == dhcp.PROBING and not c.tx
    _run_probes(c)
    assert c.state == dhcp.BOUND and c.stats["declines"] == 0


def test_repeated_conflicts_are_rate_limited():
    """RFC 5227 section 2.1.1: after MAX_CONFLICTS (10) in a row, wait RATE_LIMIT_INTERVAL (60 s)."""
    c = _probing_client()
    now, waits = 0.0, []
    for _ in range(11):
        _ack(c, now)
        c.arp_received(_arp(wire_arp.OP_REPLY, OTHER_MAC, ADDR, 0, MAC), now)
        _sent(c)
        waits.append(c.poll_at() - now)
        now = c.poll_at()
    assert waits == [10.0] * 9 + [60.0, 60.0]
    _ack(c, now)
    _run_probes(c)
    assert c.state == dhcp.BOUND
    # a success ends the run of conflicts: the next one waits ten seconds again
    c.release(now + 100.0)
    _sent(c)
    _ack(c, now + 100.0)
    c.arp_received(_arp(wire_arp.OP_REPLY, OTHER_MAC, ADDR, 0, MAC), now + 100.0)
    assert c.poll_at() == now + 110.0


def test_renewal_is_not_probed():
    c = _probing_client()
    _ack(c)
    _run_probes(c)
    c.events.clear()
    c.poll(1800.0)
    (_, req), = _sent(c)
    c.receive(_reply(req, wire.ACK), 1800.0)
    ev, = c.events
    assert ev.kind == "renewed" and c.state == dhcp.BOUND and not c.arp_tx and c.stats["probes"] == 3


def test_arp_input_outside_probing_is_ignored():
    c = _probing_client()
    c.arp_received(_arp(wire_arp.OP_REPLY, OTHER_MAC, ADDR, 0, MAC), 0.0)
    _ack(c)
    _run_probes(c)
    c.arp_received(_arp(wire_arp.OP_REPLY, OTHER_MAC, ADDR, 0, MAC), 100.0)
    assert c.state == dhcp.BOUND and not c.tx and c.stats["declines"] == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_arp_garbage_while_probing_never_raises(junk):
    c = _probing_client()
    _ack(c)
    c.arp_received(memoryview(junk), 0.0)
    assert c.state in (dhcp.PROBING, dhcp.INIT)


# -- DHCPRELEASE (RFC 2131 section 4.4.6) ---------------------------------------------------

def test_release_gives_the_lease_back_to_its_server():
    c = _client()
    _bind(c)
    c.poll(1800.0)  # RENEWING: a lease is still held
    (_, renew), = _sent(c)
    assert c.release(1801.0) is True
    (dst, rel), = _sent(c)
    # table 5: unicast to the server, a new xid, ciaddr set, server identifier; no
    # requested address, parameter list or maximum message size
    assert dst == SERVER and rel.message_type == wire.RELEASE and rel.ciaddr == ADDR and rel.xid != renew.xid
    assert rel.option_u32(wire.OPT_SERVER_ID) == SERVER and rel.secs == 0 and not rel.flags
    for absent in (wire.OPT_REQUESTED_IP, wire.OPT_PARAMETER_LIST, wire.OPT_MAX_MESSAGE_SIZE):
        assert absent not in rel.options
    ev = c.events.popleft()
    assert ev.kind == "released" and ev.lease.address == ADDR and not c.events
    assert c.state == dhcp.INIT and c.lease is None and c.poll_at() is None
    c.receive(_reply(renew, wire.ACK), 1801.5)  # a late answer to the renewal changes nothing
    assert c.lease is None and not c.events
    assert c.release(1802.0) is False and not c.tx


def test_release_without_a_lease_just_stops():
    c = _probing_client()
    _ack(c)  # PROBING: the address is not ours yet
    assert c.release(1.0) is False
    assert not c.tx and not c.events and c.state == dhcp.INIT and c.poll_at() is None and not c.probing
