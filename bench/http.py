"""HTTP requests/s: shoal httpd (posix stack) against plain asyncio and uvloop servers.

    python bench/http.py [--duration 5] [--connections 1,64]

In one run, wrk (Debian package) drives for a fixed duration, with each
connection count:

* ``shoal --smp 1`` and ``shoal --smp 2``: ``python -m shoal.apps.httpd`` with the
  runtime's defaults (shards poll 200 us before sleeping), and the same with
  ``--idle-poll-time-us 0`` at one shard (sleep at once), since polling trades
  CPU that wrk needs for wake-up latency;
* ``asyncio`` and ``uvloop``: a single-process ``asyncio.Protocol`` server
  (this file with ``--serve``) that parses with httptools, as shoal does, and
  answers the very same bytes (the same response builder and Date cache);
* ``uvloop streams``: the same work as a coroutine per connection on asyncio
  Streams over uvloop, the programming model shoal's API offers;
* ``shoal Protocol``: the peers' ``asyncio.Protocol`` unchanged, served on
  every shard with ``net.create_server`` (the compatibility layer; on the posix
  stack it runs on the loop's own transports).

Single-process servers are pinned to CPU 0, as shoal's shard 0 is; wrk is
pinned to the last CPU, which shoal's shard 1 shares with it at ``--smp 2``.  Prints a markdown table: requests/s, latency
percentiles from ``wrk --latency``, the ratio to the uvloop server at the
same connection count, and the server's CPU time per request (all its
processes), which load from other programs disturbs far less than requests/s.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder heads sys.path and this module would
# shadow the standard library's ``http`` package for everything imported below.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

PYTHON = sys.executable


# --- servers under test other than the httpd app -------------------------------------

_DATES = None


class HttpProtocol(asyncio.Protocol):
    """The peers' HTTP server: httptools parsing, the httpd's bytes for ``GET /``."""

    def __init__(self):
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError
        self.out = []

    def connection_made(self, transport):
        self.transport = transport

    def on_message_complete(self):
        _DATES.refresh()
        self.out.append(_DATES.hello[self.parser.should_keep_alive()])

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.error:
            self.transport.close()
            return
        if self.out:
            self.transport.writelines(self.out)
            self.out.clear()


async def handle_stream(reader, writer):
    """The same work as HttpProtocol, written as a coroutine on asyncio Streams."""
    proto = HttpProtocol()
    try:
        while data := await reader.read(65536):
            proto.parser.feed_data(data)
            if proto.out:
                writer.writelines(proto.out)
                proto.out.clear()
                await writer.drain()
    except (proto.error, ConnectionError):
        pass
    writer.close()


def serve_baseline(kind: str, port: int) -> None:
    """Run a plain single-process peer, pinned to CPU 0 as shoal's shard 0 is."""
    global _DATES
    from shoal.apps.httpd import DateCache

    os.sched_setaffinity(0, {0})
    _DATES = DateCache()

    async def main():
        loop = asyncio.get_running_loop()
        if kind.endswith("streams"):
            server = await asyncio.start_server(handle_stream, "127.0.0.1", port, backlog=1024)
        else:
            server = await loop.create_server(HttpProtocol, "127.0.0.1", port, backlog=1024)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()

    if kind.startswith("uvloop"):
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


_servers = []


async def _serve_protocol_on_shard(port: int) -> None:
    global _DATES
    from shoal import net
    from shoal.apps.httpd import DateCache

    _DATES = DateCache()
    _servers.append(await net.create_server(HttpProtocol, "127.0.0.1", port))


def serve_shoal_protocol(argv: list[str]) -> int:
    """HttpProtocol unchanged, served on every shard with ``net.create_server``."""
    from shoal import net
    from shoal.runtime import smp

    app = net.AppTemplate("HttpProtocol on shoal")
    app.parser.add_argument("--serve")
    app.parser.add_argument("--port", type=int)
    args = app.parse(argv)

    async def main():
        await smp.invoke_on_all(_serve_protocol_on_shard, args.port)
        await asyncio.get_running_loop().create_future()

    return app.run(main)


