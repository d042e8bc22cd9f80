"""The TAP driver with the Linux kernel as the peer, using hand-built frames only.

The kernel side of the tap sits in a namespace the test creates (`KernelPeer`);
shoal's side answers ARP and ICMP echo by building the bytes here, so the driver is
tested independently of the native stack.
"""
import os
import select
import shutil
import struct
import subprocess
import time

import pytest

import io

from shoal.drivers.base import PartialFrame, VerifiedFrame, frame_copy
from shoal.drivers.faults import FaultInjector
from shoal.drivers.pcap import PcapWriter, read_pcap
from shoal.drivers.netns import KernelPeer, stop_process, unavailable
from shoal.drivers.tap import TapDevice

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(shutil.which("ping") is None, reason="ping is not installed (apt: iputils-ping)"),
]

SHOAL_MAC = bytes.fromhex("02aabbccdd01")


def inet_checksum(data):
    """RFC 1071 one's complement sum, written out independently of shoal's C version."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip4(text):
    return bytes(int(x) for x in text.split("."))


def wait_frames(dev, want, timeout=20):
    """Read frames until `want(frame)` is true for one; returns it (others are ignored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in dev.rx_burst(32):
            if want(f):
                return f
        select.select([dev.fileno()], [], [], 0.2)
    raise AssertionError("expected frame did not arrive")


def answer_one_ping(dev, peer):
    """Answer the namespace kernel's ARP request and ICMP echo request with hand-built frames."""
    shoal_ip = ip4(peer.shoal_ip)
    arp = wait_frames(dev, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] == shoal_ip)
    assert arp[:6] == b"\xff" * 6 and arp[6:12] == dev.kernel_mac
    reply = (arp[6:12] + SHOAL_MAC + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x02"
             + SHOAL_MAC + shoal_ip + arp[22:28] + arp[28:32])
    assert dev.tx_burst([reply]) == 1
    echo = wait_frames(dev, lambda f: f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 8)
    ihl = (echo[14] & 0x0F) * 4
    total = struct.unpack_from("!H", echo, 16)[0]
    icmp = bytearray(echo[14 + ihl:14 + total])
    icmp[0] = 0
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", inet_checksum(bytes(icmp)))
    ip = bytearray(echo[14:14 + ihl])
    ip[12:16], ip[16:20] = echo[30:34], echo[26:30]
    ip[8] = 64
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", inet_checksum(bytes(ip)))
    header = echo[6:12] + SHOAL_MAC + b"\x08\x00"
    # scatter: Ethernet header, IP header and ICMP message as three fragments (writev)
    assert dev.tx_burst([[header, bytes(ip), memoryview(icmp)]]) == 1


def test_kernel_ping_answered_with_hand_built_frames():
    with KernelPeer(mac=SHOAL_MAC) as peer:
        dev = peer.device
        assert dev.mac == SHOAL_MAC and dev.mtu == 1500 and dev.rx_burst(8) == []
        ping = peer.popen(["ping", "-n", "-c", "1", "-W", "20", peer.shoal_ip], stdout=subprocess.PIPE, text=True)
        answer_one_ping(dev, peer)
        out, _ = ping.communicate(timeout=30)
        assert ping.returncode == 0, out
        assert "1 received" in out
        assert dev.stats["tx_frames"] == 2 and dev.stats["rx_frames"] >= 2


