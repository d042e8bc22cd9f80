"""Key ownership and command execution across shards.

Theory of operation
-------------------
Every key has one owner shard, ``crc32(key) % count`` (:func:`owner`). CRC-32 is
stable across processes and runs (Python's ``hash()`` of bytes is salted per
process, so two shards would disagree on owners) and is computed in C by zlib.

Each shard runs one :class:`ShardCache` (a :class:`shoal.runtime.Sharded` service
instance in the server): its :class:`~.store.Store` plus this shard's connection
counters. The connection-facing side is :class:`Frontend`, one per shard, which turns
a parsed :class:`~.protocol.Request` into reply bytes:

* single-key commands run on the owner: in place when that is this shard, else
  through ``service.invoke_on(owner, ...)`` (the smp rings); the owner builds the
  reply bytes itself, so only bytes cross back;
* multi-key retrievals (get/gets/gat/gats) are split by owner, each owner answers
  its keys in their order with one call, and the blocks are gathered back in the
  order the client asked;
* flush_all runs on every shard; stats are summed over every shard by map_reduce
  (``stats shards``, shoal's addition, lists each shard's share instead).

:class:`Frontend` only needs an object with ``local()``, ``invoke_on``,
``invoke_on_all`` and ``map_reduce`` (the Sharded handle's interface), so tests can
drive it with several in-process shards.
"""
import asyncio
import os
import time
import zlib

from shoal.apps.memcached import protocol
from shoal.apps.memcached import store as store_mod
from shoal.apps.memcached.protocol import Invalid, stats_block, value_block

__all__ = ["owner", "ShardCache", "Frontend", "VERSION"]

VERSION = "1.6.0-shoal"

_REPLIES = {
    store_mod.STORED: b"STORED\r\n",
    store_mod.NOT_STORED: b"NOT_STORED\r\n",
    store_mod.EXISTS: b"EXISTS\r\n",
    store_mod.NOT_FOUND: b"NOT_FOUND\r\n",
    store_mod.TOO_LARGE: protocol.TOO_LARGE,
    store_mod.NO_MEMORY: b"SERVER_ERROR out of memory storing object\r\n",
    store_mod.NON_NUMERIC: b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
}

#: Per-shard connection counters, kept by the server; summed over shards by ``stats``.
_CONN_COUNTERS = ("curr_connections", "total_connections", "bytes_read", "bytes_written")

#: What ``stats shards`` reports per shard.
_SHARD_STATS = ("curr_items", "bytes", "limit_maxbytes", "get_hits", "get_misses", "evictions",
                "curr_connections", "total_connections")


def owner(key, count):
    """The shard that owns `key` among `count` shards (stable: CRC-32 of the key)."""
    return zlib.crc32(key) % count if count > 1 else 0


