"""shoal memcached on the native stack (user-space TCP/IP over a TAP), driven by pymemcache.

The server runs as a user would start it (``python -m shoal.apps.memcached
--network-stack native --tap-device ... --host-ipv4-addr ...``); the TAP's kernel
side sits in a namespace the test creates (`KernelPeer`), and every client socket
is created inside that namespace, so the kernel's TCP is shoal's peer.

The command checks are the posix tests' own (imported from
``test_memcached_server`` and collected here again with this module's fixtures):
the server, the protocol and the expectations are the same, only the stack under
them differs. The ``mc`` fixture is theirs too; it asks for this module's ``server``.
"""
import ctypes
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymemcache.client.base import Client

from shoal.drivers.netns import KernelPeer, unavailable
from shoal.drivers.steering import flow_queue

from test_memcached_server import (REPLY_S, Raw, ServerProcess, check_eviction_under_256k, mc,  # noqa: F401
                                   test_bad_command_lines, test_bad_data_chunk, test_binary_values,
                                   test_delete_incr_decr,
                                   test_flags_round_trip, test_flush_all_version_verbosity_stats,
                                   test_gat_and_gats, test_garbage_lines, test_gets_and_cas,
                                   test_line_too_long_closes, test_noreply,
                                   test_oversized_value_is_refused_and_the_connection_survives,
                                   test_pymemcache_refuses_what_the_server_would_refuse, test_quit_closes,
                                   test_storage_and_retrieval, test_touch_and_expiry)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

PORT = 11211
CLONE_NEWNET = 0x40000000


class NamespaceSockets:
    """A stand-in for the `socket` module whose sockets are made inside a network namespace.

    A socket belongs to the namespace of the thread that created it, and keeps it
    whichever thread uses it later; so one worker thread enters the namespace
    (``setns(2)``: Python 3.11 has no ``os.setns``) and creates every socket, and the
    test uses them from its own thread. pymemcache takes it as ``socket_module``.
    """

    def __init__(self, namespace):
        self._fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        self._worker = ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(self._fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

    def socket(self, *args):
        return self._worker.submit(socket.socket, *args).result()

    def create_connection(self, address, timeout):
        sock = self.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def __getattr__(self, name):
        return getattr(socket, name)

    def close(self):
        self._worker.shutdown()
        os.close(self._fd)


class NativeServer:
    """`python -m shoal.apps.memcached` on the native stack, its TAP's far side in a namespace."""

    def __init__(self, *options, smp=1):
        self.port = PORT
        self.peer = KernelPeer(open_device=False)
        self.proc = self.sockets = None
        try:
            self.proc = ServerProcess("--smp", str(smp), "--network-stack", "native", "--tap-device", self.peer.ifname,
                                      "--host-ipv4-addr", self.peer.shoal_ip, "--netmask-ipv4-addr",
                                      "255.255.255.0", *options, address=self.peer.shoal_ip, port=PORT)
            # the stack opened the tap before it listened: give its far side to the kernel
            self.peer.adopt()
            self.sockets = NamespaceSockets(self.peer.namespace)
        except BaseException:
            self.stop()
            raise

    def client(self, default_noreply=False):
        return Client((self.peer.shoal_ip, self.port), default_noreply=default_noreply, timeout=REPLY_S,
                      connect_timeout=REPLY_S, socket_module=self.sockets)

    def raw(self):
        return NamespaceRaw(self)

    def stop(self):
        try:
            if self.proc is not None:
                self.proc.stop()
            if self.sockets is not None:
                self.sockets.close()
        finally:
            self.peer.close()

    def output(self):
        return "".join(self.proc.output)


class NamespaceRaw(Raw):
    """The posix tests' byte-exact connection, made from inside the namespace."""

    def __init__(self, server):
        self.sock = server.sockets.create_connection((server.peer.shoal_ip, server.port), REPLY_S)
        self.buf = b""


@pytest.fixture(scope="module")
def server():
    srv = NativeServer("--max-memory", "64M")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def raw(server):
    conn = server.raw()
    try:
        yield conn
    finally:
        conn.close()


def test_the_server_runs_on_the_native_stack(server, mc):
    """Guards every imported test: they must be talking to the native stack's TCP."""
    assert "native stack" in server.output()
    assert mc.set("where", b"native") and mc.get("where") == b"native"
    assert mc.stats()[b"curr_connections"] >= 1


def test_multi_get_of_many_keys_in_one_request(mc):
    keys = [f"multi{i:03d}" for i in range(300)]
    values = {k: os.urandom(50 + i) for i, k in enumerate(keys)}
    assert mc.set_many(values) == []
    assert mc.get_many(keys + ["absent"]) == values  # a reply of many segments


def test_large_binary_value_round_trip(mc):
    value = os.urandom((1 << 20) - 512)  # just under the item limit: many segments each way
    assert mc.set("large", value)
    assert mc.get("large") == value


def test_truncated_data_block_then_disconnect_leaves_state_intact(server, mc):
    mc.set("intact", b"yes")
    conn = server.raw()
    conn.send(b"set intact 0 0 100\r\nonly-part")
    conn.close()
    assert mc.get("intact") == b"yes"


def test_many_connections_at_once(server):
    clients = [server.client() for _ in range(20)]
    try:
        for i, c in enumerate(clients):
            assert c.set(f"conn{i}", str(i).encode())
        for i, c in enumerate(clients):
            assert c.get(f"conn{(i + 1) % 20}") == str((i + 1) % 20).encode()
        assert clients[0].stats()[b"curr_connections"] >= 20
    finally:
        for c in clients:
            c.close()


def test_eviction_under_a_small_memory_limit():
    srv = NativeServer("--max-memory", "256k")
    try:
        check_eviction_under_256k(srv.client())
    finally:
        srv.stop()


def test_two_shards_on_one_tap_serve_every_key_from_every_connection():
    """`--smp 2` on the native stack: one TAP queue per shard, connections steered by their
    ports, keys owned by their shard's cache (multi-gets split over the rings)."""
    srv = NativeServer("--max-memory", "64M", smp=2)
    clients = []
    try:
        clients = [srv.client() for _ in range(12)]
        values = {f"two-shards-{i}": os.urandom(20 + i) for i in range(100)}
        assert clients[0].set_many(values) == []
        for c in clients:
            assert c.get_many(list(values)) == values
        shards = {flow_queue(c.sock.getsockname()[1], PORT, 2) for c in clients}
        assert shards == {0, 1}, "the connections landed on both shards"
        assert clients[0].stats()[b"curr_connections"] >= 12
    finally:
        for c in clients:
            c.close()
        srv.stop()
