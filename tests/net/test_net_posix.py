"""The network API on the posix stack, over loopback, on both reactor backends.

Each error the issue names has a test: a peer that vanishes mid-write, a reset,
a half-close, a port in use, a refused and an unreachable address, a timeout.
Every error message must name the address it concerns.
"""
import asyncio
import errno
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from shoal import net
from shoal.net.posix import stack as posix

LOCAL = "127.0.0.1"


async def connected_pair():
    """(client, server-side connection, server) over loopback."""
    server = net.listen((LOCAL, 0))
    accepted = asyncio.ensure_future(server.accept())
    client = await net.connect(server.local_address)
    conn, peer = await accepted
    assert peer == client.local_address
    return client, conn, server


async def until(condition, what, bound=30):
    """Wait for *condition* to hold, polling the loop; fail after *bound* s."""
    async with asyncio.timeout(bound):
        while not condition():
            await asyncio.sleep(0.005)


async def read_exactly(conn, n):
    got = bytearray()
    while len(got) < n:
        data = await conn.read()
        assert data, f"end of stream after {len(got)} of {n} bytes"
        got += data
    return bytes(got)


def test_roundtrip_and_addresses(arun):
    async def main():
        client, conn, server = await connected_pair()
        assert client.peer_address == server.local_address == conn.local_address
        assert conn.peer_address == client.local_address
        await client.write(b"ping")
        assert await read_exactly(conn, 4) == b"ping"
        await conn.write(b"pong")
        assert await read_exactly(client, 4) == b"pong"
        await client.close()
        assert await conn.read() == b""
        await conn.close()
        server.close()
    arun(main())


def test_write_accepts_every_buffer_type_and_lists(arun):
    async def main():
        client, conn, server = await connected_pair()
        await client.write(b"a")
        await client.write(bytearray(b"b"))
        await client.write(memoryview(b"xcx")[1:2])
        await client.write([b"d", bytearray(b"e"), memoryview(b"f")])
        await client.flush()
        assert await read_exactly(conn, 6) == b"abcdef"
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_sendfile_sends_a_slice_of_the_file_in_order_with_writes(arun, tmp_path):
    data = os.urandom(700_000)
    path = tmp_path / "body.bin"
    path.write_bytes(data)

    async def main():
        client, conn, server = await connected_pair()
        fd = os.open(path, os.O_RDONLY)
        try:
            await client.write(b"head:")
            await client.sendfile(fd, 1001, 600_000)  # more than one of the default's chunks
            with pytest.raises(OSError, match="ends at octet"):
                await client.sendfile(fd, len(data) - 10, 11)
        finally:
            os.close(fd)
        await client.flush()
        assert await read_exactly(conn, 5 + 600_000 + 10) == b"head:" + data[1001:601_001] + data[-10:]
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_large_transfer_both_ways_is_intact(arun):
    payload = os.urandom(4 * 1024 * 1024)

    async def main():
        client, conn, server = await connected_pair()

        async def send(c):
            for i in range(0, len(payload), 100_000):
                await c.write(payload[i:i + 100_000])
            c.shutdown_output()

        async def receive(c):
            h, n = hashlib.sha256(), 0
            while data := await c.read():
                h.update(data)
                n += len(data)
            return n, h.hexdigest()

        results = await asyncio.gather(send(client), send(conn), receive(client), receive(conn))
        want = (len(payload), hashlib.sha256(payload).hexdigest())
        assert results[2] == want and results[3] == want
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_read_buffers_hands_over_the_chunks_unjoined_and_mixes_with_read(arun):
    payload = os.urandom(2 * 1024 * 1024)

    async def main():
        client, conn, server = await connected_pair()

        async def send():
            for i in range(0, len(payload), 100_000):
                await client.write(payload[i:i + 100_000])
            client.shutdown_output()

        sender = asyncio.ensure_future(send())
        got, calls = [], 0
        while True:
            calls += 1
            if calls % 2:
                buffers = await conn.read_buffers()
                assert all(type(b) is bytes and b for b in buffers)
                if not buffers:
                    break
                got.extend(buffers)
            else:
                data = await conn.read()
                if not data:
                    break
                got.append(data)
        await sender
        assert b"".join(got) == payload and calls > 2
        assert await conn.read_buffers() == [] and await conn.read() == b""
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_half_close_lets_the_other_side_keep_sending(arun):
    async def main():
        client, conn, server = await connected_pair()
        await client.write(b"request")
        client.shutdown_output()
        assert await read_exactly(conn, 7) == b"request"
        assert await conn.read() == b""           # FIN seen (RFC 9293 3.6)
        await conn.write(b"response after your FIN")
        await conn.close()
        assert await read_exactly(client, 23) == b"response after your FIN"
        assert await client.read() == b""
        await client.close()
        server.close()
    arun(main())


