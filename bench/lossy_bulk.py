"""Bulk download over a lossy link: shoal's TCP against the kernel's, the kernel as the client.

    python bench/lossy_bulk.py [--loss 0.02] [--size-mb 100] [--runs 3] [--rounds 2] [--min-rto S]
                               [--peer-sack off] [--peer-timestamps off] [--tso off]

``python -m shoal.apps.httpd`` serves a ``--size-mb`` file; curl in a namespace this
script creates downloads it, while iptables there drops ``--loss`` of the TCP packets
the namespace receives and of those it sends (so data and ACKs are lost; a TSO
super-frame is one packet to iptables and goes whole). Measured on the native stack
over a TAP, and on the posix stack through a veth pair (the kernel's TCP sends), in
turn, ``--rounds`` times; each download's time is printed, and the native shard's
loss-recovery counters (from ``--prometheus-port``) after each round of ``--runs``.
``--min-rto`` passes ``--tcp-min-rto`` to the native server (default: its own, 1 s), and
``--tso off`` its ``--tcp-tso off`` (a dropped super-frame is then one segment lost, not a burst).
``--peer-sack off`` and ``--peer-timestamps off`` turn those options off in curl's
namespace (``net.ipv4.tcp_sack``, ``tcp_timestamps``), so neither server's connections
use them.
"""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import tempfile
import time

import native  # (run as a script, this folder leads sys.path)
from shoal.drivers.netns import KernelPeer, stop_process

METRICS_PORT = 9479
COUNTERS = ("fast-retransmit", "retransmit", "rto", "rack-lost-retransmit", "tlp-recovery")


def _impair(peer, loss, sysctls):
    for name, value in sysctls:
        peer.run(["sysctl", "-qw", f"net.ipv4.{name}={value}"])
    for chain in ("INPUT", "OUTPUT"):
        subprocess.run(peer.command(["iptables", "-A", chain, "-p", "tcp", "-m", "statistic", "--mode", "random",
                                     "--probability", str(loss), "-j", "DROP"]), check=True, capture_output=True)


def _downloads(runner, url, size, runs):
    times = []
    for _ in range(runs):
        start = time.monotonic()
        result = runner.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download}", url], timeout=600)
        if result.stdout.strip() != str(size):
            raise RuntimeError(f"curl got {result.stdout!r} of {size} octets: {result.stderr}")
        times.append(time.monotonic() - start)
    return times


def _counters():
    text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{METRICS_PORT}/metrics"], capture_output=True,
                          text=True).stdout
    found = {}
    for name in COUNTERS:
        values = re.findall(rf'event="{name}",layer="tcp"[^}}]*}} ([0-9.e+]+)', text)
        found[name] = int(sum(float(v) for v in values))
    return found


def bench_native(root, size, runs, loss, options, sysctls):
    with KernelPeer(open_device=False, subnet="10.213.24") as peer:
        app = peer.start_shoal(["-m", "shoal.apps.httpd", "--smp", "1", "--network-stack", "native",
                                "--host-ipv4-addr", peer.shoal_ip, "--root", root,
                                "--prometheus-port", str(METRICS_PORT)]
                               + options)
        try:
            native.wait_banner(app)
            _impair(peer, loss, sysctls)
            times = _downloads(native._Runner(peer), f"http://{peer.shoal_ip}:10000/big.bin", size, runs)
            return times, _counters()
        finally:
            stop_process(app)


def bench_posix(root, size, runs, loss, _options, sysctls):
    with native.VethPeer(subnet="10.213.25") as peer:
        app = native.start_httpd(["--network-stack", "posix", "--address", peer.server_ip, "--root", root])
        try:
            native.wait_banner(app)
            _impair(peer, loss, sysctls)
            return _downloads(peer, f"http://{peer.server_ip}:10000/big.bin", size, runs), None
        finally:
            stop_process(app)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", type=float, default=0.02)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-rto", type=float, default=None)
    ap.add_argument("--tso", choices=("on", "off"), default="on", help="the native server's TSO")
    ap.add_argument("--peer-sack", choices=("on", "off"), default="on", help="SACK in curl's namespace")
    ap.add_argument("--peer-timestamps", choices=("on", "off"), default="on",
                    help="RFC 7323 timestamps in curl's namespace")
    args = ap.parse_args(argv)
    if not 0 <= args.loss < 1:
        ap.error("--loss must be a fraction in [0, 1)")
    if min(args.size_mb, args.runs, args.rounds) < 1:
        ap.error("--size-mb, --runs and --rounds must be at least 1")
    size = args.size_mb << 20
    options = (["--tcp-min-rto", str(args.min_rto)] if args.min_rto else []) \
        + (["--tcp-tso", "off"] if args.tso == "off" else [])
    sysctls = [("tcp_sack", int(args.peer_sack == "on")), ("tcp_timestamps", int(args.peer_timestamps == "on"))]
    root = tempfile.mkdtemp()
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(os.urandom(size))
    print(f"# bulk download over {args.loss:.0%} loss each way ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{args.size_mb} MB, {args.runs} downloads x {args.rounds} rounds"
          + (f", native {' '.join(options)}" if options else "")
          + f", peer SACK {args.peer_sack}, peer timestamps {args.peer_timestamps})\n")
    results = {"native": [], "posix": []}
    for _ in range(args.rounds):
        for name, bench in (("native", bench_native), ("posix", bench_posix)):
            times, counters = bench(root, size, args.runs, args.loss, options, sysctls)
            results[name] += times
            print(f"- {name}: " + ", ".join(f"{t:.1f}" for t in times) + " s"
                  + (f"; shard counters {counters}" if counters else ""), flush=True)
    print("\n| stack | median s | MB/s at the median | slowest s |\n|---|---:|---:|---:|")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.1f} | {args.size_mb / med:.0f} | {max(times):.1f} |")


if __name__ == "__main__":
    main()
