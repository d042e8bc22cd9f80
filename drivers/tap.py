"""A Linux TAP device as a shoal device: the kernel's network stack is on the other side.

``TapDevice("shoal0")`` creates the interface (or attaches to an existing persistent
tap of that name) with ``TUNSETIFF`` and ``IFF_TAP | IFF_NO_PI``: every ``read`` of the
non-blocking descriptor returns one whole Ethernet frame the kernel sent, and every
``write`` (``writev`` for scatter frames) hands one frame to the kernel as if it had
arrived on the interface (see the kernel's Documentation/networking/tuntap.rst).
One descriptor is one queue; this driver uses a single queue.

The tap's own MAC address belongs to the kernel side. shoal is a different host on
the same link and needs its own address: ``mac`` (default: a random locally
administered one). The MTU is read from (or, with ``mtu=``, set on) the interface
when the device is opened; the interface may then be moved into another network
namespace (``ip link set NAME netns NS``) while this process keeps the descriptor,
which is how tests put the kernel peer in a namespace of their own.

No syscall batches TAP frames (without vhost-net), so ``rx_burst``/``tx_burst`` make
one ``read``/``write`` per frame and stop at ``EAGAIN``.
"""
import collections
import errno
import fcntl
import os
import socket
import struct

from shoal.drivers.base import ETH_HEADER_LEN, VLAN_TAG_LEN, Device, frame_buffers, random_mac

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
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
    """One queue of a TAP interface named ``name`` (a ``%d`` template lets the kernel pick)."""

    def __init__(self, name, mac=None, mtu=None, up=True, randbytes=os.urandom):
        if len(name.encode()) >= IFNAMSIZ:
            raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
        self._fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            result = fcntl.ioctl(self._fd, TUNSETIFF, _ifreq(name, "H", IFF_TAP | IFF_NO_PI))
            self.name = result[:IFNAMSIZ].rstrip(b"\0").decode()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
                if mtu is not None:
                    fcntl.ioctl(ctl, SIOCSIFMTU, _ifreq(self.name, "i", mtu))
                self.mtu = struct.unpack_from("i", fcntl.ioctl(ctl, SIOCGIFMTU, _ifreq(self.name)), IFNAMSIZ)[0]
                hw = fcntl.ioctl(ctl, SIOCGIFHWADDR, _ifreq(self.name))
                self.kernel_mac = hw[IFNAMSIZ + 2:IFNAMSIZ + 8]
                if up:
                    flags = struct.unpack_from("H", fcntl.ioctl(ctl, SIOCGIFFLAGS, _ifreq(self.name)), IFNAMSIZ)[0]
                    fcntl.ioctl(ctl, SIOCSIFFLAGS, _ifreq(self.name, "H", flags | IFF_UP))
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        self.mac = mac or random_mac(randbytes)
        self._read_size = ETH_HEADER_LEN + VLAN_TAG_LEN + self.mtu
        self.stats = collections.Counter()

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
        return frames

    def tx_burst(self, frames):
        fd = self._fd
        taken = 0
        for frame in frames:
            bufs = frame_buffers(frame)
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
                self.stats[f"tx_error_{errno.errorcode.get(e.errno, e.errno)}"] += 1
            else:
                self.stats["tx_frames"] += 1
            taken += 1
        return taken

    def fileno(self):
        return self._fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
