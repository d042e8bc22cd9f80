"""The native stack with the Linux kernel as its peer, through a TAP into a test-made namespace.

The kernel side holds 10.213.7.1/24 inside the namespace; shoal takes .2. ``ping``
and kernel UDP sockets run in the namespace (`KernelPeer.command`).
"""
import asyncio
import contextlib
import errno
import ipaddress
import random
import shutil

import pytest

from shoal.drivers.netns import KernelPeer, unavailable
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import running

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(shutil.which("ping") is None, reason="ping is not installed (apt: iputils-ping)"),
]


def addr(text):
    return int(ipaddress.IPv4Address(text))


@contextlib.asynccontextmanager
async def kernel_and_stack(mtu=1500):
    with KernelPeer(mtu=mtu) as peer:
        config = NativeConfig(peer.ifname, False, addr(peer.shoal_ip), addr("255.255.255.0"), addr(peer.kernel_ip))
        device, peer.device = peer.device, None  # the stack owns (and closes) it now
        async with running(device, config, rng=random.Random(5)) as stack:
            yield peer, stack


async def run_in(peer, *argv, timeout=60):
    proc = await asyncio.create_subprocess_exec(*peer.command(list(argv)), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode()


def test_kernel_pings_the_native_stack():
    async def main():
        async with kernel_and_stack() as (peer, stack):
            rc, out = await run_in(peer, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "5", peer.shoal_ip)
            assert rc == 0, out
            assert "3 received" in out
            assert stack.icmp.stats["echo-replies"] == 3
            assert stack.arp.stats["replies-sent"] >= 1

    asyncio.run(main())


def test_4000_byte_pings_fragment_both_ways():
    async def main():
        async with kernel_and_stack() as (peer, stack):
            rc, out = await run_in(peer, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "5", "-s", "4000",
                                   "-M", "dont", peer.shoal_ip)
            assert rc == 0, out
            assert "2 received" in out and "4008 bytes from" in out
            assert stack.ipv4.stats["reassembled"] == 2  # the kernel fragmented its requests
            assert stack.ipv4.stats["fragmented"] == 2  # and we fragmented the replies

    asyncio.run(main())


UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for size in (1, 100, 1472, 3000, 20000):
    data = bytes(i % 251 for i in range(size))
    s.sendto(data, (sys.argv[1], int(sys.argv[2])))
    got, src = s.recvfrom(65535)
    assert got == data and src == (sys.argv[1], int(sys.argv[2])), (size, len(got), src)
closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # connected: the kernel reports ICMP errors
closed.settimeout(10)
closed.connect((sys.argv[1], int(sys.argv[2]) + 1))
closed.send(b"x")
try:
    closed.recv(10)
except ConnectionRefusedError:
    print("refused")
print("ok")
"""


def test_udp_echo_with_a_kernel_socket():
    async def main():
        async with kernel_and_stack() as (peer, stack):
            channel = stack.udp_channel(("", 7000))

            async def echo():
                while True:
                    data, source = await channel.receive()
                    await channel.send(source, data)

            task = asyncio.create_task(echo())
            try:
                rc, out = await run_in(peer, "python3", "-c", UDP_CLIENT, peer.shoal_ip, "7000")
            finally:
                task.cancel()
            assert rc == 0, out
            assert out.split() == ["refused", "ok"]  # ICMP port unreachable from the closed port 7001
            assert stack.udp.stats["received"] == 5 and stack.udp.drops["no-listener"] == 1

    asyncio.run(main())


KERNEL_UDP_SERVER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
print("ready", flush=True)
data, src = s.recvfrom(65535)
s.sendto(data[::-1], src)
"""


def test_native_client_talks_to_a_kernel_udp_server_and_sees_refusals():
    async def main():
        async with kernel_and_stack() as (peer, stack):
            server = await asyncio.create_subprocess_exec(*peer.command(["python3", "-c", KERNEL_UDP_SERVER]),
                                                          stdout=asyncio.subprocess.PIPE)
            try:
                assert (await asyncio.wait_for(server.stdout.readline(), 30)).strip() == b"ready"
                channel = stack.udp_channel(("", 0))
                await channel.send((peer.kernel_ip, 9000), b"abcdef")
                data, source = await asyncio.wait_for(channel.receive(), 10)
                assert bytes(data) == b"fedcba" and source == (peer.kernel_ip, 9000)
                await channel.send((peer.kernel_ip, 9001), b"closed")
                for _ in range(1000):
                    if channel.errors:
                        break
                    await asyncio.sleep(0.01)
                assert channel.errors and channel.errors[0].errno == errno.ECONNREFUSED
                await asyncio.wait_for(server.wait(), 30)
            finally:
                if server.returncode is None:
                    server.kill()
                    await server.wait()

    asyncio.run(main())
