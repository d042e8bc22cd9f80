"""iperf3 against shoal's iperf3 server on both stacks, and against the kernel's own ``iperf3 -s``.

    python bench/iperf3.py [--seconds 3] [--rounds 3] [--smp 1,2]

The iperf3 client (Debian's 3.12) runs in a namespace this script creates and
measures, for each shard count of ``--smp``, with one stream per shard:

* ``python -m shoal.apps.iperf3`` on the **native** stack over a TAP
  (`shoal.drivers.netns.KernelPeer`, one queue per shard),
* the same app on the **posix** stack, reached through a veth pair
  (`native.VethPeer`, the path bench/native.py uses for posix),
* and ``iperf3 -s`` itself on the same veth path, the kernel's TCP with a C server.

Upload is the client sending (``iperf3 -c``), download the server sending
(``-R``); then the same over UDP (``-u -b 0 -l 1400``: as fast as the sender can,
1400-octet datagrams), where the receiver's rate is what arrived and the share of
datagrams lost is shown beside it. Each cell is the receiver's figure from the
client's ``--json`` report, the median of ``--rounds`` rounds, the three servers
measured in turn within a round. Prints a markdown table.
"""
import argparse
import datetime
import json
import statistics
import subprocess
import time

import native  # (run as a script, this folder leads sys.path)
from shoal.drivers.netns import KernelPeer, stop_process

START_S = 60


UDP = ["-u", "-b", "0", "-l", "1400"]


def _received(runner, host, seconds, streams, options):
    """The receiver's side of a test: its sum in the client's report."""
    argv = ["iperf3", "-c", host, "-t", str(seconds), "-P", str(streams), "--json", *options]
    result = runner.run(argv, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)["end"]["sum_received"]


def _wait_until_answers(runner, host, app):
    """Until a one-second test completes (the server is up); bounded."""
    deadline = time.monotonic() + START_S
    while True:
        probe = runner.run(["iperf3", "-c", host, "-n", "1M"], timeout=60)
        if probe.returncode == 0:
            return
        if (app is not None and app.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"the iperf3 server at {host} did not answer:\n{probe.stderr}"
                               + (stop_process(app) if app is not None else ""))
        time.sleep(0.5)


def _measure(runner, host, app, seconds, smp):
    """(upload, download, UDP upload, UDP download): Gbit/s received, and for UDP the
    percentage of datagrams lost."""
    _wait_until_answers(runner, host, app)
    out = []
    for options in ([], ["-R"], UDP, UDP + ["-R"]):
        got = _received(runner, host, seconds, smp, options)
        out.append((got["bits_per_second"] / 1e9, got.get("lost_percent")))
    return out


def bench_native(seconds, smp):
    with KernelPeer(open_device=False, subnet="10.213.21") as peer:
        app = peer.start_shoal(["-m", "shoal.apps.iperf3", "--smp", str(smp), "--network-stack", "native",
                                "--host-ipv4-addr", peer.shoal_ip, "--netmask-ipv4-addr", "255.255.255.0"])
        try:
            return _measure(native._Runner(peer), peer.shoal_ip, app, seconds, smp)
        finally:
            stop_process(app)


def bench_posix(seconds, smp):
    with native.VethPeer(subnet="10.213.22") as peer:
        app = subprocess.Popen([native.PYTHON, "-m", "shoal.apps.iperf3", "--smp", str(smp), "--network-stack",
                                "posix", "--address", peer.server_ip],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            return _measure(peer, peer.server_ip, app, seconds, smp)
        finally:
            stop_process(app)


def bench_kernel(seconds, smp):
    with native.VethPeer(subnet="10.213.23") as peer:
        server = subprocess.Popen(["iperf3", "-s", "-B", peer.server_ip], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            return _measure(peer, peer.server_ip, None, seconds, smp)
        finally:
            server.terminate()
            server.wait(30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smp", default="1,2")
    args = ap.parse_args(argv)
    benches = (("shoal native", bench_native), ("shoal posix", bench_posix), ("kernel iperf3 -s", bench_kernel))
    rows = []
    for smp in [int(n) for n in args.smp.split(",")]:
        cells = {name: [] for name, _ in benches}
        for _ in range(args.rounds):
            for name, bench in benches:
                cells[name].append(bench(args.seconds, smp))
        for name, _ in benches:
            row = []
            for i in range(4):
                rate = statistics.median(c[i][0] for c in cells[name])
                lost = [c[i][1] for c in cells[name] if c[i][1] is not None]
                row.append(f"{rate:.2f}" + (f" ({statistics.median(lost):.0f} %)" if lost else ""))
            rows.append((smp, name, row))
    print(f"# iperf3 ({datetime.datetime.now().isoformat(timespec='seconds')}, {args.seconds} s tests, "
          f"one stream per shard, median of {args.rounds} rounds)\n")
    print("| --smp | server | upload Gbit/s | download Gbit/s | UDP upload Gbit/s (lost) | UDP download Gbit/s (lost) |"
          "\n|---|---|---:|---:|---:|---:|")
    for smp, name, row in rows:
        print(f"| {smp} | {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
