"""Key ownership and cross-shard execution (apps/memcached/sharding.py).

Several shards live in one process here: a fake Sharded handle holds one
ShardCache per shard and pickles every argument and result of a cross-shard call,
as the smp rings do, and records which calls crossed shards.
"""
import asyncio
import pickle
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from shoal.apps.memcached.protocol import Parser
from shoal.apps.memcached.sharding import VERSION, Frontend, ShardCache, owner

T0 = 1_700_000_000.0
SETTINGS = {"max_memory": 1 << 20, "item_size_max": 1 << 16, "tcpport": 11211}


class FakeClock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


class FakeSharded:
    """The four methods of shoal.runtime.Sharded over in-process instances."""

    def __init__(self, count, clock):
        self.instances = [ShardCache(SETTINGS, clock=clock) for _ in range(count)]
        self.current = 0
        self.crossed = []   # (from, to, method) of every call through the "rings"

    def local(self):
        return self.instances[self.current]

    async def invoke_on(self, shard, method, *args):
        args = pickle.loads(pickle.dumps(args))
        if shard != self.current:
            self.crossed.append((self.current, shard, method))
        await asyncio.sleep(0)  # a real cross-shard call always yields
        result = getattr(self.instances[shard], method)(*args)
        return pickle.loads(pickle.dumps(result))

    async def invoke_on_all(self, method, *args):
        return [await self.invoke_on(s, method, *args) for s in range(len(self.instances))]

    async def map_reduce(self, method, *args, reduce):
        results = await self.invoke_on_all(method, *args)
        acc = results[0]
        for more in results[1:]:
            acc = reduce(acc, more)
        return acc


class Shards:
    def __init__(self, count):
        self.clock = FakeClock()
        self.service = FakeSharded(count, self.clock)
        self.frontends = []
        for shard in range(count):
            self.service.current = shard
            self.frontends.append(Frontend(self.service, count, shard, clock=self.clock))

    def store(self, shard):
        return self.service.instances[shard].store

    def request(self, data, on=0):
        """Feed `data` to a parser and run its events on shard `on`; the reply bytes."""
        parser = Parser(item_size_max=SETTINGS["item_size_max"])
        parser.feed(data)
        self.service.current = on

        async def go():
            return b"".join([await self.frontends[on].handle(e) for e in parser.events()])
        return asyncio.run(go())


def test_owner_is_crc32_and_stable():
    assert owner(b"foo", 2) == zlib.crc32(b"foo") % 2 == 1
    assert owner(b"anything", 1) == 0
    counts = [0, 0, 0]
    for i in range(3000):
        counts[owner(b"key:%d" % i, 3)] += 1
    assert min(counts) > 800  # spread over every shard


def keys_of(shard, count, n):
    out, i = [], 0
    while len(out) < n:
        key = b"k%d" % i
        if owner(key, count) == shard:
            out.append(key)
        i += 1
    return out


def test_single_key_commands_run_on_the_owner():
    shards = Shards(2)
    remote = keys_of(1, 2, 1)[0]
    assert shards.request(b"set %s 5 0 2\r\nhi\r\n" % remote, on=0) == b"STORED\r\n"
    assert remote in shards.store(1) and remote not in shards.store(0)
    assert shards.service.crossed == [(0, 1, "execute")]
    assert shards.request(b"get %s\r\n" % remote, on=1) == b"VALUE %s 5 2\r\nhi\r\nEND\r\n" % remote
    assert shards.service.crossed == [(0, 1, "execute")]  # the owner answered locally


def test_every_single_key_command_crosses_shards():
    shards = Shards(2)
    key = keys_of(1, 2, 1)[0]
    script = [
        (b"add %s 0 0 1\r\n5\r\n", b"STORED\r\n"),
        (b"replace %s 0 0 1\r\n6\r\n", b"STORED\r\n"),
        (b"append %s 0 0 1\r\n0\r\n", b"STORED\r\n"),
        (b"prepend %s 0 0 1\r\n1\r\n", b"STORED\r\n"),
        (b"incr %s 5\r\n", b"165\r\n"),
        (b"decr %s 200\r\n", b"0\r\n"),
        (b"touch %s 100\r\n", b"TOUCHED\r\n"),
        (b"cas %s 0 0 1 999\r\nx\r\n", b"EXISTS\r\n"),
        (b"delete %s\r\n", b"DELETED\r\n"),
        (b"delete %s\r\n", b"NOT_FOUND\r\n"),
        (b"incr %s 1\r\n", b"NOT_FOUND\r\n"),
    ]
    for line, reply in script:
        assert shards.request(line.replace(b"%s", key), on=0) == reply, line
    assert len(shards.service.crossed) == len(script)


