"""Command-line options of the native stack and their validation (names as in Seastar).

``--network-stack native`` adds:

``--tap-device NAME``       the TAP interface to create or attach to (default ``tap0``)
``--host-ipv4-addr A``      a static address (exclusive with ``--dhcp``)
``--netmask-ipv4-addr M``   its netmask (default 255.255.255.0; static only)
``--gw-ipv4-addr G``        the default gateway (optional; static only)
``--dhcp``                  obtain address, netmask and gateway from a DHCP server
``--hw-address MAC``        shoal's MAC address (default: random, locally administered)
``--mtu N``                 the interface MTU (default: the device's)
``--tcp-congestion NAME``   TCP congestion control: ``cubic`` (default, RFC 9438) or ``newreno``
``--tcp-min-rto SECONDS``   lower bound of the retransmission timeout (default 1 s, RFC 6298
                            2.4; Linux uses 0.2 s, which recovers lost retransmissions faster)
``--tcp-tso on|off``        TCP segments larger than the MSS for the device to cut (TSO), when
                            the device offers it (a TAP with virtio-net headers); default ``on``.
                            ``off`` sends MSS-sized segments only (to measure what TSO gives,
                            or to rule it out when chasing a problem).
``--tcp-tlp on|off``        tail loss probes (RFC 8985 section 7), default ``on``: a response
                            whose last segments are lost is repaired after about two round
                            trips instead of the retransmission timeout (``off``: to measure
                            what they give, `bench/tail_loss.py`).
``--tcp-pmtud on|off``      path MTU discovery (RFC 1191), default ``on``: every TCP segment
                            carries DF, and a router's "fragmentation needed" shrinks the
                            connection's MSS to the path's MTU; where that ICMP is filtered,
                            a connection drops DF after two timeouts in a row. ``off``: segments
                            go without DF and a narrower hop fragments them (as Linux's
                            ``ip_no_pmtu_disc=1``).
``--tcp-max-time-wait N``   connections a shard keeps in TIME-WAIT (default 65,536, as a
                            compact record each, `tcp.time_wait`); past that a closing
                            connection skips it, counted (Linux's ``tcp_max_tw_buckets``).
                            0 keeps none: every 4-tuple is free again at once.
``--tcp-ecn on|off``        Explicit Congestion Notification (RFC 3168), default ``off``.
                            With ``on`` every connection asks for ECN in its SYN and accepts
                            a peer's ECN-setup SYN (section 6.1.1), sends ECT(0) on new data
                            and reduces its window once per window on ECE (section 6.1.2).
                            Off by default because negotiation is per connection and needs
                            the peer to take part, which Linux's default ``tcp_ecn=2`` does
                            only as a responder (it accepts but never asks), and because a
                            middlebox that drops an ECN-setup SYN costs a SYN timeout, one that
                            resets it a round trip (the SYN that follows goes without ECN,
                            section 6.1.1.1): ask only on paths known to carry it.

Seastar lets ``--host-ipv4-addr`` silently switch ``--dhcp`` off; shoal refuses
every contradictory or impossible combination with a message naming the options,
before any frame is sent: a misconfigured host on a shared link is worse than one
that does not start.
"""
import ipaddress
from dataclasses import dataclass, replace

DEFAULT_TAP = "tap0"
DEFAULT_NETMASK = "255.255.255.0"
MIN_MTU = 576
"""RFC 1122 section 3.3.3: every IPv4 host must accept 576-byte datagrams; DHCP needs it too."""
MAX_MTU = 65535
TCP_CONGESTION = ("cubic", "newreno")
ON_OFF = ("on", "off")
MAX_MIN_RTO = 60.0
"""RFC 6298 2.5: a maximum RTO of at least 60 s; the minimum may not exceed it."""
DEFAULT_MAX_TIME_WAIT = 65536


class ConfigError(ValueError):
    """The native stack's options contradict each other or name impossible values."""


