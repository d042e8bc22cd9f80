"""Benchmark: shoal memcached on both stacks against Debian's memcached, driven by memaslap.

    python bench/memcached.py [--duration 5] [--rounds 3] [--connections 64]
        [--targets shoal-posix-1,shoal-posix-2,shoal-native-1,memcached-1,memcached-2]

Every target gets the same fixed mix (issue 6): 90% get, 10% set, 64-byte keys,
100-byte values, `--connections` concurrent connections from one memaslap thread
(Debian names it memcaslap). Targets:

    shoal-posix-N   python -m shoal.apps.memcached --smp N on the posix stack (kernel sockets),
                    on free loopback ports
    shoal-native-N  the same on the native stack (shoal's TCP/IP) over a TAP whose far side
                    is a network namespace made for the run (`KernelPeer`); memaslap runs
                    inside the namespace against the TAP address, so the kernel's TCP is
                    the client's stack and shoal's the server's
    memcached-N     memcached -t N on free loopback ports

The last column is the server's CPU time (all its processes) per operation, which
moves far less than ops/s on a shared machine. Rounds interleave the targets (round 1: every target, then round 2 ...), and each
cell of the table is the median over the rounds. Each server is stopped by its PID
after its run; a namespace is deleted with it.
Latency percentiles come from memaslap's log2 histogram, so each is reported as the
upper bound of its power-of-two bucket, capped at the maximum (in microseconds). Prints a Markdown table.
The machine's cores are shared by the server and the load generator: say so when
quoting numbers.
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from shoal.drivers.netns import KernelPeer, unavailable

MIX = """key
64 64 1
value
100 100 1
cmd
0 0.1
1 0.9
"""

#: Run inside the namespace: succeed once a memcached server answers `version`.
_WAIT_VERSION = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as s:
            s.sendall(b"version\\r\\n")
            if s.recv(100).startswith(b"VERSION"):
                break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("no answer")
        time.sleep(0.1)
"""

