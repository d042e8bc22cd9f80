"""CPU time per request of the httpd app under wrk, native against posix, from /proc.

    python bench/shard_cpu.py [--stacks native,posix] [--connections 64] [--duration 5] [--runs 2]
                              [--rounds 3] [--smp 1] [--peer-timestamps off] [--app-options "..."]

Requests per second on this machine vary by up to 2x between identical runs, with the
load of the other CPU. The CPU the server spends per request varies much less: this
script runs ``python -m shoal.apps.httpd`` (a small file as ``GET /``) on each stack
as `bench/native.py` does (native: over a TAP whose far side is a namespace; posix:
through a veth pair into a namespace), drives it with wrk from the namespace, and
reads the user and system CPU time of the app's processes (the launcher and its
shards) from ``/proc/PID/stat`` before and after each run. Each round measures every
stack in turn, so a tree on ``PYTHONPATH`` (as a folder holding a ``shoal`` link to a
checkout) is compared with another by running the script for each, alternating.
``--peer-timestamps off`` turns RFC 7323 timestamps off in wrk's namespace, as with a
client that does not use them (Windows, by default). ``--app-options`` adds options to
the httpd command line of both stacks (say ``"--blocked-reactor-notify-ms 0"``: runtime
settings compared on one tree).
Prints a markdown table, one row per run. Needs root, wrk and iproute2; every
interface and namespace it makes is removed on exit.
"""
import argparse
import datetime
import os
import re
import shlex
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # (bench/http.py)

import shoal.net.native.stack  # noqa: E402
from shoal.drivers.netns import KernelPeer, stop_process  # noqa: E402

sys.path.append(_HERE)
import native as bench_native  # noqa: E402  (its VethPeer, start_httpd, wait_banner)

TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(shoal.net.native.stack.__file__))))


def _descendants(pid):
    """`pid` and every process below it (from /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
    return out


def _cpu_ticks(pids):
    """Summed (user, system) clock ticks of `pids` (fields 14 and 15 of /proc/PID/stat)."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def measure(run, url, app, connections, duration):
    """One wrk run against `url`: (req/s, user us per request, system us per request)."""
    pids = _descendants(app.pid)
    before = _cpu_ticks(pids)
    r = run(["wrk", "-t1", f"-c{connections}", f"-d{duration}", "--timeout", "5s", url])
    after = _cpu_ticks(pids)
    found = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    if r.returncode or found is None:
        raise RuntimeError(f"wrk failed: {r.stdout}{r.stderr}")
    rps = float(found.group(1))
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    requests = rps * duration
    return rps, (after[0] - before[0]) * tick_us / requests, (after[1] - before[1]) * tick_us / requests


def run_stack(stack, root, args):
    """`args.runs` wrk runs against httpd on `stack`; a list of `measure` results."""
    sysctl = ["sysctl", "-qw", f"net.ipv4.tcp_timestamps={int(args.peer_timestamps == 'on')}"]
    if stack == "native":
        with KernelPeer(open_device=False, subnet="10.213.15") as peer:
            peer.run(sysctl)
            app = peer.start_shoal(["-m", "shoal.apps.httpd", "--smp", str(args.smp), "--network-stack", "native",
                                    "--host-ipv4-addr", peer.shoal_ip, "--root", root,
                                    *shlex.split(args.app_options)])
            try:
                bench_native.wait_banner(app)
                return [measure(lambda argv: peer.run(argv, check=False, timeout=120), f"http://{peer.shoal_ip}:10000/",
                                app, args.connections, args.duration) for _ in range(args.runs)]
            finally:
                stop_process(app)
    with bench_native.VethPeer(subnet="10.213.16") as peer:
        peer.run(sysctl)
        app = bench_native.start_httpd(["--network-stack", "posix", "--address", peer.server_ip, "--root", root,
                                        *shlex.split(args.app_options)], args.smp)
        try:
            bench_native.wait_banner(app)
            return [measure(peer.run, f"http://{peer.server_ip}:10000/", app, args.connections, args.duration)
                    for _ in range(args.runs)]
        finally:
            stop_process(app)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="native,posix", help="comma-separated: native, posix")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--duration", type=int, default=5, help="wrk seconds per run")
    ap.add_argument("--runs", type=int, default=2, help="wrk runs per stack and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the stacks")
    ap.add_argument("--smp", type=int, default=1, help="shards of the app")
    ap.add_argument("--peer-timestamps", choices=("on", "off"), default="on",
                    help="RFC 7323 timestamps in wrk's namespace (off: as with a client that does not use them)")
    ap.add_argument("--app-options", default="", help="more httpd options, one string (both stacks)")
    args = ap.parse_args(argv)
    stacks = args.stacks.split(",")
    if any(s not in ("native", "posix") for s in stacks):
        ap.error(f"--stacks {args.stacks!r}: want native and/or posix")
    if min(args.connections, args.duration, args.runs, args.rounds, args.smp) < 1:
        ap.error("--connections, --duration, --runs, --rounds and --smp must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (a TAP, namespaces and veth pairs)")
    print(f"# httpd CPU per request ({datetime.datetime.now().isoformat(timespec='seconds')}, tree {TREE}, "
          f"wrk -t1 -c{args.connections} -d{args.duration}, --smp {args.smp}, "
          f"peer timestamps {args.peer_timestamps}"
          + (f", httpd options {args.app_options!r}" if args.app_options else "") + ")\n")
    print("| round | stack | req/s | user us/request | system us/request |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("hello, world!\n")
        for n in range(1, args.rounds + 1):
            for stack in stacks:
                for rps, user, system in run_stack(stack, root, args):
                    print(f"| {n} | {stack} | {rps:,.0f} | {user:.1f} | {system:.1f} |", flush=True)


if __name__ == "__main__":
    main()
