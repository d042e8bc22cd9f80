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

NFQUEUE does what iptables DROP cannot: a helper process in the namespace (the
`netfilterqueue` package) receives the kernel's segments after its TCP has
counted them as sent, so holding some back reorders them on the wire and a drop
verdict is a real loss (`nfqueue`). nft marks CE on ECT packets for the ECN test.
"""
import asyncio
import contextlib
import hashlib
import importlib.util
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import pytest

from shoal.drivers.faults import FaultInjector, Faults
from shoal.drivers.netns import KernelPeer, stop_process, unavailable
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import running
from shoal.net.native.tcp.connection import TcpConfig

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
    app = peer.start_shoal(["-m", module, "--smp", "1", "--network-stack", "native",
                            "--host-ipv4-addr", peer.shoal_ip, *options])
    seen = []
    for line in app.stdout:
        seen.append(line)
        if " native stack" in line or len(seen) > 200:
            break
    assert " native stack" in seen[-1], "".join(seen)
    return app


@contextlib.contextmanager
def app_on_tap(module, *options):
    with KernelPeer(open_device=False) as peer:
        app = start_app(peer, module, *options)
        try:
            yield peer, app
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- app output ---\n{stop_process(app)[-4000:]}") from None
        finally:
            stop_process(app)


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


@needs_curl
@needs_wrk
@needs_iptables
def test_a_kernel_peer_without_timestamps(root_dir):
    """Windows does not use RFC 7323 timestamps by default: once established, such a peer's
    segments and shoal's carry no TCP option, a layout the stack parses and builds in one
    unpack or pack as well (`wire.tcp_frame`). Here the kernel with tcp_timestamps off, and
    2 % loss on its side."""
    with app_on_tap("shoal.apps.httpd", "--root", str(root_dir), "--tcp-min-rto", "0.2") as (peer, _app):
        peer.run(["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"])
        assert peer.run(["sysctl", "-n", "net.ipv4.tcp_timestamps"]).stdout.strip() == "0"
        impair(peer)
        url = f"http://{peer.shoal_ip}:10000"
        assert curl_sha(peer, f"{url}/big.bin") == sha256_file(root_dir / "big.bin")
        wrk(peer, f"{url}/", 16)


@contextlib.contextmanager
def narrow_hop(peer, mtu):
    """A namespace beyond the peer's, behind a veth whose end in the peer's namespace has
    `mtu` (the far end keeps 1500, so its TCP announces an MSS of 1460); the peer's kernel
    routes between the two. Yields (a command prefix for the far namespace, its address)."""
    token = os.urandom(3).hex()
    far, near_if, far_if = f"shoal-far-{token}", f"shn{token}", f"shf{token}"
    subprocess.run(["ip", "netns", "add", far], check=True, timeout=30)
    try:
        def ip(*args):
            subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

        ip("link", "add", near_if, "netns", peer.namespace, "type", "veth", "peer", "name", far_if, "netns", far)
        ip("-n", peer.namespace, "addr", "add", "10.214.9.1/24", "dev", near_if)
        ip("-n", peer.namespace, "link", "set", near_if, "mtu", str(mtu), "up")
        peer.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        ip("-n", far, "addr", "add", "10.214.9.2/24", "dev", far_if)
        ip("-n", far, "link", "set", far_if, "up")
        ip("-n", far, "link", "set", "lo", "up")
        ip("-n", far, "route", "add", "default", "via", "10.214.9.1")
        yield ["ip", "netns", "exec", far], "10.214.9.2"
    finally:
        subprocess.run(["ip", "netns", "del", far], capture_output=True, timeout=30)


@needs_curl
@needs_iptables
@pytest.mark.parametrize("pmtud", ["on", "off", "black hole"])
def test_path_mtu_discovery_through_a_narrower_hop(root_dir, pmtud):
    """httpd on the native stack, curl two hops away, the kernel routing between them onto
    a link of MTU 1280 while both ends announce an MSS of 1460. With path MTU discovery
    (RFC 1191, the default) shoal's segments carry DF: the router drops them and answers
    "fragmentation needed", shoal shrinks its MSS and resends, and the router never
    fragments. With ``--tcp-pmtud off`` the router fragments every full segment instead.
    In the "black hole" case the router's ICMP is filtered (iptables): after two timeouts
    shoal drops DF and the router fragments (RFC 2923 2.1). Each way the file arrives whole."""
    with KernelPeer(open_device=False) as peer, narrow_hop(peer, 1280) as (far, _far_ip):
        if pmtud == "black hole":
            peer.run(["iptables", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "fragmentation-needed", "-j", "DROP"])
        app = start_app(peer, "shoal.apps.httpd", "--root", str(root_dir), "--gw-ipv4-addr", peer.kernel_ip,
                        "--tcp-pmtud", "off" if pmtud == "off" else "on")
        try:
            url = f"http://{peer.shoal_ip}:10000/big.bin"
            r = subprocess.run([*far, "sh", "-c", f"curl -sS --fail --max-time 120 {url} | sha256sum"],
                               capture_output=True, text=True, timeout=150)
            assert r.returncode == 0 and not r.stderr, r.stderr
            assert r.stdout.split()[0] == sha256_file(root_dir / "big.bin")
            router = kernel_counters(peer, ("Ip", "Icmp"))
            if pmtud == "on":
                assert router["FragCreates"] == 0 and router["FragFails"] >= 1, router
                assert router["OutDestUnreachs"] >= 1, router  # "fragmentation needed" sent to shoal
            elif pmtud == "off":
                assert router["FragCreates"] > 0 and router["FragFails"] == 0, router
            else:  # DF segments dropped (and no ICMP got through), then fragments
                assert router["FragFails"] >= 1 and router["FragCreates"] > 0, router
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- app output ---\n{stop_process(app)[-4000:]}") from None
        finally:
            stop_process(app)


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
async def kernel_and_stack(rx_faults=None, tcp_config=None):
    with KernelPeer() as peer:
        config = NativeConfig(peer.ifname, False, addr(peer.shoal_ip), addr("255.255.255.0"), None)
        device = peer.device if rx_faults is None else FaultInjector(peer.device, 3, rx=rx_faults)
        peer.device = None  # the stack owns (and closes) it now
        async with running(device, config, rng=random.Random(5), tcp_config=tcp_config) as stack:
            yield peer, stack


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


SOURCE_CLIENT = """
import hashlib, socket, sys
s = socket.create_connection((sys.argv[1], 9001), timeout=60)
h, n = hashlib.sha256(), 0
while chunk := s.recv(1 << 16):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest())
"""


async def send_to_kernel(peer, stack, size):
    """shoal serves `size` seeded bytes to a kernel client; returns (octets, sha256) it got."""
    data = random.Random(12).randbytes(size)
    server = stack.listen(("", 9001))
    client = await asyncio.create_subprocess_exec(
        *peer.command(["python3", "-c", SOURCE_CLIENT, peer.shoal_ip]), stdout=subprocess.PIPE)
    conn, _ = await asyncio.wait_for(server.accept(), 60)
    view = memoryview(data)
    for i in range(0, size, 1 << 16):
        await asyncio.wait_for(conn.write(view[i:i + (1 << 16)]), 60)
    await conn.close()
    out, _ = await asyncio.wait_for(client.communicate(), 60)
    server.close()
    n, digest = out.split()
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    return int(n)


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
                    # ...each answered with a plain ACK, not through the RFC 5961 limiter,
                    # which names the duplicate in a D-SACK block that Linux takes (RFC 2883)
                    assert tcp["stats"].get("unacceptable-ack", 0) > 0, tcp
                    assert tcp["stats"].get("dsack-sent", 0) > 0, tcp
                    nstat = peer.run(["nstat", "-asz", "TcpExtTCPDSACKRecv"]).stdout.split()
                    assert int(nstat[nstat.index("TcpExtTCPDSACKRecv") + 1]) > 0, nstat
                assert tcp["drops"].get("challenge-ack-limited", 0) == 0, tcp

    asyncio.run(asyncio.wait_for(main(), 240))


# -- kernel-side reordering: NFQUEUE and a user-space re-sequencer in the namespace ---------

REORDERER = """
import json, random, select, signal, sys, time
from netfilterqueue import COPY_META, NetfilterQueue

