"""Shard scaling: shoal memcached and httpd at 1, 2, 4, 8 shards, and submit_to among many shards.

    python bench/scaling.py [--shards 1,2,4,8] [--duration 8] [--rounds 2] [--connections 256]
        [--parts probe,memcached,http,smp] [--native] [--out DIR] [--deadline-s 420]

Made for a machine with more cores than bench/memcached.py and bench/http.py assume (they
load one or two shards from one load-generator thread). The largest shard count N decides
the placement: servers run on the first N cores this process may use (shard i on core i,
`--cpuset`), the load generators on all the others, one thread per core. Where no core is
left over (a 2-core machine with ``--shards 1,2``), the load shares the servers' cores and
the header says so.

Parts, each run for every shard count n in ``--shards``, rounds interleaved:

probe      what the launcher and the posix stack lean on (pidfd_open, eventfd, a shared-memory
           ring segment, sched_setaffinity, PR_SET_PDEATHSIG, SO_REUSEPORT and whether the
           kernel spreads connections over the listeners) and the external tools; sandboxes
           such as gVisor may lack some (gVisor accepts sched_setaffinity as a stub, so the
           placement there is nominal). A failed check is printed with its error and the
           rows that need it are skipped with the reason.
memcached  ``python -m shoal.apps.memcached --smp n`` (posix stack) and Debian's ``memcached -t n``,
           both pinned to cores 0..n-1 with 1 GiB in all, loaded by memaslap (memcaslap) with
           the issue's mix (bench/memcached.py's: 90% get / 10% set, 64 B keys, 100 B values)
           from one thread per load core and ``--connections`` connections.
http       ``python -m shoal.apps.httpd --smp n`` (posix stack) and, as a reference, the
           single-process uvloop + httptools server of bench/http.py pinned to core 0, loaded
           by ``wrk --latency`` with one thread per load core and ``--connections`` connections.
           With ``--native``, both also run shoal on the native stack (the same app with
           ``--network-stack native``) over a multi-queue TAP, one queue per shard, whose kernel
           side sits in a namespace made for the run; the load generator runs in that namespace.
smp        n >= 2 shards (default idle poll), each sending `--messages` small submit_to calls
           (windows of 256) to the next shard while serving its predecessor's: the aggregate
           cross-shard call rate.

Columns: the rate, its ratio to the same server at its smallest n (``x base``), that ratio
scaled by the shard count (``eff`` = x base * smallest n / n; 1.00 is linear scaling),
latency percentiles, the server's CPU time per operation (all its processes) and the load
generator's CPU use in % of its cores (near 100 %: the load generator, not the server, is
the limit). Cells are medians over the rounds.
With ``--out DIR``: DIR/scaling.md (the tables), DIR/scaling.json (every run, rewritten after
each so a cut-off run keeps what it measured) and DIR/raw/ (tool outputs and server logs).
``--deadline-s`` starts no run after that many seconds and prints what was measured.
"""
import argparse
import asyncio
import ctypes
import functools
import importlib.util
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# This folder heads sys.path when run as a script; bench/http.py would shadow the stdlib's http.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


