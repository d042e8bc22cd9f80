"""The TCP layer's handling of what arrives: crafted segments, ICMP errors, floods, orphans.

Frames are injected on A's side of the virtual wire (``wire.a.tx_burst``) while B
runs the native stack on the virtual clock of `test_native_tcp_virtual`; every
drop must be counted and nothing may raise out of the receive path.
"""
import asyncio
import errno
import ipaddress
import random
import struct

from shoal.drivers.base import VerifiedFrame
from shoal.net.native.wire import ethernet, icmp as wire_icmp, ipv4 as wire_ipv4, tcp as wire_tcp, udp as wire_udp
from shoal.net.native.wire.tcp import ACK, FIN, RST, SYN, TcpSegment
from test_native_tcp_virtual import A_IP, B_IP, run, test_config, two_stacks, until

A, B = int(ipaddress.IPv4Address(A_IP)), int(ipaddress.IPv4Address(B_IP))
SPOOFED = int(ipaddress.IPv4Address("10.9.0.77"))  # on the link, but nobody answers there


def frame(stack_from, stack_to, seg, src=A, dst=B, corrupt=False, ip_payload=None):
    payload = ip_payload if ip_payload is not None else bytearray(wire_tcp.build(seg, src, dst))
    if corrupt:
        payload[-1] ^= 0x40
    return ethernet.build(stack_to.mac, stack_from.mac, ethernet.ETHERTYPE_IPV4,
                          wire_ipv4.build(src, dst, wire_ipv4.PROTO_TCP, bytes(payload)))


async def resolved(a, b):
    """Resolve ARP both ways with one real connection, so injected frames are answered."""
    server = b.listen(("", 7000))
    accepted = asyncio.ensure_future(server.accept())
    c = await a.connect((B_IP, 7000))
    conn, _ = await accepted
    c.abort()
    conn.abort()
    server.close()


def test_crafted_segments_are_counted_and_answered_per_rfc():
    async def main():
        async with two_stacks() as (a, b, _):
            await resolved(a, b)
            b.listen(("", 80))
            tcp_b = b.tcp
            before = dict(tcp_b.counters()["drops"])
            bad_opts = bytearray(wire_tcp.build(TcpSegment(1234, 80, seq=1, flags=SYN, mss=1460), A, B))
            bad_opts[21] = 1  # MSS option length 1: impossible (MUST-7)
            struct.pack_into("!H", bad_opts, 16, 0)
            from shoal.net.native.wire.checksum import transport_checksum
            struct.pack_into("!H", bad_opts, 16, transport_checksum(A, B, 6, (bytes(bad_opts),)))
            frames = [
                frame(a, b, TcpSegment(1234, 80, seq=1, flags=SYN), corrupt=True),
                frame(a, b, TcpSegment(1234, 80, seq=1, flags=SYN | FIN)),
                frame(a, b, None, ip_payload=bytearray(b"\x00" * 10)),
                frame(a, b, None, ip_payload=bad_opts),
                frame(a, b, TcpSegment(1234, 81, seq=5, flags=SYN)),          # closed port: RST,ACK
                frame(a, b, TcpSegment(1234, 81, seq=5, ack=9, flags=ACK)),   # closed port: RST
                frame(a, b, TcpSegment(1234, 81, seq=5, flags=RST)),          # never answered
                frame(a, b, TcpSegment(1234, 80, seq=5, ack=77, flags=ACK)),  # ACK in LISTEN: RST
                frame(a, b, TcpSegment(1234, 80, seq=5, flags=SYN), dst=0x0A0900FF),  # broadcast
            ]
            answers = []
            real, real_parsed = a.tcp.receive, a.tcp.receive_segment

            def spy(hdr, datagram, packet, now):
                answers.append(wire_tcp.parse(datagram[hdr.header_len:]))
                real(hdr, datagram, packet, now)

            def spy_parsed(src, tos, seg, now):  # (a segment without options comes parsed)
                answers.append(seg)
                real_parsed(src, tos, seg, now)

            a.ipv4.handlers[6] = spy
            a.tcp.receive_segment = spy_parsed
            a.device.tx_burst(frames)
            await until(lambda: len(answers) >= 3, "the three RSTs")
            drops = tcp_b.counters()["drops"]
            grew = {k: drops.get(k, 0) - before.get(k, 0) for k in drops}
            assert grew["tcp-bad-checksum"] == 1 and grew["tcp-bad-flags"] == 1
            assert grew["tcp-truncated"] == 1 and grew["tcp-bad-option-length"] == 1
            assert grew["no-socket"] == 3 and grew["ack-in-listen"] == 1
            assert b.tcp.drops["not-unicast"] + b.ipv4.drops.get("not-for-us", 0) >= 1
            answers = [s for s in answers if s.src_port in (80, 81)]
            flags = sorted(s.flags for s in answers)
            assert flags == sorted([RST | ACK, RST, RST]), answers
            assert {s.seq for s in answers if s.flags == RST} == {9, 77}

    run(main())


