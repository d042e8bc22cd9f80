"""DHCP against a real server: Debian's dnsmasq in the namespace on the far side of the TAP.

The kernel there also plays the other host of RFC 5227: when it holds the address
dnsmasq hands out, it answers shoal's ARP probe, and shoal must decline the lease.
"""
import asyncio
import contextlib
import ipaddress
import random
import shutil
import subprocess
import weakref

import pytest

from shoal.drivers.base import format_mac
from shoal.drivers.netns import KernelPeer, stop_process, unavailable
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.runtime.reactor import Reactor

from test_stack_echo_app import start_echo

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed (apt: dnsmasq-base)"),
]


def dnsmasq_argv(peer, tmp_path, t1, t2, extra=()):
    s = peer.subnet
    return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
            f"--interface={peer.ifname}", "--bind-interfaces", "--dhcp-authoritative", "--no-ping",
            f"--dhcp-range={s}.50,{s}.60,255.255.255.0,2m", f"--dhcp-option=option:router,{s}.1",
            f"--dhcp-option=option:T1,{t1}", f"--dhcp-option=option:T2,{t2}",
            f"--dhcp-leasefile={tmp_path}/leases", f"--pid-file={tmp_path}/dnsmasq.pid", "--log-dhcp",
            f"--log-facility={tmp_path}/dnsmasq.log", *extra]


async def wait_for(condition, what, bound_s=60.0):
    """Poll `condition` until it holds (generous bound: CI machines are loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def log_text(tmp_path):
    log = tmp_path / "dnsmasq.log"
    return log.read_text() if log.exists() else ""


_stopped = weakref.WeakSet()


async def stop_stack(stack):
    """Stop `stack` once: a test that stops it itself keeps `dhcp_stack` from doing it again."""
    if stack not in _stopped:
        _stopped.add(stack)
        await stack.stop()


@contextlib.asynccontextmanager
async def dhcp_stack(tmp_path, t1="60s", t2="90s", taken=False):
    """A stack doing DHCP against dnsmasq; with `taken`, dnsmasq hands our MAC
    ``<subnet>.50`` (a dhcp-host entry) and the kernel already holds that address."""
    peer = KernelPeer()
    reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=0.0005)
    stack = None
    try:
        extra = []
        if taken:
            extra.append(f"--dhcp-host={format_mac(peer.device.mac)},{peer.subnet}.50")
            peer.run(["ip", "addr", "add", f"{peer.subnet}.50/24", "dev", peer.ifname])
        server = peer.popen(dnsmasq_argv(peer, tmp_path, t1, t2, extra))
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
            await stop_stack(stack)
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
            # the address was probed (RFC 5227) before it was configured
            assert stack.dhcp.stats["probes"] == 3 and stack.dhcp.stats["probes-passed"] == 1
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


def test_address_in_use_is_declined(tmp_path):
    """RFC 2131 section 3.1 step 5: the kernel answers the probe for the address dnsmasq
    gives us, so shoal sends DHCPDECLINE, keeps the interface unconfigured and waits
    before it starts over."""
    async def main():
        async with dhcp_stack(tmp_path, taken=True) as (peer, stack, _server):
            taken = f"{peer.subnet}.50"
            await wait_for(lambda: stack.dhcp.stats["declines"] == 1, "the DHCPDECLINE")
            # checked at once: the restart is ten seconds after the conflict
            assert stack.dhcp.state == "INIT" and stack.dhcp.lease is None
            assert stack.dhcp.poll_at() - stack.now() > 5.0
            await wait_for(lambda: f"DHCPDECLINE({peer.ifname}) {taken}" in log_text(tmp_path),
                           "dnsmasq to log the DHCPDECLINE")
            # dnsmasq does not offer a declined address again for ten minutes
            assert not stack.configured and stack.ipv4.address == 0 and not stack.stats["dhcp-bound"]

    asyncio.run(main())


def test_clean_stop_releases_the_lease(tmp_path):
    async def main():
        async with dhcp_stack(tmp_path) as (peer, stack, _server):
            await stack.wait_configured(60)
            leased = str(ipaddress.IPv4Address(stack.dhcp.lease.address))
            mac = format_mac(stack.mac)
            assert mac in (tmp_path / "leases").read_text()
            await stop_stack(stack)
            assert stack.stats["dhcp-released"] == 1 and stack.dhcp.stats["releases"] == 1
            await wait_for(lambda: f"DHCPRELEASE({peer.ifname}) {leased}" in log_text(tmp_path),
                           "dnsmasq to log the DHCPRELEASE")
            await wait_for(lambda: mac not in (tmp_path / "leases").read_text(), "the lease to be dropped")

    asyncio.run(main())


def test_app_stopped_by_sigterm_releases_its_lease(tmp_path):
    """The whole path a user takes: ``python -m shoal.apps.echo --network-stack native
    --dhcp``, stopped with SIGTERM, gives its lease back on the way out."""
    mac = "02:00:00:65:43:99"

    async def main():
        with KernelPeer(open_device=False) as peer:
            app = start_echo(peer, "--dhcp", "--hw-address", mac)
            try:
                peer.popen(dnsmasq_argv(peer, tmp_path, "60s", "90s", [f"--dhcp-host={mac},{peer.subnet}.50"]), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
                await wait_for(lambda: "DHCPACK" in log_text(tmp_path), "the lease")
                # bound only after the probe: the release is sent for a lease in use
                r = peer.run(["sh", "-c", f"for i in $(seq 60); do ping -n -c 1 -W 1 {peer.subnet}.50 && exit 0; "
                                          f"done; exit 1"], check=False, timeout=150)
                assert r.returncode == 0, r.stdout
            finally:
                output = stop_process(app)
            assert app.returncode == 0, output
            await wait_for(lambda: f"DHCPRELEASE({peer.ifname})" in log_text(tmp_path),
                           "dnsmasq to log the DHCPRELEASE")

    asyncio.run(main())