@functools.cache
def _bench_module(name):
    """bench/<name>.py as module ``bench_<name>``: the drivers' parsers and helpers, reused.
    Loaded when first needed, so a broken import shows as a failed run, after the probe."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PYTHON = sys.executable
READY_BOUND_S = 60.0


# ---- placement -------------------------------------------------------------------------

class Placement:
    """Server cores (the first max(shards) allowed ones) and load-generator cores (the rest)."""

    def __init__(self, largest):
        allowed = sorted(os.sched_getaffinity(0))
        if largest > len(allowed):
            raise SystemExit(f"--shards asks for {largest} shards but this process may use only {len(allowed)} cores")
        self.allowed = allowed
        self.shared = largest == len(allowed)
        self.load = allowed if self.shared else allowed[largest:]

    def server(self, n):
        return self.allowed[:n]

    def describe(self, largest):
        where = "sharing the servers' cores" if self.shared else f"on cores {_cpus(self.load)}"
        return f"servers on cores {_cpus(self.server(largest))} (n shards: the first n), load generators {where}"


def _cpus(cpus):
    from shoal.runtime.cpuset import format_cpuset

    return format_cpuset(cpus)


def _pinned(cpus):
    cpus = set(cpus)
    return lambda: os.sched_setaffinity(0, cpus)


# ---- probe -----------------------------------------------------------------------------

def _probe_pidfd():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        fd = os.pidfd_open(pid)
        try:
            if not _readable(fd, 10):
                return "the pidfd of an exited child never became readable"
        finally:
            os.close(fd)
    finally:
        os.waitpid(pid, 0)
    return None


def _readable(fd, bound_s):
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(bound_s))


def _probe_eventfd():
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        os.eventfd_write(fd, 3)
        got = os.eventfd_read(fd)
    finally:
        os.close(fd)
    return None if got == 3 else f"read {got} after writing 3"


def _probe_segment():
    from shoal.runtime.ring import Segment

    seg = Segment.create(2, 1 << 12)
    try:
        ring = seg.ring(0, 1)
        ring.push(b"probe")
        ring.publish()
        other = seg.ring(0, 1)
        _, _, _, count = other.pop_batch()
        other.release()
    finally:
        seg.close()
        seg.unlink()
    return None if count == 1 else f"popped {count} messages after pushing one"


def _probe_affinity(cpus):
    before = os.sched_getaffinity(0)
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            if os.sched_getaffinity(0) != {cpu}:
                return f"pinned to {cpu}, getaffinity says {sorted(os.sched_getaffinity(0))}"
    finally:
        os.sched_setaffinity(0, before)
    return None


def _probe_pdeathsig():
    libc = ctypes.CDLL(None, use_errno=True)
    old = ctypes.c_int()
    if libc.prctl(2, ctypes.byref(old)) != 0:  # PR_GET_PDEATHSIG
        return f"prctl(PR_GET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}"
    if libc.prctl(1, signal.SIGKILL) != 0:  # PR_SET_PDEATHSIG, as every shard does
        return f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}"
    libc.prctl(1, old.value)
    return None


def _probe_reuseport(listeners=4, connections=64):
    """Bind `listeners` sockets to one port with SO_REUSEPORT, as the posix stack's shards do,
    and count where `connections` connections land: shard scaling needs them spread."""
    socks = []
    try:
        for _ in range(listeners):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", socks[0].getsockname()[1] if socks else 0))
            s.listen(connections)
            s.setblocking(False)
            socks.append(s)
        clients = [socket.create_connection(socks[0].getsockname(), timeout=5) for _ in range(connections)]
        counts = [0] * listeners
        deadline = time.monotonic() + 10
        while sum(counts) < connections and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                try:
                    s.accept()[0].close()
                    counts[i] += 1
                except BlockingIOError:
                    pass
        for c in clients:
            c.close()
    finally:
        for s in socks:
            s.close()
    if sum(counts) < connections:
        return f"only {sum(counts)} of {connections} connections were accepted: {counts}"
    if min(counts) == 0:
        return f"connections per listener {counts}: the kernel does not spread them, shards will idle"
    return None, f"connections per listener {counts}"


def _probe_tool(argv):
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} not on PATH"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    line = (proc.stdout or proc.stderr).strip().splitlines()
    return None, line[0] if line else f"exit {proc.returncode}"


def _probe_shards(cpus):
    """Two shards of the real launcher (hello app), as the benchmarks start them."""
    proc = subprocess.run([PYTHON, "-m", "shoal.apps.hello", "--smp", "2", "--cpuset", _cpus(cpus)],
                          capture_output=True, text=True, timeout=120, preexec_fn=_pinned(cpus))
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"
    return None, " / ".join(proc.stdout.strip().splitlines())


def _probe_netns():
    from shoal.drivers.netns import unavailable

    return unavailable()


def probe(placement):
    """Each check: None (ok), an error string, or (None, detail). Returns {name: (ok, text)}."""
    two = placement.allowed[:2]
    checks = {
        "pidfd_open": _probe_pidfd,
        "eventfd": _probe_eventfd,
        "shared-memory ring segment": _probe_segment,
        "sched_setaffinity": lambda: _probe_affinity(placement.allowed),
        "PR_SET_PDEATHSIG": _probe_pdeathsig,
        "SO_REUSEPORT spread": _probe_reuseport,
        "memcached": lambda: _probe_tool(["memcached", "-V"]),
        "memcaslap": lambda: _probe_tool(["memcaslap", "-V"]),
        "wrk": lambda: _probe_tool(["wrk", "-v"]),
        "uvloop": lambda: (None, __import__("uvloop").__version__),
        "httptools": lambda: (None, __import__("httptools").__version__),
        "shoal launcher, 2 shards": lambda: _probe_shards(two),
        "TAP and namespaces": _probe_netns,
    }
    results = {}
    for name, check in checks.items():
        try:
            outcome = check()
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        if isinstance(outcome, tuple):
            results[name] = (True, outcome[1])
        else:
            results[name] = (outcome is None, outcome or "")
        ok, text = results[name]
        print(f"probe {name}: {'ok' if ok else 'FAILED'}{' - ' + text if text else ''}", file=sys.stderr, flush=True)
    return results


#: (part, server) -> the probe checks it needs.
NEEDS = {
    ("memcached", "shoal"): ("memcaslap", "shoal launcher, 2 shards"),
    ("memcached", "memcached"): ("memcaslap", "memcached"),
    ("http", "shoal"): ("wrk", "httptools", "shoal launcher, 2 shards"),
    ("http", "uvloop"): ("wrk", "httptools", "uvloop"),
    ("smp", "shoal"): ("shoal launcher, 2 shards",),
    ("memcached", "native"): ("memcaslap", "shoal launcher, 2 shards", "TAP and namespaces"),
    ("http", "native"): ("wrk", "httptools", "shoal launcher, 2 shards", "TAP and namespaces"),
}
PARTS = ("probe", "memcached", "http", "smp")


def _wanted(part, server, n, smallest):
    """Whether a row runs at shard count n: submit_to needs two shards, and the
    single-process uvloop peer runs once a round (with the smallest n)."""
    if part == "smp":
        return n >= 2
    return server != "uvloop" or n == smallest


# ---- servers ---------------------------------------------------------------------------

class Server:
    """A server process pinned to `cpus`, its output in `log_path`; ready once it printed
    `ready_line` (shoal prints it when every shard listens; None: no line) and
    ``answers(port, proc)`` returned."""

    def __init__(self, argv, cpus, port, log_path, ready_line, answers):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pinned(cpus))
        try:
            if ready_line is not None:
                self._wait_line(ready_line)
            answers(port, self.proc)
        except BaseException:
            self.stop()
            raise

    def _wait_line(self, text):
        deadline = time.monotonic() + READY_BOUND_S
        while True:
            with open(self.log_path, "rb") as log:
                if text.encode() in log.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not print {text!r} within {READY_BOUND_S:.0f} s: {self._tail()}")
            time.sleep(0.05)

    def _tail(self):
        with open(self.log_path, "rb") as log:
            return log.read()[-2000:].decode(errors="replace")

    def cpu_seconds(self):
        return _bench_module("http").cpu_seconds(self.proc.pid)

    def stop(self):
        _bench_module("http").stop(self.proc)


class NativeServer(Server):
    """A shoal app on the native stack over a multi-queue TAP whose kernel side sits in a
    namespace made for it (`KernelPeer`): one queue per shard, flows steered to their shard.
    The load generator runs inside that namespace (`command`), so the kernel's TCP is the
    client and shoal's the server, across one virtual link."""

    def __init__(self, argv, cpus, log_path):
        from shoal.drivers.netns import KernelPeer

        self.peer = KernelPeer(open_device=False, subnet="10.213.77")
        self.host = self.peer.shoal_ip
        try:
            # "listening on" comes after every shard's stack opened its queue: the tap exists.
            super().__init__([*argv, "--tap-device", self.peer.ifname, "--host-ipv4-addr", self.host], cpus, None,
                             log_path, "listening on", lambda port, proc: self.peer.adopt())
        except BaseException:
            self.peer.close()
            raise

    def command(self, argv):
        return self.peer.command(argv)

    def stop(self):
        try:
            super().stop()
        finally:
            self.peer.close()


