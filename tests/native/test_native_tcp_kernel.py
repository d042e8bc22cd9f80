"""Native TCP with the Linux kernel as its peer, through a TAP into a test-made namespace.

Apps are launched as a user would (``python -m shoal.apps.httpd --network-stack
native --tap-device ...``) and driven by curl, wrk and kernel sockets inside the
namespace; shoal as a client runs in this process on a `KernelPeer` device. The
impaired runs add, on the kernel's side (these kernels have no netem), iptables
``statistic`` drops of 2% of what reaches the kernel and, where nft supports it,
duplication of 2% of what it sends. Dropping the kernel's *output* with iptables or
tc does not work: the kernel sees a local drop and resends at once, so no segment
is ever missing on the wire. The in-process tests therefore also lose 2% of the
frames shoal receives with its own seeded `FaultInjector` around the TAP.
"""
import asyncio
import contextlib
import hashlib
import ipaddress
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from shoal.drivers.faults import FaultInjector, Faults
from shoal.drivers.netns import KernelPeer, unavailable
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.runtime.reactor import Reactor

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (apt: curl)")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt: wrk)")
needs_iptables = pytest.mark.skipif(shutil.which("iptables") is None,
                                    reason="iptables is not installed (apt: iptables)")

FILE_SIZE = 20 << 20


def addr(text):
    return int(ipaddress.IPv4Address(text))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def root_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "big.bin").write_bytes(random.Random(20).randbytes(FILE_SIZE))
    return root


def impair(peer, loss=0.02, duplicate=True):
    """Drop `loss` of the TCP segments reaching the kernel (iptables statistic) and, if
    nft can, duplicate 2% of the kernel's output. Returns what was installed."""
    done = []
    peer.run(["iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "random",
              "--probability", str(loss), "-j", "DROP"])
    done.append(f"iptables drop {loss:.0%} in")
    if duplicate and shutil.which("nft"):
        rules = (f"table ip shoaltest {{\n chain out {{\n  type filter hook output priority 0;\n"
                 f"  meta l4proto tcp numgen random mod 50 == 0 dup to {peer.shoal_ip} device \"{peer.ifname}\"\n"
                 " }\n}\n")
        r = peer.run(["nft", "-f", "-"], check=False, input=rules)
        if r.returncode == 0:
            done.append("nft dup 2% of kernel output")
    return done


# -- apps launched as a user would ------------------------------------------------------

def start_app(peer, module, *options):
    app = subprocess.Popen([sys.executable, "-m", module, "--smp", "1", "--network-stack", "native",
                            "--tap-device", peer.ifname, "--host-ipv4-addr", peer.shoal_ip, *options],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not peer.interface_exists():
        assert app.poll() is None, app.stdout.read()
        assert time.monotonic() < deadline, "the app did not create its tap"
        time.sleep(0.05)
    peer.adopt()
    seen = []
    for line in app.stdout:
        seen.append(line)
        if " native stack" in line or len(seen) > 200:
            break
    assert " native stack" in seen[-1], "".join(seen)
    return app


def stop(app):
    if app.poll() is None:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
    return app.stdout.read()


@contextlib.contextmanager
def app_on_tap(module, *options):
    with KernelPeer(open_device=False) as peer:
        app = start_app(peer, module, *options)
        try:
            yield peer, app
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- app output ---\n{stop(app)[-4000:]}") from None
        finally:
            stop(app)


def curl_sha(peer, url, timeout=120):
    r = peer.run(["sh", "-c", f"curl -sS --fail --max-time {timeout} {url} | sha256sum"], check=False,
                 timeout=timeout + 30)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.split()[0]


def wrk(peer, url, connections, seconds=2):
    r = peer.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}", "--timeout", "5s", url], check=False,
                 timeout=seconds + 60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Socket errors" not in out and "Non-2xx" not in out, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 0, out
    return out


@needs_curl
@needs_wrk
def test_httpd_on_native_serves_curl_and_wrk(root_dir):
    with app_on_tap("shoal.apps.httpd", "--root", str(root_dir)) as (peer, _app):
        url = f"http://{peer.shoal_ip}:10000"
        assert curl_sha(peer, f"{url}/big.bin") == sha256_file(root_dir / "big.bin")
        wrk(peer, f"{url}/", 1)
        wrk(peer, f"{url}/", 16)


@needs_curl
@needs_iptables
def test_httpd_download_survives_kernel_side_loss_and_duplication(root_dir):
    # Linux's 200 ms minimum RTO: retransmissions lost again are recovered by timeout
    with app_on_tap("shoal.apps.httpd", "--root", str(root_dir), "--tcp-min-rto", "0.2") as (peer, _app):
        impair(peer)
        assert curl_sha(peer, f"http://{peer.shoal_ip}:10000/big.bin") == sha256_file(root_dir / "big.bin")


ECHO_CLIENT = """
import hashlib, random, socket, sys, threading
data = random.Random(3).randbytes(int(sys.argv[2]))
s = socket.create_connection((sys.argv[1], 10000), timeout=60)
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
h, n = hashlib.sha256(), 0
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
t.join()
print(n, h.hexdigest() == hashlib.sha256(data).hexdigest())
"""


