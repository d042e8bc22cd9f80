"""The network extension of the app template, and ``shoal.net.AppTemplate``.

The runtime knows nothing about networking; this extension adds
``--network-stack`` (and every registered stack's own options) to the app's
parser, and on every shard, before ``main`` runs, creates that shard's stack
and installs it as the target of ``net.listen``/``net.connect``/... .

A stack name is checked while the command line is parsed, so
``--network-stack native`` on a build without the native stack exits with a
usage error saying "native stack not available" before any shard starts.
"""

from __future__ import annotations

import argparse

from shoal.runtime.app import AppTemplate as _RuntimeAppTemplate

from . import api
from .prometheus import PrometheusExtension


def _stack_name(text: str) -> str:
    try:
        api.stack_info(text)
    except LookupError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class NetworkExtension:
    """App-template extension selecting and owning each shard's network stack."""

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        api.load_stack_modules()
        group = parser.add_argument_group("shoal network")
        group.add_argument("--network-stack", type=_stack_name, default="posix",
                           metavar="NAME",
                           help="network stack: " + ", ".join(api.registered_stacks())
                           + " (default: posix)")
        for name in api.registered_stacks():
            info = api.stack_info(name)
            if info.add_options is not None:
                info.add_options(parser)

    def check_options(self, args) -> None:
        check = api.stack_info(args.network_stack).check_options
        if check is not None:
            check(args)

    def before_fork(self, args, shard_count: int) -> None:
        prepare = api.stack_info(args.network_stack).prepare
        if prepare is not None:
            prepare(args, shard_count)

    def after_fork(self, args) -> None:
        release = api.stack_info(args.network_stack).release
        if release is not None:
            release(args)

    async def start_shard(self, args) -> None:
        stack = api.stack_info(args.network_stack).factory(args)
        api.use_stack(stack)

    async def stop_shard(self, args) -> None:
        stack = api.installed_stack()
        api.use_stack(None)
        if stack is not None:
            await stack.stop()


class AppTemplate(_RuntimeAppTemplate):
    """The runtime's app template with the network and Prometheus extensions already added."""

    def __init__(self, description=None, extensions=()):
        super().__init__(description, extensions=(NetworkExtension(), PrometheusExtension(), *extensions))


__all__ = ["NetworkExtension", "AppTemplate"]
