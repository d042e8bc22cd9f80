"""asyncio Streams compatibility: ``start_server`` and ``open_connection``.

The reader and writer handed out are asyncio's own ``StreamReader`` and
``StreamWriter``, wired through asyncio's ``StreamReaderProtocol`` to a
:class:`shoal.net.protocols.ConnectionTransport`.  Code written for asyncio
streams therefore behaves identically (``readline``, ``readexactly``,
``drain``, ``wait_closed``, ``get_extra_info('peername')``...), on either stack.
"""

from __future__ import annotations

import asyncio

from . import protocols

_DEFAULT_LIMIT = 2 ** 16  # asyncio.streams' default line-length limit


async def start_server(client_connected_cb, host=None, port=None, *,
                       limit=_DEFAULT_LIMIT, **kwds) -> protocols.CompatServer:
    """Like :func:`asyncio.start_server`, served by the shard's stack."""
    def factory():
        reader = asyncio.StreamReader(limit=limit)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb)
    return await protocols.create_server(factory, host, port, **kwds)


async def open_connection(host=None, port=None, *, limit=_DEFAULT_LIMIT, **kwds):
    """Like :func:`asyncio.open_connection`; returns (StreamReader, StreamWriter)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await protocols.create_connection(lambda: protocol, host, port, **kwds)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


__all__ = ["start_server", "open_connection"]
