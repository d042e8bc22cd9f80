"""Benchmark: shoal memcached against Debian's memcached, driven by memaslap.

    python bench/memcached.py [--duration 5] [--connections 64] [--targets shoal-1,shoal-2,memcached-1,memcached-2]

Every target gets the same fixed mix (issue 6): 90% get, 10% set, 64-byte keys,
100-byte values, `--connections` concurrent connections from one memaslap thread
(Debian names it memcaslap). Targets:

    shoal-N       python -m shoal.apps.memcached --smp N (posix stack unless --stack)
    memcached-N   memcached -t N

Each server runs on free loopback ports and is stopped by its PID afterwards.
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
import subprocess
import sys
import tempfile
import time

MIX = """key
64 64 1
value
100 100 1
cmd
0 0.1
1 0.9
"""


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


def start(target, port, stack):
    kind, _, n = target.rpartition("-")
    if kind == "shoal":
        cmd = [sys.executable, "-m", "shoal.apps.memcached", "--address", "127.0.0.1", "--port", str(port),
               "--smp", n, "--max-memory", "256M", "--network-stack", stack]
    elif kind == "memcached":
        cmd = ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "256", "-t", n]
    else:
        raise SystemExit(f"unknown target {target!r} (shoal-N or memcached-N)")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)


def percentiles(histogram, wanted):
    """Upper bounds (us) of the log2 buckets holding each wanted percentile."""
    total = sum(histogram.values())
    out, seen = {}, 0
    for exponent in sorted(histogram):
        seen += histogram[exponent]
        for p in wanted:
            if p not in out and seen >= total * p / 100:
                out[p] = 2 ** (exponent + 1)
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
    return {"ops": int(tps.group(2)), "avg": avg, "max": peak, **{
        f"p{p}": min(v, peak) for p, v in percentiles(histogram, (50, 99, 99.9)).items()}}


def run_load(port, duration, connections, config):
    cmd = ["memcaslap", "-s", f"127.0.0.1:{port}", "-t", f"{duration}s", "-c", str(connections), "-T", "1",
           "-F", config, "-S", f"{duration}s"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"memaslap failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse(proc.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per target (default 5)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--targets", default="shoal-1,shoal-2,memcached-1,memcached-2")
    parser.add_argument("--stack", default="posix", help="shoal network stack (default posix)")
    args = parser.parse_args(argv)
    if shutil.which("memcaslap") is None:
        raise SystemExit("memcaslap not found: apt-get install libmemcached-tools")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as config:
        config.write(MIX)
        config.flush()
        rows = []
        for target in args.targets.split(","):
            port = free_port()
            proc = start(target, port, args.stack)
            try:
                result = run_load(port, args.duration, args.connections, config.name)
            finally:
                stop(proc)
            rows.append((target, result))
            print(f"{target}: {result}", file=sys.stderr, flush=True)
    print(f"\n{args.connections} connections, {args.duration} s, 90% get / 10% set, 64 B keys, 100 B values, "
          f"{os.cpu_count()} cores shared with the load generator\n")
    print("| target | ops/s | avg us | p50 us | p99 us | p99.9 us | max us |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for target, r in rows:
        name = f"{target} ({args.stack})" if target.startswith("shoal") else target
        print(f"| {name} | {r['ops']} | {r['avg']} | {r['p50']} | {r['p99']} | {r['p99.9']} | {r['max']} |")


if __name__ == "__main__":
    main()
