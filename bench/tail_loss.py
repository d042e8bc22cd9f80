"""Tail losses: request/response latency over a lossy path, with tail loss probes and without.

    python bench/tail_loss.py [--loss 0.02] [--duration 10] [--connections 16] [--rounds 2]
                              [--size-kb 16]

``python -m shoal.apps.httpd --smp 1`` on the native stack, over a TAP whose kernel side
sits in a namespace this script creates (`shoal.drivers.netns.KernelPeer`); in the
namespace the kernel drops ``--loss`` of the TCP segments it receives (iptables
statistic), so shoal's responses and ACKs are lost at random. ``wrk --latency`` fetches
``GET /`` (a one-segment response) and a ``--size-kb`` file (a response of several
segments), once with ``--tcp-tlp on`` (RFC 8985 tail loss probes, the default) and once
with ``--tcp-tlp off``, alternating, ``--rounds`` times. A response whose last segment is
lost waits for the retransmission timer without probes (at least 1 s, RFC 6298's
minimum) and for a probe after about 2*SRTT (plus 200 ms with one segment in flight)
with them: the difference shows in the high percentiles. Prints a markdown table of
requests/s and the 50/90/99th percentile latency, the medians over the rounds. The
namespace and the interface are removed on exit, even after failures.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import sys
import tempfile

from native import wait_banner  # (run as a script, this folder leads sys.path; native.py then drops it)
from shoal.drivers.netns import KernelPeer, stop_process, unavailable

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk_latency(peer, url, connections, duration):
    """(requests/s, {50: ms, 90: ms, 99: ms}) from ``wrk --latency``."""
    r = peer.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "10s", "--latency", url],
                 timeout=duration + 60, check=False)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if r.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed: {r.stdout}{r.stderr}")
    pct = {}
    for p in (50, 90, 99):
        m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m)\s*$", r.stdout, re.MULTILINE)
        pct[p] = float(m.group(1)) * _UNITS[m.group(2)]
    return float(rate.group(1)), pct


def start_httpd(peer, root, tlp):
    app = peer.start_shoal(["-m", "shoal.apps.httpd", "--smp", "1", "--network-stack", "native",
                            "--host-ipv4-addr", peer.shoal_ip, "--root", root, "--tcp-tlp", tlp])
    try:
        wait_banner(app)
    except RuntimeError:
        stop_process(app)
        raise
    return app


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", type=float, default=0.02)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size-kb", type=int, default=16)
    args = ap.parse_args(argv)
    if not 0 < args.loss < 1:
        ap.error("--loss must be between 0 and 1")
    why = unavailable()
    if why:
        sys.exit(f"cannot run: {why}")
    root = tempfile.mkdtemp(prefix="shoal-bench-tail-")
    with open(os.path.join(root, "index.html"), "wb") as f:
        f.write(b"hello, world!\n")
    with open(os.path.join(root, "file.bin"), "wb") as f:
        f.write(os.urandom(args.size_kb << 10))
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {}  # (tlp, path) -> list of (rps, pct)
    with KernelPeer(open_device=False, subnet="10.213.31") as peer:
        peer.run(["iptables", "-A", "INPUT", "-p", "tcp", "-m", "statistic", "--mode", "random",
                  "--probability", str(args.loss), "-j", "DROP"])
        for _ in range(args.rounds):
            for tlp in ("on", "off"):
                app = start_httpd(peer, root, tlp)
                try:
                    for path in ("/", "/file.bin"):
                        url = f"http://{peer.shoal_ip}:10000{path}"
                        results.setdefault((tlp, path), []).append(
                            wrk_latency(peer, url, args.connections, args.duration))
                finally:
                    stop_process(app)
    ended = datetime.datetime.now(datetime.timezone.utc)
    print(f"`python bench/tail_loss.py --loss {args.loss} --duration {args.duration} "
          f"--connections {args.connections} --rounds {args.rounds} --size-kb {args.size_kb}`, "
          f"{started:%Y-%m-%d %H:%M}-{ended:%H:%M} UTC, {os.cpu_count()} CPUs; medians of {args.rounds} rounds\n")
    print("| response | tail loss probes | req/s | p50 ms | p90 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for path, what in (("/", "14 B (one segment)"), ("/file.bin", f"{args.size_kb} KiB")):
        for tlp in ("on", "off"):
            runs = results[(tlp, path)]
            rps = statistics.median(r for r, _ in runs)
            cells = [statistics.median(p[q] for _, p in runs) for q in (50, 90, 99)]
            print(f"| {what} | {tlp} | {rps:,.0f} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