# argv: stats file, seed, max hold (s), then per queue "number:hold probability:depth:drop probability"
path, seed, max_hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
queues, stats = [], {}

def handler(num, prob, depth, loss):
    held = []  # [packet, packets still to overtake it, deadline]
    st = stats[num] = {"seen": 0, "held": 0, "overtaken": 0, "timed-out": 0, "dropped": 0}
    def cb(pkt):
        st["seen"] += 1
        r = rng.random()
        if r < loss:
            pkt.drop()  # after queueing: the sender's TCP already counts it as sent
            st["dropped"] += 1
            return
        if len(held) < 8 and r < loss + prob:
            held.append([pkt, depth, time.monotonic() + max_hold])
            st["held"] += 1
            return
        pkt.accept()
        for h in held[:]:
            h[1] -= 1
            if h[1] == 0:  # `depth` later packets went first: this one now arrives out of order
                held.remove(h)
                h[0].accept()
                st["overtaken"] += 1
    def expire(now, everything=False):
        for h in held[:]:
            if everything or h[2] <= now:
                held.remove(h)
                h[0].accept()
                st["timed-out"] += 1
        return min((h[2] for h in held), default=None)
    return cb, expire

for spec in sys.argv[4:]:
    num, prob, depth, loss = spec.split(":")
    cb, expire = handler(int(num), float(prob), int(depth), float(loss))
    q = NetfilterQueue()
    q.bind(int(num), cb, max_len=4096, mode=COPY_META)
    queues.append((q, expire))
