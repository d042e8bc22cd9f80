"""The native stack against the posix stack (and pytcp), with the Linux kernel as the client.

    python bench/native.py [--duration 3] [--connections 1,16] [--size-mb 20] [--runs 3] [--no-tso]
                           [--smp 1,2] [--rounds 3] [--churn 16]

In one run, the same ``python -m shoal.apps.httpd --smp N --root DIR`` is measured

* on the **native** stack over a TAP whose far side sits in a namespace this
  script creates (`shoal.drivers.netns.KernelPeer`), and
* on the **posix** stack, reached from a second namespace through a veth pair
  whose root-namespace end carries the server's address,

so that in both cases the load generators (wrk and curl) run inside a namespace and
cross one virtual link. For each: wrk requests/s for ``GET /`` (a 14-byte body)
at each connection count, new connections/s (``--churn N``: wrk with N connections
sending ``Connection: close``, so each request is a connection opened and closed, the
server closing first and keeping TIME-WAIT), bulk download MB/s of a ``--size-mb`` file with curl
(the best of ``--runs``; pytcp gets one, it is slow), and upload MB/s of as many bytes
to a small sink app on the same stack (`SINK_APP`, timed by the kernel-side client
from its first byte sent to the sink's answer; not for pytcp), for each shard count of ``--smp``
(the native stack gets one TAP queue per shard, steered by flow; the posix stack's
shards share the listening port through SO_REUSEPORT). With ``--rounds R`` each
native/posix pair is measured R times, alternating, and each cell is the median. A
second table gives how busy each CPU was (from /proc/stat) during each wrk run, which
tells whether the server's cores or the load generator's ran out.
pytcp (PyPI, 2.7) is the pure-Python peer the issue names (its new connections/s are not measured):
if it is installed, a small HTTP server on its Berkeley-like sockets (a thread per
connection, the same response bytes for ``GET /``) runs on a TAP of its own and is
measured the same way; otherwise the output says why not. Prints a markdown table; every interface
and namespace made here is removed on exit, even after failures.

A second table (``--offloads``, on by default) isolates the TAP's offloads
(`shoal.drivers.tap`: virtio-net headers, TCP super-frames both ways): a native stack
in this process on a TAP opened with and without them serves the bulk file to a
kernel socket in the namespace (download: shoal sends) and sinks the same amount
from it (upload: shoal receives), best MB/s of ``--runs`` each, measured by the
kernel-side client from its first to its last byte.

``--no-tso`` runs every native row with TSO from TCP off (the stack's ``--tcp-tso off``,
`TcpConfig.tso` in process): connections send segments of one MSS, as before issue 5's
change (the TAP driver may still coalesce runs of them into super-frames, which the
offloads table's first row leaves out).
"""
from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# Run as a script, this folder leads sys.path, and bench/http.py would shadow the
# standard library's http for the in-process stack of the offloads table.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from shoal.drivers.netns import KernelPeer, stop_process, unavailable  # noqa: E402

OFFLOAD_CLIENT = r"""
import socket, sys, time
host, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, 9000), timeout=60)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
if mode == "upload":
    block = bytes(1 << 20)
    t = time.monotonic()
    for _ in range(size >> 20):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"k"
else:
    s.sendall(b"g")
    n, t = 0, None
    while n < size:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        if t is None:
            t = time.monotonic()
        n += len(chunk)
    assert n == size, n
print(size / (time.monotonic() - t) / 1e6)
"""

PYTHON = sys.executable

SINK_APP = r"""
import asyncio, sys
from shoal import net
from shoal.runtime import smp

async def sink(conn):
    while await conn.read_buffers():  # the copy-less read, on both stacks
        pass
    await conn.write(b"k")
    await conn.close()

async def serve():
    server = net.listen(("", 9000))
    async def accept_all():
        async for conn in server:
            asyncio.ensure_future(sink(conn))
    asyncio.ensure_future(accept_all())

async def main():
    await smp.invoke_on_all(serve)
    print("sink: listening", flush=True)
    await asyncio.Event().wait()

sys.exit(net.AppTemplate().run(main, sys.argv[1:]))
"""
"""The sink of the upload column: every shard accepts on port 9000, reads to the end with
`read_buffers` (views of the received frames on the native stack, the transport's chunks
unjoined on posix), answers "k"."""

