"""shoal memcached: the sharded cache served over TCP (and UDP) with shoal.net.

    python -m shoal.apps.memcached --port 11211 --smp N --max-memory 1G [--udp-port P]

Every shard listens on the same port (the posix stack uses SO_REUSEPORT, the native
stack its flow steering), so clients land on any shard; each shard parses its own
connections and executes commands where the keys live (see :mod:`.sharding`). The
memory budget ``--max-memory`` is split evenly between the shards.

UDP (protocol.txt "UDP protocol"): a request is one datagram (frame header with
total datagrams 1) carrying text commands; the reply is split into datagrams of
at most 1400 payload bytes, each with the request id and its sequence number.
Multi-datagram requests are dropped, as memcached drops them.
"""
import argparse
import asyncio
import sys
from time import perf_counter

from shoal import net
from shoal.apps.memcached import protocol
from shoal.apps.memcached.protocol import Invalid, Parser, ProtocolError
from shoal.apps.memcached.sharding import Frontend, ShardCache
from shoal.runtime import Sharded, metrics, smp

_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

#: Minimum budget per shard: a few maximum-size items must fit.
_MIN_SHARD_MEMORY = 64 * 1024

#: Seconds from a read's arrival to its replies being ready: one observation per
#: read, covering every command it carried (pipelined commands share one).
_BATCH_SECONDS = metrics.registry.histogram(
    "memcached_batch_seconds", "time to answer the commands of one read").labels()

#: Prometheus name, kind, help, and the ``ShardCache.stats()`` key read at scrape time.
_CACHE_METRICS = (
    ("memcached_get_hits", metrics.COUNTER, "retrievals that found the key", "get_hits"),
    ("memcached_get_misses", metrics.COUNTER, "retrievals that did not find the key", "get_misses"),
    ("memcached_get_expired", metrics.COUNTER, "retrievals that found the key expired", "get_expired"),
    ("memcached_evictions", metrics.COUNTER, "live items evicted to make room", "evictions"),
    ("memcached_reclaimed", metrics.COUNTER, "expired items whose memory was reused", "reclaimed"),
    ("memcached_cmd_get", metrics.COUNTER, "keys asked for by retrieval commands", "cmd_get"),
    ("memcached_cmd_set", metrics.COUNTER, "storage commands", "cmd_set"),
    ("memcached_connections_opened", metrics.COUNTER, "client connections accepted", "total_connections"),
    ("memcached_read_bytes", metrics.COUNTER, "bytes read from clients", "bytes_read"),
    ("memcached_written_bytes", metrics.COUNTER, "bytes written to clients", "bytes_written"),
    ("memcached_items", metrics.GAUGE, "items cached", "curr_items"),
    ("memcached_item_bytes", metrics.GAUGE, "bytes charged for cached items", "bytes"),
    ("memcached_limit_bytes", metrics.GAUGE, "this shard's memory budget", "limit_maxbytes"),
    ("memcached_connections", metrics.GAUGE, "client connections open", "curr_connections"),
)


def register_metrics(cache):
    """Expose `cache`'s counters (this shard's) in the shard's metrics registry.
    They are read from ``cache.stats()`` when scraped: nothing on the hot path."""
    for name, kind, help, key in _CACHE_METRICS:
        metrics.registry.remove(name)
        metrics.registry.callback(name, help, kind, lambda key=key: cache.stats()[key])


def parse_size(text):
    """A byte count like ``1G``, ``64m``, ``512k`` or ``1048576`` (binary units)."""
    text = text.strip().lower()
    number, suffix = text, ""
    if text and text[-1] in _SUFFIXES:
        number, suffix = text[:-1], text[-1]
    try:
        value = int(number) * _SUFFIXES[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1G, 64M, 512k, 1048576)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


async def serve_connection(conn, frontend, item_size_max):
    """Answer one client until it closes, sends ``quit``, or breaks the protocol."""
    counters = frontend.local.counters
    counters["curr_connections"] += 1
    counters["total_connections"] += 1
    parser = Parser(item_size_max=item_size_max)
    try:
        while True:
            data = await conn.read()
            if not data:
                return
            started = perf_counter()
            counters["bytes_read"] += len(data)
            parser.feed(data)
            replies = []
            closing = False
            while (event := parser.next_event()) is not None:
                if isinstance(event, Invalid):
                    if event.reply:
                        replies.append(event.reply)
                    if event.close:
                        closing = True
                        break
                    continue
                if event.command == "quit":
                    closing = True
                    break
                reply = await frontend.handle(event)
                if reply:
                    replies.append(reply)
            _BATCH_SECONDS.observe(perf_counter() - started)
            if replies:
                counters["bytes_written"] += sum(map(len, replies))
                await conn.write(replies)
            if closing:
                return
    except ConnectionError:
        pass  # the client reset or vanished; its state is already consistent
    finally:
        counters["curr_connections"] -= 1
        await conn.close()


