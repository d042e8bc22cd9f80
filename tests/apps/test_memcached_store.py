"""One shard's cache (apps/memcached/store.py), driven by a fake clock."""
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shoal.apps.memcached.store import (
    EXISTS, ITEM_OVERHEAD, NO_MEMORY, NON_NUMERIC, NOT_FOUND, NOT_STORED, STORED, TOO_LARGE, Store,
)

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(clock):
    return Store(max_memory=1 << 20, item_size_max=1 << 16, clock=clock)


def value(store, key):
    item = store.get(key)
    return None if item is None else item.value


def test_set_get_flags(store):
    assert store.set(b"k", b"v", flags=7) == STORED
    item = store.get(b"k")
    assert (item.value, item.flags) == (b"v", 7)


def test_add_replace(store):
    assert store.replace(b"k", b"1") == NOT_STORED
    assert store.add(b"k", b"1") == STORED
    assert store.add(b"k", b"2") == NOT_STORED
    assert store.replace(b"k", b"3") == STORED
    assert value(store, b"k") == b"3"


def test_append_prepend_keep_flags_and_expiry(store, clock):
    assert store.append(b"k", b"x") == NOT_STORED
    assert store.prepend(b"k", b"x") == NOT_STORED
    store.set(b"k", b"mid", flags=3, exptime=10)
    assert store.append(b"k", b">") == STORED
    assert store.prepend(b"k", b"<") == STORED
    item = store.get(b"k")
    assert (item.value, item.flags) == (b"<mid>", 3)
    clock.advance(10)
    assert store.get(b"k") is None


def test_cas(store):
    assert store.cas(b"k", b"v", 0, 0, 1) == NOT_FOUND
    store.set(b"k", b"v")
    unique = store.get(b"k").cas
    assert store.cas(b"k", b"w", 0, 0, unique + 1) == EXISTS
    assert store.cas(b"k", b"w", 0, 0, unique) == STORED
    assert store.cas(b"k", b"z", 0, 0, unique) == EXISTS
    assert value(store, b"k") == b"w"
    counters = store.stats()
    assert (counters["cas_misses"], counters["cas_badval"], counters["cas_hits"]) == (1, 2, 1)


def test_every_modification_changes_cas(store):
    store.set(b"k", b"1")
    seen = {store.get(b"k").cas}
    for step in (lambda: store.set(b"k", b"2"), lambda: store.append(b"k", b"0"),
                 lambda: store.incr(b"k", 1), lambda: store.replace(b"k", b"5")):
        step()
        seen.add(store.get(b"k").cas)
    assert len(seen) == 5


def test_delete(store):
    assert store.delete(b"k") is False
    store.set(b"k", b"v")
    assert store.delete(b"k") is True
    assert store.get(b"k") is None


# -- expiry (protocol.txt "Expiration times") -----------------------------------------

def test_relative_expiry(store, clock):
    store.set(b"k", b"v", exptime=100)
    clock.advance(99.9)
    assert value(store, b"k") == b"v"
    clock.advance(0.1)
    assert store.get(b"k") is None
    assert store.stats()["get_expired"] == 1


def test_zero_never_expires(store, clock):
    store.set(b"k", b"v", exptime=0)
    clock.advance(10 * 365 * 86400)
    assert value(store, b"k") == b"v"


def test_thirty_days_is_still_relative(store, clock):
    store.set(b"k", b"v", exptime=30 * 86400)
    clock.advance(30 * 86400 - 1)
    assert value(store, b"k") == b"v"
    clock.advance(1)
    assert store.get(b"k") is None


def test_beyond_thirty_days_is_absolute_unix_time(store, clock):
    store.set(b"k", b"v", exptime=int(T0) + 50)
    clock.advance(49)
    assert value(store, b"k") == b"v"
    clock.advance(1)
    assert store.get(b"k") is None


def test_absolute_time_in_the_past_is_expired(store):
    assert store.set(b"k", b"v", exptime=30 * 86400 + 1) == STORED
    assert store.get(b"k") is None


def test_negative_is_immediately_expired(store):
    store.set(b"k", b"old")
    assert store.set(b"k", b"v", exptime=-1) == STORED
    assert store.get(b"k") is None
    assert store.add(b"k", b"again") == STORED


