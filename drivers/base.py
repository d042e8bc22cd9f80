"""The device/queue interface every shoal driver implements, and the reactor poller that drives it.

Theory of operation
-------------------
A *device* here is one queue of one network interface as seen by one shard: the
stack above it never sees a file descriptor, a ring or a syscall. It sees five
things (smoltcp's ``phy::Device`` and Seastar's ``net::qp`` have the same shape):

``rx_burst(max_frames) -> list``
    Up to ``max_frames`` received Ethernet frames, each a bytes-like object the
    caller owns (``bytes``, a read-only ``memoryview`` or a `VerifiedFrame`); an
    empty list when nothing is waiting. Never blocks. A `VerifiedFrame` is one
    whose TCP or UDP checksum the device vouches for: the stack does not sum it
    again. Every other frame has all its checksums verified by the stack.
``tx_burst(frames) -> int``
    Offer a batch of frames; returns how many of them (a prefix) the device took.
    A frame is a bytes-like object or a *scatter list* (a list/tuple of bytes-like
    fragments, or an object whose ``views()`` returns one, such as
    `shoal.net.native.packet.Packet`) so that a
    header built in headroom and a payload view travel without being joined.
    Frames not taken stay the caller's: this is back-pressure, never loss.
``fileno() -> int | None``
    A descriptor that becomes readable when ``rx_burst`` has something to return,
    so an idle shard can sleep in epoll; ``None`` for a device that cannot wake
    anybody (it must then be polled).
``mac``, ``mtu``, ``offloads``
    The interface's hardware address (6 bytes), its MTU (the largest IP packet,
    i.e. Ethernet payload, it carries) and the work the device does for the stack.

Two optional hooks let devices that hold state between calls cooperate with a
sleeping reactor: ``arm()`` is called just before the shard sleeps and returns
False if the device already has work (the poller then makes its fd readable so
the sleep ends at once), ``disarm()`` after it wakes; ``next_deadline()`` returns
the device-clock time at which a frame held back by the device (a delayed frame
in the fault injector) becomes deliverable, or ``None``.

`DevicePoller` is the adapter between a device and a shard's reactor: each
``poll()`` moves one burst in each direction between the device and a *host* (the
stack), pulling transmit frames from the host only when the device can take them
(transmit is pulled, as in Seastar, so the stack builds segments at the last
moment and a full device queue back-pressures the stack, not a hidden buffer).
"""
import asyncio
import os
import select
from dataclasses import dataclass

from shoal.drivers import vnet

ETH_HEADER_LEN = 14
"""Destination MAC, source MAC, EtherType. The MTU counts what follows it."""

VLAN_TAG_LEN = 4


@dataclass(frozen=True)
class Offloads:
    """Work a device does on the stack's behalf; everything off means "do it all in software".

    ``rx_checksum``: the device hands up `VerifiedFrame`s, frames whose TCP/UDP checksum it
    verified or knows to be right; frames of any other type are still verified by the stack.
    ``tx_checksum``: the device computes L4 checksums of transmitted frames.
    ``tso``: the device segments TCP super-frames larger than the MTU: a frame object
    whose ``gso_size`` attribute is set (such as a `Packet`) is cut into segments of
    that many payload octets; its TCP checksum field holds the pseudo-header sum of the
    whole segment, uncomplemented, which the device finishes per segment.
    ``lro``: the device may hand up coalesced TCP super-frames (up to 64 KB of IPv4).
    """

    rx_checksum: bool = False
    tx_checksum: bool = False
    tso: bool = False
    lro: bool = False


NO_OFFLOADS = Offloads()


class VerifiedFrame(bytearray):
    """A received frame whose transport (TCP or UDP) checksum the device vouches for.

    A device returns one from ``rx_burst`` only for a frame whose checksum it checked,
    or one that never crossed a wire: what the kernel behind a TAP built itself and
    marked ``NEEDS_CSUM`` (checksum left partial: a `PartialFrame`) or ``DATA_VALID``
    (already verified), Linux's CHECKSUM_PARTIAL and CHECKSUM_UNNECESSARY. The stack
    then skips summing the segment again (RFC 9293 3.1's check is done once, as a
    NIC's receive checksum offload does it). Its type is the mark: a copy of it (a
    fault injector's, the bytes forwarded to another shard, made with `frame_copy`)
    is an ordinary frame and verified as usual. The IPv4 header checksum, summed from
    fields the parser unpacks anyway, is checked on every frame.
    """

    __slots__ = ()


class PartialFrame(VerifiedFrame):
    """A `VerifiedFrame` whose transport checksum field still holds only the pseudo-header
    sum, as the kernel left it (``NEEDS_CSUM``): the sum over the segment, from
    ``csum_start``, goes into the field at ``csum_start + csum_offset``.

    The stack that consumes the frame never reads the field, so finishing it there would
    be wasted: on a TAP upload it cost an eighth of the shard's CPU (a 64 KB sum per
    super-frame). Only a copy that leaves the device's trust, `frame_copy`, finishes it.
    """

    __slots__ = ("csum_start", "csum_offset")

    def finished(self):
        """The frame as bytes, its checksum completed (RFC 1071 over the segment)."""
        return bytes(vnet.complete_checksum(self, self.csum_start, self.csum_offset))


def frame_buffers(frame):
    """The fragments of a transmit frame, as a sequence of bytes-like objects."""
    kind = type(frame)
    if kind is bytes or kind is memoryview or kind is bytearray:
        return (frame,)  # (by identity: `isinstance` with a tuple, which a packet fails thrice, costs more)
    views = getattr(frame, "views", None)
    if views is not None:
        return views()
    return (frame,) if isinstance(frame, (bytes, bytearray, memoryview)) else frame


