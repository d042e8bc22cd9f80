"""Stack selection: the registry, the network extension and --network-stack."""
import argparse
import asyncio
import socket
import subprocess
import sys

import pytest

from shoal import net
from shoal.net import api
from shoal.net.app import NetworkExtension
from shoal.net.posix import PosixStack
from shoal.runtime import run, smp


def make_parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    NetworkExtension().add_options(parser)
    return parser


def test_posix_is_the_default():
    assert make_parser().parse_args([]).network_stack == "posix"
    assert "posix" in net.registered_stacks()


def test_unknown_stack_lists_the_available_ones():
    with pytest.raises(LookupError, match="bogus stack not available; available: .*posix"):
        api.stack_info("bogus")


class FakeStack(PosixStack):
    """A posix stack under another name, with an option of its own."""
    name = "fake"
    stopped = 0

    def __init__(self, args):
        super().__init__()
        self.args = args

    async def stop(self):
        FakeStack.stopped += 1


def _fake_options(parser):
    parser.add_argument("--fake-flavour", default="plain")


def test_a_registered_stack_is_selectable_with_its_options():
    net.register_stack("fake", FakeStack, add_options=_fake_options)
    try:
        extension = NetworkExtension()
        parser = argparse.ArgumentParser()
        extension.add_options(parser)
        args = parser.parse_args(["--network-stack", "fake", "--fake-flavour", "salty"])

        async def shard():
            await extension.start_shard(args)
            stack = net.current_stack()
            assert isinstance(stack, FakeStack) and stack.args.fake_flavour == "salty"
            server = net.listen(("127.0.0.1", 0))   # forwarded to the selected stack
            server.close()
            await extension.stop_shard(args)
            assert api.installed_stack() is None

        asyncio.run(shard())
        assert FakeStack.stopped == 1
    finally:
        api._registry.pop("fake", None)
        api.use_stack(None)


def _listen_on_shared_port(port):
    server = net.listen(("127.0.0.1", port))
    address = server.local_address
    server.close()
    return smp.this_shard(), type(net.current_stack()).__name__, net.current_stack().reuse_port, address


async def _two_shard_main():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return await smp.invoke_on_all(_listen_on_shared_port, port)


def test_every_shard_gets_a_posix_stack_sharing_the_port():
    results = run(_two_shard_main, argv=["--smp", "2", "--network-stack", "posix"],
                  extensions=[NetworkExtension()])
    assert sorted(r[0] for r in results) == [0, 1]
    assert all(r[1] == "PosixStack" and r[2] for r in results)
    assert len({r[3] for r in results}) == 1   # both bound the same port (SO_REUSEPORT)


def test_unknown_stack_is_a_usage_error(capsys):
    app = net.AppTemplate("t")
    with pytest.raises(SystemExit) as info:
        app.parse(["--network-stack", "bogus"])
    assert info.value.code == 2
    assert "bogus stack not available" in capsys.readouterr().err


def test_a_stack_module_that_fails_to_import_is_reported(monkeypatch):
    monkeypatch.setitem(api.STACK_MODULES, "broken", "shoal.net.no_such_stack_module")
    monkeypatch.setattr(api, "_import_errors", {})
    with pytest.raises(LookupError, match=r"broken stack not available \(shoal.net.no_such_stack_module "
                                          r"failed to import: ModuleNotFoundError"):
        api.stack_info("broken")


@pytest.mark.parametrize("argv, message", [
    (["--smp", "1"], "the native stack needs an address"),
    (["--smp", "1", "--dhcp", "--host-ipv4-addr", "10.9.9.2"], "--dhcp conflicts with --host-ipv4-addr"),
    (["--smp", "2", "--overprovisioned", "--dhcp", "--gw-ipv4-addr", "10.9.9.1"],
     "--dhcp conflicts with --gw-ipv4-addr"),
])
def test_stack_option_conflicts_are_usage_errors_before_any_shard_starts(argv, message):
    out = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--network-stack", "native", *argv],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
