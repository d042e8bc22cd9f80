"""The copy-less read: upload MB/s to a native-stack sink reading with ``read`` and with ``read_buffers``.

    python bench/sink_read.py [--size-mb 200] [--runs 3] [--rounds 3]

The upload column's setup of `bench/native.py` (its `SINK_APP` on the native stack over a
TAP, the kernel's client in a namespace sending ``--size-mb`` and timing it), run with two
versions of the sink: one reading with ``Connection.read`` (one copy of every octet, into
``bytes``) and one with ``Connection.read_buffers`` (views of the received frames), and for
reference the posix stack's sink with ``read_buffers``. Alternating, ``--rounds`` times; each
cell is the best of ``--runs`` uploads, and the table gives the medians over the rounds.
"""
import argparse
import datetime
import statistics

import native  # (run as a script, this folder leads sys.path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    views = native.SINK_APP
    copies = views.replace("await conn.read_buffers()", "await conn.read()")
    size = args.size_mb << 20
    results = {"native, read": [], "native, read_buffers": [], "posix, read_buffers": []}
    try:
        for _ in range(args.rounds):
            native.SINK_APP = copies
            results["native, read"].append(native.bench_native_sink(size, args.runs, True))
            native.SINK_APP = views
            results["native, read_buffers"].append(native.bench_native_sink(size, args.runs, True))
            results["posix, read_buffers"].append(native.bench_posix_sink(size, args.runs))
    finally:
        native.SINK_APP = views
    print(f"# sink reads ({datetime.datetime.now().isoformat(timespec='seconds')}, {args.size_mb} MB uploads, "
          f"best of {args.runs}, median of {args.rounds} rounds)\n")
    print("| sink | upload MB/s |\n|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):,.0f} |")


if __name__ == "__main__":
    main()