# --- the driver --------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(port: int, proc: subprocess.Popen, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before accepting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not accept on port {port} within {bound} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict:
    """Requests/s and latency percentiles (ms) from ``wrk --latency`` output."""
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        result[f"p{pct}"] = float(value) * _UNIT[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["bad"] = int(errors.group(1)) if errors else 0
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (the shards)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _pin_load_generator() -> None:
    """wrk runs on the last CPU, single-process servers on CPU 0: the same
    placement for every row (a same-CPU ping-pong is ~10x faster than a
    cross-CPU one here, so letting the scheduler choose adds noise)."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})


def run_wrk(port: int, connections: int, duration: int, server_pid: int) -> dict:
    """One wrk run; adds the server's CPU time per request, which a busy
    machine disturbs much less than requests/s."""
    cmd = ["wrk", "--latency", "-t1", f"-c{connections}", f"-d{duration}s",
           f"http://127.0.0.1:{port}/"]
    before = cpu_seconds(server_pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True,
                         preexec_fn=_pin_load_generator)
    used = cpu_seconds(server_pid) - before
    result = parse_wrk(out.stdout)
    requests = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    result["cpu_us"] = used / max(requests, 1) * 1e6
    return result


#: The single-process peers: Protocol servers on each loop, and a coroutine
#: server on uvloop's Streams (the same programming model as shoal's API).
PEERS = ("asyncio", "uvloop", "uvloop streams")
#: Row name -> httpd options.
SHOAL_ROWS = {
    "shoal --smp 1": ["--smp", "1"],
    "shoal --smp 2": ["--smp", "2"],
    "shoal --smp 1, idle poll 0": ["--smp", "1", "--idle-poll-time-us", "0"],
}
#: The peers' HttpProtocol ported to shoal with net.create_server.
SHOAL_PROTOCOL_ROWS = {
    "shoal Protocol --smp 1": ["--smp", "1"],
    "shoal Protocol --smp 2": ["--smp", "2"],
}


def server_command(name: str, port: int) -> list[str]:
    if name in SHOAL_ROWS:
        return [PYTHON, "-m", "shoal.apps.httpd", "--port", str(port), "--address", "127.0.0.1",
                *SHOAL_ROWS[name]]
    if name in SHOAL_PROTOCOL_ROWS:
        return [PYTHON, os.path.abspath(__file__), "--serve", "shoal protocol", "--port", str(port),
                *SHOAL_PROTOCOL_ROWS[name]]
    return [PYTHON, os.path.abspath(__file__), "--serve", name, "--port", str(port)]


def main() -> None:
    if sys.argv[1:3] == ["--serve", "shoal protocol"]:
        sys.exit(serve_shoal_protocol(sys.argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,64")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every row; report the median")
    parser.add_argument("--only", help="comma-separated row names to run (uvloop is always run)")
    parser.add_argument("--serve", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_baseline(args.serve, args.port)
        return

    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    servers = [*PEERS, *SHOAL_ROWS, *SHOAL_PROTOCOL_ROWS]
    if args.only:
        wanted = {"uvloop", *args.only.split(",")}
        servers = [name for name in servers if name in wanted]
    conns = [int(c) for c in args.connections.split(",")]
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):                 # rounds interleave the servers, so a
        for name in servers:                     # burst of load elsewhere hits all rows
            port = free_port()
            proc = subprocess.Popen(server_command(name, port), stdout=subprocess.DEVNULL)
            try:
                wait_accepting(port, proc)
                for c in conns:
                    runs.setdefault((name, c), []).append(run_wrk(port, c, args.duration, proc.pid))
            finally:
                stop(proc)
    # per row: the run with the median requests/s
    results = {key: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for key, rs in runs.items()}

    print(f"wrk -t1 --latency, {args.duration} s per run, median of {args.rounds} run(s) per row, "
          f"GET / ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, wrk pinned to the last, "
          f"load average before: {load_before})\n")
    print("| server | conns | requests/s | p50 ms | p90 ms | p99 ms | vs uvloop | server CPU us/req |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        base = results["uvloop", c]["rps"]
        for name in servers:
            r = results[name, c]
            print(f"| {name} | {c} | {r['rps']:,.0f} | {r.get('p50', float('nan')):.3f} | "
                  f"{r.get('p90', float('nan')):.3f} | {r.get('p99', float('nan')):.3f} | "
                  f"{r['rps'] / base:.2f} | {r['cpu_us']:.1f} |")
    bad = {k: v["bad"] for k, v in results.items() if v["bad"]}
    if bad:
        print(f"\nnon-2xx responses: {bad}")
    print(f"\n{datetime.date.today()}: python bench/http.py --duration {args.duration} "
          f"--connections {args.connections} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
