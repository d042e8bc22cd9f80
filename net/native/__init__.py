"""shoal's user-space TCP/IP stack (the `--network-stack native` implementation).

Importing this package registers the stack with `shoal.net.api` (which imports it
by name when ``--network-stack`` is parsed). The stack module itself, with the
drivers and asyncio behind it, is imported when an app adds its options (in the
launcher, before the shards fork, so no shard stalls compiling it) or when a shard
creates the stack: importing a wire-format module stays cheap and no import cycle
can form.
"""
from shoal.net import api

from . import config as _config


def _add_options(parser):
    from . import stack  # noqa: F401  (loaded once, before the shards fork)
    _config.add_options(parser)


def _check_options(args):
    _config.from_args(args)


def _prepare(args, shard_count):
    from .stack import prepare
    prepare(args, shard_count)


def _release(args):
    from .stack import release
    release(args)


def _create(args):
    from .stack import create
    return create(args)


api.register_stack("native", _create, add_options=_add_options, check_options=_check_options,
                   prepare=_prepare, release=_release,
                   description="shoal's user-space TCP/IP over a TAP device (one queue per shard)")