def frame_bytes(frame):
    """A transmit frame as one contiguous bytes-like object (joins only scatter lists)."""
    parts = frame_buffers(frame)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def wire_bytes(frame):
    """A frame as one bytes-like object, as it would cross a wire: `frame_bytes`, with the
    checksum of a `PartialFrame` finished (a capture records this), and that of a transmit
    frame the stack left to the device (``checksum_partial``: a TCP/IPv4 frame, TCP from
    offset 34, `shoal.drivers.vnet.PARTIAL_TCP4`)."""
    if type(frame) is PartialFrame:
        return frame.finished()
    if getattr(frame, "checksum_partial", False):
        return vnet.complete_checksum(frame_bytes(frame), 34, vnet.TCP_CSUM_OFFSET)
    return frame_bytes(frame)


def frame_copy(frame):
    """An ordinary copy of a frame, as bytes (`wire_bytes`): a receiver verifies it in full.
    For what keeps or hands on a received frame beyond the device's word for it (a fault
    injector, another shard)."""
    return bytes(wire_bytes(frame))


def format_mac(mac):
    return ":".join(f"{b:02x}" for b in mac)


def random_mac(randbytes=os.urandom):
    """A locally administered unicast address (IEEE 802: bit 1 set, bit 0 clear in octet 0)."""
    raw = bytearray(randbytes(6))
    raw[0] = (raw[0] & 0xFC) | 0x02
    return bytes(raw)


class Device:
    """Base class of devices: documents the interface and provides the optional hooks' defaults."""

    mac = b"\x00" * 6
    mtu = 1500
    offloads = NO_OFFLOADS

    def rx_burst(self, max_frames):
        raise NotImplementedError

    def tx_burst(self, frames):
        raise NotImplementedError

    def fileno(self):
        return None

    def arm(self):
        """About to sleep: False if frames are already waiting (so do not sleep)."""
        return True

    def disarm(self):
        """Woken up (or gave up sleeping)."""

    def next_deadline(self):
        """Device-clock time when a held-back frame becomes deliverable, or None."""
        return None

    def clock(self):
        """The clock `next_deadline` is expressed in."""
        return asyncio.get_running_loop().time()

    def close(self):
        """Release the device's resources; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DeviceWrapper(Device):
    """A device that forwards to another: the base of test wrappers (fault injection, pcap)."""

    def __init__(self, inner):
        self.inner = inner

    @property
    def mac(self):
        return self.inner.mac

    @property
    def mtu(self):
        return self.inner.mtu

    @property
    def offloads(self):
        return self.inner.offloads

    def rx_burst(self, max_frames):
        return self.inner.rx_burst(max_frames)

    def tx_burst(self, frames):
        return self.inner.tx_burst(frames)

    def fileno(self):
        return self.inner.fileno()

    def arm(self):
        return self.inner.arm()

    def disarm(self):
        self.inner.disarm()

    def next_deadline(self):
        return self.inner.next_deadline()

    def clock(self):
        return self.inner.clock()

    def close(self):
        self.inner.close()


class DevicePoller:
    """Drives one device queue from a shard's reactor on behalf of a host (the stack).

    ``receive(frames)`` is called with each non-empty receive burst; ``pull(n)``
    must return at most ``n`` frames ready to send (an empty sequence when none).
    Frames the device did not take are kept here, in order, and offered first on
    the next poll; nothing is pulled from the host while they wait. ``done(frames)``,
    when given, is called with the frames the device took (so the host can release
    their buffers).

    The reactor sleeps on one fd per poller. Ours is an epoll instance watching the
    device's fd and a private eventfd, so that the poller can also end the sleep
    itself: at once when there is work already (the device refused to arm, or
    frames wait here for the device), or at the deadline of a frame the device
    holds back (a loop timer writes the eventfd then).
    """

    def __init__(self, device, receive, pull, batch=64, done=None):
        self.device = device
        self.receive = receive
        self.pull = pull
        self.done = done
        self.batch = batch
        self._pending = []
        self._timer = None
        self._epoll = None
        self._efd = None

    def poll(self):
        device = self.device
        frames = device.rx_burst(self.batch)
        if frames:
            self.receive(frames)
        pending = self._pending
        if not pending:
            pending = self.pull(self.batch)
        sent = device.tx_burst(pending) if pending or device.next_deadline() is not None else 0
        if sent < len(pending):
            self._pending = list(pending[sent:])
            if sent and self.done is not None:
                self.done(pending[:sent])
        else:
            self._pending = []
            if sent and self.done is not None:
                self.done(pending)
        return bool(frames) or sent > 0

    def has_pending_tx(self):
        return bool(self._pending)

    def enter_interrupt_mode(self):
        """Arm the device before the shard sleeps; returns the fd to wait on."""
        if self._epoll is None:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._epoll = select.epoll()
            self._epoll.register(self._efd, select.EPOLLIN)
            fd = self.device.fileno()
            if fd is not None:
                self._epoll.register(fd, select.EPOLLIN)
        device = self.device
        if not device.arm() or self._pending:
            os.eventfd_write(self._efd, 1)
        else:
            deadline = device.next_deadline()
            if deadline is not None:
                delay = max(0.0, deadline - device.clock())
                self._timer = asyncio.get_running_loop().call_later(delay, os.eventfd_write, self._efd, 1)
        return self._epoll.fileno()

    def exit_interrupt_mode(self):
        self.device.disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._efd is not None:
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                pass

    def close(self):
        """Release the poller's own descriptors (not the device)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None:
            self._epoll.close()
            os.close(self._efd)
            self._epoll = self._efd = None
