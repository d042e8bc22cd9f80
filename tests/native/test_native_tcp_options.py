"""The native stack's TCP options (--tcp-congestion, --tcp-min-rto) and the TcpConfig they make."""
import argparse

import pytest

from shoal.net.native.config import ConfigError, add_options, from_args
from shoal.net.native.stack import tcp_config


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_options(parser)
    return from_args(parser.parse_args(["--host-ipv4-addr", "10.0.0.2", *argv]))


def test_defaults_are_the_rfc_ones():
    cfg = tcp_config(parse())
    assert cfg.congestion == "cubic" and cfg.min_rto == 1.0 and cfg.initial_rto == 1.0  # RFC 9438, RFC 6298


def test_newreno_and_a_linux_like_minimum_rto_can_be_chosen():
    config = parse("--tcp-congestion", "newreno", "--tcp-min-rto", "0.2")
    assert config.host_ipv4_addr == 0x0A000002 and config.tcp_min_rto == 0.2
    cfg = tcp_config(config)
    assert cfg.congestion == "newreno" and cfg.min_rto == 0.2 and cfg.initial_rto == 1.0
    assert tcp_config(parse("--tcp-min-rto", "3")).initial_rto == 3  # the first RTO is never below the minimum


@pytest.mark.parametrize("value", ["0", "-1", "61"])
def test_impossible_minimum_rto_is_refused(value):
    with pytest.raises(ConfigError, match="--tcp-min-rto"):
        parse("--tcp-min-rto", value)


def test_unknown_congestion_control_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse("--tcp-congestion", "bbr")
    assert "invalid choice: 'bbr'" in capsys.readouterr().err


def test_apps_offer_the_native_stack_without_importing_it_first():
    """`--network-stack native` works in a fresh interpreter (the package registers itself
    when the network extension loads the stack modules), and a missing address is refused."""
    import subprocess
    import sys

    help_text = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--help"], capture_output=True,
                               text=True, timeout=60).stdout
    assert "network stack: native, posix" in help_text and "--tcp-congestion" in help_text
    out = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--network-stack", "native", "--smp", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "the native stack needs an address" in out.stdout + out.stderr
