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

Frames held here are reported through ``next_deadline()`` so a sleeping reactor
wakes for them, and received frames already released but not yet returned (more
than ``max_frames`` at once) make ``arm()`` refuse to sleep. Counters are in
``stats``, keyed ``"<direction>_<fault>"`` (``rx_lost``, ``tx_duplicated``...).
"""
import collections
import heapq
import random
import time
from dataclasses import dataclass

from shoal.drivers.base import ETH_HEADER_LEN, DeviceWrapper, frame_bytes


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
            data = bytes(frame_bytes(frame))  # held frames must not alias the sender's buffers
            if f.mtu is not None and len(data) - ETH_HEADER_LEN > f.mtu:
                self._count("oversize")
                continue
            if f.loss and rng.random() < f.loss:
                self._count("lost")
                continue
            if f.corrupt and rng.random() < f.corrupt and len(data):
                bit = rng.randrange(len(data) * 8)
                mutable = bytearray(data)
                mutable[bit >> 3] ^= 1 << (bit & 7)
                data = bytes(mutable)
                self._count("corrupted")
            copies = 1
            if f.duplicate and rng.random() < f.duplicate:
                copies = 2
                self._count("duplicated")
            for _ in range(copies):
                self._reorder(data, now)
        self.release(now)

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
