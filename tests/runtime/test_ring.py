"""The SPSC ring: a model test against a deque, and a two-process randomized stress."""
import os
import random
import struct
from array import array
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.runtime.ring import FINAL, Segment


@pytest.fixture
def segment():
    seg = Segment.create(2, ring_bytes=256)
    yield seg
    seg.close()
    seg.unlink()


def drain(ring):
    offs, lens, flags, n = ring.pop_batch()
    out = [(bytes(ring.data[offs[i]:offs[i] + lens[i]]), flags[i]) for i in range(n)]
    ring.release()
    return out


def test_push_pop_roundtrip_keeps_flags(segment):
    ring = segment.ring(0, 1)
    assert ring.push(b"hello", FINAL)
    assert ring.push(b"", 0)
    assert drain(ring) == [(b"hello", FINAL), (b"", 0)]
    assert drain(ring) == []
    assert ring.used() == 0


def test_record_larger_than_half_the_ring_is_refused(segment):
    ring = segment.ring(0, 1)
    with pytest.raises(ValueError, match="exceeds"):
        ring.push(b"x" * (ring.max_record + 1))
    assert ring.push(b"x" * ring.max_record)


def test_full_ring_refuses_then_accepts_after_release(segment):
    ring = segment.ring(0, 1)
    pushed = 0
    while ring.push(b"y" * 40):
        pushed += 1
    assert pushed == 256 // 48
    assert not ring.push(b"y" * 40)
    assert len(drain(ring)) == pushed
    assert ring.push(b"y" * 40)


def test_rings_of_other_pairs_are_independent(segment):
    a, b = segment.ring(0, 1), segment.ring(1, 0)
    a.push(b"to one")
    b.push(b"to zero")
    assert drain(a) == [(b"to one", FINAL)]
    assert drain(b) == [(b"to zero", FINAL)]


def test_push_many_publishes_a_batch(segment):
    ring = segment.ring(0, 1)
    msgs = [b"a", b"bcd", b"", b"efghijkl"]
    lens = array("I", map(len, msgs))
    assert ring.push_many(b"".join(msgs), lens) == 4
    assert [m for m, _ in drain(ring)] == msgs


def test_bad_ring_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Segment.create(2, ring_bytes=1000)


class RingModel(RuleBasedStateMachine):
    """The ring behaves as a FIFO of byte strings whose capacity is its byte size."""

    def __init__(self):
        super().__init__()
        self.seg = Segment.create(2, ring_bytes=512)
        self.ring = self.seg.ring(0, 1)
        self.model = deque()
        self.counter = 0

    def teardown(self):
        self.ring = None
        self.seg.close()
        self.seg.unlink()

    @rule(size=st.integers(0, 248))
    def push(self, size):
        self.counter += 1
        payload = bytes([self.counter % 256]) * size
        need = 8 + (size + 7) // 8 * 8
        used = self.ring.used()
        if self.ring.push(payload):
            self.model.append(payload)
            assert self.ring.used() >= used + need
        else:
            # Refused only when it could not fit even allowing for wrap padding.
            assert 512 - used < 2 * need

    @precondition(lambda self: self.model)
    @rule()
    def pop(self):
        got = [m for m, _ in drain(self.ring)]
        expected = [self.model.popleft() for _ in range(len(got))]
        assert got == expected
        assert got, "a non-empty ring must yield records"

    @invariant()
    def empty_iff_model_empty(self):
        assert (self.ring.used() == 0) == (not self.model)


TestRingModel = RingModel.TestCase
TestRingModel.settings = settings(max_examples=60, stateful_step_count=80, deadline=None)


def _payload(i, rng_size):
    return struct.pack("<Q", i) + bytes([i % 251]) * rng_size


def _stress(count, ring_bytes, seed):
    seg = Segment.create(2, ring_bytes=ring_bytes)
    max_size = seg.ring_bytes // 2 - 16
    cpus = sorted(os.sched_getaffinity(0))
    pid = os.fork()
    if pid == 0:  # producer
        try:
            os.sched_setaffinity(0, {cpus[-1]})
            ring = seg.ring(0, 1)
            rng = random.Random(seed)
            for i in range(count):
                payload = _payload(i, rng.choice((0, 1, 7, 30, rng.randrange(max_size))))
                while not ring.push(payload):
                    os.sched_yield()
        finally:
            os._exit(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        ring = seg.ring(0, 1)
        rng = random.Random(seed)
        received = 0
        data = ring.data
        while received < count:
            offs, lens, _, n = ring.pop_batch()
            for k in range(n):
                record = data[offs[k]:offs[k] + lens[k]]
                expected = _payload(received, rng.choice((0, 1, 7, 30, rng.randrange(max_size))))
                if record != expected:
                    raise AssertionError(f"message {received}: got {bytes(record[:16])!r}... "
                                         f"({len(record)} B), expected {len(expected)} B")
                received += 1
            ring.release()
            if not n:
                os.sched_yield()
        assert ring.used() == 0
        del data, ring, record
    finally:
        os.sched_setaffinity(0, set(cpus))
        _, status = os.waitpid(pid, 0)
        seg.close()
        seg.unlink()
    assert status == 0


def test_two_process_stress_keeps_order_and_content():
    """A million messages of varied sizes through a small ring: constant wrap-around and full-ring waits."""
    _stress(1_000_000, ring_bytes=1 << 14, seed=1)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_two_process_stress_soak():
    _stress(20_000_000, ring_bytes=1 << 16, seed=2)
