"""Virtual wires: two device ports joined back to back, in one process or across processes.

Theory of operation
-------------------
`VirtualWire` joins two `VirtualPort`s in one process: a frame sent on one port is
appended to the other port's receive queue (bounded: a full queue refuses frames,
which the sender sees as back-pressure). Both stacks of a test can then run in one
event loop, or in none at all (call ``rx_burst``/``tx_burst`` directly), and the
test controls every interleaving.

`SharedWire` does the same between processes through one shared-memory segment
(``/dev/shm/shoal-wire-<pid>-<random>``): two single-producer/single-consumer rings
of fixed-size slots, one per direction, with acquire/release indices and a
sleep/wake handshake in C (`drivers/_shmwire_build.py`). Each port owns an eventfd
that becomes readable when frames arrive while its owner sleeps. Create the wire
before forking; each process then uses its own port (``wire.a`` in one, ``wire.b``
in the other). The creating process unlinks the segment on ``close()`` (and a
finalizer does it if the creator forgets); other processes only unmap it.

Both carry whole Ethernet frames and enforce the wire's MTU like a NIC: a frame
whose payload exceeds it is refused by ``tx_burst`` (counted in ``stats["tx_oversize"]``
and consumed, since no retry could ever send it). Faults are not built in: wrap a
port in `shoal.drivers.faults.FaultInjector`.
"""
import collections
import os
import weakref
from multiprocessing import shared_memory

from shoal.drivers._shmwire import ffi, lib
from shoal.drivers.base import ETH_HEADER_LEN, VLAN_TAG_LEN, Device, frame_bytes, random_mac


def _max_frame(mtu):
    """Largest frame for an MTU: Ethernet header plus one 802.1Q tag plus the payload."""
    return ETH_HEADER_LEN + VLAN_TAG_LEN + mtu


def _fits(frame, mtu):
    """True if `frame` carries at most `mtu` bytes of payload (allowing one VLAN tag)."""
    n = len(frame)
    if n <= ETH_HEADER_LEN + mtu:
        return True
    return n <= _max_frame(mtu) and bytes(frame[12:14]) == b"\x81\x00"


class VirtualPort(Device):
    """One end of an in-process `VirtualWire`."""

    def __init__(self, mac, mtu, capacity):
        self.mac = mac
        self.mtu = mtu
        self.capacity = capacity
        self.peer = None
        self._rx = collections.deque()
        self._efd = None
        self.stats = collections.Counter()

    def rx_burst(self, max_frames):
        rx = self._rx
        n = min(max_frames, len(rx))
        frames = [rx.popleft() for _ in range(n)]
        self.stats["rx_frames"] += n
        return frames

    def tx_burst(self, frames):
        peer = self.peer
        queue = peer._rx
        was_empty = not queue
        taken = 0
        for frame in frames:
            if len(queue) >= peer.capacity:
                break
            data = bytes(frame_bytes(frame))
            taken += 1
            if not _fits(data, self.mtu):
                self.stats["tx_oversize"] += 1
                continue
            queue.append(data)
            self.stats["tx_frames"] += 1
        if was_empty and queue and peer._efd is not None:
            os.eventfd_write(peer._efd, 1)
        return taken

    def fileno(self):
        if self._efd is None:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        return self._efd

    def arm(self):
        return not self._rx

    def disarm(self):
        if self._efd is not None:
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                pass

    def pending(self):
        """Frames waiting to be received on this port."""
        return len(self._rx)

    def close(self):
        if self._efd is not None:
            os.close(self._efd)
            self._efd = None


class VirtualWire:
    """Two in-process ports, ``a`` and ``b``, joined back to back.

    ``capacity`` bounds each port's receive queue (frames). MACs default to random
    locally administered addresses from ``randbytes`` (inject a seeded one for
    reproducible tests).
    """

    def __init__(self, mtu=1500, capacity=1024, mac_a=None, mac_b=None, randbytes=os.urandom):
        self.a = VirtualPort(mac_a or random_mac(randbytes), mtu, capacity)
        self.b = VirtualPort(mac_b or random_mac(randbytes), mtu, capacity)
        self.a.peer, self.b.peer = self.b, self.a

    def close(self):
        self.a.close()
        self.b.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _unlink_segment(shm, creator):
    """Finalizer: the creating process removes the /dev/shm name (forked children never do)."""
    if os.getpid() != creator:
        return
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