def _start(server_kind, argv, cpus, port, stem, answers):
    """The server of a row: shoal on loopback (posix) or on a TAP (native), or a peer."""
    if server_kind == "native":
        return NativeServer(argv, cpus, stem + ".server.log")
    server = Server(argv, cpus, port, stem + ".server.log", "listening on" if server_kind == "shoal" else None,
                    answers)
    server.host, server.command = "127.0.0.1", lambda load: load
    return server


def _children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(argv, server, placement, duration, raw_path):
    """Run a load generator to completion on the load cores; its output, the server's CPU
    seconds and the generator's CPU use (% of its cores; reaped children only: the servers
    are still running, so the delta is the generator's)."""
    before_server, before_load = server.cpu_seconds(), _children_cpu_seconds()
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120,
                          preexec_fn=_pinned(placement.load))
    elapsed = time.monotonic() - started
    server_cpu = server.cpu_seconds() - before_server
    load_cpu = _children_cpu_seconds() - before_load
    with open(raw_path, "w") as raw:
        raw.write(f"$ {' '.join(argv)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")
    return proc.stdout, server_cpu, 100.0 * load_cpu / (elapsed * len(placement.load))


def _threads_and_connections(placement, connections):
    """One load thread per load core; memaslap splits the connections evenly over its threads."""
    threads = len(placement.load)
    return threads, max(threads, connections // threads * threads)


def memcached_run(server_kind, n, args, placement, mix_path, raw_dir, round_):
    """One memaslap run against shoal's memcached (``server_kind`` "shoal") or Debian's at n shards/threads."""
    mc = _bench_module("memcached")
    cpus = placement.server(n)
    port = mc.free_port()
    if server_kind == "shoal":
        argv = [PYTHON, "-m", "shoal.apps.memcached", "--address", "127.0.0.1", "--port", str(port), "--smp", str(n),
                "--cpuset", _cpus(cpus), "--max-memory", "1G", "--network-stack", "posix"]
    elif server_kind == "native":
        argv = [PYTHON, "-m", "shoal.apps.memcached", "--port", str(port), "--smp", str(n), "--cpuset", _cpus(cpus),
                "--max-memory", "1G", "--network-stack", "native"]
    else:
        argv = ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024", "-t", str(n)]
    stem = os.path.join(raw_dir, f"memcached-{server_kind}-{n}-r{round_}")
    server = _start(server_kind, argv, cpus, port, stem, mc.wait_listening)
    try:
        threads, conns = _threads_and_connections(placement, args.connections)
        load = server.command(["memcaslap", "-s", f"{server.host}:{port}", "-t", f"{args.duration}s", "-T",
                               str(threads), "-c", str(conns), "-F", mix_path, "-S", f"{args.duration}s"])
        out, server_cpu, load_pct = run_load(load, server, placement, args.duration, stem + ".memaslap.txt")
    finally:
        server.stop()
    result = mc.parse(out)
    result["cpu_us_per_op"] = server_cpu * 1e6 / max(result.pop("total_ops"), 1)
    result["load_cpu_pct"] = load_pct
    result["rate"] = result.pop("ops")
    return result


def http_run(server_kind, n, args, placement, raw_dir, round_):
    """One wrk run against shoal's httpd (``server_kind`` "shoal") at n shards or bench/http.py's uvloop peer."""
    web = _bench_module("http")
    cpus = placement.server(n)
    port = web.free_port()
    if server_kind == "shoal":
        argv = [PYTHON, "-m", "shoal.apps.httpd", "--address", "127.0.0.1", "--port", str(port), "--smp", str(n),
                "--cpuset", _cpus(cpus), "--network-stack", "posix"]
    elif server_kind == "native":
        argv = [PYTHON, "-m", "shoal.apps.httpd", "--port", str(port), "--smp", str(n), "--cpuset", _cpus(cpus),
                "--network-stack", "native"]
    else:  # bench/http.py's peer pins itself to core 0
        argv = [PYTHON, os.path.join(_HERE, "http.py"), "--serve", "uvloop", "--port", str(port)]
    stem = os.path.join(raw_dir, f"http-{server_kind}-{n}-r{round_}")
    server = _start(server_kind, argv, cpus, port, stem, web.wait_accepting)
    try:
        threads, conns = _threads_and_connections(placement, args.connections)
        load = server.command(["wrk", "--latency", f"-t{threads}", f"-c{conns}", f"-d{args.duration}s",
                               f"http://{server.host}:{port}/"])
        out, server_cpu, load_pct = run_load(load, server, placement, args.duration, stem + ".wrk.txt")
    finally:
        server.stop()
    result = web.parse_wrk(out)
    requests = int(out.split(" requests in")[0].split()[-1])
    result["rate"] = result.pop("rps")
    result["cpu_us_per_op"] = server_cpu * 1e6 / max(requests, 1)
    result["load_cpu_pct"] = load_pct
    return result


# ---- submit_to among many shards -------------------------------------------------------

def nothing(payload):
    return None


async def _send_to_next(messages):
    """On every shard: `messages` submit_to calls to the next shard, 256 in flight."""
    from shoal.runtime import smp

    target = (smp.this_shard() + 1) % smp.count
    started = time.perf_counter()
    sent = 0
    while sent < messages:
        batch = min(256, messages - sent)
        await asyncio.gather(*(smp.submit_to(target, nothing, b"x" * 16) for _ in range(batch)))
        sent += batch
    return sent, time.perf_counter() - started


def smp_run(n, args, placement):
    from shoal.runtime import run, smp

    async def ring_of_shards():  # main of shard 0, which the launcher forks: a closure is fine
        return await smp.invoke_on_all(_send_to_next, args.messages)

    cpus = placement.server(n)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))  # the launcher pins shards only to cores it may use
    try:
        per_shard = run(ring_of_shards, smp=n, cpuset=cpus)
    finally:
        os.sched_setaffinity(0, before)
    total = sum(sent for sent, _ in per_shard)
    return {"rate": total / max(elapsed for _, elapsed in per_shard),
            "slowest_shard_s": max(elapsed for _, elapsed in per_shard)}


