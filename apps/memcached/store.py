"""One shard's cache: items, memory budget, LRU eviction, expiry, cas ids, counters.

Theory of operation
-------------------
Items live in one ``OrderedDict`` in least- to most-recently-used order: a hit moves
the item to the end, eviction pops from the front. Each item is charged
``ITEM_OVERHEAD + len(key) + len(value)`` bytes against the shard's ``max_memory``
(the overhead stands for memcached's item header and slab rounding). Storing an item
first evicts from the LRU end until it fits; an expired item found there is
*reclaimed* (counted apart from evictions, as memcached does).

Expiry (protocol.txt "Expiration times"): ``exptime`` 0 never expires; up to 30 days
(2592000 s) it is relative to now; beyond that it is an absolute unix time; a negative
value means "already expired". An item is expired once ``now >= deadline``. Expired
items are dropped lazily, when a command touches them or when the LRU end is reached.

``flush_all <delay>`` invalidates every item that exists when the delay runs out.
Since every command first applies a due flush, all items present at that moment were
stored before the flush time, so a due flush simply empties the cache.

The clock is injected (``clock()`` -> unix seconds as float), so tests drive time.
Cas unique ids come from a per-shard counter: a key always lives on one shard, so a
per-shard sequence is unique per key, which is all ``cas`` needs.
"""
import time
from collections import OrderedDict

from shoal.apps.memcached.protocol import REALTIME_MAXDELTA, UINT64_MAX

__all__ = ["Store", "Item", "ITEM_OVERHEAD", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND",
           "TOO_LARGE", "NO_MEMORY", "NON_NUMERIC"]

#: Bytes charged per item on top of key and value (memcached's item header is ~48 B).
ITEM_OVERHEAD = 48

# Outcomes of the storage commands (protocol.txt "Storage commands" replies) and of
# refusals that map to SERVER_ERROR / CLIENT_ERROR lines.
STORED = "STORED"
NOT_STORED = "NOT_STORED"
EXISTS = "EXISTS"
NOT_FOUND = "NOT_FOUND"
TOO_LARGE = "TOO_LARGE"
NO_MEMORY = "NO_MEMORY"
NON_NUMERIC = "NON_NUMERIC"

_COUNTERS = (
    "cmd_get", "cmd_set", "cmd_touch", "get_hits", "get_misses", "get_expired", "get_flushed",
    "delete_hits", "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses",
    "cas_hits", "cas_misses", "cas_badval", "touch_hits", "touch_misses", "total_items",
    "evictions", "reclaimed", "expired_unfetched", "evicted_unfetched", "cmd_flush",
)


class Item:
    """A cached value with its client flags, expiry deadline (0 = never) and cas id."""

    __slots__ = ("value", "flags", "deadline", "cas", "size", "fetched", "stored_at")

    def __init__(self, value, flags, deadline, cas, size, stored_at):
        self.value = value
        self.flags = flags
        self.deadline = deadline
        self.cas = cas
        self.size = size
        self.fetched = False
        self.stored_at = stored_at


def deadline_of(exptime, now):
    """The absolute expiry time for a protocol ``exptime`` (0 = never).

    protocol.txt "Expiration times": 0 is never; up to 30 days relative to now;
    beyond, an absolute unix time; negative: immediately expired.
    """
    if exptime == 0:
        return 0
    if exptime < 0:
        return now
    if exptime > REALTIME_MAXDELTA:
        return float(exptime)
    return now + exptime


