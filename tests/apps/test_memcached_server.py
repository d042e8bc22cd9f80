"""shoal memcached as a process, driven by pymemcache and raw sockets over loopback.

Each server runs as `python -m shoal.apps.memcached` on free loopback ports, is
awaited through its "listening" line (generous bound), and is stopped by its PID.
"""
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

from shoal.apps.memcached.sharding import owner

STARTUP_S = 90
REPLY_S = 20


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args, udp=False, address="127.0.0.1", port=None, udp_port=None,
                 launcher=("-m", "shoal.apps.memcached")):
        self.address = address
        self.port = free_port() if port is None else port
        self.udp_port = udp_port if udp_port is not None else free_port(socket.SOCK_DGRAM) if udp else 0
        cmd = [sys.executable, *launcher, "--address", address,
               "--port", str(self.port), "--udp-port", str(self.udp_port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + STARTUP_S
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("memcached did not start:\n" + "".join(self.output))

    def _read(self):
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith("memcached: listening"):
                self.ready.set()

    def client(self, default_noreply=False):
        return Client(("127.0.0.1", self.port), default_noreply=default_noreply, timeout=REPLY_S,
                      connect_timeout=REPLY_S)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.reader.join(10)


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--smp", "1", "--max-memory", "64M", udp=True)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def mc(server):
    client = server.client()
    client.flush_all()
    try:
        yield client
    finally:
        client.close()


class Raw:
    """A plain TCP connection for byte-exact exchanges."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_S)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def until(self, ending):
        while not self.buf.endswith(ending):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; got {self.buf!r}")
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def closed(self):
        """True if the server closes the connection (within the reply bound)."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self.buf += chunk

    def close(self):
        self.sock.close()


@pytest.fixture
def raw(server):
    conn = Raw(server.port)
    try:
        yield conn
    finally:
        conn.close()


# -- every command through pymemcache ---------------------------------------------------

def test_storage_and_retrieval(mc):
    assert mc.set("a", b"1", expire=3600) is True
    assert mc.get("a") == b"1"
    assert mc.add("a", b"2") is False
    assert mc.add("b", b"2") is True
    assert mc.replace("c", b"3") is False
    assert mc.replace("b", b"22") is True
    assert mc.append("a", b">") is True
    assert mc.prepend("a", b"<") is True
    assert mc.append("zz", b"x") is False
    assert mc.get_many(["a", "b", "missing"]) == {"a": b"<1>", "b": b"22"}


def test_flags_round_trip(mc):
    mc.raw_command(b"set f 4294967295 0 1\r\nx", b"\r\n")
    # raw_command strips the end token
    assert mc.raw_command(b"get f", b"END\r\n") == b"VALUE f 4294967295 1\r\nx\r\n"


def test_binary_values(mc):
    value = bytes(range(256)) * 4 + b"\r\nEND\r\n\x00"
    assert mc.set("bin", value)
    assert mc.get("bin") == value


def test_gets_and_cas(mc):
    mc.set("c", b"1")
    value, unique = mc.gets("c")
    assert value == b"1"
    assert mc.cas("c", b"2", unique) is True
    assert mc.cas("c", b"3", unique) is False
    assert mc.cas("nope", b"3", unique) is None
    assert mc.get("c") == b"2"


def test_delete_incr_decr(mc):
    mc.set("n", b"10")
    assert mc.incr("n", 5) == 15
    assert mc.decr("n", 100) == 0
    assert mc.incr("missing", 1) is None
    mc.set("big", b"18446744073709551615")
    assert mc.incr("big", 1) == 0
    assert mc.delete("n") is True
    assert mc.delete("n") is False
    mc.set("s", b"abc")
    with pytest.raises(MemcacheClientError, match="non-numeric"):
        mc.incr("s", 1)


def test_touch_and_expiry(mc):
    mc.set("t", b"v", expire=3600)
    assert mc.touch("t", 3600) is True
    assert mc.touch("missing", 1) is False
    assert mc.get("t") == b"v"
    mc.touch("t", 1)
    deadline = time.monotonic() + REPLY_S
    while mc.get("t") is not None:
        assert time.monotonic() < deadline, "item did not expire"
        time.sleep(0.2)
    mc.set("neg", b"v", expire=-1)
    assert mc.get("neg") is None


def test_gat_and_gats(mc):
    mc.set("g", b"v", expire=3600)
    assert mc.raw_command(b"gat 3600 g", b"END\r\n") == b"VALUE g 0 1\r\nv\r\n"
    reply = mc.raw_command(b"gats 3600 g missing", b"END\r\n")
    assert reply.startswith(b"VALUE g 0 1 ") and reply.endswith(b"\r\nv\r\n")


def test_flush_all_version_verbosity_stats(mc):
    mc.set("x", b"1")
    assert mc.flush_all() is True
    assert mc.get("x") is None
    assert mc.version().startswith(b"1.6")
    assert mc.raw_command(b"verbosity 1", b"\r\n") == b"OK"
    stats = mc.stats()
    assert stats[b"threads"] == 1 and stats[b"cmd_flush"] >= 1 and stats[b"curr_connections"] >= 1
    assert mc.stats("settings")[b"item_size_max"] == 1 << 20
    mc.set("y", b"1")
    assert mc.stats("items")[b"items:1:number"] == 1
    assert mc.stats("slabs")[b"active_slabs"] == 1


def test_noreply(server):
    quiet = server.client(default_noreply=True)
    try:
        quiet.set("q", b"1")
        quiet.delete("q2")
        quiet.incr("q", 1)
        assert quiet.get("q") == b"2"  # nothing stray was left to read
    finally:
        quiet.close()


def test_quit_closes(raw):
    raw.send(b"version\r\nquit\r\nversion\r\n")
    assert raw.until(b"\r\n").startswith(b"VERSION")
    assert raw.closed() and raw.buf == b""


# -- bad input keeps a healthy connection healthy ----------------------------------------

def test_garbage_lines(raw):
    raw.send(b"bogus\r\n\r\nGET a\r\nget\r\nversion\r\n")
    assert raw.until(b"VERSION 1.6.0-shoal\r\n") == b"ERROR\r\n" * 4 + b"VERSION 1.6.0-shoal\r\n"


def test_bad_data_chunk(raw):
    raw.send(b"set k 0 0 3\r\nabcde\r\nget k\r\n")
    assert raw.until(b"END\r\n") == b"CLIENT_ERROR bad data chunk\r\nERROR\r\nEND\r\n"


def test_bad_command_lines(raw):
    raw.send(b"set " + b"k" * 251 + b" 0 0 3\r\nabc\r\nincr k x\r\ndelete k 5\r\nget ok\r\n")
    assert raw.until(b"END\r\n") == (b"CLIENT_ERROR bad command line format\r\n"
                                     b"CLIENT_ERROR invalid numeric delta argument\r\n"
                                     b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
                                     b"END\r\n")


def test_oversized_value_is_refused_and_the_connection_survives(raw):
    raw.send(b"set big 0 0 1\r\nx\r\n")
    assert raw.until(b"\r\n") == b"STORED\r\n"
    big = b"v" * (1024 * 1024 + 1)
    raw.send(b"set big 0 0 %d\r\n" % len(big))
    for i in range(0, len(big), 65536):
        raw.send(big[i:i + 65536])
    raw.send(b"\r\nget big\r\nset ok 0 0 2\r\nok\r\nget ok\r\n")
    assert raw.until(b"VALUE ok 0 2\r\nok\r\nEND\r\n") == (
        b"SERVER_ERROR object too large for cache\r\nEND\r\nSTORED\r\nVALUE ok 0 2\r\nok\r\nEND\r\n")


def test_truncated_data_block_then_disconnect_leaves_state_intact(server, mc):
    mc.set("intact", b"yes")
    conn = Raw(server.port)
    conn.send(b"set intact 0 0 100\r\nonly-part")
    conn.close()
    assert mc.get("intact") == b"yes"


def test_line_too_long_closes(raw):
    raw.send(b"x" * 4096)
    assert raw.closed()
    assert raw.buf == b"CLIENT_ERROR line too long\r\n"


def test_seeded_garbage_never_breaks_the_server(sharded_server):
    """Random bytes and mangled commands on many connections; afterwards every shard
    still answers and the cache still works. (No flush_all among the words: a late one
    would race with the checks below.)"""
    rng = random.Random(6)
    words = [b"get", b"set", b"gat", b"cas", b"incr", b"touch", b"stats", b"delete", b" ", b"\r\n",
             b"\n", b"0", b"-1", b"99999999999999999999", b"noreply", b"key", b"\x00", b"\xff"]
    for _ in range(30):
        conn = Raw(sharded_server.port)
        blob = b"".join(rng.choice(words) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 20))
                        for _ in range(rng.randint(1, 60)))
        conn.send(blob)
        conn.close()
    client = sharded_server.client()
    try:
        keys = [f"after{i}" for i in range(20)]
        for k in keys:
            assert client.set(k, b"ok")
        assert client.get_many(keys) == dict.fromkeys(keys, b"ok")
    finally:
        client.close()


