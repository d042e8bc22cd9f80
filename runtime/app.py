"""The app template: the options every shoal app takes, and running `main` on the shards.

An application builds an `AppTemplate`, adds its own options to `.parser`, and
calls ``sys.exit(app.run(main))``. Layers above the runtime (the network stacks)
join as *extensions*: objects with ``add_options(parser)``, ``async
start_shard(args)`` and ``async stop_shard(args)``, and optionally
``check_options(args)`` (raise ValueError for options that cannot work together:
they are refused as usage errors before any shard starts), so the runtime itself
never knows what they are. An extension that must acquire something in shard
order before the shards exist (the queues of a network device, which the kernel
numbers in the order they are opened) also has ``before_fork(args, shard_count)``,
called in the launcher (a ValueError is refused like a bad option); the shards
inherit what it made, and ``after_fork(args)`` then runs in the launcher once
every shard is forked (or the start failed), to let go of the launcher's copies.
"""
import argparse
import sys
import traceback

from shoal.runtime import log
from shoal.runtime.cpuset import parse_cpuset


def _backend_default():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_float(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def _cpuset(text):
    try:
        return parse_cpuset(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _logger_level(text):
    try:
        return log.parse_logger_level(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_runtime_options(parser):
    group = parser.add_argument_group("shoal runtime")
    group.add_argument("--smp", type=_positive_int, help="number of shards (default: one per cpu of --cpuset)")
    group.add_argument("--cpuset", type=_cpuset, help="cores to run on, e.g. 0-3,6 (default: all allowed)")
    group.add_argument("--overprovisioned", action="store_true",
                       help="allow more shards than cores (shards then share cores)")
    group.add_argument("--reactor-backend", choices=("asyncio", "uvloop"), default=_backend_default(),
                       help="event loop under each reactor (default: uvloop where installed)")
    group.add_argument("--idle-poll-time-us", type=_non_negative_float, default=200.0,
                       help="poll this long without work before sleeping in epoll (default: 200)")
    group.add_argument("--poll-mode", action="store_true", help="never sleep: poll continuously")
    group.add_argument("--blocked-reactor-notify-ms", type=_non_negative_float, default=100.0,
                       help="log the stack of a task that holds a reactor longer than this (0: off; default 100)")
    group.add_argument("--smp-ring-kib", type=_positive_int, default=1024,
                       help="size of each cross-shard ring in KiB, a power of two (default: 1024)")
    group.add_argument("--default-log-level", choices=log.LEVELS, default="info")
    group.add_argument("--logger-log-level", type=_logger_level, action="append", default=[],
                       metavar="NAME=LEVEL", help="set one logger's level (repeatable)")


class AppTemplate:
    """Options, then shards: ``sys.exit(AppTemplate("my app").run(main))``."""

    def __init__(self, description=None, extensions=()):
        self.extensions = list(extensions)
        self.parser = argparse.ArgumentParser(description=description)
        add_runtime_options(self.parser)
        for extension in self.extensions:
            extension.add_options(self.parser)
        self.args = None

    def parse(self, argv=None):
        args = self.parser.parse_args(argv)
        for extension in self.extensions:
            check = getattr(extension, "check_options", None)
            if check is not None:
                try:
                    check(args)
                except ValueError as exc:
                    self.parser.error(str(exc))
        self.args = args
        return args

    def run(self, main, argv=None):
        """Parse `argv` (default: sys.argv[1:]), run `main` on shard 0, return the exit code.

        The exit code is what `main` returns (None is 0), the code of a
        SystemExit it raises, 1 for any other exception (its traceback is
        printed) or for a shard that crashed (with a message naming the shard)."""
        from shoal.runtime.launcher import OptionError, ShardCrashed, launch

        if self.args is None or argv is not None:
            self.parse(argv)
        try:
            result = launch(main, self.args, self.extensions)
        except ShardCrashed as exc:
            print(f"shoal: {exc}", file=sys.stderr)
            return 1
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except OptionError as exc:
            self.parser.error(str(exc))
        except Exception:
            traceback.print_exc()
            return 1
        if result is None:
            return 0
        return result if isinstance(result, int) else 0
