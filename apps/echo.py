"""shoal echo: send back whatever arrives (RFC 862), over TCP or, with --udp, UDP.

    python -m shoal.apps.echo --port 10000 [--udp] [--smp N] [--network-stack posix]

TCP: each connection's bytes are written back as they arrive; at end of stream
the server closes its side too.  UDP: each datagram is sent back to its source.
Every shard binds the same port, so the kernel (posix) or the NIC queues
(native) spread the clients over the shards.
"""

from __future__ import annotations

import asyncio
import sys

from shoal import net
from shoal.runtime import smp


async def echo_connection(conn: net.Connection) -> None:
    """Echo one TCP connection until the peer closes it (RFC 862, TCP based)."""
    try:
        while True:
            data = await conn.read()
            if not data:
                break
            await conn.write(data)
    except ConnectionError:
        pass  # the peer reset or vanished: nothing left to echo to
    finally:
        await conn.close()


async def echo_datagrams(channel: net.UdpChannel) -> None:
    """Answer every datagram with its own payload (RFC 862, UDP based)."""
    while True:
        data, source = await channel.receive()
        try:
            await channel.send(source, data)
        except OSError:
            pass  # a source we cannot answer must not stop the service


_running: list = []


async def start_on_shard(args) -> None:
    """Bind this shard's socket and serve in the background."""
    loop = asyncio.get_running_loop()
    if args.udp:
        channel = net.udp_channel((args.address, args.port))
        _running.append((channel, loop.create_task(echo_datagrams(channel))))
        return
    server = net.listen((args.address, args.port))
    tasks: set[asyncio.Task] = set()

    async def accept_loop():
        async for conn in server:
            task = loop.create_task(echo_connection(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    _running.append((server, loop.create_task(accept_loop()), tasks))


def main(argv=None) -> int:
    app = net.AppTemplate("shoal echo server (TCP, or UDP with --udp)")
    app.parser.add_argument("--port", type=int, default=10000)
    app.parser.add_argument("--address", default="0.0.0.0", help="address to bind")
    app.parser.add_argument("--udp", action="store_true", help="echo UDP datagrams instead of TCP")
    args = app.parse(argv)

    async def serve():
        await smp.invoke_on_all(start_on_shard, args)
        print(f"echo: {'udp' if args.udp else 'tcp'} on {args.address}:{args.port} with "
              f"{smp.count} shard(s), {args.network_stack} stack, {args.reactor_backend} reactor",
              flush=True)
        await asyncio.get_running_loop().create_future()  # serve until stopped

    return app.run(serve)


if __name__ == "__main__":
    sys.exit(main())
