"""Packets: a header region with headroom plus a list of payload fragments.

Theory of operation
-------------------
A frame on its way *down* the stack is built back to front. The application's
payload is attached as fragments (memoryviews, never copied); each layer then calls
`prepend(n)` to claim `n` bytes in front of what is already there and writes its
header with ``struct.pack_into(fmt, pkt.buf, offset, ...)``. The header region is one
small bytearray (`buf`) whose bytes ``buf[head:]`` are the headers written so far;
headroom is the unused part ``buf[:head]``. The driver gets `views()` (header region
first, then the fragments) and can hand them to ``writev`` as they are.

A frame on its way *up* is one fragment: a memoryview of the driver's receive buffer.
Parsers slice it; nothing is copied.

Ownership is explicit because CPython 3.11 gives no hook when the last memoryview of a
buffer goes away: a packet starts with one reference, `hold()` adds one (a layer that
keeps views past the call that handed them in, such as a socket receive queue) and
`release()` drops one. When the count reaches zero the `release` hook runs once (the
driver puts its buffer back in its pool) and the fragments are dropped. `slice()`
makes a packet that shares a range of this one's bytes and keeps it alive, which is
how IPv4 fragmentation splits a payload without copying it.

`gso_size` (0: none) marks a TCP segment larger than the path allows that the device
is to cut (TSO, when ``device.offloads.tso``): the payload size of each segment it
stands for. IPv4 then sends the packet whole instead of fragmenting it, and the
driver describes it to the device (`shoal.drivers.vnet`). `alone` asks a driver that
merges consecutive segments into super-frames (`shoal.drivers.vnet.coalesce`) to send
this one as a frame of its own: TCP marks its retransmissions so (`TcpLayer.send_segment`).
`checksum_partial` marks a TCP segment (no `gso_size`: a TSO segment's checksum is always
the device's) whose checksum field holds only the pseudo-header sum, for the device to
finish (``device.offloads.tx_checksum``).
"""

DEFAULT_HEADROOM = 128
"""Room for Ethernet (14-18) + IPv4 (20-60) + TCP (20-60) headers in one allocation."""

_EMPTY = bytearray()
_new = object.__new__


class Packet:
    """A frame or datagram under construction or in flight (see the module docstring)."""

    __slots__ = ("buf", "head", "frags", "_size", "_release", "_refs", "gso_size", "checksum_verified", "alone",
                 "checksum_partial")

    def __init__(self, payload=None, headroom=DEFAULT_HEADROOM, release=None):
        self.buf = bytearray(headroom) if headroom else _EMPTY
        self.head = headroom
        if payload is None or not len(payload):
            self.frags = []
            self._size = 0
        else:
            view = payload if type(payload) is memoryview else memoryview(payload)
            self.frags = [view]
            self._size = len(view)
        self._release = release
        self._refs = 1
        self.gso_size = 0
        self.checksum_verified = False
        self.alone = False
        self.checksum_partial = False

    @classmethod
    def wrap(cls, data, release=None, checksum_verified=False):
        """A received frame: `data` (the driver's buffer) as ``frags[0]``, no headroom.

        ``frags[0]`` exists even for an empty buffer, so a receive path can always parse it.
        `checksum_verified`: the device vouched for the frame's TCP/UDP checksum
        (`shoal.drivers.base.VerifiedFrame`), so the transport layer need not sum it.
        """
        p = _new(cls)  # every field set here: no __init__ call per received frame
        view = data if type(data) is memoryview else memoryview(data)
        p.buf = _EMPTY
        p.head = 0
        p.frags = [view]
        p._size = len(view)
        p._release = release
        p._refs = 1
        p.gso_size = 0
        p.checksum_verified = checksum_verified
        p.alone = False
        p.checksum_partial = False
        return p

    def __len__(self):
        return len(self.buf) - self.head + self._size

    @property
    def header_len(self):
        """Bytes written into the header region so far."""
        return len(self.buf) - self.head

    def prepend(self, n):
        """Claim `n` bytes in front of the packet; returns their offset in `buf` for `pack_into`.

        Grows the header region (one copy of the headers only, never of the payload)
        when the headroom is exhausted.
        """
        head = self.head - n
        if head < 0:
            grow = n + DEFAULT_HEADROOM
            self.buf = bytearray(grow) + self.buf[self.head :]
            head = grow - n
        self.head = head
        return head

    def append(self, data):
        """Attach `data` (any buffer) after the current end, without copying it."""
        n = len(data)
        if n:
            self.frags.append(data if type(data) is memoryview else memoryview(data))
            self._size += n

    def views(self):
        """The packet's bytes as a list of buffers (for `writev` or `sum_chunks`): the header
        region (`buf` itself when the headers filled the headroom exactly, as TCP's segments
        do: no view to make per frame), then the fragments."""
        head = self.head
        buf = self.buf
        if head == len(buf):
            return list(self.frags)
        if not head:
            return [buf, *self.frags]
        return [memoryview(buf)[head:], *self.frags]

    def linearize(self):
        """The packet's bytes contiguous: a view when it already is, else one copy."""
        if self.head == len(self.buf):
            if len(self.frags) == 1:
                return self.frags[0]
            if not self.frags:
                return memoryview(_EMPTY)
        elif not self.frags:
            return memoryview(self.buf)[self.head :]
        return memoryview(b"".join(self.views()))

    def slice(self, start, stop):
        """A new packet (with fresh headroom) whose payload is bytes [start, stop) of this one.

        Shares the bytes (no copy) and holds a reference on this packet until the new
        one is released.
        """
        out = []
        pos = 0
        for v in self.views():
            end = pos + len(v)
            if end > start and pos < stop:
                out.append(v[max(start - pos, 0) : min(stop, end) - pos])
            pos = end
            if pos >= stop:
                break
        self._refs += 1
        p = Packet(None, DEFAULT_HEADROOM, self.release)
        p.frags = out
        p._size = sum(len(v) for v in out)
        return p

    def hold(self):
        """Add a reference (the caller keeps views past the current call); returns self."""
        self._refs += 1
        return self

    def release(self):
        """Drop a reference; the last one runs the release hook and drops the fragments."""
        refs = self._refs - 1
        if refs < 0:
            raise RuntimeError("packet released more times than it was held")
        self._refs = refs
        if refs == 0:
            self.frags = []
            self._size = 0
            hook = self._release
            if hook is not None:
                self._release = None
                hook()

    @property
    def refs(self):
        """Current reference count (0 once released)."""
        return self._refs