# ---- driver ----------------------------------------------------------------------------

class Results:
    """Every run (or failure) as it happens, rewritten to scaling.json when --out is set."""

    def __init__(self, out, meta):
        self.out = out
        self.data = {"meta": meta, "probe": {}, "runs": [], "errors": [], "skipped": []}

    def save(self):
        if self.out:
            with open(os.path.join(self.out, "scaling.json"), "w") as f:
                json.dump(self.data, f, indent=1)

    def add(self, part, server, n, round_, result):
        self.data["runs"].append({"part": part, "server": server, "n": n, "round": round_, **result})
        self.save()

    def cells(self, part, server, n, column):
        return [r[column] for r in self.data["runs"]
                if (r["part"], r["server"], r["n"]) == (part, server, n) and column in r]


def _median(values):
    return statistics.median(values) if values else None


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(results, part, rows, columns):
    """Markdown rows for `part`: rows are (label, server, n, server whose smallest n is the base)."""
    header = ["server", "n", "rate", "x base", "eff", *(c[0] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, server, n, base_server in rows:
        if not results.cells(part, server, n, "rate"):
            continue  # not asked for (--native), or every run of it failed (see errors)
        rate = _median(results.cells(part, server, n, "rate"))
        base_n = min(m for _, other, m, _ in rows if other == base_server)
        base = _median(results.cells(part, base_server, base_n, "rate"))
        ratio = rate / base if rate is not None and base else None
        efficiency = ratio * base_n / n if ratio else None
        cells = [label, str(n), _fmt(rate, ",.0f"), _fmt(ratio, ".2f"), _fmt(efficiency, ".2f")]
        cells += [_fmt(_median(results.cells(part, server, n, key)), spec) for _, key, spec in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None):
    # A SIGTERM (a timeout) unwinds like Ctrl-C: servers are stopped by the finally clauses.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="1,2,4,8", help="shard (thread) counts (default 1,2,4,8)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per load run (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per row, interleaved (default 2)")
    parser.add_argument("--connections", type=int, default=256,
                        help="client connections in all, rounded to a multiple of the load threads (default 256)")
    parser.add_argument("--messages", type=int, default=100_000, help="submit_to calls per shard (smp part)")
    parser.add_argument("--parts", default="probe,memcached,http,smp")
    parser.add_argument("--native", action="store_true",
                        help="also shoal on the native stack over a multi-queue TAP (needs root and iproute2)")
    parser.add_argument("--out", help="folder for scaling.md, scaling.json and raw/")
    parser.add_argument("--deadline-s", type=float, help="start no run after this many seconds")
    args = parser.parse_args(argv)
    started = time.monotonic()
    shards = sorted({int(n) for n in args.shards.split(",")})
    parts = args.parts.split(",")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)} (probe, memcached, http, smp)")
    placement = Placement(shards[-1])
    if args.out:
        os.makedirs(os.path.join(args.out, "raw"), exist_ok=True)
    raw_dir = os.path.join(args.out, "raw") if args.out else tempfile.mkdtemp(prefix="shoal-scaling-")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "uname": " ".join(platform.uname()),
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "placement": placement.describe(shards[-1]),
            "argv": sys.argv[1:], "load_average": os.getloadavg()}
    results = Results(args.out, meta)
    print(f"{meta['date']}, {meta['uname']}, Python {meta['python']}, {meta['placement']}", file=sys.stderr)

    if "probe" in parts:
        results.data["probe"] = {k: {"ok": ok, "detail": d} for k, (ok, d) in probe(placement).items()}
        results.save()
    failed = {k for k, v in results.data["probe"].items() if not v["ok"]}
    runnable = set()
    for (part, server), checks in NEEDS.items():
        missing = [c for c in checks if c in failed]
        if part not in parts or (server == "native" and not args.native):
            continue
        if missing:
            results.data["skipped"].append(f"{part} {server}: probe failed for {', '.join(missing)}")
        else:
            runnable.add((part, server))

    plan = [(part, server, 1 if server == "uvloop" else n, round_)
            for round_ in range(1, args.rounds + 1) for n in shards for part, server in NEEDS
            if (part, server) in runnable and _wanted(part, server, n, shards[0])]
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as mix:
            mix.write(_bench_module("memcached").MIX)
            mix.flush()
            for part, server, n, round_ in plan:
                if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
                    results.data["skipped"].append(f"{part} {server} n={n} round {round_}: past --deadline-s")
                    continue
                try:
                    if part == "memcached":
                        result = memcached_run(server, n, args, placement, mix.name, raw_dir, round_)
                    elif part == "http":
                        result = http_run(server, n, args, placement, raw_dir, round_)
                    else:
                        result = smp_run(n, args, placement)
                except Exception as exc:
                    results.data["errors"].append(f"{part} {server} n={n} round {round_}: {type(exc).__name__}: {exc}")
                    print(f"FAILED {results.data['errors'][-1]}", file=sys.stderr, flush=True)
                    continue
                results.add(part, server, n, round_, result)
                print(f"round {round_} {part} {server} n={n}: {result}", file=sys.stderr, flush=True)
    except BaseException as exc:  # SIGTERM (a timeout) or Ctrl-C: the report below still shows what was measured
        results.data["errors"].append(f"interrupted ({type(exc).__name__}) after {time.monotonic() - started:.0f} s")
        raise
    finally:
        results.data["meta"]["elapsed_s"] = time.monotonic() - started
        results.save()
        report = render(results, args, shards, placement)
        print(report, flush=True)
        if args.out:
            with open(os.path.join(args.out, "scaling.md"), "w") as f:
                f.write(report + "\n")
        else:  # without --out the tool outputs and server logs only fed the error messages
            shutil.rmtree(raw_dir)


