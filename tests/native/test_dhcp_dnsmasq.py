"""DHCP against a real server: Debian's dnsmasq in the namespace on the far side of the TAP."""
import asyncio
import contextlib
import ipaddress
import random
import shutil

import pytest

from shoal.drivers.base import format_mac
from shoal.drivers.netns import KernelPeer, unavailable
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.runtime.reactor import Reactor

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed (apt: dnsmasq-base)"),
]


def dnsmasq_argv(peer, tmp_path, t1, t2):
    s = peer.subnet
    return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            f"--interface={peer.ifname}", "--bind-interfaces", "--dhcp-authoritative", "--no-ping",
            f"--dhcp-range={s}.50,{s}.60,255.255.255.0,2m", f"--dhcp-option=option:router,{s}.1",
            f"--dhcp-option=option:T1,{t1}", f"--dhcp-option=option:T2,{t2}",
            f"--dhcp-leasefile={tmp_path}/leases", f"--pid-file={tmp_path}/dnsmasq.pid", "--log-dhcp"]


@contextlib.asynccontextmanager
async def dhcp_stack(tmp_path, t1="60s", t2="90s"):
    peer = KernelPeer()
    reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=0.0005)
    stack = None
    try:
        server = peer.popen(dnsmasq_argv(peer, tmp_path, t1, t2))
        for _ in range(300):  # wait until it listens on port 67, or our first DISCOVER waits 4 s for a retry
            if server.poll() is not None or peer.run(["ss", "-Huln", "sport = :67"]).stdout.strip():
                break
            await asyncio.sleep(0.1)
        assert server.poll() is None, "dnsmasq exited"
        stack = NativeStack(peer.device, NativeConfig(peer.ifname, True), rng=random.Random(8))
        peer.device = None
        stack.start(reactor)
        reactor.start()
        yield peer, stack, server
    finally:
        if stack is not None:
            await stack.stop()
        reactor.close()
        peer.close()
        reactor.check_fatal()


def test_dhcp_lease_configures_the_interface(tmp_path):
    async def main():
        async with dhcp_stack(tmp_path) as (peer, stack, server):
            await stack.wait_configured(60)
            assert server.poll() is None
            lease = stack.dhcp.lease
            leased = str(ipaddress.IPv4Address(lease.address))
            assert ipaddress.IPv4Address(f"{peer.subnet}.50") <= ipaddress.IPv4Address(leased) \
                <= ipaddress.IPv4Address(f"{peer.subnet}.60")
            assert stack.ipv4.address == lease.address
            assert stack.ipv4.netmask == int(ipaddress.IPv4Address("255.255.255.0"))
            assert stack.ipv4.gateway == int(ipaddress.IPv4Address(peer.kernel_ip))
            assert stack.dhcp.stats["offers"] == 1 and stack.dhcp.stats["acks"] == 1
            assert format_mac(stack.mac) in (tmp_path / "leases").read_text()
            proc = await asyncio.create_subprocess_exec(
                *peer.command(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "5", leased]),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode()

    asyncio.run(main())


def test_dhcp_lease_is_renewed_at_t1(tmp_path):
    async def main():
        async with dhcp_stack(tmp_path, t1="5s", t2="100s") as (peer, stack, _server):
            await stack.wait_configured(60)
            first = stack.dhcp.lease
            for _ in range(600):
                if stack.stats["dhcp-renewed"]:
                    break
                await asyncio.sleep(0.05)
            assert stack.stats["dhcp-renewed"] == 1
            renewed = stack.dhcp.lease
            assert renewed.address == first.address and renewed.obtained > first.obtained
            assert stack.dhcp.state == "BOUND" and stack.configured

    asyncio.run(main())
