"""Interoperability with an independent implementation: scapy builds and checks the packets.

A 4000-byte ping fragmented by scapy is reassembled and answered by our IPv4/ICMP, and
scapy reassembles our fragmented reply and verifies every checksum.
"""
import pytest

from shoal.net.native.arp import Arp
from shoal.net.native.icmp import Icmp
from shoal.net.native.ipv4 import Ipv4
from shoal.net.native.packet import Packet
from shoal.net.native.udp import Udp
from shoal.net.native.wire import ethernet

scapy_inet = pytest.importorskip("scapy.layers.inet", reason="scapy is the independent reference")
scapy_l2 = pytest.importorskip("scapy.layers.l2")
IP, ICMP, UDP, fragment, defragment = (scapy_inet.IP, scapy_inet.ICMP, scapy_inet.UDP, scapy_inet.fragment,
                                       scapy_inet.defragment)
Ether = scapy_l2.Ether

US_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
US, PEER = "10.0.0.1", "10.0.0.2"


def _host():
    arp = Arp(ethernet.mac_from_str(US_MAC), announce_count=0)
    ip = Ipv4(arp)
    icmp = Icmp(ip)
    udp = Udp(ip, icmp)
    ip.configure(0x0A000001, 0xFFFFFF00, 0, 0.0)
    arp.learn(0x0A000002, ethernet.mac_from_str(PEER_MAC), 0.0)
    return arp, ip, udp


def _feed(arp, ip, frames):
    for f in frames:
        raw = bytes(Ether(src=PEER_MAC, dst=US_MAC) / f)
        view = memoryview(raw)
        pkt = Packet.wrap(view)
        eth = ethernet.parse(view)
        ip.receive(eth.payload, pkt, 0.0)
        pkt.release()
    out = []
    while arp.tx:
        p = arp.tx.popleft()
        out.append(Ether(bytes(p.linearize())))
        p.release()
    return out


def _checksums_valid(pkt, layers=(IP, ICMP, UDP)):
    """Scapy recomputes a checksum when the field is deleted; equal means ours was right.

    Only the IP header checksum is meaningful on a fragment (`layers=(IP,)`).
    """
    for layer in layers:
        if layer in pkt:
            again = pkt.copy()
            del again[layer].chksum
            if bytes(again) != bytes(pkt):
                return False
    return True


def test_fragmented_ping_from_scapy():
    arp, ip, _ = _host()
    request = IP(src=PEER, dst=US, id=77) / ICMP(type=8, id=5, seq=1) / (bytes(range(250)) * 16)
    replies = _feed(arp, ip, fragment(request, fragsize=1480))
    assert len(replies) == 3 and all(r.dst == PEER_MAC and r[IP].dst == PEER for r in replies)
    assert all(_checksums_valid(r[IP], (IP,)) for r in replies)
    whole, = defragment([r[IP] for r in replies])
    assert _checksums_valid(whole)
    assert whole[ICMP].type == 0 and whole[ICMP].id == 5 and bytes(whole[ICMP].payload) == bytes(range(250)) * 16


def test_udp_to_closed_port_from_scapy():
    arp, ip, _ = _host()
    (reply,) = _feed(arp, ip, [IP(src=PEER, dst=US) / UDP(sport=3333, dport=4444) / b"hi"])
    assert _checksums_valid(reply[IP])
    assert reply[ICMP].type == 3 and reply[ICMP].code == 3
    quoted = reply[scapy_inet.UDPerror]
    assert quoted.sport == 3333 and quoted.dport == 4444


def test_udp_checksums_accepted_by_scapy():
    arp, ip, udp = _host()
    udp.send(1234, 0x0A000002, 53, b"x" * 3001, 0.0)
    frames = _feed(arp, ip, [])
    assert len(frames) == 3 and all(_checksums_valid(f[IP], (IP,)) for f in frames)
    whole, = defragment([f[IP] for f in frames])
    assert _checksums_valid(whole) and whole[UDP].len == 3009