class Store:
    """One shard's share of the cache (see the module docstring)."""

    def __init__(self, *, max_memory, item_size_max=1024 * 1024, clock=time.time):
        if max_memory <= 0:
            raise ValueError(f"max_memory must be positive, not {max_memory}")
        self.max_memory = max_memory
        self.item_size_max = item_size_max
        self.clock = clock
        self.started = clock()
        self.bytes = 0
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._items = OrderedDict()
        self._next_cas = 0
        self._flush_at = 0

    def __len__(self):
        self._apply_flush(self.clock())
        return len(self._items)

    def __contains__(self, key):
        return self._live(key, self.clock()) is not None

    # -- internals -------------------------------------------------------------------

    def _apply_flush(self, now):
        if self._flush_at and now >= self._flush_at:
            self._flush_at = 0
            self._items.clear()
            self.bytes = 0

    def _live(self, key, now):
        """The item under `key` if present and not expired; drops an expired one."""
        self._apply_flush(now)
        item = self._items.get(key)
        if item is None:
            return None
        if item.deadline and item.deadline <= now:
            self._unlink(key, item)
            if not item.fetched:
                self.counters["expired_unfetched"] += 1
            return None
        return item

    def _unlink(self, key, item):
        del self._items[key]
        self.bytes -= item.size

    def _cas_id(self):
        self._next_cas += 1
        return self._next_cas

    def _size_check(self, key, value):
        """(size, None) when an item fits the limits, else (size, TOO_LARGE | NO_MEMORY)."""
        size = ITEM_OVERHEAD + len(key) + len(value)
        if size > self.item_size_max:
            return size, TOO_LARGE
        if size > self.max_memory:
            return size, NO_MEMORY
        return size, None

    def _make_room(self, size, now):
        """Evict from the LRU end until `size` more bytes fit the budget."""
        items = self._items
        while self.bytes + size > self.max_memory and items:
            key, item = items.popitem(last=False)
            self.bytes -= item.size
            if item.deadline and item.deadline <= now:
                self.counters["reclaimed"] += 1
                if not item.fetched:
                    self.counters["expired_unfetched"] += 1
            else:
                self.counters["evictions"] += 1
                if not item.fetched:
                    self.counters["evicted_unfetched"] += 1

    def _link(self, key, value, flags, deadline, now):
        """Insert a new item (the old one, if any, already unlinked)."""
        size, refusal = self._size_check(key, value)
        if refusal is not None:
            return refusal
        self._make_room(size, now)
        self._items[key] = Item(value, flags, deadline, self._cas_id(), size, now)
        self.bytes += size
        self.counters["total_items"] += 1
        return STORED

    def _replace(self, key, old, value, flags, deadline, now):
        size, refusal = self._size_check(key, value)
        if refusal is not None:
            return refusal
        if old is not None:
            self._unlink(key, old)
        return self._link(key, value, flags, deadline, now)

    # -- retrieval ---------------------------------------------------------------------

    def get(self, key):
        """The live item or None; a hit becomes most recently used."""
        now = self.clock()
        self.counters["cmd_get"] += 1
        had = key in self._items
        item = self._live(key, now)
        if item is None:
            self.counters["get_misses"] += 1
            if had:
                self.counters["get_expired"] += 1
            return None
        self.counters["get_hits"] += 1
        item.fetched = True
        self._items.move_to_end(key)
        return item

    def gat(self, key, exptime):
        """protocol.txt "Get And Touch": get the item and set its new expiry."""
        now = self.clock()
        self.counters["cmd_touch"] += 1
        self.counters["cmd_get"] += 1
        item = self._live(key, now)
        if item is None:
            self.counters["touch_misses"] += 1
            self.counters["get_misses"] += 1
            return None
        self.counters["touch_hits"] += 1
        self.counters["get_hits"] += 1
        item.deadline = deadline_of(exptime, now)
        item.fetched = True
        self._items.move_to_end(key)
        return item

    def touch(self, key, exptime):
        """protocol.txt "Touch": set a new expiry; True if the item exists."""
        now = self.clock()
        self.counters["cmd_touch"] += 1
        item = self._live(key, now)
        if item is None:
            self.counters["touch_misses"] += 1
            return False
        self.counters["touch_hits"] += 1
        item.deadline = deadline_of(exptime, now)
        self._items.move_to_end(key)
        return True

    # -- storage -----------------------------------------------------------------------

    def set(self, key, value, flags=0, exptime=0):
        """protocol.txt "set": store unconditionally."""
        now = self.clock()
        self.counters["cmd_set"] += 1
        old = self._live(key, now)
        result = self._replace(key, old, value, flags, deadline_of(exptime, now), now)
        if result != STORED and old is not None:
            # memcached drops the stale value when a set cannot be honoured.
            self._unlink(key, old)
        return result

    def add(self, key, value, flags=0, exptime=0):
        """protocol.txt "add": store only if the key holds no live item."""
        now = self.clock()
        self.counters["cmd_set"] += 1
        old = self._live(key, now)
        if old is not None:
            # memcached bumps the existing item in the LRU on a failed add.
            self._items.move_to_end(key)
            return NOT_STORED
        return self._link(key, value, flags, deadline_of(exptime, now), now)

    def replace(self, key, value, flags=0, exptime=0):
        """protocol.txt "replace": store only if the key holds a live item."""
        now = self.clock()
        self.counters["cmd_set"] += 1
        old = self._live(key, now)
        if old is None:
            return NOT_STORED
        return self._replace(key, old, value, flags, deadline_of(exptime, now), now)

    def append(self, key, value):
        """protocol.txt "append": add data after the existing value; flags and
        expiry of the existing item are kept."""
        return self._concat(key, value, after=True)

    def prepend(self, key, value):
        """protocol.txt "prepend": add data before the existing value."""
        return self._concat(key, value, after=False)

    def _concat(self, key, value, after):
        now = self.clock()
        self.counters["cmd_set"] += 1
        old = self._live(key, now)
        if old is None:
            return NOT_STORED
        joined = old.value + value if after else value + old.value
        return self._replace(key, old, joined, old.flags, old.deadline, now)

    def cas(self, key, value, flags, exptime, unique):
        """protocol.txt "cas": store only if the item's cas id is still `unique`."""
        now = self.clock()
        self.counters["cmd_set"] += 1
        old = self._live(key, now)
        if old is None:
            self.counters["cas_misses"] += 1
            return NOT_FOUND
        if old.cas != unique:
            self.counters["cas_badval"] += 1
            return EXISTS
        self.counters["cas_hits"] += 1
        return self._replace(key, old, value, flags, deadline_of(exptime, now), now)

    # -- other commands ----------------------------------------------------------------

    def delete(self, key):
        """protocol.txt "Deletion": True if an item was removed."""
        item = self._live(key, self.clock())
        if item is None:
            self.counters["delete_misses"] += 1
            return False
        self.counters["delete_hits"] += 1
        self._unlink(key, item)
        return True

    def incr(self, key, delta):
        """protocol.txt "Increment/Decrement": add `delta`, wrapping at 2**64.

        Returns the new value, NOT_FOUND, or NON_NUMERIC when the stored value is not
        a decimal 64-bit number (surrounding whitespace allowed, as strtoull does).
        """
        return self._arith(key, delta, incr=True)

    def decr(self, key, delta):
        """protocol.txt: decrementing below 0 yields 0 (no underflow wrap)."""
        return self._arith(key, delta, incr=False)

    def _arith(self, key, delta, incr):
        now = self.clock()
        name = "incr" if incr else "decr"
        item = self._live(key, now)
        if item is None:
            self.counters[name + "_misses"] += 1
            return NOT_FOUND
        digits = item.value.strip()
        if not digits.isdigit() or len(digits) > 20 or int(digits) > UINT64_MAX:
            return NON_NUMERIC
        self.counters[name + "_hits"] += 1
        current = int(digits)
        result = (current + delta) & UINT64_MAX if incr else max(current - delta, 0)
        value = b"%d" % result
        stored = self._replace(key, item, value, item.flags, item.deadline, now)
        if stored != STORED:
            return stored
        return result

    def flush_all(self, delay=0):
        """protocol.txt "flush_all": invalidate all items now, or when `delay` runs out
        (the delay follows the exptime rules: beyond 30 days it is a unix time)."""
        now = self.clock()
        self.counters["cmd_flush"] += 1
        if delay <= 0:
            self._flush_at = 0
            self._items.clear()
            self.bytes = 0
            return
        self._flush_at = deadline_of(delay, now)
        self._apply_flush(now)

    # -- statistics --------------------------------------------------------------------

    def stats(self):
        """Counters plus gauges, as a dict of name -> int (summable across shards)."""
        self._apply_flush(self.clock())
        out = dict(self.counters)
        out["curr_items"] = len(self._items)
        out["bytes"] = self.bytes
        out["limit_maxbytes"] = self.max_memory
        return out

    def reset_counters(self):
        """``stats reset``: zero the counters (the gauges describe the cache and stay)."""
        self.counters = dict.fromkeys(_COUNTERS, 0)

    def item_stats(self):
        """What ``stats items`` reports for the single item class: count, seconds since
        the least recently used item was stored, evictions."""
        now = self.clock()
        self._apply_flush(now)
        oldest = next(iter(self._items.values()), None)
        return {
            "number": len(self._items),
            "age": int(now - oldest.stored_at) if oldest is not None else 0,
            "evicted": self.counters["evictions"],
            "reclaimed": self.counters["reclaimed"],
            "mem_requested": self.bytes,
        }
