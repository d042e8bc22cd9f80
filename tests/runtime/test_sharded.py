"""Sharded services: one instance per shard, invoked where the data lives, stopped in reverse order."""
import operator

import pytest

from shoal.runtime import Sharded, run, smp


class Counter:
    def __init__(self, start, log_path=None, name="counter"):
        self.value = start + smp.this_shard()
        self.log_path, self.name = log_path, name

    def add(self, n):
        self.value += n
        return self.value

    async def get(self):
        return self.value

    async def stop(self):
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"{self.name} {smp.this_shard()}\n")


class BrokenOnShardOne:
    def __init__(self):
        if smp.this_shard() == 1:
            raise ValueError("cannot start here")


def peek(service):
    """A plain function that receives a handle and uses the local instance."""
    return service.local().value


def times_two(counter):
    return counter.value * 2


def test_instances_per_shard_invoke_map_reduce_and_local(tmp_path):
    async def main():
        counters = await Sharded(Counter).start(10)
        local = counters.local().value
        on_two = await counters.invoke_on(2, "add", 5)
        all_values = await counters.invoke_on_all("get")
        total = await counters.map_reduce("get", reduce=operator.add)
        doubled = await counters.invoke_on(1, times_two)
        through_handle = await smp.submit_to(2, peek, counters)
        await counters.stop()
        with pytest.raises(RuntimeError, match="start"):
            counters.local()
        return local, on_two, all_values, total, doubled, through_handle

    local, on_two, all_values, total, doubled, through_handle = run(main, smp=3, argv=["--overprovisioned"])
    assert local == 10
    assert on_two == 17
    assert all_values == [10, 11, 17]
    assert total == 38
    assert doubled == 22
    assert through_handle == 17


def test_services_still_running_are_stopped_last_started_first(tmp_path):
    log = tmp_path / "stops"

    async def main():
        await Sharded(Counter).start(0, str(log), "first")
        await Sharded(Counter).start(0, str(log), "second")

    run(main, smp=2, argv=["--overprovisioned"])
    lines = log.read_text().split("\n")[:-1]
    assert sorted(lines[:2]) == ["second 0", "second 1"]
    assert sorted(lines[2:]) == ["first 0", "first 1"]


def test_a_constructor_failure_is_raised_and_nothing_is_left_running():
    async def main():
        with pytest.raises(ValueError, match="cannot start here"):
            await Sharded(BrokenOnShardOne).start()
        return "ok"

    assert run(main, smp=2, argv=["--overprovisioned"]) == "ok"
