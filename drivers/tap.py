"""A Linux TAP device as a shoal device: the kernel's network stack is on the other side.

``TapDevice("shoal0")`` creates the interface (or attaches to an existing persistent
tap of that name) with ``TUNSETIFF`` and ``IFF_TAP | IFF_NO_PI``: every ``read`` of the
non-blocking descriptor returns one whole Ethernet frame the kernel sent, and every
``write`` (``writev`` for scatter frames) hands one frame to the kernel as if it had
arrived on the interface (see the kernel's Documentation/networking/tuntap.rst).
One descriptor is one queue. `TapDevice.open_queues` opens the several queues of a
multi-queue tap (``IFF_MULTI_QUEUE``), one per shard, and makes the kernel's choice of
queue for each received frame deterministic with shoal's flow-steering program
(`shoal.drivers.steering`): queue ``i`` then carries exactly the flows that
``flow_queue(sport, dport, count) == i`` names, so shard ``i`` owns them.

The tap's own MAC address belongs to the kernel side. shoal is a different host on
the same link and needs its own address: ``mac`` (default: a random locally
administered one). The MTU is read from (or, with ``mtu=``, set on) the interface
when the device is opened; the interface may then be moved into another network
namespace (``ip link set NAME netns NS``) while this process keeps the descriptor,
which is how tests put the kernel peer in a namespace of their own.

No syscall batches TAP frames (without vhost-net), so ``rx_burst``/``tx_burst`` make
one ``read``/``write`` per frame and stop at ``EAGAIN``. What makes bulk transfer
affordable is the kernel's segmentation offload instead: with ``vnet_hdr=True`` (the
default) the tap is opened with ``IFF_VNET_HDR``, every frame carries a virtio-net
header, and ``tx_burst`` sends each run of consecutive full-sized segments of one
TCP flow as one super-frame (`shoal.drivers.vnet.coalesce`), so the kernel's receive
path and the wake-up of its reader are paid once per run, not once per segment. The
device then also offers TSO (``offloads.tso``): a TCP segment the stack built larger
than the MTU, with the packet's ``gso_size`` set, goes out as one super-frame the
kernel cuts (`shoal.drivers.vnet.tso`). And it finishes TCP checksums
(``offloads.tx_checksum``): the stack leaves the payload unsummed, and the kernel
delivers such a frame (``NEEDS_CSUM``: CHECKSUM_PARTIAL) to its TCP as checked.
With ``rx_offload=True`` (the default, with ``vnet_hdr``) the driver also tells the
kernel (``TUNSETOFFLOAD``: ``TUN_F_CSUM | TUN_F_TSO4``) that it takes TCP/IPv4
super-frames and partial checksums, so a bulk transfer towards shoal arrives in
frames of up to 64 KB (IPv4's limit) instead of one per MSS: the stack's receive
path runs once per super-frame. Received frames lose their header here, so the stack
sees Ethernet frames (some larger than the MTU: ``offloads.lro``). One whose checksum
the kernel left partial (``NEEDS_CSUM``), and one it marks ``DATA_VALID``, comes up as
a `VerifiedFrame` (``offloads.rx_checksum``): the kernel built it or checked it,
nothing can have corrupted it since, so the stack does not sum its TCP/UDP segment a
second time. A partial UDP checksum is completed here; a partial TCP one stays as it
is, in a `PartialFrame` (`shoal.drivers.base.frame_copy` finishes it where a copy
leaves the stack's hands): summing each 64 KB super-frame of an upload cost an eighth
of the shard's CPU, for a field nobody reads.
Frames without either flag (a raw frame some program wrote on the kernel side, one
the kernel forwards unchecked) come up as plain ``bytes`` and are verified in full.
"""
import collections
import errno
import fcntl
import os
import socket
import struct

from shoal.drivers import steering as steering_program
from shoal.drivers import vnet
from shoal.drivers.base import (ETH_HEADER_LEN, VLAN_TAG_LEN, Device, Offloads, PartialFrame, VerifiedFrame,
                                frame_buffers, random_mac)