class SharedPort(Device):
    """One end of a `SharedWire`; usable in whichever process holds it after fork."""

    def __init__(self, wire, index, mac):
        self.wire = wire
        self.index = index
        self.mac = mac
        self.mtu = wire.mtu
        self.stats = collections.Counter()
        seg = wire._ptr
        self._tx_ring = seg + lib.wire_ring_offset(seg, index)
        self._rx_ring = seg + lib.wire_ring_offset(seg, 1 - index)
        self._rx_off = lib.wire_ring_offset(seg, 1 - index)
        self._efd = wire._efds[index]
        self._peer_efd = wire._efds[1 - index]
        self._slots = wire.slots
        self._slot_bytes = wire.slot_bytes
        self._batch = 0
        self._offs = self._lens = None

    def _arrays(self, n):
        if n > self._batch:
            self._batch = n
            self._offs = ffi.new("uint32_t[]", n)
            self._lens = ffi.new("uint32_t[]", n)
        return self._offs, self._lens

    def rx_burst(self, max_frames):
        offs, lens = self._arrays(max_frames)
        n = lib.wire_peek(self._rx_ring, self._slots, self._slot_bytes, offs, lens, max_frames)
        if not n:
            return []
        buf = self.wire._buf
        base = self._rx_off
        frames = [bytes(buf[base + offs[i]:base + offs[i] + lens[i]]) for i in range(n)]
        lib.wire_release(self._rx_ring, n)
        self.stats["rx_frames"] += n
        return frames

    def tx_burst(self, frames):
        ring, slots, slot_bytes = self._tx_ring, self._slots, self._slot_bytes
        taken = sent = 0
        for frame in frames:
            data = frame_bytes(frame)
            if not _fits(data, self.mtu):
                self.stats["tx_oversize"] += 1
                taken += 1
                continue
            if lib.wire_push(ring, slots, slot_bytes, ffi.from_buffer(data), len(data)) != 1:
                break
            taken += 1
            sent += 1
        if sent:
            self.stats["tx_frames"] += sent
            lib.wire_notify(ring, self._peer_efd)
        return taken

    def fileno(self):
        return self._efd

    def arm(self):
        return lib.wire_try_sleep(self._rx_ring) == 1

    def disarm(self):
        lib.wire_awake(self._rx_ring)
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            pass

    def pending(self):
        """Frames waiting to be received on this port."""
        return lib.wire_used(self._rx_ring)

    def close(self):
        """Ports share the wire's resources: `SharedWire.close` releases them."""


class SharedWire:
    """Two ports joined through a shared-memory segment, for stacks in different processes.

    ``slots`` (a power of two) frames of up to the MTU fit in each direction.
    """

    def __init__(self, mtu=1500, slots=256, mac_a=None, mac_b=None, randbytes=os.urandom):
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two >= 2, not {slots}")
        self.mtu = mtu
        self.slots = slots
        self.slot_bytes = (8 + _max_frame(mtu) + 7) & ~7
        size = lib.wire_segment_size(slots, self.slot_bytes)
        name = f"shoal-wire-{os.getpid()}-{os.urandom(4).hex()}"
        self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        self.name = self._shm.name
        self._finalizer = weakref.finalize(self, _unlink_segment, self._shm, os.getpid())
        self._efds = []
        try:
            self._buf = self._shm.buf
            self._ptr = ffi.from_buffer(self._buf)
            lib.wire_segment_init(self._ptr, slots, self.slot_bytes)
            self._efds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
            self.a = SharedPort(self, 0, mac_a or random_mac(randbytes))
            self.b = SharedPort(self, 1, mac_b or random_mac(randbytes))
        except BaseException:
            self.close()
            raise

    def close(self):
        """Unmap (every process) and unlink (the creator); idempotent."""
        for fd in self._efds:
            os.close(fd)
        self._efds = []
        if self._shm is None:
            return
        if getattr(self, "_ptr", None) is not None:
            ffi.release(self._ptr)
            self._ptr = None
        self._buf = None
        self.a = self.b = None
        self._shm.close()
        self._shm = None
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