COLUMNS = ("ops", "avg", "p50", "p99", "p99.9", "max", "cpu_us_per_op")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, bound_s=60.0):
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\r\n")
                if s.recv(100).startswith(b"VERSION"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer on port {port} within {bound_s} s")


class Target:
    """One server under test: where memaslap must run and which address it loads."""

    def __init__(self, name):
        kind, _, n = name.rpartition("-")
        if kind not in ("shoal-posix", "shoal-native", "memcached") or not n.isdigit():
            raise SystemExit(f"unknown target {name!r} (shoal-posix-N, shoal-native-N or memcached-N)")
        self.name, self.kind, self.n = name, kind, n
        self.proc = self.peer = None
        self.server = None  # "address:port" for memaslap

    def start(self):
        if self.kind == "shoal-native":
            self._start_native()
            return
        port = free_port()
        if self.kind == "shoal-posix":
            cmd = [sys.executable, "-m", "shoal.apps.memcached", "--address", "127.0.0.1", "--port", str(port),
                   "--smp", self.n, "--max-memory", "256M", "--network-stack", "posix"]
        else:
            cmd = ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "256",
                   "-t", self.n]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.server = f"127.0.0.1:{port}"
        try:
            wait_listening(port, self.proc)
        except BaseException:
            self.stop()
            raise

    def _start_native(self):
        """The server opens the tap; once it exists its far side moves into the namespace."""
        self.peer = KernelPeer(open_device=False)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal.apps.memcached", "--address", self.peer.shoal_ip, "--port", "11211",
                 "--smp", self.n, "--max-memory", "256M", "--network-stack", "native",
                 "--tap-device", self.peer.ifname, "--host-ipv4-addr", self.peer.shoal_ip,
                 "--netmask-ipv4-addr", "255.255.255.0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not self.peer.interface_up():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the native server did not create its tap")
                time.sleep(0.05)
            self.peer.adopt()
            self.peer.run(["python3", "-c", _WAIT_VERSION, self.peer.shoal_ip, "11211", "60"], timeout=90)
            self.server = f"{self.peer.shoal_ip}:11211"
        except BaseException:
            self.stop()
            raise

    def cpu_seconds(self):
        """User + system CPU time of the server and all its processes (shards) so far."""
        total = 0.0
        root = psutil.Process(self.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def command(self, argv):
        """`argv` as it must run to reach this server (inside the namespace for native)."""
        return argv if self.peer is None else self.peer.command(argv)

    def stop(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            self.proc = None
            if self.peer is not None:
                self.peer.close()
                self.peer = None

    @property
    def label(self):
        if self.kind == "memcached":
            return f"memcached -t {self.n}"
        return f"shoal --smp {self.n}, {self.kind.split('-')[1]} stack"


def percentiles(histogram, wanted):
    """Upper bounds (us) of the log2 buckets holding each wanted percentile.

    memaslap files a latency t under the smallest r with 2**r >= t (its
    ``ms_local_log2``), so bucket r holds (2**(r-1), 2**r] and its bound is 2**r."""
    total = sum(histogram.values())
    out, seen = {}, 0
    for exponent in sorted(histogram):
        seen += histogram[exponent]
        for p in wanted:
            if p not in out and seen >= total * p / 100:
                out[p] = 2 ** exponent
    return out


def parse(output):
    """ops/s, average and max latency and the total log2 histogram from memaslap's report."""
    tps = re.search(r"Run time: [\d.]+s Ops: (\d+) TPS: (\d+)", output)
    total = output[output.index("Total Statistics ("):]
    avg = int(re.search(r"Avg:\s+(\d+)", total).group(1))
    peak = int(re.search(r"Max:\s+(\d+)", total).group(1))
    histogram = {}
    for row in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", total.split("cmd_get:")[0], re.M):
        base = int(row.group(1))
        for offset, count in enumerate(row.group(2).split()):
            histogram[base + offset] = int(count)
    return {"ops": int(tps.group(2)), "total_ops": int(tps.group(1)), "avg": avg, "max": peak, **{
        f"p{p}": min(v, peak) for p, v in percentiles(histogram, (50, 99, 99.9)).items()}}


def run_load(target, duration, connections, config):
    cmd = target.command(["memcaslap", "-s", target.server, "-t", f"{duration}s", "-c", str(connections),
                          "-T", "1", "-F", config, "-S", f"{duration}s"])
    cpu_before = target.cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    cpu = target.cpu_seconds() - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"memaslap failed ({proc.returncode}): {proc.stderr.strip()}")
    result = parse(proc.stdout)
    result["cpu_us_per_op"] = cpu * 1e6 / max(result.pop("total_ops"), 1)
    return result


def main(argv=None):
    # A SIGTERM (timeout, a CI limit) unwinds like Ctrl-C, so the namespace made here is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target, interleaved (default 3)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--targets", default="shoal-posix-1,shoal-posix-2,shoal-native-1,memcached-1,memcached-2")
    args = parser.parse_args(argv)
    if shutil.which("memcaslap") is None:
        raise SystemExit("memcaslap not found: apt-get install libmemcached-tools")
    targets = [Target(name) for name in args.targets.split(",")]
    if any(t.kind == "shoal-native" for t in targets) and unavailable() is not None:
        raise SystemExit(f"native targets need a TAP and a namespace: {unavailable()}")
    results = {t.name: [] for t in targets}
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as config:
        config.write(MIX)
        config.flush()
        for round_ in range(args.rounds):
            for target in targets:
                target.start()
                try:
                    result = run_load(target, args.duration, args.connections, config.name)
                finally:
                    target.stop()
                results[target.name].append(result)
                print(f"round {round_ + 1} {target.name}: {result}", file=sys.stderr, flush=True)
    print(f"\n{args.connections} connections, {args.duration} s per run, median of {args.rounds} rounds, "
          f"90% get / 10% set, 64 B keys, 100 B values, {os.cpu_count()} cores shared with the load generator\n")
    print("| target | ops/s | avg us | p50 us | p99 us | p99.9 us | max us | server CPU us/op |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for target in targets:
        cells = [statistics.median(r[c] for r in results[target.name]) for c in COLUMNS]
        print(f"| {target.label} | " + " | ".join(f"{c:,.0f}" for c in cells[:-1]) + f" | {cells[-1]:.1f} |")


if __name__ == "__main__":
    main()