from shoal.drivers.vnet import F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, TCP_CSUM_OFFSET

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUNSETSTEERINGEBPF = 0x800454E0
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
MAX_GSO_FRAME = ETH_HEADER_LEN + VLAN_TAG_LEN + 0xFFFF
"""The largest frame the kernel hands up with receive offload: an IPv4 datagram of 64 KB."""
IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCGIFHWADDR = 0x8927
IFNAMSIZ = 16


def _ifreq(name, fmt="", *values):
    return struct.pack(f"{IFNAMSIZ}s{fmt}", name.encode(), *values).ljust(40, b"\0")


class TapDevice(Device):
    """One queue of a TAP interface named ``name`` (a ``%d`` template lets the kernel pick).

    ``vnet_hdr``: exchange virtio-net headers with the kernel, which lets ``tx_burst``
    hand it TCP super-frames (see the module docstring); off, every frame is written
    as it is. ``rx_offload`` (needs ``vnet_hdr``; by default on with it): accept
    super-frames and partial checksums from the kernel too.
    """

    def __init__(self, name, mac=None, mtu=None, up=True, randbytes=os.urandom, vnet_hdr=True, rx_offload=None,
                 multi_queue=False):
        if rx_offload is None:
            rx_offload = vnet_hdr
        elif rx_offload and not vnet_hdr:
            raise ValueError("rx_offload needs vnet_hdr: the kernel describes super-frames in that header")
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
        self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
            result = fcntl.ioctl(self._fd, TUNSETIFF, _ifreq(name, "H", flags))
            self.name = result[:IFNAMSIZ].rstrip(b"\0").decode()
            if rx_offload:
                fcntl.ioctl(self._fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
                if mtu is not None:
                    fcntl.ioctl(ctl, SIOCSIFMTU, _ifreq(self.name, "i", mtu))
                self.mtu = struct.unpack_from("i", fcntl.ioctl(ctl, SIOCGIFMTU, _ifreq(self.name)), IFNAMSIZ)[0]
                hw = fcntl.ioctl(ctl, SIOCGIFHWADDR, _ifreq(self.name))
                self.kernel_mac = hw[IFNAMSIZ + 2:IFNAMSIZ + 8]
            if up:
                self.bring_up()
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self.mac = mac or random_mac(randbytes)
        self.vnet_hdr = vnet_hdr
        self.offloads = Offloads(rx_checksum=vnet_hdr, tx_checksum=vnet_hdr, tso=vnet_hdr, lro=rx_offload)
        frame = MAX_GSO_FRAME if rx_offload else ETH_HEADER_LEN + VLAN_TAG_LEN + self.mtu
        self._read_size = frame + (vnet.VNET_HDR_LEN if vnet_hdr else 0)
        self.stats = collections.Counter()

    def bring_up(self):
        """Set the interface up (``IFF_UP``). The last step of opening it, and the last use of
        its name: a test may move an interface it sees up into another namespace, where
        this process could no longer reach it by name (`netns.KernelPeer.start_shoal`)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
            flags = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFFLAGS, _ifreq(self.name)), IFNAMSIZ)[0]
            fcntl.ioctl(ctl, SIOCSIFFLAGS, _ifreq(self.name, "H", flags | IFF_UP))

    @classmethod
    def open_queues(cls, name, count, mac=None, steering=True, randbytes=os.urandom, up=True, **options):
        """`count` queues of the tap `name` (created if absent), all with one MAC, in queue order.

        The kernel numbers a tap's queues in the order they attach, so opening them
        here, one after the other in one process, is what makes the i-th descriptor
        queue i; the launcher does it before the shards fork and gives shard i the i-th.
        With ``steering`` (and more than one queue) the flow-steering program is
        attached, so queue i receives the flows `flow_queue` assigns to i; without it
        the kernel's automq spreads new flows by its own hash. One queue is a plain tap.
        With ``up``, the interface goes up once every queue is attached (`bring_up`)."""
        if count < 1:
            raise ValueError(f"a tap needs at least one queue, not {count}")
        mac = mac or random_mac(randbytes)
        queues = []
        try:
            for _ in range(count):
                queues.append(cls(queues[0].name if queues else name, mac=mac, up=False, multi_queue=count > 1,
                                  **options))
            if steering and count > 1:
                program = steering_program.load_steering_program()
                try:
                    fcntl.ioctl(queues[0].fileno(), TUNSETSTEERINGEBPF, struct.pack("i", program))
                finally:
                    os.close(program)  # the tap holds its own reference now
            if up:
                queues[0].bring_up()
        except BaseException:
            for queue in queues:
                queue.close()
            raise
        return queues

    def rx_burst(self, max_frames):
        fd, size, read = self._fd, self._read_size, os.read
        frames = []
        try:
            for _ in range(max_frames):
                frames.append(read(fd, size))
        except BlockingIOError:
            pass
        if frames:
            self.stats["rx_frames"] += len(frames)
            if self.vnet_hdr:
                frames = self._strip(frames)
        return frames

    def _strip(self, frames):
        """The Ethernet frames behind the virtio-net headers of a burst: each a `VerifiedFrame`,
        its checksum completed if partial, when the kernel vouches for it (see the module
        docstring). One loop for the burst, counted once at its end: a call and a counter
        update per frame cost more than the rest of the work on a small frame."""
        hlen = vnet.VNET_HDR_LEN
        unpack = vnet.VNET_HDR.unpack_from
        out = []
        partial = completed = bad = valid = supers = 0
        for data in frames:
            flags, gso_type, _hdr_len, _gso_size, start, offset = unpack(data)
            if flags & F_NEEDS_CSUM:
                if gso_type != GSO_NONE:
                    supers += 1
                if offset == TCP_CSUM_OFFSET and start + offset + 2 <= len(data) - hlen:
                    # TCP: left partial, for the stack never reads the field (`PartialFrame`)
                    frame = PartialFrame(memoryview(data)[hlen:])
                    frame.csum_start = start
                    frame.csum_offset = offset
                    partial += 1
                else:
                    frame = vnet.complete_checksum(memoryview(data)[hlen:], start, offset, VerifiedFrame)
                    if frame is None:
                        bad += 1  # passed on as it is: the stack drops it
                        frame = data[hlen:]
                    else:
                        completed += 1
            elif flags & F_DATA_VALID:
                valid += 1
                frame = VerifiedFrame(memoryview(data)[hlen:])
            else:
                frame = data[hlen:]
            out.append(frame)
        stats = self.stats
        if partial:
            stats["rx_checksum_partial"] += partial
        if supers:
            stats["rx_super_frames"] += supers
        if completed:
            stats["rx_checksum_completed"] += completed
        if bad:
            stats["rx_bad_csum_offsets"] += bad
        if valid:
            stats["rx_checksum_valid"] += valid
        return out

    def tx_burst(self, frames):
        if not self.vnet_hdr:
            return self._write_each(((frame_buffers(f), 1) for f in frames))
        if len(frames) == 1:
            frame = frames[0]
            gso_size = getattr(frame, "gso_size", 0)
            if gso_size:
                return self._write_each((vnet.tso(frame_buffers(frame), gso_size),))
            return self._write_each(((vnet.lone(frame, frame_buffers(frame)), 1),))
        return self._write_each(vnet.coalesce(frames, frame_buffers))

    def _write_each(self, writes):
        """Write each ``(buffers, n_frames)``; returns the frames taken (a prefix of the burst)."""
        fd, stats, vnet_hdr = self._fd, self.stats, self.vnet_hdr
        taken = sent = partial = 0  # (counted once per burst: a counter's += costs as much as the test)
        for bufs, n in writes:
            try:
                if len(bufs) == 1:
                    os.write(fd, bufs[0])
                else:
                    os.writev(fd, bufs)
            except BlockingIOError:
                break
            except OSError as e:
                # The kernel refused this frame (EINVAL: malformed; EIO: interface down).
                # Retrying cannot help: consume it and count why.
                stats[f"tx_error_{errno.errorcode.get(e.errno, e.errno)}"] += n
            else:
                sent += n
                if n > 1:
                    stats["tx_super_frames"] += 1
                elif vnet_hdr:
                    head = bufs[0]
                    if head is vnet.PARTIAL_TCP4:
                        partial += 1
                    elif head is not vnet.PLAIN:
                        stats["tx_tso_frames"] += 1
            taken += n
        if sent:
            stats["tx_frames"] += sent
            if partial:
                stats["tx_checksum_partial"] += partial
        return taken

    def fileno(self):
        return self._fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