@dataclass(frozen=True)
class NativeConfig:
    """Validated interface settings; addresses are ints, ``None`` where DHCP provides them."""

    tap_device: str = DEFAULT_TAP
    dhcp: bool = False
    host_ipv4_addr: int | None = None
    netmask_ipv4_addr: int | None = None
    gw_ipv4_addr: int | None = None
    hw_address: bytes | None = None
    mtu: int | None = None
    tcp_congestion: str = "cubic"
    tcp_min_rto: float | None = None
    tcp_ecn: bool = False
    tcp_tso: bool = True
    tcp_tlp: bool = True
    tcp_pmtud: bool = True
    tcp_max_time_wait: int = DEFAULT_MAX_TIME_WAIT


def add_options(parser):
    """Add the native stack's options to an argparse parser (its own argument group)."""
    group = parser.add_argument_group("shoal native stack (--network-stack native)")
    group.add_argument("--tap-device", default=None, metavar="NAME",
                       help=f"TAP interface to create or attach to (default {DEFAULT_TAP})")
    group.add_argument("--host-ipv4-addr", default=None, metavar="ADDR",
                       help="static IPv4 address of this host (not with --dhcp)")
    group.add_argument("--netmask-ipv4-addr", default=None, metavar="MASK",
                       help=f"netmask of the static address (default {DEFAULT_NETMASK}; not with --dhcp)")
    group.add_argument("--gw-ipv4-addr", default=None, metavar="ADDR",
                       help="default gateway (not with --dhcp)")
    group.add_argument("--dhcp", action="store_true", default=False,
                       help="configure address, netmask and gateway from DHCP")
    group.add_argument("--hw-address", default=None, metavar="MAC",
                       help="this host's MAC address (default: random, locally administered)")
    group.add_argument("--mtu", type=int, default=None, metavar="N", help="interface MTU (default: the device's)")
    group.add_argument("--tcp-congestion", default="cubic", choices=TCP_CONGESTION,
                       help="TCP congestion control (default cubic, RFC 9438)")
    group.add_argument("--tcp-min-rto", type=float, default=None, metavar="SECONDS",
                       help="minimum TCP retransmission timeout (default 1, RFC 6298; Linux uses 0.2)")
    group.add_argument("--tcp-tso", default="on", choices=ON_OFF,
                       help="let TCP hand segments larger than the MSS to a device that cuts them "
                            "(TSO; default on); off: MSS-sized segments only")
    group.add_argument("--tcp-tlp", default="on", choices=ON_OFF,
                       help="TCP tail loss probes (RFC 8985; default on)")
    group.add_argument("--tcp-pmtud", default="on", choices=ON_OFF,
                       help="TCP path MTU discovery (RFC 1191; default on): DF on every segment")
    group.add_argument("--tcp-max-time-wait", type=int, default=None, metavar="N",
                       help=f"connections a shard keeps in TIME-WAIT (default {DEFAULT_MAX_TIME_WAIT:,}); "
                            "past that a closing connection skips it (counted)")
    group.add_argument("--tcp-ecn", default="off", choices=ON_OFF,
                       help="ask for and accept ECN on every TCP connection (RFC 3168). Default off: "
                            "it is negotiated per connection, Linux's default tcp_ecn=2 accepts it but "
                            "never asks, and a middlebox that resets ECN-setup SYNs fails the connection")


def _on_off(args, name, default):
    """The value of an ``on|off`` option as a bool (absent: `default`); anything else refused."""
    value = getattr(args, name, None) or default
    if value not in ON_OFF:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: choose on or off")
    return value == "on"


def _address(text, option):
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not an IPv4 address") from None


def _netmask(text):
    value = _address(text, "--netmask-ipv4-addr")
    inverted = ~value & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise ConfigError(f"--netmask-ipv4-addr {text!r} is not a contiguous netmask")
    if value == 0:
        raise ConfigError("--netmask-ipv4-addr 0.0.0.0 leaves no local network")
    return value


def _mac(text):
    parts = text.replace("-", ":").split(":")
    try:
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(f"--hw-address {text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)") from None
    if mac[0] & 1:
        raise ConfigError(f"--hw-address {text} is a multicast address; a host needs a unicast one")
    if mac == bytes(6):
        raise ConfigError("--hw-address 00:00:00:00:00:00 is not a usable address")
    return mac