fds = [q.get_fd() for q, _ in queues]
print("ready", flush=True)
while not stopping:
    deadlines = [d for d in (expire(time.monotonic()) for _, expire in queues) if d is not None]
    timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.1
    try:
        ready, _, _ = select.select(fds, [], [], timeout)
    except InterruptedError:
        continue
    for q, _ in queues:
        if q.get_fd() in ready:
            q.run(block=False)
for q, expire in queues:
    expire(0, everything=True)
    q.unbind()
with open(path, "w") as f:
    json.dump(stats, f)
"""


def netfilterqueue_unavailable():
    """None if NFQUEUE reordering can run here, else why not."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt: iptables)"
    if importlib.util.find_spec("netfilterqueue") is None:  # the helper imports it in the namespace
        return "netfilterqueue is not installed (apt: libnetfilter-queue-dev; pip: netfilterqueue)"
    return None


def kernel_counters(peer, groups=("Tcp", "TcpExt")):
    """The namespace's counters of `groups` (/proc/net/{snmp,netstat} are per namespace)."""
    out = {}
    prefixes = tuple(f"{group}:" for group in groups)
    for name in ("snmp", "netstat"):
        lines = [line.split() for line in peer.run(["cat", f"/proc/net/{name}"]).stdout.splitlines()
                 if line.startswith(prefixes)]
        for head, values in zip(lines[0::2], lines[1::2]):
            out.update(zip(head[1:], map(int, values[1:])))
    return out