def test_add_over_expired_item_succeeds(store, clock):
    store.set(b"k", b"v", exptime=1)
    clock.advance(1)
    assert store.add(b"k", b"w") == STORED
    assert value(store, b"k") == b"w"


def test_touch_and_gat(store, clock):
    assert store.touch(b"k", 10) is False
    store.set(b"k", b"v", exptime=5)
    assert store.touch(b"k", 100) is True
    clock.advance(50)
    assert store.gat(b"k", 10).value == b"v"
    clock.advance(10)
    assert store.gat(b"k", 10) is None
    counters = store.stats()
    assert (counters["touch_hits"], counters["touch_misses"]) == (2, 2)


def test_touch_negative_expires(store):
    store.set(b"k", b"v")
    assert store.touch(b"k", -1) is True
    assert store.get(b"k") is None


# -- flush_all ------------------------------------------------------------------------

def test_flush_all_now(store):
    store.set(b"a", b"1")
    store.set(b"b", b"2")
    store.flush_all()
    assert len(store) == 0 and store.bytes == 0
    assert store.set(b"a", b"3") == STORED
    assert value(store, b"a") == b"3"


def test_flush_all_with_delay(store, clock):
    store.set(b"a", b"1")
    store.flush_all(10)
    clock.advance(9)
    store.set(b"b", b"2")
    assert value(store, b"a") == b"1"
    clock.advance(1)
    assert store.get(b"a") is None and store.get(b"b") is None
    store.set(b"c", b"3")
    clock.advance(100)
    assert value(store, b"c") == b"3"


def test_a_later_flush_replaces_a_pending_one(store, clock):
    store.set(b"a", b"1")
    store.flush_all(10)
    store.flush_all(20)
    clock.advance(15)
    assert value(store, b"a") == b"1"
    clock.advance(5)
    assert store.get(b"a") is None


def test_negative_flush_delay_flushes_now(store):
    store.set(b"a", b"1")
    store.flush_all(-1)
    assert store.get(b"a") is None


# -- incr/decr -----------------------------------------------------------------------

def test_incr_decr(store):
    assert store.incr(b"n", 1) == NOT_FOUND
    store.set(b"n", b"10", flags=4)
    assert store.incr(b"n", 5) == 15
    assert store.decr(b"n", 20) == 0
    assert store.incr(b"n", 7) == 7
    item = store.get(b"n")
    assert (item.value, item.flags) == (b"7", 4)


def test_incr_wraps_at_2_64(store):
    store.set(b"n", b"18446744073709551615")
    assert store.incr(b"n", 2) == 1


def test_incr_keeps_expiry(store, clock):
    store.set(b"n", b"1", exptime=10)
    store.incr(b"n", 1)
    clock.advance(10)
    assert store.get(b"n") is None


def test_incr_tolerates_surrounding_spaces(store):
    store.set(b"n", b" 12 ")
    assert store.incr(b"n", 1) == 13


@pytest.mark.parametrize("stored", [b"abc", b"", b"1.5", b"-1", b"18446744073709551616", b"1 2"])
def test_incr_non_numeric(store, stored):
    store.set(b"n", stored)
    assert store.incr(b"n", 1) == NON_NUMERIC
    assert store.decr(b"n", 1) == NON_NUMERIC
    assert value(store, b"n") == stored


# -- memory, limits, LRU -------------------------------------------------------------

def test_item_size_limit(clock):
    store = Store(max_memory=1 << 20, item_size_max=1000, clock=clock)
    fits = b"v" * (1000 - ITEM_OVERHEAD - 1)
    assert store.set(b"k", fits) == STORED
    assert store.set(b"k", fits + b"x") == TOO_LARGE
    assert store.get(b"k") is None  # a failed set drops the stale value
    store.set(b"k", fits)
    assert store.append(b"k", b"x") == TOO_LARGE
    assert value(store, b"k") == fits


def test_item_larger_than_budget(clock):
    store = Store(max_memory=500, item_size_max=1000, clock=clock)
    assert store.set(b"k", b"v" * 600) == NO_MEMORY