def test_pymemcache_refuses_what_the_server_would_refuse(mc):
    with pytest.raises(MemcacheClientError):
        mc.set("k" * 251, b"v")
    with pytest.raises(MemcacheServerError, match="too large"):
        mc.set("huge", b"x" * (2 * 1024 * 1024))
    assert mc.set("after", b"fine") is True


# -- UDP -------------------------------------------------------------------------------

def udp_request(server, request_id, payload, sock=None):
    """Send one request datagram and reassemble its reply; the first datagram that
    comes back must belong to this request."""
    own = sock is None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if own else sock
    try:
        sock.settimeout(REPLY_S)
        sock.sendto(struct.pack("!HHHH", request_id, 0, 1, 0) + payload, (server.address, server.udp_port))
        parts, total = {}, None
        while total is None or len(parts) < total:
            datagram = sock.recv(65536)
            rid, seq, total, reserved = struct.unpack_from("!HHHH", datagram)
            assert (rid, reserved) == (request_id, 0)
            parts[seq] = datagram[8:]
        return b"".join(parts[i] for i in range(total))
    finally:
        if own:
            sock.close()


def test_udp_get_set(server, mc):
    assert udp_request(server, 7, b"set u 1 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert udp_request(server, 8, b"get u\r\n") == b"VALUE u 1 2\r\nhi\r\nEND\r\n"
    value = bytes(range(256)) * 20
    mc.set("ubig", value)
    assert udp_request(server, 9, b"get ubig\r\n") == b"VALUE ubig 0 %d\r\n" % len(value) + value + b"\r\nEND\r\n"


def test_udp_bad_datagrams_are_dropped_and_partial_requests_refused(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        target = ("127.0.0.1", server.udp_port)
        sock.sendto(b"\x00\x01", target)                                      # shorter than the header
        sock.sendto(struct.pack("!HHHH", 5, 0, 2, 0) + b"get a\r\n", target)  # multi-datagram request
        # datagrams from one socket are handled in order: a reply to the dropped ones
        # would arrive first and fail the request id check
        assert udp_request(server, 10, b"set p 0 0 10\r\nshort", sock) == b"ERROR\r\n"
        assert udp_request(server, 11, b"version\r\n", sock) == b"VERSION 1.6.0-shoal\r\n"


def _can_make_tap():
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None


# The native stack registers itself when shoal.net.native.stack is imported; the
# launcher imports it first so the test does not depend on the package's import list.
_NATIVE_LAUNCHER = ("-c", "import sys, shoal.net.native.stack\n"
                          "from shoal.apps.memcached.server import main\nsys.exit(main())")


@pytest.mark.root
@pytest.mark.skipif(not _can_make_tap(), reason="needs root, /dev/net/tun and iproute2 to make a TAP device")
def test_udp_over_the_native_stack():
    """The native stack (user-space IPv4/UDP over a TAP) serving memcached UDP to the
    kernel on the other side of the TAP. Its TCP is not there yet, so --port 0."""
    rng = random.Random()
    name = f"mct{os.getpid() % 100000}x{rng.randrange(1000)}"[:15]
    subnet = f"10.{rng.randrange(100, 200)}.{rng.randrange(256)}"
    srv = None
    try:
        subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"], check=True)
        subprocess.run(["ip", "addr", "add", f"{subnet}.1/24", "dev", name], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        srv = ServerProcess("--smp", "1", "--network-stack", "native", "--tap-device", name,
                            "--host-ipv4-addr", f"{subnet}.2", "--netmask-ipv4-addr", "255.255.255.0",
                            address=f"{subnet}.2", port=0, udp_port=11211, launcher=_NATIVE_LAUNCHER)
        assert udp_request(srv, 1, b"set n 0 0 2\r\nhi\r\n") == b"STORED\r\n"
        value = bytes(range(256)) * 12   # a reply of three datagrams
        assert udp_request(srv, 2, b"set big 5 0 %d\r\n" % len(value) + value + b"\r\n") == b"STORED\r\n"
        assert udp_request(srv, 3, b"get n big\r\n") == (
            b"VALUE n 0 2\r\nhi\r\nVALUE big 5 %d\r\n" % len(value) + value + b"\r\nEND\r\n")
    finally:
        if srv is not None:
            srv.stop()
        subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL)


# -- sharding and memory ------------------------------------------------------------------

@pytest.fixture(scope="module")
def sharded_server():
    srv = ServerProcess("--smp", "2", "--overprovisioned", "--max-memory", "16M")
    try:
        yield srv
    finally:
        srv.stop()


def test_cross_shard_multi_get(sharded_server):
    srv = sharded_server
    client = srv.client()
    client.flush_all()
    try:
        keys = [f"key{i}" for i in range(40)]
        owners = {owner(k.encode(), 2) for k in keys}
        assert owners == {0, 1}
        for k in keys:
            assert client.set(k, k.encode() * 3)
        got = client.get_many(keys + ["absent"])
        assert got == {k: k.encode() * 3 for k in keys}
        raw = Raw(srv.port)
        raw.send(b"get " + " ".join(reversed(keys)).encode() + b"\r\n")
        reply = raw.until(b"END\r\n")
        raw.close()
        assert [line.split()[1].decode() for line in reply.split(b"\r\n") if line.startswith(b"VALUE")] == \
            list(reversed(keys))
        shards = client.stats("shards")
        expected = [sum(1 for k in keys if owner(k.encode(), 2) == s) for s in (0, 1)]
        assert [shards[b"shard:0:curr_items"], shards[b"shard:1:curr_items"]] == expected
        assert client.stats()[b"curr_items"] == len(keys)
    finally:
        client.close()


@pytest.mark.skipif(shutil.which("memccapable") is None, reason="memccapable (libmemcached-tools) not installed")
def test_libmemcached_capability_suite(sharded_server):
    """libmemcached's own conformance checker, ASCII protocol, against two shards."""
    proc = subprocess.run(["memccapable", "-h", "127.0.0.1", "-p", str(sharded_server.port), "-a",
                           "-t", str(REPLY_S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "All tests passed" in proc.stdout, proc.stdout + proc.stderr


def check_eviction_under_256k(client):
    """Fill a server started with ``--max-memory 256k`` far beyond it: LRU eviction keeps it
    within the budget, the most recent items survive and the oldest are gone."""
    value = b"v" * 1000
    for i in range(1000):
        client.set(f"e{i}", value, noreply=True)
    stats = client.stats()
    assert stats[b"evictions"] > 0
    assert stats[b"bytes"] <= 256 * 1024
    assert client.get("e999") == value
    assert client.get("e0") is None
    client.close()


def test_eviction_under_a_small_memory_limit():
    srv = ServerProcess("--smp", "1", "--max-memory", "256k")
    try:
        check_eviction_under_256k(srv.client())
    finally:
        srv.stop()


def test_too_small_memory_is_refused():
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "shoal.apps.memcached", "--address", "127.0.0.1",
                           "--port", str(port), "--smp", "1", "--max-memory", "1k"],
                          capture_output=True, text=True, timeout=STARTUP_S)
    assert proc.returncode == 2
    assert "per shard" in proc.stderr


def test_no_tcp_and_no_udp_is_refused():
    proc = subprocess.run([sys.executable, "-m", "shoal.apps.memcached", "--port", "0", "--smp", "1"],
                          capture_output=True, text=True, timeout=STARTUP_S)
    assert proc.returncode == 2
    assert "--udp-port is needed" in proc.stderr
