"""A seeded, deterministic fault injector that wraps any device (a terrible network on demand).

Theory of operation
-------------------
`FaultInjector` sits between a stack and a device and passes each frame, in each
direction, through the same pipeline::

    MTU check -> loss -> corruption -> duplication -> reordering -> delay -> out

Every decision is drawn from a per-direction ``random.Random`` seeded from the
injector's seed, and a probability of zero draws nothing, so the same seed and the
same frames always give the same faults, whatever the interleaving of receive and
transmit calls and whichever other faults are configured at zero.

*Reordering* holds a chosen frame back until the next frame of that direction has
gone out (then sends it right after), or until ``reorder_timeout`` has passed on the
injector's clock, so a held frame is late but never lost. *Delay* adds
``delay + U(0, jitter)`` seconds; frames become deliverable when the clock reaches
their due time (jitter also reorders). The clock is injected: `time.monotonic` for
real-time tests, a manual clock for virtual time (the injector then moves frames
only when the test advances the clock and calls a burst).

*TSO super-frames* (a transmit frame whose ``gso_size`` is set: one TCP/IPv4 segment
larger than the MTU that the device cuts into ``gso_size`` segments, see
`shoal.drivers.vnet.tso`) keep their ``gso_size`` through the injector, and each fault
acts on what the wire will carry. The ``mtu`` fault measures the segments the device
will make (headers + ``gso_size``), not the super-frame. *Corruption* cannot be applied
to the super-frame itself: the device (the kernel behind a TAP) recomputes the IPv4 and
TCP checksums of every segment it cuts, so a bit flipped before the cut leaves on the
wire inside a segment with a valid checksum, an error no receiver can detect (RFC 9293
3.1: the checksum is what detects it) and one that a flipped port, address or sequence
number turns into wrong data delivered as right. A corrupted super-frame is therefore
cut here, the way the device would cut it (`cut_super_frame`: Linux's
``tcp_gso_segment``), and one bit of those wire frames is flipped after their
checksums are final, so the receiver drops exactly one segment, as it would for a
bit error on a real link; the other segments go out intact as ordinary frames (counted
``tx_cut``). Loss, duplication, reordering and delay act on the super-frame whole, as a
device queue that drops or delays the frame it was given. Received frames need none of
this: a super-frame a TAP hands up (LRO) has its checksum completed by the driver
before the injector sees it, so a flipped bit there is caught by the stack's check.

Frames held here are reported through ``next_deadline()`` so a sleeping reactor
wakes for them, and received frames already released but not yet returned (more
than ``max_frames`` at once) make ``arm()`` refuse to sleep. Counters are in
``stats``, keyed ``"<direction>_<fault>"`` (``rx_lost``, ``tx_duplicated``...).
"""
import collections
import heapq
import random
import struct
import time
from dataclasses import dataclass

from shoal.drivers.base import ETH_HEADER_LEN, DeviceWrapper, frame_copy
from shoal.drivers.vnet import complete_checksum, ones_sum

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