def test_reset_by_peer_names_the_peer(arun):
    async def main():
        client, conn, server = await connected_pair()
        conn.abort()                              # RST
        with pytest.raises(ConnectionResetError) as info:
            while await client.read():
                pass
        assert f"{LOCAL}:{server.local_address[1]}" in str(info.value)
        with pytest.raises(ConnectionResetError):
            await client.write(b"x")
        await client.close()
        server.close()
    arun(main())


def test_peer_vanishing_mid_write_raises(arun):
    async def main():
        client, conn, server = await connected_pair()
        chunk = b"x" * 65536
        await client.write(chunk)
        await read_exactly(conn, 1)
        await conn.close()                        # unread data: the kernel answers with RST
        with pytest.raises((ConnectionResetError, BrokenPipeError)) as info:
            for _ in range(10_000):               # bounded: 640 MiB at most
                await client.write(chunk)
        assert f"{LOCAL}:{server.local_address[1]}" in str(info.value)
        await client.close()
        server.close()
    arun(main())


def test_write_waits_while_the_peer_does_not_read(arun):
    chunk = b"y" * 65536
    cap = 64 * 1024 * 1024

    async def main():
        client, conn, server = await connected_pair()
        sent = 0

        async def pump():
            nonlocal sent
            while sent < cap:
                await client.write(chunk)
                sent += len(chunk)

        task = asyncio.ensure_future(pump())
        # The kernel's buffers fill, then the transport's, then write waits.
        await until(lambda: client._write_paused or task.done(), "writer paused")
        await asyncio.sleep(0)
        assert not task.done(), "64 MiB written to a peer that reads nothing: no back-pressure"
        buffered = client._transport.get_write_buffer_size()
        assert buffered <= posix.SEND_HIGH_WATER + len(chunk)
        stalled_at = sent
        received = len(await conn.read())
        while sent == stalled_at or received < sent:   # reading lets the writer go on
            received += len(await conn.read())
        assert sent > stalled_at
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        client.abort()
        conn.abort()
        server.close()
    arun(main())


def test_unread_data_pauses_receiving(arun):
    async def main():
        client, conn, server = await connected_pair()
        chunk = b"z" * 65536

        async def flood():
            for _ in range(1000):                 # 64 MiB at most
                await conn.write(chunk)

        task = asyncio.ensure_future(flood())
        # The reader stops taking data from the kernel near its high-water mark;
        # then the kernel buffers fill and the sender has to wait.
        await until(lambda: client._reading_paused or task.done(), "reading paused")
        await until(lambda: conn._write_paused or task.done(), "sender paused")
        assert not task.done()
        assert client._reading_paused
        assert client._queued <= posix.RECV_HIGH_WATER + 256 * 1024
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        client.abort()
        conn.abort()
        server.close()
    arun(main())


def test_read_survives_cancellation(arun):
    async def main():
        client, conn, server = await connected_pair()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.read(), 0.05)
        await conn.write(b"late")
        assert await read_exactly(client, 4) == b"late"
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_write_after_close_is_an_error(arun):
    async def main():
        client, conn, server = await connected_pair()
        await client.close()
        with pytest.raises(BrokenPipeError, match=f"{LOCAL}"):
            await client.write(b"x")
        await conn.close()
        server.close()
    arun(main())


def test_port_in_use(arun):
    async def main():
        with socket.socket() as holder:
            holder.bind((LOCAL, 0))
            holder.listen()
            port = holder.getsockname()[1]
            with pytest.raises(OSError) as info:
                net.listen((LOCAL, port))
            assert info.value.errno == errno.EADDRINUSE
            assert f"{LOCAL}:{port}" in str(info.value)
    arun(main())


def test_shards_share_a_port_with_reuse_port(arun):
    async def main():
        stack = posix.PosixStack(reuse_port=True)
        first = stack.listen((LOCAL, 0))
        second = stack.listen(first.local_address)   # what shard 1 does
        assert second.local_address == first.local_address
        first.close()
        second.close()
    arun(main())


