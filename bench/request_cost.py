"""What one small request and its response cost the native stack, in CPU instructions.

    python bench/request_cost.py [--requests 1280,3840] [--connections 64] [--loop uvloop] [--timestamps off]
                                 [--ecn on]

This machine's timings of the same run vary by up to 2x, which hides a change of a few
percent. An instruction count does not vary: each row runs a workload under valgrind
(``--tool=callgrind``, ``PYTHONHASHSEED=0``) at two sizes and divides the difference in
instructions by the difference in requests, so start-up and imports cancel out.

- ``stacks``: two native stacks on the virtual wire in one process, on the virtual clock
  of the test suite (`tests/native/test_native_tcp_virtual.two_stacks`); ``--connections``
  connections take turns sending a 40-octet request and reading a 72-octet response.
  Everything a request costs both ends is in it: the wire formats, IPv4, ARP, TCP, the
  connection objects, the application's reads and writes and their futures, the event
  loop (``--loop``: uvloop, as under a shard's reactor by default, where installed, or
  asyncio's own). Half of it is about what one end spends.
- ``machine``: the TCP state machine alone (`tests/tcp/tcp_harness.established`), one
  end: the request's segment arrives, the application reads it and writes the
  response, the response's segment is pulled.
- ``tap``: the TAP driver's Python work per request at the server, without its syscalls:
  the request's frame as the kernel hands it up (behind a ``NEEDS_CSUM`` virtio-net
  header, `TapDevice._strip`) and the response's frame as the device takes it
  (`vnet.coalesce` over `frame_buffers`), in bursts of ``--connections`` frames (at most
  64, a shard's burst).
- ``--timestamps off``: the workloads without RFC 7323 timestamps, as with a peer that
  does not use them (Windows, by default). ``--ecn on``: the ``stacks`` workload alone,
  with ECN (RFC 3168) negotiated, as ``--tcp-ecn on`` does.

The stack comes from the tree that `shoal` is imported from, so ``PYTHONPATH`` naming
another checkout (as a folder holding a ``shoal`` link to it) measures that tree.
Needs valgrind (Debian's ``valgrind`` package).
"""
import argparse
import asyncio
import collections
import datetime
import os
import pathlib
import re
import shutil
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]  # (bench/http.py)

import shoal.net.native.tcp.connection  # noqa: E402  (the tree's root is three folders up)

ROOT = pathlib.Path(shoal.net.native.tcp.connection.__file__).parents[3]
REQUEST = b"GET / HTTP/1.1\r\nHost: 10.9.0.2:8000\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nServer: shoal\r\nContent-Length: 14\r\n\r\nhello, world!\n"


def stacks(requests, connections, loop, timestamps=True, ecn=False):
    """`requests` request/response exchanges over `connections` connections, on `loop`."""
    sys.path.insert(0, str(ROOT / "tests" / "native"))
    from test_native_tcp_virtual import B_IP, test_config, two_stacks

    async def main():
        config = test_config(timestamps=timestamps, ecn=ecn)
        async with two_stacks(tcp_a=config, tcp_b=config) as (a, b, _clock):
            server = b.listen(("", 8000))
            serving = []

            async def serve(conn):
                while await conn.read():
                    await conn.write(RESPONSE)

            async def accept():
                while True:
                    conn, _ = await server.accept()
                    serving.append(asyncio.ensure_future(serve(conn)))

            acceptor = asyncio.ensure_future(accept())
            clients = [await a.connect((B_IP, 8000)) for _ in range(connections)]

            async def client(conn, n):
                for _ in range(n):
                    await conn.write(REQUEST)
                    got = 0
                    while got < len(RESPONSE):
                        got += len(await conn.read())

            share, extra = divmod(requests, connections)
            await asyncio.gather(*(client(c, share + (i < extra)) for i, c in enumerate(clients)))
            for conn in clients:
                await conn.close()
            acceptor.cancel()
            for task in serving:
                task.cancel()
    factory = None
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def machine(requests, timestamps=True):
    """`requests` request/response exchanges through one `tcp.Connection`."""
    sys.path.insert(0, str(ROOT / "tests" / "tcp"))
    from tcp_harness import ACK, IRS, LOCAL, PSH, REMOTE, T0, TcpSegment, established
    peer = {"sack_permitted": True, "wscale": 7}
    if timestamps:
        peer["timestamp"] = (1, 0)
    conn = established(T0, peer_opts=peer, timestamps=timestamps, sack=True, window_scaling=True,
                       recv_buffer=1 << 20, send_buffer=1 << 20)
    now, seq, tsval = T0, IRS + 1, 2
    for _ in range(requests):
        now += 0.0001
        ts = (tsval, (int(now * 1000)) & 0xFFFFFFFF) if timestamps else None
        conn.segment_arrived(TcpSegment(REMOTE[1], LOCAL[1], seq, conn.snd_max.real, ACK | PSH, 1000, 0, None,
                                        None, False, ts, (), memoryview(REQUEST)), now)
        seq += len(REQUEST)
        tsval += 1
        conn.take_events()
        assert conn.recv() == REQUEST
        conn.send(RESPONSE)
        out = conn.transmit(now)
        assert len(out) == 1 and len(out[0].payload) == len(RESPONSE)