def test_echo_app_over_tcp_with_a_kernel_client():
    with app_on_tap("shoal.apps.echo") as (peer, _app):
        size = 3 << 20
        r = peer.run(["python3", "-c", ECHO_CLIENT, peer.shoal_ip, str(size)], check=False, timeout=120)
        assert r.returncode == 0 and r.stdout.split() == [str(size), "True"], r.stdout + r.stderr


# -- shoal in this process: client and sink ------------------------------------------------

@contextlib.asynccontextmanager
async def kernel_and_stack(rx_faults=None):
    peer = KernelPeer()
    reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=0.0005)
    stack = None
    try:
        config = NativeConfig(peer.ifname, False, addr(peer.shoal_ip), addr("255.255.255.0"), None)
        device = peer.device if rx_faults is None else FaultInjector(peer.device, 3, rx=rx_faults)
        stack = NativeStack(device, config, rng=random.Random(5))
        peer.device = None  # the stack owns (and closes) it now
        stack.start(reactor)
        reactor.start()
        yield peer, stack
    finally:
        if stack is not None:
            await stack.stop()
        reactor.close()
        peer.close()
        reactor.check_fatal()


async def wait_listening(peer, port):
    for _ in range(600):
        r = await asyncio.to_thread(peer.run, ["ss", "-Hltn", f"sport = :{port}"], check=False)
        if r.stdout.strip():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in the namespace")


async def download_from_kernel(peer, stack, root_dir):
    server = peer.popen(["python3", "-m", "http.server", "--bind", peer.kernel_ip, "--directory",
                         str(root_dir), "8080"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await wait_listening(peer, 8080)
    conn = await stack.connect((peer.kernel_ip, 8080), timeout=30)
    await conn.write(b"GET /big.bin HTTP/1.0\r\nHost: x\r\n\r\n")
    head = b""
    h = hashlib.sha256()
    n = 0
    while True:
        data = await asyncio.wait_for(conn.read(), 60)
        if not data:
            break
        if head is not None:
            head += data
            if b"\r\n\r\n" not in head:
                continue
            head, body = head.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.0 200"), head
            head = None
            data = body
        h.update(data)
        n += len(data)
    await conn.close()
    server.terminate()
    return n, h.hexdigest()


UPLOAD_CLIENT = """
import random, socket, sys
rng = random.Random(9)
s = socket.create_connection((sys.argv[1], 9000), timeout=60)
for _ in range(int(sys.argv[2]) >> 20):
    s.sendall(rng.randbytes(1 << 20))
s.shutdown(socket.SHUT_WR)
assert s.recv(100) == b"ok"
"""


def upload_sha(size):
    """sha256 of what UPLOAD_CLIENT sends: `size` (a multiple of 1 MiB) seeded random bytes."""
    rng = random.Random(9)
    h = hashlib.sha256()
    for _ in range(size >> 20):
        h.update(rng.randbytes(1 << 20))
    return h.hexdigest()


async def upload_to_sink(peer, stack, size):
    server = stack.listen(("", 9000))
    client = await asyncio.create_subprocess_exec(*peer.command(["python3", "-c", UPLOAD_CLIENT, peer.shoal_ip,
                                                                 str(size)]))
    conn, _ = await asyncio.wait_for(server.accept(), 60)
    h = hashlib.sha256()
    n = 0
    while True:
        data = await asyncio.wait_for(conn.read(), 60)
        if not data:
            break
        h.update(data)
        n += len(data)
    await conn.write(b"ok")
    await conn.close()
    assert await asyncio.wait_for(client.wait(), 60) == 0
    server.close()
    return n, h.hexdigest()


@pytest.mark.parametrize("impaired", [False, True], ids=["clean", "impaired"])
def test_shoal_client_downloads_from_a_kernel_server_and_sinks_an_upload(root_dir, impaired):
    if impaired and shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (apt: iptables)")
    size = 8 << 20

    async def main():
        async with kernel_and_stack(Faults(loss=0.02) if impaired else None) as (peer, stack):
            installed = impair(peer) if impaired else []
            got = await download_from_kernel(peer, stack, root_dir)
            assert got == (FILE_SIZE, sha256_file(root_dir / "big.bin"))
            assert await upload_to_sink(peer, stack, size) == (size, upload_sha(size))
            tcp = stack.counters()["tcp"]
            if impaired:
                # shoal's receive side saw holes (its own 2% rx loss) and, with nft dup,
                # segments it already had (dropped as out of window, each one counted)
                assert tcp["stats"].get("out-of-order", 0) > 0, tcp
                if len(installed) > 1:
                    assert tcp["drops"].get("out-of-window", 0) > 0, tcp

    asyncio.run(asyncio.wait_for(main(), 240))


@pytest.mark.soak
@needs_curl
def test_soak_one_gigabyte_each_way(tmp_path):
    size = 1 << 30
    big = tmp_path / "huge.bin"
    with open(big, "wb") as f:
        rng = random.Random(1)
        for _ in range(size >> 20):
            f.write(rng.randbytes(1 << 20))

    with app_on_tap("shoal.apps.httpd", "--root", str(tmp_path)) as (peer, _app):
        assert curl_sha(peer, f"http://{peer.shoal_ip}:10000/huge.bin", timeout=3000) == sha256_file(big)

    async def main():
        async with kernel_and_stack(Faults(loss=0.02)) as (peer, stack):
            impair(peer)
            assert await upload_to_sink(peer, stack, size) == (size, upload_sha(size))

    asyncio.run(asyncio.wait_for(main(), 3600))
