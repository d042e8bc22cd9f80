"""The native stack's options: Seastar's names, and loud refusal of contradictions."""
import argparse
import asyncio
import os
import subprocess
import sys

import pytest

from shoal.drivers.pcap import read_pcap
from shoal.net.native.config import ConfigError, NativeConfig, add_options, from_args
from shoal.net.native.stack import tcp_config
from shoal.net.native.tcp.connection import TcpConfig

from test_native_tcp_virtual import B_IP, WALL_LIMIT, read_all, two_stacks


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_options(parser)
    return from_args(parser.parse_args(list(argv)))


def test_static_configuration():
    c = parse("--tap-device", "tapx", "--host-ipv4-addr", "10.1.2.3", "--gw-ipv4-addr", "10.1.2.1",
              "--hw-address", "02:00:00:00:00:07", "--mtu", "9000")
    assert c == NativeConfig("tapx", False, 0x0A010203, 0xFFFFFF00, 0x0A010201, bytes.fromhex("020000000007"), 9000)


def test_defaults():
    c = parse("--host-ipv4-addr", "192.168.122.2")
    assert (c.tap_device, c.netmask_ipv4_addr, c.gw_ipv4_addr, c.hw_address, c.mtu) == ("tap0", 0xFFFFFF00, None,
                                                                                         None, None)


def test_dhcp_configuration_leaves_addresses_to_the_lease():
    c = parse("--dhcp")
    assert c.dhcp and c.host_ipv4_addr is None and c.netmask_ipv4_addr is None and c.gw_ipv4_addr is None


@pytest.mark.parametrize("argv, message", [
    (["--dhcp", "--host-ipv4-addr", "10.0.0.2"], "--dhcp conflicts with --host-ipv4-addr"),
    (["--dhcp", "--gw-ipv4-addr", "10.0.0.1", "--netmask-ipv4-addr", "255.0.0.0"],
     "--dhcp conflicts with --netmask-ipv4-addr, --gw-ipv4-addr"),
    ([], "give --host-ipv4-addr (static) or --dhcp"),
    (["--host-ipv4-addr", "10.0.0.300"], "is not an IPv4 address"),
    (["--host-ipv4-addr", "10.0.0.2", "--netmask-ipv4-addr", "255.0.255.0"], "not a contiguous netmask"),
    (["--host-ipv4-addr", "10.0.0.2", "--gw-ipv4-addr", "10.0.1.1"], "not on the local network 10.0.0.0/24"),
    (["--host-ipv4-addr", "10.0.0.2", "--gw-ipv4-addr", "10.0.0.2"], "this host's own address"),
    (["--host-ipv4-addr", "10.0.0.255"], "network or broadcast address"),
    (["--host-ipv4-addr", "224.0.0.1", "--netmask-ipv4-addr", "255.255.255.255"], "cannot be a host's address"),
    (["--host-ipv4-addr", "10.0.0.2", "--mtu", "100"], "--mtu 100 is outside"),
    (["--host-ipv4-addr", "10.0.0.2", "--tcp-max-time-wait", "-1"], "--tcp-max-time-wait -1 must be between 0"),
    (["--host-ipv4-addr", "10.0.0.2", "--hw-address", "01:00:5e:00:00:01"], "multicast"),
    (["--host-ipv4-addr", "10.0.0.2", "--hw-address", "02:00:00"], "not a MAC address"),
])
def test_conflicts_and_impossible_values_are_refused(argv, message):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert message in str(info.value)


def test_tcp_options_default_to_the_rfc_defaults_and_ecn_off():
    c = parse("--host-ipv4-addr", "10.0.0.2")
    assert (c.tcp_congestion, c.tcp_min_rto, c.tcp_ecn) == ("cubic", None, False)
    assert tcp_config(c) == TcpConfig()


def test_tcp_options_reach_the_tcp_config():
    c = parse("--host-ipv4-addr", "10.0.0.2", "--tcp-ecn", "on", "--tcp-congestion", "newreno",
              "--tcp-min-rto", "0.2")
    assert c.tcp_ecn
    assert tcp_config(c) == TcpConfig(ecn=True, congestion="newreno", min_rto=0.2, initial_rto=1.0)
    assert not tcp_config(parse("--host-ipv4-addr", "10.0.0.2", "--tcp-ecn", "off")).ecn
    assert not tcp_config(parse("--host-ipv4-addr", "10.0.0.2", "--tcp-tlp", "off")).tail_loss_probe
    assert not tcp_config(parse("--host-ipv4-addr", "10.0.0.2", "--tcp-pmtud", "off")).path_mtu_discovery


@pytest.mark.parametrize("option", ["--tcp-ecn", "--tcp-tso", "--tcp-tlp", "--tcp-pmtud"])
@pytest.mark.parametrize("value", ["yes", "1", "ON", ""])
def test_tcp_switches_take_only_on_or_off(option, value, capsys):
    with pytest.raises(SystemExit):
        parse("--host-ipv4-addr", "10.0.0.2", option, value)
    assert f"{option}: invalid choice" in capsys.readouterr().err
    # from_args checks too, for callers that build the namespace without this parser
    args = argparse.Namespace(host_ipv4_addr="10.0.0.2", **{option[2:].replace("-", "_"): value or "maybe"})
    with pytest.raises(ConfigError, match=f"{option} .*: choose on or off"):
        from_args(args)


def test_tcp_max_time_wait_reaches_the_tcp_layer():
    import random

    from shoal.drivers.virtual import VirtualWire
    from shoal.net.native.stack import NativeStack

    for argv, kept in (((), 65536), (("--tcp-max-time-wait", "0"), 0), (("--tcp-max-time-wait", "1000"), 1000)):
        config = parse("--host-ipv4-addr", "10.0.0.2", *argv)
        stack = NativeStack(VirtualWire().a, config, rng=random.Random(1), tcp_config=tcp_config(config))
        assert config.tcp_max_time_wait == kept and stack.tcp.max_time_wait == kept


