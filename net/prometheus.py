"""The Prometheus extension: ``--prometheus-port`` serves every shard's metrics at ``/metrics``.

Theory of operation
-------------------
An app-template extension (``add_options`` / ``start_shard`` / ``stop_shard``),
so the runtime stays ignorant of HTTP and of networking. On every shard
``start_shard`` registers the network stack's counters in that shard's
:data:`shoal.runtime.metrics.registry` (read at scrape time from the stack's
``counters()``: ``{layer: {"stats": {...}, "drops": {...}, "tx_drops": {...}}}``)
and counts the shard's tasks. On shard 0 only, when ``--prometheus-port`` is
given, it listens for HTTP: each ``GET /metrics`` gathers the snapshots of all
shards by ``smp.map_reduce`` (:func:`shoal.runtime.metrics.gather`) and answers
with the Prometheus text format, every sample labelled ``shard="N"``.

The endpoint is a management port on a kernel socket (asyncio's
``start_server`` on the shard's loop), whatever ``--network-stack`` carries the
application's traffic: metrics must stay reachable when the data-plane stack is
the one misbehaving, and the host's monitoring reaches the kernel's addresses.
It speaks just enough HTTP/1.1 (RFC 9112) for scrapers: one request per
connection, answered with ``Connection: close`` (RFC 9112 9.6).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from prometheus_client import CONTENT_TYPE_LATEST

from shoal.runtime import metrics, reactor, smp

from . import api

log = logging.getLogger("shoal.prometheus")

#: Longest request head (request line and headers) accepted, in bytes.
MAX_HEAD = 16 * 1024
#: Seconds a client may take to send its request head.
REQUEST_TIMEOUT = 10.0

_EVENTS = "shoal_net_events"
_DROPS = "shoal_net_drops"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def stack_events():
    """``{(stack, layer, event): count}`` from the installed stack's ``counters()``."""
    stack = api.installed_stack()
    read = getattr(stack, "counters", None)
    if read is None:
        return None
    return {(stack.name, layer, event): value
            for layer, groups in read().items() for event, value in groups.get("stats", {}).items()}


def stack_drops():
    """``{(stack, layer, direction, reason): count}``: ``drops`` are received
    frames/segments (rx), ``tx_drops`` ones that could not be sent (tx)."""
    stack = api.installed_stack()
    read = getattr(stack, "counters", None)
    if read is None:
        return None
    out = {}
    for layer, groups in read().items():
        for group, reasons in groups.items():
            if group == "stats":
                continue
            direction = "rx" if group == "drops" else group.removesuffix("_drops")
            for reason, value in reasons.items():
                out[(stack.name, layer, direction, reason)] = value
    return out


def _response(status: str, body: bytes, content_type: str, head_only: bool) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + body


async def answer(request_head: bytes) -> bytes:
    """The whole HTTP response to one request head (sans-I/O apart from gathering)."""
    text = "text/plain; charset=utf-8"
    try:
        method, target, version = request_head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return _response("400 Bad Request", b"bad request line\n", text, False)
    if not version.startswith("HTTP/1."):
        return _response("505 HTTP Version Not Supported", b"HTTP/1.x only\n", text, False)
    head_only = method == "HEAD"
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"GET /metrics\n", text, False)
    if target.split("?", 1)[0] != "/metrics":
        return _response("404 Not Found", b"metrics are at /metrics\n", text, head_only)
    try:
        body = metrics.render(await metrics.gather())
    except Exception as exc:
        log.exception("gathering metrics failed")
        return _response("500 Internal Server Error", f"gathering metrics failed: {exc}\n".encode(), text,
                         head_only)
    return _response("200 OK", body, CONTENT_TYPE_LATEST, head_only)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            writer.write(_response("431 Request Header Fields Too Large", b"", "text/plain", False))
        except (asyncio.IncompleteReadError, TimeoutError):
            return  # the client went away or stalled: nothing to answer
        else:
            writer.write(await answer(head))
        await writer.drain()
    except ConnectionError:
        pass  # the scraper hung up early: its problem, not the shard's
    finally:
        writer.close()


class PrometheusExtension:
    """App-template extension adding ``--prometheus-port`` / ``--prometheus-address``."""

    def __init__(self):
        self._server = None
        self.address = None

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("shoal metrics")
        group.add_argument("--prometheus-port", type=_port, metavar="PORT",
                           help="serve every shard's metrics in the Prometheus format at "
                                "http://ADDRESS:PORT/metrics from shard 0 (0: any free port, logged; "
                                "default: off)")
        group.add_argument("--prometheus-address", default="0.0.0.0",
                           help="address the metrics endpoint binds (default: 0.0.0.0)")

    async def start_shard(self, args) -> None:
        metrics.count_tasks(reactor.current().loop)
        metrics.registry.callback(_EVENTS, "events counted by the network stack, per layer",
                                  metrics.COUNTER, stack_events, ["stack", "layer", "event"])
        metrics.registry.callback(_DROPS, "packets dropped by the network stack, per layer and reason",
                                  metrics.COUNTER, stack_drops, ["stack", "layer", "direction", "reason"])
        if args.prometheus_port is None or smp.this_shard() != 0:
            return
        try:
            self._server = await asyncio.start_server(_serve, args.prometheus_address, args.prometheus_port,
                                                      limit=MAX_HEAD)
        except OSError as exc:
            raise api.with_address(exc, "--prometheus-address/--prometheus-port " + api.format_address(
                (args.prometheus_address, args.prometheus_port))) from None
        self.address = self._server.sockets[0].getsockname()[:2]
        log.info("serving metrics on http://%s/metrics", api.format_address(self.address))

    async def stop_shard(self, args) -> None:
        metrics.registry.remove(_EVENTS)
        metrics.registry.remove(_DROPS)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


__all__ = ["PrometheusExtension", "answer", "stack_events", "stack_drops"]