def render(results, args, shards, placement):
    meta = results.data["meta"]
    threads, conns = _threads_and_connections(placement, args.connections)
    lines = [f"{meta['date']}: {meta['uname']}, Python {meta['python']}, {meta['cpus']} cpus; {meta['placement']}. "
             f"{args.duration} s per run, median of {args.rounds} round(s); x base: rate over the same server's at "
             f"its smallest n, eff: that ratio per added shard (x base * smallest n / n; 1.00 is linear).", ""]
    if results.data["probe"]:
        lines += ["| probe | result |", "|---|---|"]
        for name, check in results.data["probe"].items():  # a traceback's last line; all of it is in the json
            detail = check["detail"].strip().splitlines()[-1] if check["detail"].strip() else ""
            lines.append(f"| {name} | {'ok' if check['ok'] else 'FAILED'}{': ' + detail if detail else ''} |")
        lines.append("")
    latency_us = [("p50 us", "p50", ",.0f"), ("p99 us", "p99", ",.0f"), ("server CPU us/op", "cpu_us_per_op", ".1f"),
                  ("load CPU %", "load_cpu_pct", ".0f")]
    if any(r["part"] == "memcached" for r in results.data["runs"]):
        lines += [f"memcached, posix stack on 127.0.0.1 (native rows: over a TAP, the load in its namespace): memaslap -T {threads} -c {conns}, 90% get / 10% set, "
                  "64 B keys, 100 B values; rate in ops/s; n is --smp for shoal, -t for memcached", ""]
        rows = [(f"shoal --smp {n}", "shoal", n, "shoal") for n in shards]
        rows += [(f"shoal --smp {n}, native (TAP)", "native", n, "native") for n in shards]
        rows += [(f"memcached -t {n}", "memcached", n, "memcached") for n in shards]
        lines += table(results, "memcached", rows, latency_us) + [""]
    if any(r["part"] == "http" for r in results.data["runs"]):
        lines += [f"httpd, GET /, posix stack on 127.0.0.1 (native rows: over a TAP, the load in its namespace): wrk -t{threads} -c{conns}; rate in requests/s; "
                  "uvloop: bench/http.py's single-process uvloop + httptools server on core 0", ""]
        rows = [(f"shoal httpd --smp {n}", "shoal", n, "shoal") for n in shards]
        rows += [(f"shoal httpd --smp {n}, native (TAP)", "native", n, "native") for n in shards]
        rows.append(("uvloop, 1 process", "uvloop", 1, "uvloop"))
        ms = [("p50 ms", "p50", ".3f"), ("p99 ms", "p99", ".3f"), ("server CPU us/req", "cpu_us_per_op", ".1f"),
              ("load CPU %", "load_cpu_pct", ".0f")]
        lines += table(results, "http", rows, ms) + [""]
    if any(r["part"] == "smp" for r in results.data["runs"]):
        lines += [f"submit_to among n shards, each calling the next ({args.messages} calls per shard, 256 in flight, "
                  "16 B argument); rate in calls/s, all shards together", ""]
        rows = [(f"shoal --smp {n}", "shoal", n, "shoal") for n in shards if n >= 2]
        lines += table(results, "smp", rows, [("slowest shard s", "slowest_shard_s", ".2f")]) + [""]
    for key in ("errors", "skipped"):
        if results.data[key]:
            lines += [f"{key}:", *(f"- {e}" for e in results.data[key]), ""]
    lines.append(f"python bench/scaling.py {' '.join(meta['argv'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
