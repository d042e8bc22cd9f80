"""The done-when of issue 4: the echo demo on the native stack, launched like a user would,
answers a kernel UDP client and `ping` from the namespace, statically or with --dhcp (on one
shard or several)."""
import shutil
import subprocess
import time

import pytest

from shoal.drivers.netns import KernelPeer, stop_process, unavailable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(shutil.which("ping") is None, reason="ping is not installed (apt: iputils-ping)"),
]

UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
for size in (5, 1400, 6000):
    data = bytes(i % 253 for i in range(size))
    s.sendto(data, (sys.argv[1], 10000))
    got, src = s.recvfrom(65535)
    assert got == data and src == (sys.argv[1], 10000), (size, len(got), src)
print("echoed")
"""


def start_echo(peer, *options, smp=1):
    return peer.start_shoal(["-m", "shoal.apps.echo", "--udp", "--port", "10000", "--smp", str(smp),
                             "--network-stack", "native", *options])


def running(peer, app, check):
    """Run `check()`; on failure, add the app's output to the error."""
    try:
        check()
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- app output ---\n{stop_process(app)}") from None


def check_echo_and_ping(peer, app, address, shards=1, clients=1):
    seen = []
    for line in app.stdout:  # the banner, possibly after log lines (a stall warning on a loaded machine)
        seen.append(line)
        if "echo: udp on" in line or len(seen) > 200:
            break
    assert f"echo: udp on 0.0.0.0:10000 with {shards} shard(s), native stack" in line, "".join(seen)
    for _ in range(clients):  # each from a new source port: a new flow, on the shard its ports name
        client = peer.run(["python3", "-c", UDP_CLIENT, address], check=False)
        assert client.returncode == 0 and client.stdout.strip() == "echoed", client.stdout + client.stderr
    ping = peer.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "5", address], check=False)
    assert ping.returncode == 0, ping.stdout


def test_echo_app_static_address():
    with KernelPeer(open_device=False) as peer:
        app = start_echo(peer, "--host-ipv4-addr", peer.shoal_ip, "--gw-ipv4-addr", peer.kernel_ip,
                         "--hw-address", "02:00:00:12:34:56")
        try:
            running(peer, app, lambda: check_echo_and_ping(peer, app, peer.shoal_ip))
            neigh = peer.run(["ip", "neigh", "show", peer.shoal_ip]).stdout
            assert "02:00:00:12:34:56" in neigh
        finally:
            stop_process(app)


def test_echo_app_on_two_shards():
    """One TAP queue per shard: datagrams (fragmented ones too: reassembled on shard 0, answered by
    the shard of their ports) and pings."""
    with KernelPeer(open_device=False) as peer:
        app = start_echo(peer, "--host-ipv4-addr", peer.shoal_ip, smp=2)
        try:
            running(peer, app, lambda: check_echo_and_ping(peer, app, peer.shoal_ip, shards=2, clients=6))
        finally:
            stop_process(app)


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed (apt: dnsmasq-base)")
@pytest.mark.parametrize("shards", [1, 2, 3])
def test_echo_app_with_dhcp(tmp_path, shards):
    """One DHCP client, on shard 0; every shard serves the lease's address. With three
    shards the device steers the server's replies to queue 2, which hands them to shard 0."""
    with KernelPeer(open_device=False) as peer:
        overprovisioned = ["--overprovisioned"] if shards > 2 else []
        app = start_echo(peer, "--dhcp", "--hw-address", "02:00:00:65:43:21", *overprovisioned, smp=shards)
        try:
            s = peer.subnet
            peer.popen(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root",
                        f"--interface={peer.ifname}", "--bind-interfaces", "--no-ping",
                        f"--dhcp-range={s}.77,{s}.77,255.255.255.0,2m", f"--dhcp-leasefile={tmp_path}/leases",
                        f"--pid-file={tmp_path}/pid"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            leases = tmp_path / "leases"

            def leased_and_echoing():
                deadline = time.monotonic() + 60
                while not (leases.exists() and "02:00:00:65:43:21" in leases.read_text()):
                    assert app.poll() is None, "the app exited"
                    assert time.monotonic() < deadline, "no lease within 60 s"
                    time.sleep(0.1)
                # The lease is on file at the ACK; the address is in use only after the
                # RFC 5227 probe (up to 7 s): ping until it answers (bounded).
                peer.run(["sh", "-c", f"for i in $(seq 60); do ping -n -c 1 -W 1 {s}.77 && exit 0; done; exit 1"],
                         timeout=150)
                # Several clients, each from a new source port: flows on every shard.
                check_echo_and_ping(peer, app, f"{s}.77", shards=shards, clients=1 if shards == 1 else 8)

            running(peer, app, leased_and_echoing)
        finally:
            stop_process(app)
