"""Cross-process messaging: shoal's ring and submit_to against the usual Python transports.

    python bench/smp.py [--rounds 3] [--messages 200000] [--pings 5000]

Two processes, pinned to two different cores (the first two this process may use),
in one run: one-way small-message rate (16-byte payloads) and ping-pong round-trip
latency (median and p99) for

- the raw shoal ring (Python push per message, consumer pops batches; both busy-poll),
- `smp.submit_to` between two shards (poll mode, and the default idle-poll-then-sleep),
- multiprocessing.Queue, multiprocessing.Pipe, faster-fifo, pyzmq PAIR over ipc.

Prints a markdown table (medians over rounds) with each rate's ratio to
multiprocessing.Queue.
"""
import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

from shoal.runtime import run, smp
from shoal.runtime.ring import Segment

PAYLOAD = b"x" * 16
CPUS = sorted(os.sched_getaffinity(0))[:2]


def pin(i):
    os.sched_setaffinity(0, {CPUS[i % len(CPUS)]})


def percentile(samples, p):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(p / 100 * len(samples)))]


def in_child(target, *args):
    """Run target(*args) in a forked child pinned to the second core."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            pin(1)
            target(*args)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def reap(pid):
    _, status = os.waitpid(pid, 0)
    if status:
        raise RuntimeError(f"benchmark child failed with status {status}")


# ---- the raw ring ---------------------------------------------------------------

def ring_rate(n):
    seg = Segment.create(2, 1 << 20)
    try:
        def consume():
            ring = seg.ring(0, 1)
            got = 0
            while got < n:
                _, _, _, k = ring.pop_batch()
                ring.release()
                got += k

        pid = in_child(consume)
        ring = seg.ring(0, 1)
        push = ring.push
        t0 = time.perf_counter()
        for i in range(n):
            # Publish every 64 messages, as a reactor publishes once per iteration.
            while not push(PAYLOAD, 1, not i & 63):
                pass
        ring.publish()
        while ring.used():
            pass
        elapsed = time.perf_counter() - t0
        reap(pid)
        return n / elapsed
    finally:
        seg.close()
        seg.unlink()


def ring_pingpong(n):
    seg = Segment.create(2, 1 << 16)
    try:
        def echo():
            inbound, outbound = seg.ring(0, 1), seg.ring(1, 0)
            for _ in range(n):
                while True:
                    _, _, _, k = inbound.pop_batch()
                    if k:
                        break
                inbound.release()
                outbound.push(PAYLOAD)

        pid = in_child(echo)
        outbound, inbound = seg.ring(0, 1), seg.ring(1, 0)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            outbound.push(PAYLOAD)
            while True:
                _, _, _, k = inbound.pop_batch()
                if k:
                    break
            inbound.release()
            samples.append(time.perf_counter() - t0)
        reap(pid)
        return samples
    finally:
        seg.close()
        seg.unlink()


# ---- submit_to --------------------------------------------------------------------

def nothing(payload):
    return None


async def _submit_rate(n):
    window = 256
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        batch = min(window, n - sent)
        await asyncio.gather(*(smp.submit_to(1, nothing, PAYLOAD) for _ in range(batch)))
        sent += batch
    return n / (time.perf_counter() - t0)


async def _submit_pingpong(n):
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await smp.submit_to(1, nothing, PAYLOAD)
        samples.append(time.perf_counter() - t0)
    return samples


def on_shards(coro_fn, *args, argv):
    """Run coro_fn(*args) as main of a two-shard app on the two benchmark cores."""
    async def main():
        return await coro_fn(*args)

    os.sched_setaffinity(0, set(CPUS))  # the launcher may only pin shards to cores it may use
    try:
        return run(main, smp=2, cpuset=CPUS, argv=argv)
    finally:
        pin(0)


# ---- peers ---------------------------------------------------------------------------

def queue_rate(n):
    q = mp.get_context("fork").Queue(maxsize=10000)

    def consume():
        for _ in range(n):
            q.get()

    pid = in_child(consume)
    t0 = time.perf_counter()
    for _ in range(n):
        q.put(PAYLOAD)
    reap(pid)
    return n / (time.perf_counter() - t0)


def queue_pingpong(n):
    ctx = mp.get_context("fork")
    a, b = ctx.Queue(), ctx.Queue()

    def echo():
        for _ in range(n):
            b.put(a.get())
        b.close()
        b.join_thread()  # the child leaves by os._exit: flush the feeder thread first

    pid = in_child(echo)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.put(PAYLOAD)
        b.get()
        samples.append(time.perf_counter() - t0)
    reap(pid)
    return samples


def pipe_rate(n):
    r, w = mp.get_context("fork").Pipe(duplex=False)

    def consume():
        for _ in range(n):
            r.recv_bytes()

    pid = in_child(consume)
    t0 = time.perf_counter()
    for _ in range(n):
        w.send_bytes(PAYLOAD)
    reap(pid)
    return n / (time.perf_counter() - t0)


def pipe_pingpong(n):
    a, b = mp.get_context("fork").Pipe()

    def echo():
        for _ in range(n):
            b.send_bytes(b.recv_bytes())

    pid = in_child(echo)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.send_bytes(PAYLOAD)
        a.recv_bytes()
        samples.append(time.perf_counter() - t0)
    reap(pid)
    return samples


def fifo_rate(n):
    from faster_fifo import Queue

    q = Queue(max_size_bytes=8 << 20)

    def consume():
        got = 0
        while got < n:
            got += len(q.get_many(max_messages_to_get=1000, timeout=10))

    pid = in_child(consume)
    t0 = time.perf_counter()
    for _ in range(n):
        q.put(PAYLOAD, timeout=10)
    reap(pid)
    return n / (time.perf_counter() - t0)


def fifo_pingpong(n):
    from faster_fifo import Queue

    a, b = Queue(), Queue()

    def echo():
        for _ in range(n):
            b.put(a.get(timeout=10))

    pid = in_child(echo)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.put(PAYLOAD)
        b.get(timeout=10)
        samples.append(time.perf_counter() - t0)
    reap(pid)
    return samples


def _zmq_pair(path, bind):
    import zmq

    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.setsockopt(zmq.RCVHWM, 100000)
    (sock.bind if bind else sock.connect)(f"ipc://{path}")
    return sock


def zmq_rate(n):
    path = tempfile.mktemp(prefix="shoal-bench-zmq-")

    def consume():
        sock = _zmq_pair(path, bind=False)
        for _ in range(n):
            sock.recv(copy=True)
        sock.send(b"done")

    sock = _zmq_pair(path, bind=True)
    pid = in_child(consume)
    t0 = time.perf_counter()
    for _ in range(n):
        sock.send(PAYLOAD)
    sock.recv()
    elapsed = time.perf_counter() - t0
    reap(pid)
    sock.close()
    return n / elapsed


def zmq_pingpong(n):
    path = tempfile.mktemp(prefix="shoal-bench-zmq-")

    def echo():
        sock = _zmq_pair(path, bind=False)
        for _ in range(n):
            sock.send(sock.recv())

    sock = _zmq_pair(path, bind=True)
    pid = in_child(echo)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.send(PAYLOAD)
        sock.recv()
        samples.append(time.perf_counter() - t0)
    reap(pid)
    sock.close()
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--pings", type=int, default=5_000)
    opts = parser.parse_args()
    pin(0)
    n, pings = opts.messages, opts.pings
    cases = [
        ("shoal raw ring", lambda: ring_rate(n), lambda: ring_pingpong(pings)),
        ("shoal submit_to, --poll-mode", lambda: on_shards(_submit_rate, n // 4, argv=["--poll-mode"]),
         lambda: on_shards(_submit_pingpong, pings, argv=["--poll-mode"])),
        ("shoal submit_to, default idle poll", lambda: on_shards(_submit_rate, n // 4, argv=[]),
         lambda: on_shards(_submit_pingpong, pings, argv=[])),
        ("multiprocessing.Queue", lambda: queue_rate(n), lambda: queue_pingpong(pings)),
        ("multiprocessing.Pipe", lambda: pipe_rate(n), lambda: pipe_pingpong(pings)),
        ("faster-fifo", lambda: fifo_rate(n), lambda: fifo_pingpong(pings)),
        ("pyzmq PAIR ipc", lambda: zmq_rate(n), lambda: zmq_pingpong(pings)),
    ]
    results = {}
    for rnd in range(opts.rounds):
        for name, rate, pingpong in cases:
            samples = pingpong()
            entry = results.setdefault(name, {"rate": [], "p50": [], "p99": []})
            entry["rate"].append(rate())
            entry["p50"].append(percentile(samples, 50) * 1e6)
            entry["p99"].append(percentile(samples, 99) * 1e6)
            print(f"round {rnd + 1}: {name}: {entry['rate'][-1]:,.0f} msg/s, "
                  f"rtt p50 {entry['p50'][-1]:.1f} us p99 {entry['p99'][-1]:.1f} us", file=sys.stderr)
    base = statistics.median(results["multiprocessing.Queue"]["rate"])
    print(f"\ncpus {CPUS}, {opts.rounds} rounds (medians), {len(PAYLOAD)}-byte messages, "
          f"{n} per rate run, {pings} ping-pongs per latency run\n")
    print("| transport | one-way msgs/s | x mp.Queue | RTT p50 (us) | RTT p99 (us) |")
    print("|---|---:|---:|---:|---:|")
    for name, entry in results.items():
        rate = statistics.median(entry["rate"])
        print(f"| {name} | {rate:,.0f} | {rate / base:.1f} | {statistics.median(entry['p50']):.1f} | "
              f"{statistics.median(entry['p99']):.1f} |")


if __name__ == "__main__":
    main()