def test_tcp_tso_off_keeps_segments_to_one_mss_on_a_tso_device():
    """TSO is on by default where the device cuts segments; `--tcp-tso off` keeps every
    segment within the MSS even there (`TcpLayer` sets `tso_max` from both)."""
    import random

    from shoal.drivers.base import Offloads
    from shoal.drivers.virtual import VirtualWire
    from shoal.net.native.stack import NativeStack
    from shoal.net.native.tcp.connection import TSO_MAX_PAYLOAD

    assert parse("--host-ipv4-addr", "10.0.0.2").tcp_tso and tcp_config(parse("--host-ipv4-addr", "10.0.0.2")).tso
    for value, tso_max in (("on", TSO_MAX_PAYLOAD), ("off", 0)):
        config = parse("--host-ipv4-addr", "10.0.0.2", "--tcp-tso", value)
        device = VirtualWire().a
        device.offloads = Offloads(tso=True)
        stack = NativeStack(device, config, rng=random.Random(1), tcp_config=tcp_config(config))
        assert stack.tcp.config.tso_max == tso_max


ECE, CWR, SYN, ACK = 0x40, 0x80, 0x02, 0x10
ECT0 = 0b10


def _tcp_frames(records, src_ip):
    """(ip ecn bits, tcp flags, payload length) of the TCP/IPv4 frames from `src_ip` in a capture."""
    src = bytes(int(x) for x in src_ip.split("."))
    out = []
    for _, f in records:
        if f[12:14] == b"\x08\x00" and f[23] == 6 and f[26:30] == src:
            ihl = (f[14] & 0x0F) * 4
            t = 14 + ihl
            payload = int.from_bytes(f[16:18], "big") - ihl - (f[t + 12] >> 4) * 4
            out.append((f[15] & 3, f[t + 13], payload))
    return out


@pytest.mark.parametrize("a_ecn, b_ecn", [("on", "on"), ("on", "off"), ("off", "on")])
def test_tcp_ecn_option_negotiates_ecn_between_two_stacks(a_ecn, b_ecn, tmp_path):
    """Two native stacks built from the options as an app builds them: ECN is used only
    when both ask (RFC 3168 6.1.1: an ECN-setup SYN carries ECE and CWR, the SYN-ACK
    ECE), and then new data goes out ECT(0) (section 6.1.2)."""
    tcp_a = tcp_config(parse("--host-ipv4-addr", "10.9.0.1", "--tcp-ecn", a_ecn))
    tcp_b = tcp_config(parse("--host-ipv4-addr", "10.9.0.2", "--tcp-ecn", b_ecn))
    capture = tmp_path / "a.pcap"
    payload = bytes(range(256)) * 200

    async def main():
        async with two_stacks(tcp_a=tcp_a, tcp_b=tcp_b, pcap=str(capture)) as (a, b, _clock):
            server = b.listen(("", 8020))
            accepted = asyncio.ensure_future(server.accept())
            client = await a.connect((B_IP, 8020))
            conn, _ = await accepted
            await client.write(payload)
            client.shutdown_output()
            assert (await read_all(conn))[0] == len(payload)
            return client.tcp.ecn_ok, conn.tcp.ecn_ok

    negotiated = a_ecn == b_ecn == "on"
    assert asyncio.run(asyncio.wait_for(main(), WALL_LIMIT)) == (negotiated, negotiated)
    sent_by_a = _tcp_frames(read_pcap(capture), "10.9.0.1")
    syn_flags = [flags for _, flags, _ in sent_by_a if flags & (SYN | ACK) == SYN]
    assert syn_flags and all(bool(flags & ECE and flags & CWR) == (a_ecn == "on") for flags in syn_flags)
    data_ecn = {ecn for ecn, flags, n in sent_by_a if n > 0}
    assert data_ecn == ({ECT0} if negotiated else {0})


def test_factory_on_several_shards_needs_the_queues_the_launcher_opens(monkeypatch):
    from shoal.net.native import stack
    from shoal.runtime import smp

    parser = argparse.ArgumentParser()
    add_options(parser)
    args = parser.parse_args(["--host-ipv4-addr", "10.0.0.2", "--tap-device", "shoal-never"])
    monkeypatch.setattr(smp, "count", 2)
    monkeypatch.setattr(smp, "_shard", 1)
    monkeypatch.setattr(stack, "_prepared_queues", None)
    with pytest.raises(ConfigError, match=r"opened by the launcher before the shards fork; this shard \(1 of 2\)"):
        stack.create(args)


def test_native_stack_is_registered_with_its_options(monkeypatch):
    from shoal.net import api
    from shoal.net.native import stack

    api.load_stack_modules()  # what --network-stack parsing does: imports shoal.net.native
    info = api.stack_info("native")
    monkeypatch.setattr(stack, "create", lambda args: ("created", args))
    assert info.factory("args") == ("created", "args")  # the factory is stack.create, imported lazily
    parser = argparse.ArgumentParser()
    info.add_options(parser)
    assert parser.parse_args(["--dhcp", "--tap-device", "t"]).dhcp




def test_the_echo_app_refuses_conflicting_options_before_touching_a_device():
    tap = f"shoalx{os.getpid() % 10000}"
    out = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--udp", "--smp", "1", "--network-stack", "native",
                          "--tap-device", tap, "--dhcp", "--host-ipv4-addr", "10.0.0.2"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--dhcp conflicts with --host-ipv4-addr" in out.stdout + out.stderr
    assert not os.path.exists(f"/sys/class/net/{tap}")