class VethPeer:
    """A namespace joined to the root namespace by a veth pair (the posix stack's path)."""

    def __init__(self, subnet="10.213.11"):
        token = os.urandom(3).hex()
        self.namespace = f"shoalb-{token}"
        self.outer = f"shb{token}o"
        self.inner = f"shb{token}i"
        self.client_ip = f"{subnet}.1"
        self.server_ip = f"{subnet}.2"
        self._made = False
        try:
            self._ip("netns", "add", self.namespace)
            self._made = True
            self._ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner, "netns", self.namespace)
            self._ip("addr", "add", f"{self.server_ip}/24", "dev", self.outer)
            self._ip("link", "set", self.outer, "up")
            self._ip("-n", self.namespace, "addr", "add", f"{self.client_ip}/24", "dev", self.inner)
            self._ip("-n", self.namespace, "link", "set", self.inner, "up")
            self._ip("-n", self.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def command(self, argv):
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv, timeout=120):
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout)

    def close(self):
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)
        if self._made:
            subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
            self._made = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_httpd(options, smp=1):
    app = subprocess.Popen([PYTHON, "-m", "shoal.apps.httpd", "--smp", str(smp), *options],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return app


def wait_banner(app):
    seen = []
    for line in app.stdout:
        seen.append(line)
        if "httpd: listening" in line or len(seen) > 200:
            break
    if "httpd: listening" not in seen[-1]:
        raise RuntimeError("httpd did not start:\n" + "".join(seen))


def _median_row(rounds, connections):
    """One table row from several rounds of `measure`: the median of each cell."""
    row = {}
    for key in [f"_rps{c}" for c in connections] + ["_mbs", "_up"] + (["_churn"] if "_churn" in rounds[0] else []):
        row[key] = statistics.median(r[key] for r in rounds)
    if "_churn" in row:
        errors = any("errors" in r["churn"] for r in rounds)
        row["churn"] = f"{row['_churn']:,.0f}" + (" (errors)" if errors else "")
    for c in connections:
        errors = any("errors" in r[f"rps{c}"] for r in rounds)
        row[f"rps{c}"] = f"{row[f'_rps{c}']:,.0f}" + (" (errors)" if errors else "")
        ranked = sorted(rounds, key=lambda r: r[f"_rps{c}"])
        row[f"cpu{c}"] = ranked[len(ranked) // 2][f"cpu{c}"]  # of the (upper) median round
    row["mbs"] = f"{row['_mbs']:.1f}"
    row["up"] = f"{row['_up']:.1f}"
    return row


def wrk(peer, url, connections, duration, close=False):
    r = peer.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "5s",
                  *(["-H", "Connection: close"] if close else []), url], timeout=duration + 60)
    out = r.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if r.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed: {out}{r.stderr}")
    errors = "Socket errors" in out or "Non-2xx" in out
    return float(m.group(1)), errors


def curl_mb_s(peer, url, runs):
    best = 0.0
    for _ in range(runs):
        r = peer.run(["curl", "-sS", "--fail", "--max-time", "120", "-o", "/dev/null", "-w",
                      "%{speed_download} %{size_download}", url], timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"curl failed: {r.stderr}")
        speed, _size = r.stdout.split()
        best = max(best, float(speed) / 1e6)
    return best