def test_lru_eviction_keeps_budget_and_recently_used(clock):
    size = ITEM_OVERHEAD + 2 + 100
    store = Store(max_memory=size * 10, clock=clock)
    for i in range(10):
        store.set(b"k%d" % i, b"v" * 100)
    assert store.bytes == size * 10
    store.get(b"k0")  # most recently used now
    store.set(b"new", b"v" * 99)
    assert store.get(b"k1") is None and value(store, b"k0") is not None
    assert store.stats()["evictions"] == 1
    assert store.stats()["evicted_unfetched"] == 1
    assert store.bytes <= store.max_memory


def test_expired_items_are_reclaimed_not_evicted(clock):
    size = ITEM_OVERHEAD + 2 + 100
    store = Store(max_memory=size * 2, clock=clock)
    store.set(b"k0", b"v" * 100, exptime=1)
    store.set(b"k1", b"v" * 100)
    clock.advance(2)
    store.set(b"k2", b"v" * 100)
    counters = store.stats()
    assert (counters["reclaimed"], counters["evictions"]) == (1, 0)


def test_stats_gauges(store):
    store.set(b"a", b"xyz")
    counters = store.stats()
    assert counters["curr_items"] == 1
    assert counters["bytes"] == ITEM_OVERHEAD + 1 + 3
    assert counters["limit_maxbytes"] == 1 << 20
    assert store.item_stats()["number"] == 1


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        Store(max_memory=0)


# -- model-based: the store behaves like a dict while memory suffices ------------------

class StoreModel(RuleBasedStateMachine):
    """Against a plain dict of key -> (value, flags, deadline), with a fake clock."""

    keys = st.sampled_from([b"a", b"b", b"c"])
    values = st.binary(max_size=8)
    exptimes = st.sampled_from([0, 0, 1, 5, -1])

    def __init__(self):
        super().__init__()
        self.clock = FakeClock()
        self.store = Store(max_memory=1 << 20, clock=self.clock)
        self.model = {}

    def _live(self, key):
        entry = self.model.get(key)
        if entry is not None and entry[2] and entry[2] <= self.clock.now:
            del self.model[key]
            entry = None
        return entry

    def _deadline(self, exptime):
        return 0 if exptime == 0 else self.clock.now + exptime if exptime > 0 else self.clock.now

    @rule(key=keys, value=values, flags=st.integers(0, 5), exptime=exptimes)
    def set(self, key, value, flags, exptime):
        assert self.store.set(key, value, flags, exptime) == STORED
        self.model[key] = (value, flags, self._deadline(exptime))

    @rule(key=keys, value=values, exptime=exptimes)
    def add(self, key, value, exptime):
        expected = NOT_STORED if self._live(key) else STORED
        assert self.store.add(key, value, 0, exptime) == expected
        if expected == STORED:
            self.model[key] = (value, 0, self._deadline(exptime))

    @rule(key=keys, value=values)
    def append(self, key, value):
        entry = self._live(key)
        assert self.store.append(key, value) == (STORED if entry else NOT_STORED)
        if entry:
            self.model[key] = (entry[0] + value, entry[1], entry[2])

    @rule(key=keys)
    def delete(self, key):
        assert self.store.delete(key) == (self._live(key) is not None)
        self.model.pop(key, None)

    @rule(key=keys, delta=st.integers(0, 2**64 - 1))
    def incr(self, key, delta):
        entry = self._live(key)
        result = self.store.incr(key, delta)
        if entry is None:
            assert result == NOT_FOUND
        elif entry[0].strip().isdigit():
            assert result == (int(entry[0]) + delta) % 2**64
            self.model[key] = (b"%d" % result, entry[1], entry[2])
        else:
            assert result == NON_NUMERIC

    @rule(key=keys, exptime=exptimes)
    def touch(self, key, exptime):
        entry = self._live(key)
        assert self.store.touch(key, exptime) == (entry is not None)
        if entry:
            self.model[key] = (entry[0], entry[1], self._deadline(exptime))

    @rule(seconds=st.sampled_from([0.5, 1, 3]))
    def tick(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def flush(self):
        self.store.flush_all()
        self.model.clear()

    @invariant()
    def agrees(self):
        for key in (b"a", b"b", b"c"):
            entry = self._live(key)
            item = self.store.get(key)
            assert (item is None) == (entry is None)
            if item is not None:
                assert (item.value, item.flags) == entry[:2]
        assert self.store.bytes == sum(ITEM_OVERHEAD + len(k) + len(it.value) for k, it in self.store._items.items())


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
