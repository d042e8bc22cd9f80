"""Loss recovery in the simulator: shoal's TCP at both ends of a lossy, reordering link.

    python bench/tcp_sim_loss.py [--seeds 40] [--cases 0.02/0,0.05/0,0.05/0.05]
                                 [--size-kb 1000] [--back-kb 100] [--sack off] [--timestamps off]

The test suite's network simulator (tests/tcp/tcp_harness.py: per-segment loss and
reordering each way, 5 ms delay, 100 Mbit/s) carries a transfer of ``--size-kb`` one way
and ``--back-kb`` the other, both ends closing (`test_tcp_netsim.transfer`, which checks
the data), for seeds 1..``--seeds`` of each case ``loss/reordering``. Prints a markdown
table of sums over the seeds: simulated seconds (time-wait included), seconds until
both ends are closed or in TIME-WAIT (the transfer alone), retransmissions,
D-SACKs received (retransmissions the receiver already had), RTOs, DupThresh raises
for reordering, and reductions undone as spurious. Virtual time: the machine's load does
not change the figures, only how long the script takes. ``--sack off`` and ``--timestamps
off`` leave those options out of both ends' SYNs (a Windows peer has no timestamps by
default; some middleboxes strip SACK).

The simulator and the TCP come from the tree that `shoal` is imported from, so
``PYTHONPATH`` naming another checkout (as a folder holding a ``shoal`` link to it)
measures that tree with its own simulator.
"""
import argparse
import datetime
import os
import pathlib
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # (bench/http.py)

import shoal.net.native.tcp.connection  # noqa: E402  (the tree's root is three folders up)

COUNTERS = (("retransmissions", "retransmit"), ("D-SACKs", "dsack-received"), ("RTOs", "rto"),
            ("DupThresh raised", "reordering-raised"), ("undone", "dsack-undo"))


def timed(sim_class, closed_states):
    """`sim_class` noting when each connection is first closed or in TIME-WAIT
    (`finished`, by id): the transfer's end without TIME-WAIT, which a reset cuts short
    (RFC 9293 lets a RST end TIME-WAIT; with duplication or reordering, a late segment
    that reaches the closed side draws one)."""

    class Timed(sim_class):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.finished = {}

        def step(self):
            stepped = super().step()
            for endpoint in (self.a, self.b):
                for conn in endpoint.conns.values():
                    if conn.state in closed_states:
                        self.finished.setdefault(id(conn), self.now)
            return stepped

    return Timed


def run_case(transfer, sim_class, config, loss, reorder, seeds, size, back, options):
    """Sums over the seeds: (simulated seconds, seconds to the last FIN, {column: count})."""
    seconds = to_fin = 0.0
    counts = {name: 0 for name, _ in COUNTERS}
    for seed in range(1, seeds + 1):
        sim = sim_class(seed=seed, loss=loss, reorder=reorder)
        start = sim.now
        client, server = transfer(sim, size, back, config(msl=1.0, **options))
        seconds += sim.now - start
        to_fin += max(sim.finished[id(client)], sim.finished[id(server)]) - start
        for name, counter in COUNTERS:
            counts[name] += client.counters[counter] + server.counters[counter]
    return seconds, to_fin, counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--cases", default="0.02/0,0.05/0,0.05/0.05", help="loss/reordering, comma-separated")
    ap.add_argument("--size-kb", type=int, default=1000)
    ap.add_argument("--back-kb", type=int, default=100)
    ap.add_argument("--sack", choices=("on", "off"), default="on", help="SACK (RFC 2018) at both ends")
    ap.add_argument("--timestamps", choices=("on", "off"), default="on", help="RFC 7323 timestamps at both ends")
    args = ap.parse_args(argv)
    try:
        cases = [tuple(float(x) for x in case.split("/")) for case in args.cases.split(",")]
        if any(len(c) != 2 or not all(0 <= x < 1 for x in c) for c in cases):
            raise ValueError
    except ValueError:
        ap.error(f"--cases {args.cases!r}: want loss/reordering pairs of fractions, such as 0.05/0")
    root = pathlib.Path(shoal.net.native.tcp.connection.__file__).parents[3]
    harness = root / "tests" / "tcp"
    sys.path.insert(0, str(harness))
    from tcp_harness import Sim, State, TcpConfig
    from test_tcp_netsim import transfer

    print(f"# shoal's TCP in the simulator ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"tree {root}, seeds 1-{args.seeds}, {args.size_kb} KB and {args.back_kb} KB back, "
          f"SACK {args.sack}, timestamps {args.timestamps})\n")
    names = [name for name, _ in COUNTERS]
    print("| loss | reordering | simulated s | to the last FIN s | " + " | ".join(names) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(names))
    sim_class = timed(Sim, (State.TIME_WAIT, State.CLOSED))
    for loss, reorder in cases:
        seconds, to_fin, counts = run_case(transfer, sim_class, TcpConfig, loss, reorder, args.seeds,
                                           args.size_kb * 1000, args.back_kb * 1000,
                                           {"sack": args.sack == "on", "timestamps": args.timestamps == "on"})
        print(f"| {loss:.0%} | {reorder:.0%} | {seconds:.1f} | {to_fin:.1f} | "
              + " | ".join(str(counts[n]) for n in names) + " |", flush=True)


if __name__ == "__main__":
    main()
