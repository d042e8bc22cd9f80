"""submit_to, invoke_on_all and map_reduce across real shard processes."""
import asyncio
import hashlib
import operator
import os

import pytest

from shoal.runtime import run, smp
from shoal.runtime.smp import RemoteError

TWO_SHARDS = dict(smp=2, argv=["--overprovisioned"])


class Unpicklable(Exception):
    def __init__(self, a, b):  # the default pickling of exceptions calls cls(*args): this breaks it
        super().__init__(f"{a}/{b}")


def whoami():
    return smp.this_shard(), os.getpid()


def add(a, b=0):
    return a + b


async def slow_double(x):
    await asyncio.sleep(0.001)
    return 2 * x


def fail(message):
    raise KeyError(message)


def fail_unpicklable():
    raise Unpicklable(1, 2)


def digest(blob):
    return hashlib.sha256(blob).hexdigest(), len(blob)


def make_blob(size):
    return os.urandom(size)


def test_outside_a_shard_there_is_no_shard_id():
    with pytest.raises(RuntimeError, match="not running on a shoal shard"):
        smp.this_shard()
    assert smp.count == 0


def test_single_shard_runs_main_and_calls_locally():
    async def main():
        return smp.count, smp.this_shard(), await smp.submit_to(0, add, 2, b=3), await smp.invoke_on_all(whoami)

    count, shard, total, everyone = run(main, smp=1)
    assert (count, shard, total) == (1, 0, 5)
    assert everyone[0][0] == 0 and everyone[0][1] != os.getpid()


def test_submit_to_runs_on_the_other_shard_and_returns_results():
    async def main():
        here = whoami()
        there = await smp.submit_to(1, whoami)
        return here, there, await smp.submit_to(1, add, 40, b=2), await smp.submit_to(1, slow_double, 21)

    here, there, total, doubled = run(main, **TWO_SHARDS)
    assert here[0] == 0 and there[0] == 1 and here[1] != there[1]
    assert total == 42 and doubled == 42


def test_exceptions_come_back_with_type_message_and_remote_traceback():
    async def main():
        caught = []
        try:
            await smp.submit_to(1, fail, "missing thing")
        except KeyError as exc:
            caught.append((type(exc).__name__, str(exc), "".join(getattr(exc, "__notes__", []))))
        try:
            await smp.submit_to(1, fail_unpicklable)
        except RemoteError as exc:
            caught.append((type(exc).__name__, str(exc), ""))
        try:
            await smp.submit_to(1, lambda: 1)
        except Exception as exc:  # a lambda cannot be pickled: refused at the caller
            caught.append((type(exc).__name__, "", ""))
        return caught

    (kind, message, notes), (kind2, message2, _), (kind3, _, _) = run(main, **TWO_SHARDS)
    assert kind == "KeyError" and "missing thing" in message
    assert "raised on shard 1" in notes and "in fail" in notes
    assert kind2 == "RemoteError" and "Unpicklable: 1/2" in message2
    assert kind3 in ("PicklingError", "AttributeError")


def test_bad_shard_number_is_refused():
    async def main():
        with pytest.raises(ValueError, match="no shard 5"):
            await smp.submit_to(5, whoami)
        return True

    assert run(main, **TWO_SHARDS)


def test_invoke_on_all_and_map_reduce_cover_every_shard():
    async def main():
        ids = [s for s, _ in await smp.invoke_on_all(whoami)]
        total = await smp.map_reduce(add, 10, reduce=operator.add)
        total_with_initial = await smp.map_reduce(add, 1, b=1, reduce=operator.add, initial=100)
        return ids, total, total_with_initial

    ids, total, total_with_initial = run(main, smp=4, argv=["--overprovisioned"])
    assert ids == [0, 1, 2, 3]
    assert total == 40
    assert total_with_initial == 108


@pytest.mark.parametrize("backend", ["asyncio", "uvloop"])
def test_multi_mebibyte_payloads_both_ways_through_small_rings(backend):
    """Payloads far larger than a ring are chunked, reassembled and back-pressured."""
    async def main():
        blob = os.urandom(5 << 20)
        sent = await smp.submit_to(1, digest, blob)
        fetched = await smp.submit_to(1, make_blob, 3 << 20)
        many = await asyncio.gather(*(smp.submit_to(1, digest, os.urandom(200_000)) for _ in range(40)))
        waits = smp._router.stats["backpressure_waits"]
        return sent == (hashlib.sha256(blob).hexdigest(), len(blob)), len(fetched), [n for _, n in many], waits

    ok, fetched, sizes, waits = run(main, smp=2, argv=["--overprovisioned", "--smp-ring-kib", "64",
                                                       "--reactor-backend", backend])
    assert ok and fetched == 3 << 20 and sizes == [200_000] * 40
    assert waits > 0, "8 MB queued at once through 64 KiB rings must have made senders wait"


def test_many_concurrent_small_calls_keep_their_results_apart():
    async def main():
        results = await asyncio.gather(*(smp.submit_to(1 + i % 2, add, i, b=i) for i in range(3000)))
        return results == [2 * i for i in range(3000)]

    assert run(main, smp=3, argv=["--overprovisioned", "--smp-ring-kib", "16"])


def test_poll_mode_and_sleeping_shards_both_deliver():
    async def main():
        out = []
        for _ in range(20):
            out.append(await smp.submit_to(1, add, 1, b=1))
            await asyncio.sleep(0.002)  # long enough for the peer to go to sleep in epoll
        return out

    assert run(main, smp=2, argv=["--overprovisioned"]) == [2] * 20
    assert run(main, smp=2, argv=["--overprovisioned", "--poll-mode"]) == [2] * 20