def test_checksums_are_skipped_only_for_frames_the_device_vouches_for():
    """A `VerifiedFrame` (the TAP's mark for a frame the kernel built) is not summed again;
    the same bytes as an ordinary frame are, and the corruption is caught (MUST-3)."""
    async def main():
        async with two_stacks() as (a, b, _):
            corrupt_syn = frame(a, b, TcpSegment(1234, 81, seq=5, flags=SYN), corrupt=True)
            udp = bytearray(wire_udp.build(A, B, 4000, 4001, b"datagram"))
            udp[-1] ^= 0x40
            corrupt_udp = ethernet.build(b.mac, a.mac, ethernet.ETHERTYPE_IPV4,
                                         wire_ipv4.build(A, B, wire_ipv4.PROTO_UDP, bytes(udp)))
            b.receive_frames([corrupt_syn, corrupt_udp])
            assert b.tcp.drops["tcp-bad-checksum"] == 1 and b.udp.drops["bad-checksum"] == 1
            assert b.tcp.drops["no-socket"] == 0 and b.udp.drops["no-listener"] == 0
            b.receive_frames([VerifiedFrame(corrupt_syn), VerifiedFrame(corrupt_udp)])
            assert b.tcp.drops["tcp-bad-checksum"] == 1 and b.udp.drops["bad-checksum"] == 1
            assert b.tcp.drops["no-socket"] == 1 and b.udp.drops["no-listener"] == 1

    run(main())


def test_ip_options_are_ignored_by_tcp_and_source_routed_syns_are_refused():
    """MUST-50: a SYN whose IPv4 header carries options TCP does not understand (router
    alert, record route, an unassigned kind) is answered like any other; a source-routed
    one is dropped by IPv4 and counted (RFC 7126 4.3-4.4; docs/tcp.md MUST-51..53)."""
    async def main():
        async with two_stacks() as (a, b, _):
            await resolved(a, b)
            b.listen(("", 80))
            answers = []
            a.ipv4.handlers[6] = lambda hdr, datagram, packet, now: answers.append(
                wire_tcp.parse(datagram[hdr.header_len:]))

            def syn(sport, options):
                seg = wire_tcp.build(TcpSegment(sport, 80, seq=100, flags=SYN, mss=1460), A, B)
                return ethernet.build(b.mac, a.mac, ethernet.ETHERTYPE_IPV4,
                                      wire_ipv4.build(A, B, wire_ipv4.PROTO_TCP, seg, options=options))
            record_route = b"\x07\x07\x04" + bytes(4) + b"\x00"
            a.device.tx_burst([
                syn(2001, b"\x94\x04\x00\x00" + record_route + b"\x1e\x04\xab\xcd"),
                syn(2002, bytes([wire_ipv4.OPT_LSRR, 7, 8]) + bytes(4) + b"\x00"),
                syn(2003, bytes([wire_ipv4.OPT_SSRR, 7, 8]) + bytes(4) + b"\x00"),
            ])

            def ours():  # (retransmissions of the SYN,ACK included, the clock being virtual)
                return {(s.dst_port, s.flags, s.ack) for s in answers if s.dst_port in (2001, 2002, 2003)}
            await until(ours, "the SYN,ACK")
            await until(lambda: b.ipv4.drops["source-routed"] == 2, "both source routes dropped")
            assert ours() == {(2001, SYN | ACK, 101)}

    run(main())