async def udp_reply(frontend, datagram, item_size_max):
    """The reply datagrams for one request datagram (empty list: drop it)."""
    try:
        header, payload = protocol.parse_udp_header(datagram)
    except ProtocolError:
        return []
    if header.total != 1:
        return []
    parser = Parser(item_size_max=item_size_max)
    parser.feed(payload)
    replies = []
    while (event := parser.next_event()) is not None:
        if isinstance(event, Invalid):
            replies.append(event.reply)
            if event.close:
                break
            continue
        if event.command == "quit":
            break
        replies.append(await frontend.handle(event))
    if parser.buffered():
        # A datagram is a whole request: an unterminated command line or data block
        # will never be completed.
        replies.append(protocol.ERROR)
    body = b"".join(replies)
    if not body:
        return []
    return protocol.split_udp_reply(header.request_id, body)


async def serve_udp(channel, frontend, item_size_max):
    counters = frontend.local.counters
    while True:
        datagram, source = await channel.receive()
        counters["bytes_read"] += len(datagram)
        for reply in await udp_reply(frontend, datagram, item_size_max):
            counters["bytes_written"] += len(reply)
            try:
                await channel.send(source, reply)
            except OSError:
                break  # a source we cannot answer must not stop the service


_running = []   # this shard's servers and tasks, kept alive while the app runs


async def start_on_shard(service, options):
    """Listen on this shard and serve in the background."""
    loop = asyncio.get_running_loop()
    frontend = Frontend(service, smp.count, smp.this_shard())
    register_metrics(service.local())
    item_size_max = options["item_size_max"]
    if options["port"]:
        server = net.listen((options["address"], options["port"]))
        tasks = set()

        async def accept_loop():
            async for conn in server:
                task = loop.create_task(serve_connection(conn, frontend, item_size_max))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        _running.append((server, loop.create_task(accept_loop()), tasks))
    if options["udp_port"]:
        channel = net.udp_channel((options["address"], options["udp_port"]))
        _running.append((channel, loop.create_task(serve_udp(channel, frontend, item_size_max))))


def make_app():
    app = net.AppTemplate("shoal memcached: a sharded memcached (text protocol, TCP and UDP)")
    group = app.parser.add_argument_group("memcached")
    group.add_argument("--port", type=int, default=11211, help="TCP port (default: 11211; 0: no TCP, as memcached -p 0)")
    group.add_argument("--udp-port", type=int, default=0, help="UDP port (default: 0, off)")
    group.add_argument("--address", default="0.0.0.0", help="address to bind (default: 0.0.0.0)")
    group.add_argument("--max-memory", type=parse_size, default=parse_size("64M"),
                       help="cache memory over all shards, e.g. 1G (default: 64M)")
    group.add_argument("--item-size-max", type=parse_size, default=parse_size("1M"),
                       help="largest item, key and value together (default: 1M)")
    return app


def main(argv=None):
    app = make_app()
    args = app.parse(argv)
    if not args.port and not args.udp_port:
        app.parser.error("--port 0 turns TCP off, so --udp-port is needed")

    async def serve():
        per_shard = args.max_memory // smp.count
        if per_shard < _MIN_SHARD_MEMORY:
            print(f"memcached: --max-memory {args.max_memory} gives {per_shard} bytes per shard; "
                  f"at least {_MIN_SHARD_MEMORY} are needed", file=sys.stderr, flush=True)
            return 2
        settings = {"max_memory": per_shard, "item_size_max": args.item_size_max,
                    "tcpport": args.port, "udpport": args.udp_port}
        service = await Sharded(ShardCache).start(settings)
        options = {"address": args.address, "port": args.port, "udp_port": args.udp_port,
                   "item_size_max": args.item_size_max}
        await smp.invoke_on_all(start_on_shard, service, options)
        print(f"memcached: listening on {args.address}"
              + (f" tcp {args.port}" if args.port else "") + (f" udp {args.udp_port}" if args.udp_port else "")
              + f", {smp.count} shard(s), {per_shard} bytes each, {args.network_stack} stack", flush=True)
        await asyncio.get_running_loop().create_future()  # serve until stopped

    return app.run(serve)


if __name__ == "__main__":
    sys.exit(main())
