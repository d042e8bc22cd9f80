"""The native stack's options: Seastar's names, and loud refusal of contradictions."""
import argparse
import os
import subprocess
import sys

import pytest

from shoal.net.native.config import ConfigError, NativeConfig, add_options, from_args


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
    (["--host-ipv4-addr", "10.0.0.2", "--hw-address", "01:00:5e:00:00:01"], "multicast"),
    (["--host-ipv4-addr", "10.0.0.2", "--hw-address", "02:00:00"], "not a MAC address"),
])
def test_conflicts_and_impossible_values_are_refused(argv, message):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert message in str(info.value)


def test_factory_refuses_several_shards_before_touching_a_device(monkeypatch):
    from shoal.net.native import stack
    from shoal.runtime import smp

    parser = argparse.ArgumentParser()
    add_options(parser)
    args = parser.parse_args(["--host-ipv4-addr", "10.0.0.2", "--tap-device", "shoal-never"])
    monkeypatch.setattr(smp, "count", 2)
    with pytest.raises(ConfigError, match="single device queue for now: run it with --smp 1"):
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