def _cpu_times():
    """(busy, total) jiffies of each CPU, from /proc/stat (idle and iowait are not busy)."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = [int(x) for x in line.split()[1:]]
                out.append((sum(fields) - fields[3] - fields[4], sum(fields)))
    return out


def measure(peer, base_url, connections, duration, runs, churn):
    row = {}
    for c in connections:
        before = _cpu_times()
        rps, errors = wrk(peer, f"{base_url}/", c, duration)
        after = _cpu_times()
        row[f"rps{c}"] = f"{rps:,.0f}" + (" (errors)" if errors else "")
        row[f"_rps{c}"] = rps
        # how busy each CPU was during the run: which side (server or client) ran out of CPU
        row[f"cpu{c}"] = "/".join(f"{100 * (b[0] - a[0]) / max(b[1] - a[1], 1):.0f}"
                                  for a, b in zip(before, after))
    if churn:
        rps, errors = wrk(peer, f"{base_url}/", churn, duration, close=True)
        row["churn"] = f"{rps:,.0f}" + (" (errors)" if errors else "")
        row["_churn"] = rps
    mb_s = curl_mb_s(peer, f"{base_url}/big.bin", runs)
    row["mbs"] = f"{mb_s:.1f}"
    row["_mbs"] = mb_s
    return row


def bench_native(root, connections, duration, runs, tso, smp=1, churn=0):
    with KernelPeer(open_device=False, subnet="10.213.12") as peer:
        app = peer.start_shoal(["-m", "shoal.apps.httpd", "--smp", str(smp), "--network-stack", "native",
                                "--tcp-tso", "on" if tso else "off", "--host-ipv4-addr", peer.shoal_ip,
                                "--root", root])
        try:
            wait_banner(app)
            return measure(_Runner(peer), f"http://{peer.shoal_ip}:10000", connections, duration, runs, churn)
        finally:
            stop_process(app)


def _wait_sink(app):
    line = app.stdout.readline()
    if "sink: listening" not in line:
        raise RuntimeError(f"the sink did not start: {line}{stop_process(app)}")


def sink_mb_s(runner, host, size, runs):
    """Best MB/s of `runs` uploads of `size` bytes to the sink, timed by the kernel-side client."""
    best = 0.0
    for _ in range(runs):
        r = runner.run([PYTHON, "-c", OFFLOAD_CLIENT, host, "upload", str(size)], timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"upload failed: {r.stdout}{r.stderr}")
        best = max(best, float(r.stdout))
    return best


def bench_native_sink(size, runs, tso, smp=1):
    with KernelPeer(open_device=False, subnet="10.213.18") as peer:
        app = peer.start_shoal(["-c", SINK_APP, "--smp", str(smp), "--network-stack", "native",
                                "--tcp-tso", "on" if tso else "off", "--host-ipv4-addr", peer.shoal_ip])
        try:
            _wait_sink(app)
            return sink_mb_s(_Runner(peer), peer.shoal_ip, size, runs)
        finally:
            stop_process(app)


def bench_posix_sink(size, runs, smp=1):
    with VethPeer(subnet="10.213.19") as peer:
        app = subprocess.Popen([PYTHON, "-c", SINK_APP, "--smp", str(smp), "--network-stack", "posix"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_sink(app)
            return sink_mb_s(peer, peer.server_ip, size, runs)
        finally:
            stop_process(app)


def bench_posix(root, connections, duration, runs, smp=1, churn=0):
    with VethPeer() as peer:
        app = start_httpd(["--network-stack", "posix", "--address", peer.server_ip, "--root", root], smp)
        try:
            wait_banner(app)
            return measure(peer, f"http://{peer.server_ip}:10000", connections, duration, runs, churn)
        finally:
            stop_process(app)


class _Runner:
    """`KernelPeer.run` with the signature `measure` uses."""

    def __init__(self, peer):
        self.peer = peer

    def run(self, argv, timeout=120):
        return self.peer.run(argv, check=False, timeout=timeout)


async def _offload_round(vnet_hdr, size, runs, tso):
    """Best download and upload MB/s of an in-process native stack on a TAP (see the docstring),
    with TSO from TCP on or off."""
    import asyncio
    import ipaddress

    from shoal.drivers.tap import TapDevice
    from shoal.net.native.config import NativeConfig
    from shoal.net.native.stack import running
    from shoal.net.native.tcp.connection import TcpConfig

    best = {"download": 0.0, "upload": 0.0}
    with KernelPeer(open_device=False, subnet="10.213.14") as peer:
        device = TapDevice(peer.ifname, vnet_hdr=vnet_hdr, up=False)
        peer.adopt()
        config = NativeConfig(peer.ifname, False, int(ipaddress.IPv4Address(peer.shoal_ip)),
                              int(ipaddress.IPv4Address("255.255.255.0")), None)
        async with running(device, config, idle_poll_time=200e-6, rng=random.Random(1),
                           tcp_config=TcpConfig(tso=tso)) as stack:
            server = stack.listen(("", 9000))
            data = memoryview(random.Random(2).randbytes(size))
            for _ in range(runs):
                for mode in ("download", "upload"):
                    client = await asyncio.create_subprocess_exec(
                        *peer.command([PYTHON, "-c", OFFLOAD_CLIENT, peer.shoal_ip, mode, str(size)]),
                        stdout=subprocess.PIPE)
                    conn, _ = await asyncio.wait_for(server.accept(), 60)
                    if mode == "download":
                        await asyncio.wait_for(conn.read(), 60)
                        for i in range(0, size, 1 << 18):
                            await conn.write(data[i:i + (1 << 18)])
                    else:
                        while await asyncio.wait_for(conn.read(), 60):
                            pass
                        await conn.write(b"k")
                    await conn.close()
                    out, _ = await asyncio.wait_for(client.communicate(), 120)
                    if client.returncode != 0:
                        raise RuntimeError(f"offload {mode} client failed")
                    best[mode] = max(best[mode], float(out))
            server.close()
    return best


def bench_offloads(size_mb, runs, tso):
    import asyncio

    return {vnet: asyncio.run(asyncio.wait_for(_offload_round(vnet, size_mb << 20, runs, tso), 600))
            for vnet in (False, True)}


PYTCP_SERVER = r"""
import os, sys, threading
from pytcp import TcpIpStack
from pytcp.lib import socket as psocket