def test_gets_then_cas_across_shards():
    shards = Shards(2)
    key = keys_of(1, 2, 1)[0]
    shards.request(b"set %s 0 0 1\r\na\r\n" % key, on=0)
    reply = shards.request(b"gets %s\r\n" % key, on=0)
    unique = int(reply.split(b"\r\n")[0].split()[-1])
    assert shards.request(b"cas %s 0 0 1 %d\r\nb\r\n" % (key, unique), on=0) == b"STORED\r\n"
    assert shards.request(b"cas %s 0 0 1 %d\r\nc\r\n" % (key, unique), on=0) == b"EXISTS\r\n"


def test_multi_get_is_split_per_owner_and_gathered_in_order():
    shards = Shards(3)
    keys = [k for trio in zip(*(keys_of(s, 3, 3) for s in range(3))) for k in trio]
    for key in keys[::2]:
        shards.request(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(key), key), on=0)
    shards.service.crossed.clear()
    reply = shards.request(b"get " + b" ".join(keys) + b" " + keys[0] + b"\r\n", on=1)
    expected = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(k), k) for k in keys[::2] + [keys[0]])
    assert reply == expected + b"END\r\n"
    # one fetch per remote owner, none for the local one
    assert sorted(shards.service.crossed) == [(1, 0, "fetch"), (1, 2, "fetch")]


def test_gat_and_gats_touch_on_the_owner():
    shards = Shards(2)
    key = keys_of(1, 2, 1)[0]
    shards.request(b"set %s 3 10 1\r\nv\r\n" % key, on=0)
    reply = shards.request(b"gats 100 %s\r\n" % key, on=0)
    assert reply.startswith(b"VALUE %s 3 1 " % key) and reply.endswith(b"\r\nv\r\nEND\r\n")
    shards.clock.now += 50
    assert shards.request(b"gat 0 %s\r\n" % key, on=0) == b"VALUE %s 3 1\r\nv\r\nEND\r\n" % key


def test_flush_all_reaches_every_shard():
    shards = Shards(2)
    for shard in range(2):
        key = keys_of(shard, 2, 1)[0]
        shards.request(b"set %s 0 0 1\r\nv\r\n" % key, on=0)
    assert shards.request(b"flush_all\r\n", on=1) == b"OK\r\n"
    assert len(shards.store(0)) == len(shards.store(1)) == 0
    assert shards.request(b"flush_all 0 noreply\r\n") == b""


def test_delayed_flush_all_on_every_shard():
    shards = Shards(2)
    keys = [keys_of(s, 2, 1)[0] for s in range(2)]
    for key in keys:
        shards.request(b"set %s 0 0 1\r\nv\r\n" % key)
    shards.request(b"flush_all 10\r\n")
    assert shards.request(b"get %s %s\r\n" % tuple(keys)).count(b"VALUE") == 2
    shards.clock.now += 10
    assert shards.request(b"get %s %s\r\n" % tuple(keys)) == b"END\r\n"


def test_stats_are_summed_over_shards():
    shards = Shards(2)
    keys = [keys_of(s, 2, 1)[0] for s in range(2)]
    for key in keys:
        shards.request(b"set %s 0 0 1\r\nv\r\n" % key)
    shards.request(b"get %s %s nope\r\n" % tuple(keys))
    shards.service.instances[1].counters["total_connections"] = 3
    lines = shards.request(b"stats\r\n").split(b"\r\n")
    stats = dict(line.split(b" ")[1:] for line in lines if line.startswith(b"STAT "))
    assert stats[b"curr_items"] == b"2"
    assert stats[b"get_hits"] == b"2" and stats[b"get_misses"] == b"1" and stats[b"cmd_get"] == b"3"
    assert stats[b"total_connections"] == b"3"
    assert stats[b"threads"] == b"2"
    assert stats[b"version"] == VERSION.encode()
    assert stats[b"limit_maxbytes"] == b"%d" % (2 * SETTINGS["max_memory"])
    assert lines[-2] == b"END"


