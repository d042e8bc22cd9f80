"""TIME-WAIT in the TCP layer: records instead of machines, revived for the segments that
reach them, bounded in number, and connections that leave no garbage for the collector."""
import asyncio
import gc
import ipaddress

from test_native_tcp_virtual import A_IP, B_IP, connected_pair, run, two_stacks, until

from shoal.net.native.tcp import time_wait
from shoal.net.native.tcp.connection import Connection, State
from shoal.net.native.tcp_layer import NativeTcpConnection
from shoal.net.native.wire.tcp import ACK, FIN, TcpSegment

A = int(ipaddress.IPv4Address(A_IP))
B = int(ipaddress.IPv4Address(B_IP))


def record(stack, key):
    entry = stack.tcp.conns.get(key)
    return entry if type(entry) is tuple else None


def stats(stack):
    return stack.counters()["tcp"]["stats"]


async def served_and_closed(a, b, port, local_port=None):
    """One request and answer, the server (B) closing first: B ends in TIME-WAIT. Returns
    B's 4-tuple key for the connection."""
    server = b.tcp.servers.get(port)
    server = server if server is not None else b.listen(("", port))
    accepted = asyncio.ensure_future(server.accept())
    client = await a.connect((B_IP, port), local_address=None if local_port is None else (A_IP, local_port))
    conn, _ = await accepted
    await client.write(b"ping")
    assert await conn.read() == b"ping"
    await conn.write(b"pong")
    await conn.close()
    assert await client.read() == b"pong" and await client.read() == b""
    await client.close()
    key = (port, A, client.local_address[1])
    await until(lambda: record(b, key) is not None, "B's TIME-WAIT record")
    return key


def test_time_wait_is_kept_as_an_untracked_record_until_2msl():
    async def main():
        async with two_stacks() as (a, b, clock):
            key = await served_and_closed(a, b, 8101)
            rec = record(b, key)
            gc.collect()
            gc.collect()  # (the first may see the record before the tuples inside it)
            assert not gc.is_tracked(rec)
            assert stats(b)["time-wait"] == 1 and stats(b)["connections"] == 1
            assert stats(b)["connections-closed"] == 1
            assert rec[time_wait.TIMEWAIT_AT] > clock.now
            await until(lambda: key not in b.tcp.conns, "2*MSL to pass")
            assert clock.now >= rec[time_wait.TIMEWAIT_AT]
            assert stats(b)["time-wait"] == 0 and stats(b)["connections"] == 0

    run(main())


def test_a_segment_reaching_a_record_is_answered_by_the_revived_machine():
    """Both ends close at once (FINs cross: both in TIME-WAIT). A retransmitted FIN reaching
    B's record revives the machine, which acknowledges it, restarts 2*MSL (RFC 9293 3.10.7.4)
    and becomes a record again; A's record takes that ACK the same way."""
    async def main():
        async with two_stacks() as (a, b, clock):
            server, client, conn = await connected_pair(a, b, 8102)
            await asyncio.gather(client.close(), conn.close())
            key_b = (8102, A, client.local_address[1])
            key_a = (client.local_address[1], B, 8102)
            await until(lambda: record(b, key_b) is not None and record(a, key_a) is not None, "records")
            assert client.tcp.state is State.TIME_WAIT and conn.tcp.state is State.TIME_WAIT
            rec = record(b, key_b)
            acks_sent = stats(b)["segments-sent"]
            clock.now += 10
            fin = TcpSegment(client.local_address[1], 8102, seq=(rec[time_wait.RCV_NXT] - 1) & 0xFFFFFFFF,
                             ack=client.tcp.snd_nxt.real, flags=ACK | FIN, window=1000,
                             timestamp=((rec[time_wait.TS_RECENT] + 1) & 0xFFFFFFFF, 0))
            b.tcp.receive_segment(A, 0, fin, clock.now)
            revived = b.tcp.conns[key_b]
            assert type(revived) is not tuple and revived.revived
            assert revived.tcp.state is State.TIME_WAIT
            assert revived.tcp.timewait_at == clock.now + 2 * revived.tcp.config.msl
            await until(lambda: record(b, key_b) is not None, "B's record again")
            assert stats(b)["segments-sent"] == acks_sent + 1  # the ACK of the FIN
            assert record(b, key_b)[time_wait.TIMEWAIT_AT] > rec[time_wait.TIMEWAIT_AT]
            assert stats(b)["time-wait"] == 1 and stats(b)["connections-closed"] == 1  # not twice
            await until(lambda: not a.tcp.conns and not b.tcp.conns, "both TIME-WAITs to end")
            assert stats(a)["time-wait"] == 0 and stats(b)["time-wait"] == 0

    run(main())


def test_a_new_syn_from_the_same_port_opens_a_new_incarnation():
    """The client's next connection from the port of one in B's TIME-WAIT: told from the
    record (its SYN is newer, RFC 6191), handed to the listener, served."""
    async def main():
        async with two_stacks() as (a, b, clock):
            key = await served_and_closed(a, b, 8103)
            assert not a.tcp.conns  # the client closed second: no TIME-WAIT of its own
            clock.now += 1
            again = await served_and_closed(a, b, 8103, local_port=key[2])
            assert again == key
            assert stats(b)["time-wait-reopen"] == 1 and stats(b)["connections-accepted"] == 2
            assert stats(b)["time-wait"] == 1

    run(main())


def test_time_wait_records_are_bounded():
    async def main():
        async with two_stacks() as (a, b, clock):
            b.tcp.max_time_wait = 1
            first = await served_and_closed(a, b, 8104)
            server = b.tcp.servers[8104]
            accepted = asyncio.ensure_future(server.accept())
            client = await a.connect((B_IP, 8104))
            conn, _ = await accepted
            await conn.close()
            assert await client.read() == b""
            await client.close()
            await until(lambda: stats(b)["time-wait-overflow"] == 1 and len(b.tcp.conns) == 1,
                        "the second connection to close without TIME-WAIT")
            assert record(b, first) is not None and stats(b)["time-wait"] == 1

    run(main())


def test_a_closed_connection_leaves_no_garbage_for_the_collector():
    """Reference counting alone frees a connection once the layer and the application let
    it go: no cycle (a bound method the connection kept of itself made one) leaves the
    machine to the collector's next full pass."""
    async def main():
        async with two_stacks() as (a, b, clock):
            await served_and_closed(a, b, 8105)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
            try:
                for _ in range(3):
                    await served_and_closed(a, b, 8105)
                await until(lambda: not a.tcp.conns, "the client's connections to be forgotten")
                gc.collect()
                left = [type(o).__name__ for o in gc.garbage if type(o) in (Connection, NativeTcpConnection)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
            assert left == []

    run(main())