class ShardCache:
    """One shard's service: its store and its share of the connection counters.

    ``settings`` is a plain dict (it crosses to every shard when the service starts):
    ``max_memory`` (this shard's budget, bytes), ``item_size_max``, and the values
    ``stats settings`` reports. ``clock`` is injectable for tests.
    """

    def __init__(self, settings, clock=time.time):
        self.settings = dict(settings)
        self.store = store_mod.Store(max_memory=settings["max_memory"],
                                     item_size_max=settings["item_size_max"], clock=clock)
        self.clock = clock
        self.counters = dict.fromkeys(_CONN_COUNTERS, 0)
        self.verbosity = 0

    def execute(self, command, key, value, flags, exptime, cas, delta, noreply):
        """Run one single-key command on this shard's store; return the reply bytes."""
        reply = self._execute(command, key, value, flags, exptime, cas, delta)
        return b"" if noreply else reply

    def _execute(self, command, key, value, flags, exptime, cas, delta):
        store = self.store
        if command == "set":
            if value is None:
                # A too-large set still drops the stale value, as memcached does.
                store.delete(key)
                return protocol.TOO_LARGE
            return _REPLIES[store.set(key, value, flags, exptime)]
        if value is None and command in ("add", "replace", "append", "prepend", "cas"):
            return protocol.TOO_LARGE
        if command == "add":
            return _REPLIES[store.add(key, value, flags, exptime)]
        if command == "replace":
            return _REPLIES[store.replace(key, value, flags, exptime)]
        if command == "append":
            return _REPLIES[store.append(key, value)]
        if command == "prepend":
            return _REPLIES[store.prepend(key, value)]
        if command == "cas":
            return _REPLIES[store.cas(key, value, flags, exptime, cas)]
        if command == "delete":
            return b"DELETED\r\n" if store.delete(key) else b"NOT_FOUND\r\n"
        if command in ("incr", "decr"):
            result = store.incr(key, delta) if command == "incr" else store.decr(key, delta)
            return _REPLIES[result] if isinstance(result, str) else protocol.number_reply(result)
        if command == "touch":
            return b"TOUCHED\r\n" if store.touch(key, exptime) else b"NOT_FOUND\r\n"
        raise ValueError(f"not a single-key command: {command!r}")

    def fetch(self, command, keys, exptime):
        """VALUE blocks for the keys this shard owns, in the given order (b"" for a miss)."""
        store = self.store
        with_cas = command in ("gets", "gats")
        touch = command in ("gat", "gats")
        out = []
        for key in keys:
            item = store.gat(key, exptime) if touch else store.get(key)
            if item is None:
                out.append(b"")
            else:
                out.append(value_block(key, item.flags, item.value, item.cas if with_cas else None))
        return out

    def flush_all(self, delay):
        self.store.flush_all(delay)

    def set_verbosity(self, level):
        self.verbosity = level

    def stats(self):
        """This shard's counters (summable) for ``stats``."""
        out = self.store.stats()
        for name in _CONN_COUNTERS:
            out[name] = self.counters[name]
        return out

    def item_stats(self):
        return self.store.item_stats()

    def reset_stats(self):
        self.store.reset_counters()
        for name in _CONN_COUNTERS:
            if name != "curr_connections":
                self.counters[name] = 0


def _sum_dicts(acc, more):
    return {k: acc.get(k, 0) + more.get(k, 0) for k in acc.keys() | more.keys()}


def _sum_items(acc, more):
    merged = _sum_dicts(acc, more)
    merged["age"] = max(acc["age"], more["age"])
    return merged