@dataclass(frozen=True)
class Faults:
    """What goes wrong in one direction. Probabilities are per frame, in [0, 1]."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    mtu: int | None = None
    reorder_timeout: float = 0.01

    def __post_init__(self):
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {p}")
        if self.delay < 0 or self.jitter < 0 or self.reorder_timeout < 0:
            raise ValueError("delay, jitter and reorder_timeout must be >= 0")


NONE = Faults()


class _SuperFrame(bytes):
    """The injector's copy of a TSO super-frame: the bytes, and the ``gso_size`` the
    device below needs to cut it (a plain ``bytes`` copy would lose it)."""

    def __new__(cls, data, gso_size):
        frame = super().__new__(cls, data)
        frame.gso_size = gso_size
        return frame


def _tcp_ipv4_headers_len(frame):
    """Length of the Ethernet + IPv4 + TCP headers of an untagged TCP/IPv4 frame, else None."""
    if len(frame) < ETH_HEADER_LEN + 20 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4 \
            or frame[23] != 6:
        return None
    tcp = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
    if len(frame) < tcp + 20:
        return None
    return tcp + (frame[tcp + 12] >> 4) * 4


def cut_super_frame(frame, gso_size):
    """The wire frames a TSO device makes of the super-frame `frame` (bytes), checksums final.

    As Linux's GSO does (``inet_gso_segment``, ``tcp_gso_segment``): every piece repeats
    the headers with ``gso_size`` octets of payload (the last the rest), the sequence
    number advanced by the octets before it, the IP identification counting up from the
    super-frame's, FIN and PSH on the last piece only and CWR on the first only; the IPv4
    header checksum (RFC 791) and the TCP checksum over the pseudo-header (RFC 9293 3.1)
    are computed per piece. A frame that is not TCP/IPv4, or whose payload fits one
    segment, is what the device sends as it is: the result is ``[frame]``.
    """
    hlen = _tcp_ipv4_headers_len(frame)
    if hlen is None or len(frame) - hlen <= gso_size:
        return [frame]
    tcp = ETH_HEADER_LEN + (frame[14] & 0x0F) * 4
    ident = _H.unpack_from(frame, 18)[0]
    seq = _I.unpack_from(frame, tcp + 4)[0]
    flags = frame[tcp + 13]
    payload = memoryview(frame)[hlen:]
    pieces = []
    for i, off in enumerate(range(0, len(payload), gso_size)):
        chunk = payload[off:off + gso_size]
        hdr = bytearray(frame[:hlen])
        _H.pack_into(hdr, 16, hlen - ETH_HEADER_LEN + len(chunk))
        _H.pack_into(hdr, 18, (ident + i) & 0xFFFF)
        _H.pack_into(hdr, 24, 0)
        _H.pack_into(hdr, 24, ~ones_sum(hdr[ETH_HEADER_LEN:tcp]) & 0xFFFF)
        _I.pack_into(hdr, tcp + 4, (seq + off) & 0xFFFFFFFF)
        piece_flags = flags
        if off + len(chunk) < len(payload):
            piece_flags &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            piece_flags &= ~_TCP_CWR
        hdr[tcp + 13] = piece_flags
        # pseudo-header sum (source, destination, zero + protocol 6, TCP length) in the
        # checksum field, then the checksum finished over the segment from its TCP header
        pseudo = ones_sum(bytes(hdr[26:34]) + _H.pack(6) + _H.pack(hlen - tcp + len(chunk)))
        _H.pack_into(hdr, tcp + 16, pseudo)
        pieces.append(bytes(complete_checksum(bytes(hdr) + chunk, tcp, 16)))
    return pieces


def _wire_frame_len(data, gso_size):
    """The largest frame `data` becomes on the wire: one TSO segment of it, or itself."""
    hlen = _tcp_ipv4_headers_len(data) if gso_size else None
    return len(data) if hlen is None else min(len(data), hlen + gso_size)


class _Direction:
    """The fault pipeline of one direction, with its own random stream and held frames."""

    def __init__(self, name, faults, seed, stats):
        self.name = name
        self.faults = faults
        self.rng = random.Random(f"{seed}/{name}")
        self.stats = stats
        self.delayed = []  # heap of (due, seq, frame)
        self.seq = 0
        self.held = None  # (frame, release_time) of the frame being reordered
        self.ready = collections.deque()

    def _count(self, what, n=1):
        self.stats[f"{self.name}_{what}"] += n

    def push(self, frames, now):
        """Run `frames` through the pipeline; deliverable frames land in `ready`."""
        f, rng = self.faults, self.rng
        for frame in frames:
            data = frame_copy(frame)  # held frames must not alias the sender's buffers
            gso_size = getattr(frame, "gso_size", 0)
            if f.mtu is not None and _wire_frame_len(data, gso_size) - ETH_HEADER_LEN > f.mtu:
                self._count("oversize")
                continue
            if f.loss and rng.random() < f.loss:
                self._count("lost")
                continue
            out = (_SuperFrame(data, gso_size),) if gso_size else (data,)
            if f.corrupt and rng.random() < f.corrupt and len(data):
                if gso_size:
                    out = cut_super_frame(data, gso_size)  # see the module docstring
                    if len(out) > 1:
                        self._count("cut")
                out = self._flip_one_bit(out)
                self._count("corrupted")
            copies = 1
            if f.duplicate and rng.random() < f.duplicate:
                copies = 2
                self._count("duplicated")
            for _ in range(copies):
                for piece in out:
                    self._reorder(piece, now)
        self.release(now)

    def _flip_one_bit(self, frames):
        """`frames` with one bit, drawn uniformly over all their bits, inverted."""
        out = list(frames)
        bit = self.rng.randrange(sum(len(data) for data in out) * 8)
        i = 0
        while bit >= len(out[i]) * 8:
            bit -= len(out[i]) * 8
            i += 1
        mutable = bytearray(out[i])
        mutable[bit >> 3] ^= 1 << (bit & 7)
        out[i] = bytes(mutable)
        return out

    def _reorder(self, data, now):
        f = self.faults
        if self.held is None and f.reorder and self.rng.random() < f.reorder:
            self.held = (data, now + f.reorder_timeout)
            self._count("reordered")
            return
        self._delay(data, now)
        if self.held is not None:
            held, self.held = self.held[0], None
            self._delay(held, now)

    def _delay(self, data, now):
        f = self.faults
        if not f.delay and not f.jitter:
            self.ready.append(data)
            return
        due = now + f.delay + (self.rng.random() * f.jitter if f.jitter else 0.0)
        heapq.heappush(self.delayed, (due, self.seq, data))
        self.seq += 1
        self._count("delayed")

    def release(self, now):
        """Move held frames whose time has come to `ready`."""
        if self.held is not None and self.held[1] <= now:
            held, self.held = self.held[0], None
            self._delay(held, now)
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            self.ready.append(heapq.heappop(delayed)[2])

    def next_deadline(self):
        times = [t for t in (self.held[1] if self.held else None, self.delayed[0][0] if self.delayed else None)
                 if t is not None]
        return min(times) if times else None

    def holding(self):
        return len(self.delayed) + (self.held is not None)


class FaultInjector(DeviceWrapper):
    """Wraps `inner`, applying `rx` faults to received and `tx` faults to transmitted frames.

    ``backlog`` bounds the transmit frames that passed the pipeline but that the
    inner device has not taken yet; beyond it ``tx_burst`` takes fewer frames.
    """

    def __init__(self, inner, seed, rx=NONE, tx=NONE, clock=time.monotonic, backlog=4096):
        super().__init__(inner)
        self.seed = seed
        self.stats = collections.Counter()
        self._rx = _Direction("rx", rx, seed, self.stats)
        self._tx = _Direction("tx", tx, seed, self.stats)
        self._clock = clock
        self.backlog = backlog

    def clock(self):
        return self._clock()

    def rx_burst(self, max_frames):
        d = self._rx
        now = self._clock()
        d.release(now)
        room = max_frames - len(d.ready)
        if room > 0:
            frames = self.inner.rx_burst(room)
            if frames:
                d.push(frames, now)
        ready = d.ready
        n = min(max_frames, len(ready))
        return [ready.popleft() for _ in range(n)]

    def tx_burst(self, frames):
        d = self._tx
        now = self._clock()
        room = max(0, self.backlog - len(d.ready))
        taken = frames[:room] if len(frames) > room else frames
        if taken:
            d.push(taken, now)
        else:
            d.release(now)
        ready = d.ready
        if ready:
            batch = list(ready)
            sent = self.inner.tx_burst(batch)
            for _ in range(sent):
                ready.popleft()
        return len(taken)

    def arm(self):
        if self._rx.ready or self._tx.ready:
            return False
        return self.inner.arm()

    def next_deadline(self):
        times = [t for t in (self._rx.next_deadline(), self._tx.next_deadline(), self.inner.next_deadline())
                 if t is not None]
        return min(times) if times else None

    def holding(self):
        """Frames held back in both directions (delayed, reordered or waiting for the device)."""
        return self._rx.holding() + self._tx.holding() + len(self._rx.ready) + len(self._tx.ready)