ifname, ip, root = sys.argv[1:4]
stack = TcpIpStack(interface=ifname, mac_address="02:00:00:77:77:77", ip4_address=ip + "/24",
                   ip6_address="fe80::7777/64")
stack.start()
HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Type: text/plain\r\n\r\nHello, World!\n"

def serve(conn):
    pending = b""
    try:
        while True:
            data = conn.recv()
            if not data:
                break
            pending += data
            while b"\r\n\r\n" in pending:
                head, pending = pending.split(b"\r\n\r\n", 1)
                path = head.split(b" ", 2)[1].decode()
                if path == "/":
                    conn.send(HELLO)
                    continue
                with open(os.path.join(root, path.lstrip("/")), "rb") as f:
                    body = f.read()
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                for i in range(0, len(body), 1 << 16):
                    conn.send(body[i:i + (1 << 16)])
    finally:
        conn.close()

server = psocket.socket(psocket.AF_INET4, psocket.SOCK_STREAM)
server.bind((ip, 10000))
server.listen()
print("pytcp: listening", flush=True)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def bench_pytcp(root, connections, duration, runs):
    """pytcp 2.7 (PyPI) on a TAP: a thread per connection over its Berkeley-like sockets."""
    try:
        import pytcp  # noqa: F401
    except ImportError:
        return "not installed (`pip install pytcp`)"
    with KernelPeer(open_device=False, subnet="10.213.13") as peer:
        app = subprocess.Popen([PYTHON, "-O", "-c", PYTCP_SERVER, peer.ifname, peer.shoal_ip, root],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while not peer.interface_exists():  # (pytcp's own tap)
                if app.poll() is not None or time.monotonic() > deadline:
                    return "did not start: " + app.stdout.read()[-500:]
                time.sleep(0.05)
            peer.adopt()
            for line in app.stdout:
                if "pytcp: listening" in line:
                    break
            try:
                return measure(_Runner(peer), f"http://{peer.shoal_ip}:10000", connections, duration, runs, 0)
            except RuntimeError as e:
                return f"failed under load: {str(e)[:300]}"
        finally:
            stop_process(app)


def main(argv=None):
    # A SIGTERM (timeout, a CI limit) unwinds like Ctrl-C, so the namespaces and taps
    # made here are removed by their finally blocks instead of being left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="wrk seconds per run")
    parser.add_argument("--connections", default="1,16", help="wrk connection counts")
    parser.add_argument("--size-mb", type=int, default=20, help="size of the bulk file")
    parser.add_argument("--runs", type=int, default=3, help="curl downloads (best is kept)")
    parser.add_argument("--no-pytcp", dest="pytcp", action="store_false", help="skip pytcp")
    parser.add_argument("--no-offloads", dest="offloads", action="store_false",
                        help="skip the TAP offloads table (in-process stack, with and without)")
    parser.add_argument("--no-tso", dest="tso", action="store_false",
                        help="native rows with TSO from TCP off: one-MSS segments (see the docstring)")
    parser.add_argument("--smp", default="1", help="shard counts, e.g. 1,2 (a row pair each)")
    parser.add_argument("--rounds", type=int, default=1, help="native/posix pairs per shard count (median kept)")
    parser.add_argument("--churn", type=int, default=16,
                        help="wrk connections for new connections/s (Connection: close); 0 skips it")
    args = parser.parse_args(argv)
    why = unavailable()
    if why is not None:
        sys.exit(f"bench/native.py: {why}")
    for tool in ("wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/native.py: {tool} is not installed")
    connections = [int(c) for c in args.connections.split(",")]
    shard_counts = [int(n) for n in args.smp.split(",")]
    if args.rounds < 1 or min(shard_counts) < 1:
        sys.exit("bench/native.py: --rounds and every --smp count must be at least 1")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as root:
        with open(os.path.join(root, "big.bin"), "wb") as f:
            rng = random.Random(1)
            for _ in range(args.size_mb):  # a MiB at a time: randbytes takes at most 256 MiB
                f.write(rng.randbytes(1 << 20))
        rows = {}
        for smp in shard_counts:
            rounds = {"native": [], "posix": []}
            for _ in range(args.rounds):  # alternating, so drifting machine load hits both alike
                row = bench_native(root, connections, args.duration, args.runs, args.tso, smp, args.churn)
                row["_up"] = bench_native_sink(args.size_mb << 20, args.runs, args.tso, smp)
                rounds["native"].append(row)
                row = bench_posix(root, connections, args.duration, args.runs, smp, args.churn)
                row["_up"] = bench_posix_sink(args.size_mb << 20, args.runs, smp)
                rounds["posix"].append(row)
            rows[f"native (TAP) --smp {smp}"] = _median_row(rounds["native"], connections)
            rows[f"posix (veth) --smp {smp}"] = _median_row(rounds["posix"], connections)
        pytcp = bench_pytcp(root, connections, args.duration, 1) if args.pytcp else "skipped (--no-pytcp)"
        if isinstance(pytcp, dict):
            rows["pytcp (TAP)"] = pytcp
    offloads = bench_offloads(args.size_mb, args.runs, args.tso) if args.offloads else None
    tso = "TSO from TCP " + ("on" if args.tso else "off (--no-tso)")
    print(f"# shoal httpd: native vs posix vs pytcp ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"wrk -d{args.duration}, {args.size_mb} MB file, median of {args.rounds} round(s), native: {tso})\n")
    churn = f" new conn/s (wrk -c{args.churn}, close) |" if args.churn else ""
    header = "| stack | " + " | ".join(f"wrk -c{c} req/s" for c in connections) + f" |{churn} curl MB/s | upload MB/s |"
    print(header)
    print("|" + "---|" * (len(connections) + 3 + bool(args.churn)))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[f"rps{c}"] for c in connections)
              + (f" | {row.get('churn', 'not measured')}" if args.churn else "")
              + f" | {row['mbs']} | {row.get('up', 'not measured')} |")
    print()
    for smp in shard_counts:
        native, posix = rows[f"native (TAP) --smp {smp}"], rows[f"posix (veth) --smp {smp}"]
        ratios = [f"-c{c}: {native[f'_rps{c}'] / posix[f'_rps{c}']:.2f}" for c in connections]
        if args.churn:
            ratios.append(f"new connections: {native['_churn'] / posix['_churn']:.2f}")
        print(f"native/posix, --smp {smp}: {', '.join(ratios)}, bulk: {native['_mbs'] / posix['_mbs']:.2f}, "
              f"upload: {native['_up'] / posix['_up']:.2f}")
    if len(shard_counts) > 1:
        best = {stack: {key: max(row[key] for name, row in rows.items() if name.startswith(stack))
                        for key in [f"_rps{c}" for c in connections] + ["_mbs", "_up"]} for stack in ("native", "posix")}
        ratios = [f"-c{c}: {best['native'][f'_rps{c}'] / best['posix'][f'_rps{c}']:.2f}" for c in connections]
        print(f"best native / best posix (any shard count): {', '.join(ratios)}, "
              f"bulk: {best['native']['_mbs'] / best['posix']['_mbs']:.2f}, "
              f"upload: {best['native']['_up'] / best['posix']['_up']:.2f}")
    native = rows[f"native (TAP) --smp {shard_counts[0]}"]
    if isinstance(pytcp, dict):
        ratios = [f"-c{c}: {native[f'_rps{c}'] / pytcp[f'_rps{c}']:.1f}" for c in connections]
        print(f"native/pytcp: {', '.join(ratios)}, bulk: {native['_mbs'] / max(pytcp['_mbs'], 1e-9):.1f}")
    else:
        print(f"pytcp: {pytcp}")
    print("\nBusy % of each CPU (cpu0/cpu1/...) during the wrk runs (of the median round):\n")
    print("| stack | " + " | ".join(f"wrk -c{c}" for c in connections) + " |")
    print("|" + "---|" * (len(connections) + 1))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row[f"cpu{c}"] for c in connections) + " |")
    if offloads is not None:
        print(f"\n## TAP offloads: in-process native stack, {tso}, {args.size_mb} MB, best of {args.runs}, "
              f"load average {os.getloadavg()[0]:.2f}\n")
        print("| TAP | download MB/s (shoal sends) | upload MB/s (shoal sinks) |")
        print("|---|---|---|")
        for vnet, best in offloads.items():
            name = "virtio-net header, super-frames" if vnet else "plain frames"
            print(f"| {name} | {best['download']:.1f} | {best['upload']:.1f} |")


if __name__ == "__main__":
    main()