def from_args(args):
    """Validate parsed options into a `NativeConfig`; raises `ConfigError` saying what is wrong."""
    dhcp = bool(getattr(args, "dhcp", False))
    host = getattr(args, "host_ipv4_addr", None)
    mask = getattr(args, "netmask_ipv4_addr", None)
    gw = getattr(args, "gw_ipv4_addr", None)
    if dhcp:
        static = [f"--{name}" for name, value in
                  (("host-ipv4-addr", host), ("netmask-ipv4-addr", mask), ("gw-ipv4-addr", gw)) if value is not None]
        if static:
            raise ConfigError(f"--dhcp conflicts with {', '.join(static)}: the lease provides them; "
                              "drop --dhcp for a static configuration or drop the static options")
    elif host is None:
        raise ConfigError("the native stack needs an address: give --host-ipv4-addr (static) or --dhcp")
    mtu = getattr(args, "mtu", None)
    if mtu is not None and not MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"--mtu {mtu} is outside {MIN_MTU}..{MAX_MTU}")
    hw = getattr(args, "hw_address", None)
    congestion = getattr(args, "tcp_congestion", None) or "cubic"
    if congestion not in TCP_CONGESTION:
        raise ConfigError(f"--tcp-congestion {congestion!r}: choose one of {', '.join(TCP_CONGESTION)}")
    max_time_wait = getattr(args, "tcp_max_time_wait", None)
    if max_time_wait is None:
        max_time_wait = DEFAULT_MAX_TIME_WAIT
    elif not 0 <= max_time_wait <= 1 << 24:
        raise ConfigError(f"--tcp-max-time-wait {max_time_wait} must be between 0 and {1 << 24:,}")
    min_rto = getattr(args, "tcp_min_rto", None)
    if min_rto is not None and not 0 < min_rto <= MAX_MIN_RTO:
        raise ConfigError(f"--tcp-min-rto {min_rto} must be above 0 and at most {MAX_MIN_RTO:g} seconds")
    config = NativeConfig(
        tap_device=getattr(args, "tap_device", None) or DEFAULT_TAP,
        dhcp=dhcp,
        hw_address=_mac(hw) if hw is not None else None,
        mtu=mtu,
        tcp_congestion=congestion,
        tcp_min_rto=min_rto,
        tcp_ecn=_on_off(args, "tcp_ecn", "off"),
        tcp_tso=_on_off(args, "tcp_tso", "on"),
        tcp_tlp=_on_off(args, "tcp_tlp", "on"),
        tcp_pmtud=_on_off(args, "tcp_pmtud", "on"),
        tcp_max_time_wait=max_time_wait,
    )
    if dhcp:
        return config
    host_value = _address(host, "--host-ipv4-addr")
    mask_value = _netmask(mask if mask is not None else DEFAULT_NETMASK)
    host_ip = ipaddress.IPv4Address(host_value)
    network = ipaddress.IPv4Network((host_value & mask_value, bin(mask_value).count("1")))
    if host_ip.is_multicast or host_ip.is_unspecified or host_value == 0xFFFFFFFF:
        raise ConfigError(f"--host-ipv4-addr {host} cannot be a host's address")
    if network.prefixlen < 31 and host_ip in (network.network_address, network.broadcast_address):
        raise ConfigError(f"--host-ipv4-addr {host} is the network or broadcast address of {network}")
    gw_value = None
    if gw is not None:
        gw_value = _address(gw, "--gw-ipv4-addr")
        if ipaddress.IPv4Address(gw_value) not in network:
            raise ConfigError(f"--gw-ipv4-addr {gw} is not on the local network {network} "
                              "(RFC 1122 section 3.3.1.1: the first hop must be directly reachable)")
        if gw_value == host_value:
            raise ConfigError(f"--gw-ipv4-addr {gw} is this host's own address")
    return replace(config, host_ipv4_addr=host_value, netmask_ipv4_addr=mask_value, gw_ipv4_addr=gw_value)