def tap(requests, connections, timestamps=True):
    """`requests` requests' worth of the TAP driver's per-frame Python work, in bursts."""
    from shoal.drivers import vnet
    from shoal.drivers.base import frame_buffers
    from shoal.drivers.tap import TapDevice
    from shoal.net.native.packet import Packet
    from shoal.net.native.wire import tcp_frame
    from shoal.net.native.wire.tcp import ACK, PSH, TcpSegment
    mac, peer_mac = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    ts = (7, 9) if timestamps else None
    burst = min(connections, 64)

    def frame(port, data):
        seg = TcpSegment(port, 8000, 1000, 2000, ACK | PSH, 500, 0, None, None, False, ts, (), memoryview(data))
        length = tcp_frame.HEADER_LEN if timestamps else tcp_frame.PLAIN_HEADER_LEN
        packet = Packet(seg.payload, length)  # (as `TcpLayer.send_segment` makes it)
        packet.checksum_partial = True
        tcp_frame.emit(packet.buf, packet.prepend(length), mac, peer_mac, 1, 2, 1, 64, True, 0, seg, True)
        return packet

    responses = [frame(40000 + i, RESPONSE) for i in range(burst)]
    header = vnet.VNET_HDR.pack(vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 34, vnet.TCP_CSUM_OFFSET)
    received = [header + b"".join(bytes(b) for b in frame(40000 + i, REQUEST).views()) for i in range(burst)]
    device = TapDevice.__new__(TapDevice)  # the per-frame logic alone: no tap opened
    device.stats = collections.Counter()
    device.vnet_hdr = True
    for _ in range(requests // burst):
        device._strip(received)
        vnet.coalesce(responses, frame_buffers)


def _loop_default():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def instructions(workload, requests, connections, loop, timestamps, ecn):
    """Instructions valgrind counts for one run of `workload`."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
           "--worker", workload, "--requests", str(requests), "--connections", str(connections), "--loop", loop,
           "--timestamps", timestamps, "--ecn", ecn]
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode or found is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="1280,3840", help="the two run sizes, small,large")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default=_loop_default(),
                    help="event loop of the stacks workload (default: uvloop where installed)")
    ap.add_argument("--timestamps", choices=("on", "off"), default="on",
                    help="RFC 7323 timestamps on both ends (off: as with a peer that does not use them)")
    ap.add_argument("--ecn", choices=("on", "off"), default="off",
                    help="ECN (RFC 3168) negotiated in the stacks workload, as --tcp-ecn on does")
    ap.add_argument("--worker", choices=("stacks", "machine", "tap"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    timestamps = args.timestamps == "on"
    if args.worker is not None:  # one run, under valgrind
        if args.worker == "stacks":
            stacks(int(args.requests), args.connections, args.loop, timestamps, args.ecn == "on")
        elif args.worker == "machine":
            machine(int(args.requests), timestamps)
        else:
            tap(int(args.requests), args.connections, timestamps)
        return
    try:
        small, large = (int(n) for n in args.requests.split(","))
        if not 0 < small < large or args.connections < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--requests {args.requests!r}: want two sizes, the first smaller; --connections at least 1")
    if shutil.which("valgrind") is None:
        ap.error("valgrind is not installed (apt-get install valgrind)")
    print(f"# Instructions per request ({datetime.datetime.now().isoformat(timespec='seconds')}, tree {ROOT}, "
          f"{small} and {large} requests, {args.connections} connections, {args.loop}, "
          f"timestamps {args.timestamps}, ecn {args.ecn})\n")
    print("| workload | instructions per request |")
    print("|---|---:|")
    for workload in ("stacks",) if args.ecn == "on" else ("stacks", "machine", "tap"):
        a = instructions(workload, small, args.connections, args.loop, args.timestamps, args.ecn)
        b = instructions(workload, large, args.connections, args.loop, args.timestamps, args.ecn)
        print(f"| {workload} | {(b - a) / (large - small):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