@pytest.mark.parametrize("group,expect", [
    (b"settings", b"STAT item_size_max 65536\r\n"),
    (b"items", b"STAT items:1:number 1\r\n"),
    (b"slabs", b"STAT active_slabs 1\r\n"),
    (b"shards", b"STAT shard:0:curr_items 0\r\nSTAT shard:0:bytes 0\r\n"),
])
def test_stats_groups(group, expect):
    shards = Shards(2)
    assert owner(b"a", 2) == 1
    shards.request(b"set a 0 0 1\r\nv\r\n")
    reply = shards.request(b"stats %s\r\n" % group)
    assert expect in reply and reply.endswith(b"END\r\n")


def test_stats_unknown_group_and_other_commands():
    shards = Shards(2)
    assert shards.request(b"stats nonsense\r\n") == b"ERROR\r\n"
    assert shards.request(b"version\r\n") == b"VERSION %s\r\n" % VERSION.encode()
    assert shards.request(b"verbosity 2\r\n") == b"OK\r\n"
    assert all(inst.verbosity == 2 for inst in shards.service.instances)
    assert shards.request(b"verbosity 1 noreply\r\n") == b""


def test_stats_reset_zeroes_counters_on_every_shard():
    shards = Shards(2)
    keys = [keys_of(s, 2, 1)[0] for s in range(2)]
    shards.request(b"get %s %s\r\n" % tuple(keys))
    shards.service.instances[1].counters["bytes_read"] = 10
    assert shards.request(b"stats reset\r\n") == b"RESET\r\n"
    assert all(inst.store.counters["get_misses"] == 0 and inst.counters["bytes_read"] == 0
               for inst in shards.service.instances)


def test_noreply_executes_silently():
    shards = Shards(2)
    key = keys_of(1, 2, 1)[0]
    assert shards.request(b"set %s 0 0 1 noreply\r\nv\r\n" % key) == b""
    assert key in shards.store(1)
    assert shards.request(b"delete %s noreply\r\n" % key) == b""
    assert key not in shards.store(1)


def test_oversized_set_answers_and_drops_the_stale_value():
    shards = Shards(2)
    key = keys_of(1, 2, 1)[0]
    shards.request(b"set %s 0 0 1\r\nv\r\n" % key)
    big = b"x" * (SETTINGS["item_size_max"] + 1)
    reply = shards.request(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key, len(big), big, key))
    assert reply == b"SERVER_ERROR object too large for cache\r\nEND\r\n"
    assert shards.request(b"add %s 0 0 %d\r\n%s\r\n" % (key, len(big), big)) == \
        b"SERVER_ERROR object too large for cache\r\n"


def test_non_numeric_incr():
    shards = Shards(1)
    shards.request(b"set a 0 0 1\r\nx\r\n")
    assert shards.request(b"incr a 1\r\n") == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


def test_errors_pass_through():
    shards = Shards(1)
    assert shards.request(b"bogus\r\nget\r\n") == b"ERROR\r\nERROR\r\n"


# -- property: N shards answer exactly as one shard does -----------------------------
_pkeys = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"])


@st.composite
def _line(draw):
    key = draw(_pkeys)
    value = draw(st.sampled_from([b"1", b"42", b"x", b"", b"18446744073709551615"]))
    return draw(st.sampled_from([
        b"set %s 1 0 %d\r\n%s\r\n" % (key, len(value), value),
        b"add %s 2 0 %d\r\n%s\r\n" % (key, len(value), value),
        b"replace %s 3 0 %d\r\n%s\r\n" % (key, len(value), value),
        b"append %s 0 0 %d\r\n%s\r\n" % (key, len(value), value),
        b"prepend %s 0 0 %d noreply\r\n%s\r\n" % (key, len(value), value),
        b"delete %s\r\n" % key,
        b"incr %s 7\r\n" % key,
        b"decr %s 3\r\n" % key,
        b"touch %s -1\r\n" % key,
        b"get " + b" ".join(draw(st.lists(_pkeys, min_size=1, max_size=6))) + b"\r\n",
        b"gat 100 " + b" ".join(draw(st.lists(_pkeys, min_size=1, max_size=6))) + b"\r\n",
        b"flush_all\r\n",
        b"bogus\r\n",
    ]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_line(), st.integers(0, 2)), max_size=25))
def test_three_shards_answer_like_one(script):
    one, three = Shards(1), Shards(3)
    for line, on in script:
        assert three.request(line, on=on) == one.request(line), line
