"""The smallest shoal app: every shard reports its id and pinned core, shard 0 prints them.

    python -m shoal.apps.hello --smp 2
"""
import os
import sys

from shoal.runtime import AppTemplate, smp


def whoami():
    """Runs on each shard (through invoke_on_all): its id, pid and the cores it may use."""
    return smp.this_shard(), os.getpid(), sorted(os.sched_getaffinity(0))


async def main():
    reports = await smp.invoke_on_all(whoami)
    for shard, pid, cores in reports:
        print(f"shard {shard} of {smp.count}: pid {pid}, pinned to cpu {','.join(map(str, cores))}")
    return 0


if __name__ == "__main__":
    sys.exit(AppTemplate("hello: each shard reports its id and core").run(main))
