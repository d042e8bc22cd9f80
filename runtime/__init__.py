"""shoal.runtime: pinned shards, their reactors, and the rings between them.

Public contract::

    from shoal.runtime import run, smp
    run(main, smp=2, cpuset=[0, 1])        # main: an async def function
    smp.count, smp.this_shard()
    await smp.submit_to(shard, func, *args, **kwargs)
"""
from shoal.runtime import reactor, smp
from shoal.runtime.app import AppTemplate
from shoal.runtime.launcher import OptionError, ShardCrashed, run
from shoal.runtime.sharded import Sharded

__all__ = ["run", "smp", "reactor", "AppTemplate", "Sharded", "ShardCrashed", "OptionError"]
