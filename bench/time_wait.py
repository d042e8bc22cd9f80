"""What a connection in TIME-WAIT costs to keep: the machine against its record.

    python bench/time_wait.py [--connections 2000]

Sans I/O, in this process: ``--connections`` pairs of `Connection` machines exchange a
request and a response over a direct hand-off of segments (no wire), and the server
closes first, so every server-side machine ends in TIME-WAIT, where a server keeps it for
2*MSL (60 s). Prints, per connection, the memory allocated (tracemalloc) and the objects
the garbage collector tracks, for the machines kept as they are and for their records
(`Connection.hibernate`, what the TCP layer keeps, `tcp.time_wait`). A full collection
visits every tracked object, so the second column is what a shard's collection pauses
grow with.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import tracemalloc

from shoal.net.native.tcp.connection import Connection, State, TcpConfig

CLIENT = (0x0A000001, 40000)
SERVER = (0x0A000002, 80)


def pump(x, y, now):
    """Hand each machine's segments to the other until neither has any."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((x, y), (y, x)):
            for seg in src.transmit(now, 64):
                dst.segment_arrived(seg, now)
                moved = True


def served(config, i, now):
    """A server-side machine in TIME-WAIT after one request and response."""
    client = Connection.active(config, (CLIENT[0], CLIENT[1] + i % 20000), SERVER, 1000 + i, now)
    [syn] = client.transmit(now, 1)
    server = Connection.passive(config, SERVER, client.local, syn, 5000 + i, now)
    pump(client, server, now)
    client.send(b"GET / HTTP/1.1\r\n\r\n")
    pump(client, server, now)
    server.recv()
    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    server.close()
    pump(client, server, now)
    client.recv()
    client.close()
    pump(client, server, now)
    assert server.state is State.TIME_WAIT, server
    server.take_events()
    return server


def cost(make, n):
    """(bytes, tracked objects) per item of ``[make(i) for i in range(n)]``, kept alive."""
    gc.collect()
    gc.collect()
    tracemalloc.start()
    before_mem = tracemalloc.get_traced_memory()[0]
    before_objects = len(gc.get_objects())
    kept = [make(i) for i in range(n)]
    gc.collect()
    gc.collect()
    mem = tracemalloc.get_traced_memory()[0] - before_mem
    objects = len(gc.get_objects()) - before_objects
    tracemalloc.stop()
    del kept
    return mem / n, objects / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args(argv)
    config = TcpConfig()
    n = args.connections
    machine = cost(lambda i: served(config, i, 100.0), n)
    record = cost(lambda i: served(config, i, 100.0).hibernate(config), n)
    print(f"# A connection in TIME-WAIT ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{n} connections)\n")
    print("| kept as | bytes per connection | tracked objects per connection |")
    print("|---|---|---|")
    print(f"| the machine (`Connection`) | {machine[0]:,.0f} | {machine[1]:.1f} |")
    print(f"| its record (`Connection.hibernate`) | {record[0]:,.0f} | {record[1]:.1f} |")


if __name__ == "__main__":
    main()