def test_connection_refused_names_the_address(arun):
    async def main():
        with socket.socket() as s:
            s.bind((LOCAL, 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError) as info:
            await net.connect((LOCAL, port))
        assert f"{LOCAL}:{port}" in str(info.value)
    arun(main())


def test_connect_timeout(arun):
    async def main():
        with socket.socket() as listener:
            listener.bind((LOCAL, 0))
            listener.listen(0)                     # never accepts: the queue fills,
            port = listener.getsockname()[1]       # then the kernel drops SYNs
            fillers = []
            try:
                with pytest.raises(TimeoutError) as info:
                    for _ in range(8):
                        fillers.append(await net.connect((LOCAL, port), timeout=0.5))
                assert f"{LOCAL}:{port}" in str(info.value)
                assert fillers, "the first connection should have been queued"
            finally:
                for c in fillers:
                    c.abort()
    arun(main())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to make an empty network namespace")
@pytest.mark.parametrize("backend", ["asyncio", "uvloop"])
def test_unreachable_network(backend):
    # In a fresh namespace nothing is routed, so connect fails locally with
    # ENETUNREACH and no packet leaves the host.
    script = textwrap.dedent(f"""
        import asyncio, uvloop
        from shoal import net
        async def main():
            try:
                await net.connect(("192.0.2.1", 80), timeout=10)
            except OSError as exc:
                print(type(exc).__name__, exc.errno, exc)
        asyncio.run(main()) if "{backend}" == "asyncio" else uvloop.run(main())
    """)
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip(f"unshare -n failed: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"OSError {errno.ENETUNREACH} "), out.stdout
    assert "192.0.2.1:80" in out.stdout


def test_nodelay_and_keepalive_options(arun):
    async def main():
        client, conn, server = await connected_pair()
        sock = client._sock
        client.set_nodelay(False)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        client.set_nodelay()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        client.set_keepalive(idle=30, interval=7, count=4)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        client.set_keepalive(False)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        await client.close()
        await conn.close()
        server.close()
    arun(main())


def test_closing_the_server_ends_accept_and_iteration(arun):
    async def main():
        server = net.listen((LOCAL, 0))
        # two tasks waiting in accept at once each get a connection
        pending = [asyncio.ensure_future(server.accept()) for _ in range(2)]
        await asyncio.sleep(0)
        c1 = await net.connect(server.local_address)
        c2 = await net.connect(server.local_address)
        accepted = [await asyncio.wait_for(p, 30) for p in pending]
        assert sorted(conn.peer_address for conn, _ in accepted) == sorted(
            [c1.local_address, c2.local_address])
        # async for yields connections ...
        c3 = await net.connect(server.local_address)
        async for conn in server:
            assert conn.peer_address == c3.local_address
            break
        # ... and ends when the server is closed under it
        async def iterate():
            return [c async for c in server]
        iteration = asyncio.ensure_future(iterate())
        await asyncio.sleep(0)
        server.close()
        assert await asyncio.wait_for(iteration, 30) == []
        with pytest.raises(net.ServerClosedError, match=f"{LOCAL}:"):
            await server.accept()
        for c in (c1, c2, c3, conn, *(a for a, _ in accepted)):
            await c.close()
    arun(main())


def test_udp_roundtrip_and_close(arun):
    async def main():
        a = net.udp_channel((LOCAL, 0))
        b = net.udp_channel((LOCAL, 0))
        await a.send(b.local_address, b"hello")
        data, source = await b.receive()
        assert (bytes(data), source) == (b"hello", a.local_address)
        await b.send(source, memoryview(b"world"))
        assert await a.receive() == (b"world", b.local_address)
        waiting = asyncio.ensure_future(a.receive())
        await asyncio.sleep(0)
        a.close()
        with pytest.raises(ConnectionAbortedError):
            await waiting
        with pytest.raises(OSError) as info:
            net.udp_channel(b.local_address)
        assert info.value.errno == errno.EADDRINUSE
        assert f"{LOCAL}:{b.local_address[1]}" in str(info.value)
        b.close()
    arun(main())


def test_udp_large_datagram(arun):
    async def main():
        a = net.udp_channel((LOCAL, 0))
        b = net.udp_channel((LOCAL, 0))
        payload = os.urandom(60000)
        await a.send(b.local_address, payload)
        assert (await b.receive())[0] == payload
        a.close()
        b.close()
    arun(main())
