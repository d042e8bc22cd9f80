"""Download MB/s of the native httpd, one tree against another, taking turns.

    python bench/download_ab.py [--trees installed,/tmp/oldpkg] [--rounds 3] [--runs 6]
                                [--size-mb 20] [--smp 1]

`bench/native.py`'s bulk row (curl downloading a ``--size-mb`` file from
``python -m shoal.apps.httpd --network-stack native`` over a TAP whose far side is a
namespace), for an A/B of two versions of shoal: each tree is a folder put on the
app's ``PYTHONPATH`` (one holding a ``shoal`` link to a checkout, its compiled
extensions copied in), or ``installed`` for the shoal this Python imports. Each round
starts the app once per tree, in turn, and keeps every one of its ``--runs`` downloads;
a download's speed varies with the load of the other CPU, so the trees alternate and
the medians are compared. The first download after each start pays for cold caches
(7-20 ms of 20 MB here) and is counted like the others. Prints each tree's median,
best and every figure. Needs root, curl and iproute2; what it makes is removed on exit.
"""
import argparse
import datetime
import os
import random
import statistics
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # (bench/http.py)

from shoal.drivers.netns import KernelPeer, stop_process, unavailable  # noqa: E402

sys.path.append(_HERE)
import native as bench_native  # noqa: E402  (its wait_banner)


def downloads(tree, root, runs, smp):
    """MB/s of `runs` curl downloads of ROOT/big.bin from the native httpd of `tree`."""
    env = dict(os.environ)
    if tree == "installed":
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = tree
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # (`KernelPeer.start_shoal` starts the app with this environment)
    try:
        with KernelPeer(open_device=False, subnet="10.213.45") as peer:
            app = peer.start_shoal(["-m", "shoal.apps.httpd", "--smp", str(smp), "--network-stack", "native",
                                    "--host-ipv4-addr", peer.shoal_ip, "--root", root])
            try:
                bench_native.wait_banner(app)
                out = []
                for _ in range(runs):
                    r = peer.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{speed_download}",
                                  f"http://{peer.shoal_ip}:10000/big.bin"], timeout=120)
                    out.append(float(r.stdout) / 1e6)
                return out
            finally:
                stop_process(app)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="installed", help="comma-separated: installed, or PYTHONPATH folders")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=6, help="downloads per start of the app")
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--smp", type=int, default=1)
    args = parser.parse_args(argv)
    why = unavailable()
    if why is not None:
        sys.exit(f"bench/download_ab.py: {why}")
    trees = args.trees.split(",")
    for tree in trees:
        if tree != "installed" and not os.path.isdir(os.path.join(tree, "shoal")):
            sys.exit(f"bench/download_ab.py: {tree} holds no shoal package")
    if min(args.rounds, args.runs, args.size_mb, args.smp) < 1:
        sys.exit("bench/download_ab.py: --rounds, --runs, --size-mb and --smp must be at least 1")
    figures = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as root:
        with open(os.path.join(root, "big.bin"), "wb") as f:
            rng = random.Random(1)
            for _ in range(args.size_mb):
                f.write(rng.randbytes(1 << 20))
        for _ in range(args.rounds):
            for tree in trees:
                figures[tree] += downloads(tree, root, args.runs, args.smp)
    print(f"# native httpd downloads ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{args.size_mb} MB, --smp {args.smp}, {args.rounds} rounds of {args.runs})\n")
    for tree, mb_s in figures.items():
        print(f"{tree}: median {statistics.median(mb_s):.0f} MB/s, best {max(mb_s):.0f} "
              f"({' '.join(f'{x:.0f}' for x in mb_s)})")


if __name__ == "__main__":
    main()