@contextlib.contextmanager
def nfqueue(peer, tmp_path, out="0.03:3:0.01", into="0.03:3:0.01"):
    """Impair the TCP data segments crossing the namespace's tap from user space: NFQUEUE
    0 on OUTPUT (the kernel toward shoal), queue 1 on INPUT (shoal toward the kernel's
    socket), each "hold probability:depth:drop probability". A held segment is let go
    after `depth` later ones have passed, so it arrives out of order; one whose
    followers do not come within 50 ms (the end of a burst) is let go as is.

    Unlike an iptables DROP on OUTPUT (a local drop the kernel's TCP sees and resends
    at once), a queued packet is "stolen" from the sender's point of view: its TCP
    believes it sent it, and a drop verdict given later is a loss on the wire that
    the kernel must detect and repair like any other. Yields a dict that holds the
    per-queue counts once the block ends."""
    stats_path = tmp_path / f"nfqueue-{peer.ifname}.json"
    proc = peer.popen([sys.executable, "-c", REORDERER, str(stats_path), "11", "0.05", f"0:{out}", f"1:{into}"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()
    match = ["-p", "tcp", "-m", "length", "--length", "100:65535"]  # data segments, not bare ACKs
    peer.run(["iptables", "-A", "OUTPUT", "-o", peer.ifname, *match, "-j", "NFQUEUE", "--queue-num", "0",
              "--queue-bypass"])
    peer.run(["iptables", "-A", "INPUT", "-i", peer.ifname, *match, "-j", "NFQUEUE", "--queue-num", "1",
              "--queue-bypass"])
    result = {}
    try:
        yield result
    finally:
        peer.run(["iptables", "-F", "OUTPUT"], check=False)
        peer.run(["iptables", "-F", "INPUT"], check=False)
        proc.terminate()
        proc.wait(30)
        if stats_path.exists():
            result.update({int(k): v for k, v in json.loads(stats_path.read_text()).items()})


@pytest.mark.skipif(netfilterqueue_unavailable() is not None, reason=str(netfilterqueue_unavailable()))
def test_kernel_side_reordering_both_ways_and_output_loss(root_dir, tmp_path):
    """Reordering and 1% loss done on the kernel's side (NFQUEUE), not by shoal's fault
    injector, both ways: shoal must queue out-of-order data from the kernel (RFC 9293
    SHLD-31) and ACK the holes so the kernel repairs its losses, and must repair its
    own sends, lost or reordered before the kernel's socket; both transfers
    sha256-checked. The counters prove each impairment happened and was seen."""
    size = 8 << 20

    async def main():
        async with kernel_and_stack() as (peer, stack):
            before = kernel_counters(peer)
            with nfqueue(peer, tmp_path) as stats:
                got = await download_from_kernel(peer, stack, root_dir)
                assert got == (FILE_SIZE, sha256_file(root_dir / "big.bin"))
                assert await send_to_kernel(peer, stack, size) == size
            kernel = kernel_counters(peer)
            tcp = stack.counters()["tcp"]
            assert stats[0]["overtaken"] > 0 and stats[1]["overtaken"] > 0, stats
            assert stats[0]["dropped"] > 0 and stats[1]["dropped"] > 0, stats
            assert tcp["stats"].get("out-of-order", 0) > 0, (stats, tcp)  # shoal saw the reorder
            assert kernel["TCPOFOQueue"] - before["TCPOFOQueue"] > 0, (stats, kernel)  # so did Linux
            assert kernel["RetransSegs"] - before["RetransSegs"] > 0, (stats, kernel)  # and repaired the loss
            assert tcp["stats"].get("retransmit", 0) > 0, (stats, tcp)
            assert tcp["drops"].get("challenge-ack-limited", 0) == 0, tcp

    asyncio.run(asyncio.wait_for(main(), 240))


ECN_MARKING = """table ip shoalecn {
 chain out {
  type filter hook output priority 0;
  oifname "%(ifname)s" ip ecn ect0 meta l4proto tcp numgen random mod 20 == 0 ip ecn set ce
 }
 chain in {
  type filter hook input priority 0;
  iifname "%(ifname)s" ip ecn ect0 meta l4proto tcp numgen random mod 20 == 0 ip ecn set ce
 }
}
"""


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (apt: nftables)")
def test_ecn_with_the_kernel_ce_marked_both_ways(root_dir):
    """ECN (RFC 3168) against Linux through the stack's IPv4 hooks: shoal sends ECT(0)
    on new data (`TcpSegment.ect`) and hears CE (``segment_arrived(..., ce)``). With
    ``net.ipv4.tcp_ecn=1`` in the namespace both directions negotiate ECN, and nft
    turns 5% of the ECT(0) TCP packets into CE on each side: what the kernel sends
    shoal (shoal must echo ECE) and what shoal sends the kernel (only ECT(0) packets
    are marked, and the kernel's ECE must make shoal reduce its window)."""
    size = 8 << 20

    async def main():
        async with kernel_and_stack(tcp_config=TcpConfig(ecn=True)) as (peer, stack):
            peer.run(["sysctl", "-qw", "net.ipv4.tcp_ecn=1"])
            r = peer.run(["nft", "-f", "-"], check=False, input=ECN_MARKING % {"ifname": peer.ifname})
            if r.returncode != 0:
                pytest.skip(f"this nft cannot set the ECN field: {r.stderr.strip()}")
            got = await download_from_kernel(peer, stack, root_dir)
            assert got == (FILE_SIZE, sha256_file(root_dir / "big.bin"))
            assert await send_to_kernel(peer, stack, size) == size
            tcp = stack.counters()["tcp"]["stats"]
            assert tcp.get("ce-received", 0) > 0, tcp     # the kernel's data was ECT and reached us marked
            assert tcp.get("ecn-reduction", 0) > 0, tcp   # ours was ECT(0), and the kernel echoed ECE

    asyncio.run(asyncio.wait_for(main(), 240))


@pytest.mark.soak
@needs_curl
def test_soak_one_gigabyte_download_by_curl(tmp_path):
    size = 1 << 30
    big = tmp_path / "huge.bin"
    with open(big, "wb") as f:
        rng = random.Random(1)
        for _ in range(size >> 20):
            f.write(rng.randbytes(1 << 20))

    with app_on_tap("shoal.apps.httpd", "--root", str(tmp_path)) as (peer, _app):
        assert curl_sha(peer, f"http://{peer.shoal_ip}:10000/huge.bin", timeout=3000) == sha256_file(big)


@pytest.mark.soak
@pytest.mark.parametrize("impaired", [False, True], ids=["clean", "impaired"])
def test_soak_one_gigabyte_upload_to_a_shoal_sink(impaired):
    """A kernel client sends 1 GiB to a sink on the native stack (issue 5); the impaired
    run loses 2% of what shoal receives and adds `impair`'s kernel-side loss and
    duplication. Prints the rate (run with -s to see it)."""
    if impaired and shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (apt: iptables)")
    size = 1 << 30

    async def main():
        async with kernel_and_stack(Faults(loss=0.02) if impaired else None) as (peer, stack):
            if impaired:
                impair(peer)
            started = time.monotonic()
            got = await upload_to_sink(peer, stack, size)  # the sink hashes what it reads as it goes
            took = time.monotonic() - started
            assert got == (size, upload_sha(size))
            print(f"1 GiB upload to a shoal sink ({'impaired' if impaired else 'clean'}): {took:.1f} s, "
                  f"{size / took / 1e6:.1f} MB/s; tcp drops {stack.counters()['tcp']['drops']}")

    asyncio.run(asyncio.wait_for(main(), 3600))