def test_syn_flood_is_bounded_and_answered_with_cookies():
    async def main():
        async with two_stacks(tcp_b=test_config(syn_retransmits=1)) as (a, b, clock):
            await resolved(a, b)
            server = b.listen(("", 80), backlog=8)
            rng = random.Random(3)
            for burst in range(10):
                a.device.tx_burst([frame(a, b, TcpSegment(rng.randrange(1024, 65536), 80,
                                                          seq=rng.getrandbits(32), flags=SYN, mss=1460),
                                         src=SPOOFED) for _ in range(100)])
                await until(lambda: not b.device.pending(), "the burst to be read")
            listener = server.listener
            assert len(listener.half_open) <= 256
            assert listener.counters["syncookie-sent"] > 0, (listener.counters, listener.drops, b.tcp.counters())
            # a legitimate client still gets in (with a cookie if the table is full)
            conn = await a.connect((B_IP, 80))
            accepted, _ = await server.accept()
            await conn.write(b"through the flood")
            assert await accepted.read() == b"through the flood"
            # the half-open entries time out and leave nothing behind
            await until(lambda: not listener.half_open, "half-open connections to expire")

    run(main())


def test_icmp_port_unreachable_fails_the_connection_and_forged_ones_are_dropped():
    async def main():
        async with two_stacks() as (a, b, _):
            await resolved(a, b)
            b.listen(("", 80))
            server = b.tcp.servers[80]
            accepted = asyncio.ensure_future(server.accept())
            conn = await a.connect((B_IP, 80))
            peer, _ = await accepted
            tcp = conn.tcp

            def icmp_about(seq, code):
                quoted = wire_tcp.build(TcpSegment(conn.local_address[1], 80, seq=seq, flags=ACK), A, B)
                inner = wire_ipv4.build(A, B, wire_ipv4.PROTO_TCP, bytes(quoted))
                message = wire_icmp.build(wire_icmp.DEST_UNREACHABLE, code, 0, inner[:28])
                return ethernet.build(a.mac, b.mac, ethernet.ETHERTYPE_IPV4,
                                      wire_ipv4.build(B, A, wire_ipv4.PROTO_ICMP, message))

            b.device.tx_burst([icmp_about(int(tcp.snd_una) + 100_000, 3)])  # not in SND.UNA..SND.MAX
            await until(lambda: a.tcp.drops["icmp-seq-out-of-window"] == 1, "the forged error to be dropped")
            await conn.write(b"still fine")
            assert await peer.read() == b"still fine"
            b.device.tx_burst([icmp_about(int(tcp.snd_una), 1)])  # host unreachable: soft (SHLD-25)
            await until(lambda: a.tcp.stats["soft-errors"] == 1, "the soft error")
            b.device.tx_burst([icmp_about(int(tcp.snd_una), 3)])  # port unreachable: fatal (SHLD-26)
            try:
                await asyncio.wait_for(conn.read(), 5)
                raise AssertionError("read did not fail")
            except ConnectionRefusedError as e:
                assert e.errno == errno.ECONNREFUSED and f"{B_IP}:80" in str(e)

    run(main())


def test_orphaned_fin_wait_2_is_reset_after_its_timeout():
    async def main():
        async with two_stacks() as (a, b, clock):
            a.tcp.fin_wait_2_timeout = 10.0
            server = b.listen(("", 80))
            accepted = asyncio.ensure_future(server.accept())
            conn = await a.connect((B_IP, 80))
            peer, _ = await accepted
            await conn.close()  # B's application never closes: A waits in FIN-WAIT-2
            assert await peer.read() == b""
            start = clock.now
            await until(lambda: not a.tcp.conns, "the orphan to be reset")
            assert clock.now - start >= 10.0 and a.tcp.stats["orphan-timeouts"] == 1
            try:
                await asyncio.wait_for(peer.write(b"late"), 5)
                await asyncio.wait_for(peer.read(), 5)
                raise AssertionError("the peer was not reset")
            except ConnectionResetError:
                pass
            await until(lambda: not b.tcp.conns, "B to forget the reset connection")

    run(main())


def test_socket_options_reach_the_machine():
    async def main():
        async with two_stacks() as (a, b, clock):
            server = b.listen(("", 80))
            accepted = asyncio.ensure_future(server.accept())
            conn = await a.connect((B_IP, 80))
            peer, _ = await accepted
            conn.set_nodelay(True)
            assert conn.tcp.config.nodelay
            peer.set_keepalive(True, idle=5, interval=1, count=2)
            assert peer.tcp.config.keepalive_probes == 2
            start = clock.now
            await until(lambda: peer.tcp.counters["keepalive-probe"] >= 1, "a keepalive probe")
            assert clock.now - start >= 5
            await conn.write(b"alive")  # the probe was answered, nothing failed
            assert await peer.read() == b"alive"

    run(main())