class Frontend:
    """Executes parsed requests for the connections of one shard (see module docstring).

    `service` is the Sharded handle of :class:`ShardCache` (or a test double with the
    same four methods), `count` the number of shards and `shard` this shard's id.
    """

    def __init__(self, service, count, shard, *, clock=time.time, started=None):
        self.service = service
        self.count = count
        self.shard = shard
        self.clock = clock
        self.started = clock() if started is None else started
        self.local = service.local()

    async def handle(self, event):
        """The reply bytes for one parser event (empty when nothing is to be sent)."""
        if isinstance(event, Invalid):
            return event.reply
        command = event.command
        if command in ("get", "gets", "gat", "gats"):
            return await self._retrieve(event)
        if command == "flush_all":
            await self.service.invoke_on_all("flush_all", event.exptime)
            return b"" if event.noreply else b"OK\r\n"
        if command == "stats":
            return await self._stats(event.arg)
        if command == "version":
            return b"VERSION %s\r\n" % VERSION.encode()
        if command == "verbosity":
            await self.service.invoke_on_all("set_verbosity", event.arg)
            return b"" if event.noreply else b"OK\r\n"
        if command == "quit":
            return b""
        key = event.keys[0]
        args = (command, key, event.value, event.flags, event.exptime, event.cas, event.delta, event.noreply)
        where = owner(key, self.count)
        if where == self.shard:
            return self.local.execute(*args)
        return await self.service.invoke_on(where, "execute", *args)

    async def _retrieve(self, event):
        keys = event.keys
        command, exptime = event.command, event.exptime
        if self.count == 1:
            blocks = self.local.fetch(command, keys, exptime)
            return b"".join(blocks) + b"END\r\n"
        groups = {}
        for index, key in enumerate(keys):
            groups.setdefault(owner(key, self.count), []).append(index)
        blocks = [b""] * len(keys)
        remote = [s for s in groups if s != self.shard]
        results = await asyncio.gather(*(
            self.service.invoke_on(s, "fetch", command, [keys[i] for i in groups[s]], exptime) for s in remote))
        for s, answer in zip(remote, results):
            for index, block in zip(groups[s], answer):
                blocks[index] = block
        if self.shard in groups:
            indices = groups[self.shard]
            for index, block in zip(indices, self.local.fetch(command, [keys[i] for i in indices], exptime)):
                blocks[index] = block
        return b"".join(blocks) + b"END\r\n"

    async def _stats(self, group):
        if group is None:
            totals = await self.service.map_reduce("stats", reduce=_sum_dicts)
            return stats_block(self._general(totals))
        if group == "settings":
            return stats_block(self._settings())
        if group == "items":
            items = await self.service.map_reduce("item_stats", reduce=_sum_items)
            return stats_block((f"items:1:{name}", value) for name, value in items.items())
        if group == "reset":
            await self.service.invoke_on_all("reset_stats")
            return b"RESET\r\n"
        if group == "shards":
            # shoal's own group: each shard's share, to see how keys spread.
            per_shard = await self.service.invoke_on_all("stats")
            return stats_block((f"shard:{shard}:{name}", counters[name])
                               for shard, counters in enumerate(per_shard) for name in _SHARD_STATS)
        if group == "slabs":
            totals = await self.service.map_reduce("stats", reduce=_sum_dicts)
            return stats_block(self._slabs(totals))
        return protocol.ERROR

    def _general(self, totals):
        """protocol.txt "General-purpose statistics", in memcached's order."""
        now = self.clock()
        pairs = [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(now)),
            ("version", VERSION),
            ("pointer_size", 64),
            ("threads", self.count),
        ]
        order = ("curr_connections", "total_connections", "cmd_get", "cmd_set", "cmd_flush", "cmd_touch",
                 "get_hits", "get_misses", "get_expired", "get_flushed", "delete_misses", "delete_hits",
                 "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses", "cas_hits",
                 "cas_badval", "touch_hits", "touch_misses", "bytes_read", "bytes_written",
                 "limit_maxbytes", "bytes", "curr_items", "total_items", "expired_unfetched",
                 "evicted_unfetched", "evictions", "reclaimed")
        # cmd_flush is counted once per shard that applied it; report client commands.
        totals = dict(totals)
        totals["cmd_flush"] = totals.get("cmd_flush", 0) // max(self.count, 1)
        pairs += [(name, totals.get(name, 0)) for name in order]
        return pairs

    def _settings(self):
        settings = self.local.settings
        return [
            ("maxbytes", settings["max_memory"] * self.count),
            ("maxconns", settings.get("maxconns", 1024)),
            ("tcpport", settings.get("tcpport", 0)),
            ("udpport", settings.get("udpport", 0)),
            ("verbosity", self.local.verbosity),
            ("evictions", "on"),
            ("item_size_max", settings["item_size_max"]),
            ("num_threads", self.count),
            ("cas_enabled", "yes"),
            ("binding_protocol", "ascii"),
        ]

    def _slabs(self, totals):
        """``stats slabs`` for the single item class this cache has."""
        return [
            ("1:chunk_size", store_mod.ITEM_OVERHEAD),
            ("1:used_chunks", totals.get("curr_items", 0)),
            ("1:mem_requested", totals.get("bytes", 0)),
            ("active_slabs", 1 if totals.get("curr_items", 0) else 0),
            ("total_malloced", totals.get("bytes", 0)),
        ]
