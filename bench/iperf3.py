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
(``-R``). Each cell is the receiver's rate from the client's ``--json`` report,
the median of ``--rounds`` rounds, the three servers measured in turn within a
round. Prints a markdown table.
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


def _gbit_s(runner, host, seconds, streams, reverse):
    argv = ["iperf3", "-c", host, "-t", str(seconds), "-P", str(streams), "--json"] + (["-R"] if reverse else [])
    result = runner.run(argv, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


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
    _wait_until_answers(runner, host, app)
    return (_gbit_s(runner, host, seconds, smp, False), _gbit_s(runner, host, seconds, smp, True))


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
            up = statistics.median(c[0] for c in cells[name])
            down = statistics.median(c[1] for c in cells[name])
            rows.append((smp, name, up, down))
    print(f"# iperf3 ({datetime.datetime.now().isoformat(timespec='seconds')}, {args.seconds} s tests, "
          f"one stream per shard, median of {args.rounds} rounds)\n")
    print("| --smp | server | upload Gbit/s | download Gbit/s |\n|---|---|---:|---:|")
    for smp, name, up, down in rows:
        print(f"| {smp} | {name} | {up:.2f} | {down:.2f} |")


if __name__ == "__main__":
    main()
