"""shoal.net: one async/await network API over interchangeable stacks.

    from shoal import net

    server = net.listen(("", 10000))
    async for conn in server:
        ...                                  # await conn.read() / conn.write(buf)
    conn = await net.connect(("127.0.0.1", 10000))
    chan = net.udp_channel(("", 10000))     # await chan.receive() / chan.send(dest, data)

asyncio compatibility: ``start_server``/``open_connection`` (asyncio's own
StreamReader/StreamWriter) and ``create_server``/``create_connection`` driving
an unmodified ``asyncio.Protocol``.  ``AppTemplate`` is the runtime's app
template with ``--network-stack`` added.  See docs/api.md.
"""

from .api import (
    DEFAULT_BACKLOG,
    Connection,
    NetworkStack,
    Server,
    ServerClosedError,
    UdpChannel,
    connect,
    current_stack,
    listen,
    register_stack,
    registered_stacks,
    udp_channel,
    use_stack,
)
from .protocols import create_connection, create_server
from .streams import open_connection, start_server


def __getattr__(name):
    # The app template pulls in the runtime; load it only when asked for, so
    # the API itself is usable from any asyncio program.
    if name in ("AppTemplate", "NetworkExtension"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppTemplate", "NetworkExtension", "Connection", "NetworkStack", "Server",
    "ServerClosedError", "UdpChannel", "DEFAULT_BACKLOG", "listen", "connect",
    "udp_channel", "register_stack", "registered_stacks", "current_stack",
    "use_stack", "start_server", "open_connection", "create_server",
    "create_connection",
]
