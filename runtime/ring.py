"""Single-producer/single-consumer byte rings in shared memory, one per ordered shard pair.

Theory of operation
-------------------
One shared-memory segment (created by the launcher before the shards are forked)
holds a header, one control block per shard and ``N*N`` rings::

    [header][ctl 0]...[ctl N-1][ring 0->0][ring 0->1]...[ring N-1->N-1]

A ring is three cache lines of indices and a power-of-two data area. ``head`` and
``tail`` are free-running 64-bit byte counters; the producer publishes records with
a release store of ``tail`` and the consumer frees them with a release store of
``head`` (acquire loads on the other side), so the ring is correct on x86-64 and on
arm64 without locks. The producer writes records ahead of the published tail and
publishes a batch at once: every publish moves the tail's cache line to the other
core, so one per batch rather than one per message is what makes the ring fast.

A record is ``u32 length, u32 flags, payload`` padded to 8 bytes, and never wraps:
when the space up to the end of the data area is too short, a WRAP marker fills
it. So the consumer can hand out every payload as one contiguous memoryview of
shared memory and release the whole batch with one store once it is done.

A control block holds the shard's *doorbell*, one bit per source shard, set after a
producer publishes, so a poll reads one word instead of scanning ``N-1`` rings; and a
*sleeping* word, the handshake that lets a shard sleep in epoll: the sleeper stores
``sleeping=1`` then re-reads its doorbell, the producer sets the bell then reads
``sleeping``, both sequentially consistent, so at least one of them notices the
other (and the producer then writes the sleeper's eventfd).

All atomic operations are in C (``runtime/_smp_build.py``); this module keeps the
Python side to buffer bookkeeping.
"""
import os
from multiprocessing import shared_memory

from shoal.runtime._smp import ffi, lib

FINAL = 1
"""Record flag: the last (or only) record of a message."""

_CTL_HEADER = 192  # sizeof(ring_ctl): the three index cache lines before the data area
_ring_push = lib.ring_push
_ring_publish = lib.ring_publish


def segment_name():
    """A /dev/shm name that says who made it, so a leak is attributable."""
    return f"shoal-{os.getpid()}-{os.urandom(4).hex()}"


class Segment:
    """The shared-memory segment holding all rings and control blocks.

    `create` makes and initialises it (the launcher); shards inherit the mapping
    through fork. `close` unmaps; `unlink` (launcher only) removes the name.
    """

    def __init__(self, shm):
        self._shm = shm
        self.buf = shm.buf
        self.ptr = ffi.from_buffer(shm.buf)
        self.nshards = lib.smp_nshards(self.ptr)
        self.ring_bytes = lib.smp_ring_bytes(self.ptr)
        self.name = shm.name
        self._rings = []

    @classmethod
    def create(cls, nshards, ring_bytes=1 << 20):
        if ring_bytes < 64 or ring_bytes & (ring_bytes - 1):
            raise ValueError(f"ring size must be a power of two >= 64, not {ring_bytes}")
        size = lib.smp_segment_size(nshards, ring_bytes)
        shm = shared_memory.SharedMemory(name=segment_name(), create=True, size=size)
        lib.smp_segment_init(ffi.from_buffer(shm.buf), nshards, ring_bytes)
        return cls(shm)

    def ring(self, src, dst):
        ring = Ring(self, src, dst)
        self._rings.append(ring)
        return ring

    def close(self):
        """Unmap. Rings made by `ring()` are unusable afterwards."""
        for ring in self._rings:
            ring.data.release()
        self._rings.clear()
        ffi.release(self.ptr)
        self.ptr = self.buf = None
        try:
            self._shm.close()
        except BufferError:
            # A caller still holds a view of a payload; the mapping goes with the process.
            pass

    def unlink(self):
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class Ring:
    """One direction between two shards. Use `push*` on the producer side only
    and `pop_batch`/`release` on the consumer side only."""

    __slots__ = ("cap", "ptr", "data", "_offs", "_lens", "_flags", "_head", "_batch", "_offs_v", "_lens_v",
                 "_flags_v", "max_record")

    def __init__(self, segment, src, dst, batch=256):
        off = lib.smp_ring_offset(segment.ptr, src, dst)
        self.cap = segment.ring_bytes
        self.ptr = segment.ptr + off
        self.data = segment.buf[off + _CTL_HEADER:off + _CTL_HEADER + self.cap]
        self.max_record = self.cap // 2 - 8
        self._batch = batch
        self._offs = ffi.new("uint32_t[]", batch)
        self._lens = ffi.new("uint32_t[]", batch)
        self._flags = ffi.new("uint32_t[]", batch)
        self._head = ffi.new("uint64_t *")
        # memoryview casts index faster than cffi arrays from Python.
        self._offs_v = memoryview(ffi.buffer(self._offs)).cast("I")
        self._lens_v = memoryview(ffi.buffer(self._lens)).cast("I")
        self._flags_v = memoryview(ffi.buffer(self._flags)).cast("I")

    def push(self, payload, flags=FINAL, publish=True):
        """Copy one record in. True if pushed, False if the ring is full now.

        With ``publish=False`` the record stays invisible to the consumer until
        `publish()` (or a publishing push); a push that finds the ring full
        publishes what was written. Raises ValueError for a record larger than
        half the ring: callers split messages into records of at most
        `max_record` bytes."""
        if type(payload) is not bytes:  # bytes go to C as char* as they are; others need a buffer view
            payload = ffi.from_buffer(payload)
        r = _ring_push(self.ptr, self.cap, payload, len(payload), flags, publish)
        if r < 0:
            raise ValueError(f"record of {len(payload)} bytes exceeds the ring's {self.max_record}")
        return r == 1

    def publish(self):
        """Make every record pushed so far visible to the consumer."""
        _ring_publish(self.ptr)

    def push_many(self, joined, lens):
        """Push records laid back to back in `joined` (their lengths in `lens`,
        an ``array('I')``) with one publish; returns how many went in."""
        return lib.ring_push_many(self.ptr, self.cap, ffi.from_buffer(joined), ffi.from_buffer("uint32_t[]", lens),
                                  len(lens))

    def pop_batch(self):
        """Up to one batch of readable records as (offsets, lengths, flags, n).

        Payload i is ``self.data[offsets[i]:offsets[i] + lengths[i]]``, valid until
        `release()`. Nothing is consumed until then."""
        n = lib.ring_pop_batch(self.ptr, self.cap, self._offs, self._lens, self._flags, self._batch, self._head)
        return self._offs_v, self._lens_v, self._flags_v, n

    def release(self):
        """Give back everything the last `pop_batch` described."""
        lib.ring_release(self.ptr, self._head[0])

    def used(self):
        return lib.ring_used(self.ptr)