def test_udp_frame_reaches_a_kernel_socket():
    with KernelPeer(mac=SHOAL_MAC) as peer:
        dev = peer.device
        listener = peer.popen(
            ["python3", "-c",
             "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',9999));"
             "print('ready',flush=True); d,a=s.recvfrom(2000); print(d.decode(), a[0], a[1], flush=True)"],
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline().strip() == "ready"
        payload = b"hello kernel from shoal"
        udp = struct.pack("!HHHH", 4242, 9999, 8 + len(payload), 0) + payload
        src, dst = ip4(peer.shoal_ip), ip4(peer.kernel_ip)
        pseudo = src + dst + struct.pack("!BBH", 0, 17, len(udp))
        udp = udp[:6] + struct.pack("!H", inet_checksum(pseudo + udp) or 0xFFFF) + udp[8:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
        # The kernel answers with an ARP request before it replies to anything; a UDP
        # datagram with our MAC and IP is accepted without it.
        assert dev.tx_burst([dev.kernel_mac + SHOAL_MAC + b"\x08\x00" + ip + udp]) == 1
        line = listener.stdout.readline().split()
        assert line == ["hello", "kernel", "from", "shoal", peer.shoal_ip, "4242"]
        listener.wait(10)


def _checksum_ok(frame):
    """The frame's TCP or UDP checksum verifies (RFC 768 / RFC 9293 3.1: over the pseudo-header)."""
    ihl = (frame[14] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, 16)[0]
    segment = bytes(frame[14 + ihl:14 + total])
    pseudo = bytes(frame[26:34]) + struct.pack("!BBH", 0, frame[23], len(segment))
    return inet_checksum(pseudo + segment) == 0


def test_only_frames_the_kernel_vouches_for_come_up_verified():
    """A datagram from a kernel socket leaves with its checksum partial (NEEDS_CSUM): it
    comes up completed, as a `VerifiedFrame`. A raw frame written on the kernel side
    carries no such promise (no flag), so it comes up as plain bytes, bad checksum and all."""
    with KernelPeer(mac=SHOAL_MAC) as peer:
        dev = peer.device
        assert dev.offloads.rx_checksum
        peer.run(["ip", "neigh", "replace", peer.shoal_ip, "lladdr", SHOAL_MAC.hex(":"), "dev", peer.ifname])
        sender = peer.popen(["python3", "-c",
                             "import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                             f"s.sendto(b'from a kernel socket', ('{peer.shoal_ip}', 9999))"])
        sender.wait(30)
        is_udp = lambda f: f[12:14] == b"\x08\x00" and f[23] == 17  # noqa: E731
        kernel_built = wait_frames(dev, is_udp)
        assert type(kernel_built) is VerifiedFrame and _checksum_ok(kernel_built)
        assert dev.stats["rx_checksum_completed"] >= 1
        corrupt = bytearray(kernel_built)
        corrupt[-1] ^= 0x40
        raw = peer.popen(["python3", "-c",
                          "import socket,sys; s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);"
                          f"s.bind(('{peer.ifname}',0)); s.send(bytes.fromhex(sys.argv[1]))", corrupt.hex()])
        raw.wait(30)
        unvouched = wait_frames(dev, is_udp)
        assert type(unvouched) is bytes and unvouched == corrupt and not _checksum_ok(unvouched)


def test_a_kernel_tcp_segment_stays_partial_until_a_copy_leaves_the_device():
    """A SYN from a kernel socket leaves with its TCP checksum partial. It comes up as a
    `PartialFrame`, the field as the kernel left it (no sum spent on it); every copy made
    to leave the device's trust (`frame_copy`, a pcap record, a fault injector's copy)
    has the checksum finished, and the fault injector hands on ordinary bytes."""
    with KernelPeer(mac=SHOAL_MAC) as peer:
        dev = peer.device
        peer.run(["ip", "neigh", "replace", peer.shoal_ip, "lladdr", SHOAL_MAC.hex(":"), "dev", peer.ifname])
        capture = io.BytesIO()
        wrapped = FaultInjector(PcapWriter(dev, capture), seed=1)
        connector = peer.popen(["python3", "-c",
                                "import socket; s=socket.socket(); s.settimeout(2)\n"
                                f"try: s.connect(('{peer.shoal_ip}', 9999))\nexcept OSError: pass"])
        try:
            is_syn = lambda f: f[12:14] == b"\x08\x00" and f[23] == 6 and f[47] == 0x02  # noqa: E731
            copy = wait_frames(wrapped, is_syn)
        finally:
            connector.wait(30)
        assert type(copy) is bytes and _checksum_ok(copy)
        assert dev.stats["rx_checksum_partial"] >= 1
        syn = PartialFrame(copy)  # what the device handed the wrappers: the field left partial
        syn[50:52] = b"\0\0"
        ihl = (copy[14] & 0x0F) * 4
        tcp_len = struct.unpack_from("!H", copy, 16)[0] - ihl
        pseudo_sum = ~inet_checksum(bytes(copy[26:34]) + struct.pack("!BBH", 0, 6, tcp_len)) & 0xFFFF
        syn[50:52] = struct.pack("!H", pseudo_sum)
        syn.csum_start, syn.csum_offset = 34, 16
        assert not _checksum_ok(syn) and frame_copy(syn) == copy and type(frame_copy(syn)) is bytes
        wrapped.inner.flush()
        records = read_pcap(capture.getvalue())
        assert records and all(_checksum_ok(frame) for _, frame in records if is_syn(frame))


def test_mtu_and_malformed_frames():
    with KernelPeer(mtu=4000) as peer:
        dev = peer.device
        assert dev.mtu == 4000
        out = peer.run(["ip", "link", "show", peer.ifname]).stdout
        assert "mtu 4000" in out
        # A frame shorter than an Ethernet header is refused by the kernel: consumed and counted.
        assert dev.tx_burst([b"\x01\x02\x03"]) == 1
        assert dev.stats["tx_error_EINVAL"] == 1 and dev.stats["tx_frames"] == 0


def test_attach_to_persistent_tap_and_names_are_checked():
    name = f"shoalp{os.urandom(3).hex()}"
    subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True, timeout=30)
    try:
        with TapDevice(name, up=False) as dev:
            assert dev.name == name and dev.fileno() >= 0
            assert dev.rx_burst(4) == []
    finally:
        subprocess.run(["ip", "link", "del", name], check=True, timeout=30)
    with pytest.raises(ValueError):
        TapDevice("x" * 16)


def test_kernel_peer_cleans_up_namespace_and_tap():
    with KernelPeer() as peer:
        ns, ifname = peer.namespace, peer.ifname
        assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ifname not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def _is_up(name):
    with open(f"/sys/class/net/{name}/flags") as f:
        return bool(int(f.read(), 16) & 0x1)


def test_a_tap_of_several_queues_goes_up_once_all_are_attached():
    """Up is the last step of opening a tap: a test waits for it before it moves the tap
    into its namespace (`KernelPeer.start_shoal`), where the opening process could no
    longer name it."""
    seen = []

    class Recording(TapDevice):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            seen.append(_is_up(self.name))

    queues = Recording.open_queues(f"shq{os.urandom(3).hex()}", 2, steering=False)
    try:
        assert seen == [False, False] and _is_up(queues[0].name)
    finally:
        for queue in queues:
            queue.close()


SLOW_APP = r"""
import sys, time
from shoal.drivers.tap import TapDevice
name = sys.argv[sys.argv.index("--tap-device") + 1]
queues = TapDevice.open_queues(name, 2, steering=False, up=False)
time.sleep(1.0)  # (as on a loaded machine, between creating the tap and naming it last)
queues[0].bring_up()
print("up", flush=True)
time.sleep(120)  # (stopped by the test)
"""


def test_start_shoal_moves_the_tap_only_once_the_app_brought_it_up():
    with KernelPeer(open_device=False) as peer:
        app = peer.start_shoal(["-c", SLOW_APP])
        try:
            assert app.stdout.readline() == "up\n", stop_process(app)
            link = peer.run(["ip", "link", "show", peer.ifname]).stdout
            assert "state UP" in link or "LOWER_UP" in link, link
        finally:
            stop_process(app)
