"""asyncio Protocol/Transport compatibility on top of any shoal stack.

Theory of operation
-------------------
:class:`ConnectionTransport` is a real ``asyncio.Transport`` whose other side
is a :class:`shoal.net.api.Connection`, so it works unchanged on the posix and
the native stack.  Two tasks per connection move the data:

* the *reader* awaits ``conn.read()`` and calls ``data_received`` (or fills the
  buffers of an ``asyncio.BufferedProtocol``); at end of stream it calls
  ``eof_received`` and closes the transport unless that returns true, exactly
  as asyncio's own transports do.  ``pause_reading`` parks the reader, so the
  stack's receive buffer fills and the peer's window closes.
* the *writer* exists only while there is queued output: ``write`` appends to a
  list and the writer hands whole lists to ``conn.write`` (scatter send).  The
  protocol's ``pause_writing``/``resume_writing`` follow the queued size against
  the high/low watermarks, which is what ``StreamWriter.drain`` waits on.

``connection_lost`` is called exactly once: after ``close`` has flushed the
queue and the stack closed the connection (argument None), after ``abort``
(None), or when the connection failed (the stack's exception).

:func:`create_server` and :func:`create_connection` mirror the loop methods of
the same names and forward to the shard's stack.  :func:`serve_protocol` and
:func:`connect_protocol` are the generic implementations every stack inherits;
the posix stack overrides them with the loop's own transports, which cost
nothing over plain asyncio.
"""

from __future__ import annotations

import asyncio

from . import api

HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024


class ConnectionTransport(asyncio.Transport):
    """An asyncio transport over a shoal :class:`~shoal.net.api.Connection`."""

    def __init__(self, conn: api.Connection, protocol: asyncio.BaseProtocol,
                 server: "CompatServer | None" = None):
        super().__init__({"peername": conn.peer_address, "sockname": conn.local_address})
        self._loop = asyncio.get_running_loop()
        self._conn = conn
        self._protocol = protocol
        self._server = server
        self._queue: list = []
        self._queued = 0
        self._high, self._low = HIGH_WATER, LOW_WATER
        self._writer: asyncio.Task | None = None
        self._reader: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None  # held so the loop cannot drop it
        self._reading = True
        self._resume: asyncio.Future | None = None
        self._protocol_paused = False
        self._eof_requested = False
        self._closing = False
        self._lost = False

    def _start(self) -> None:
        if self._server is not None:
            self._server._attach(self)
        self._protocol.connection_made(self)
        if not self._closing:
            self._reader = self._loop.create_task(self._read_loop())

    # -- reading ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        protocol = self._protocol
        buffered = isinstance(protocol, asyncio.BufferedProtocol)
        try:
            while True:
                while not self._reading:
                    self._resume = self._loop.create_future()
                    await self._resume
                data = await self._conn.read()
                if not data:
                    break
                if buffered:
                    _feed_buffered(protocol, data)
                else:
                    protocol.data_received(data if type(data) is bytes else bytes(data))
        except OSError as exc:
            self._fail(exc)
            return
        if not self._protocol.eof_received():
            self.close()

    def pause_reading(self):
        self._reading = False

    def resume_reading(self):
        if not self._reading:
            self._reading = True
            if self._resume is not None and not self._resume.done():
                self._resume.set_result(None)

    def is_reading(self):
        return self._reading and not self._closing

    # -- writing ---------------------------------------------------------------

    def write(self, data):
        if self._eof_requested:
            raise RuntimeError("cannot write after write_eof()")
        if self._closing or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse a bytearray or view
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()
        if self._writer is None:
            self._writer = self._loop.create_task(self._write_loop())

    def writelines(self, list_of_data):
        for data in list_of_data:
            self.write(data)

    async def _write_loop(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                size = sum(map(len, batch))
                await self._conn.write(batch)
                self._queued -= size
                if self._protocol_paused and self._queued <= self._low:
                    self._protocol_paused = False
                    self._protocol.resume_writing()
            if self._eof_requested:
                self._conn.shutdown_output()
        except OSError as exc:
            self._writer = None
            self._fail(exc)
            return
        self._writer = None
        if self._closing:
            await self._finish_close()

    def write_eof(self):
        if self._eof_requested:
            return
        self._eof_requested = True
        if self._writer is None:
            self._conn.shutdown_output()

    def can_write_eof(self):
        return True

    def get_write_buffer_size(self):
        return self._queued

    def get_write_buffer_limits(self):
        return self._low, self._high

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # -- closing ---------------------------------------------------------------

    def is_closing(self):
        return self._closing

    def close(self):
        if self._closing:
            return
        self._closing = True
        self._stop_reader()
        if self._writer is None:
            self._closer = self._loop.create_task(self._finish_close())

    async def _finish_close(self) -> None:
        try:
            await self._conn.close()
        except OSError as exc:
            self._call_connection_lost(exc)
            return
        self._call_connection_lost(None)

    def abort(self):
        self._closing = True
        self._stop_reader()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._conn.abort()
        self._call_connection_lost(None)

    def _fail(self, exc: BaseException) -> None:
        self._closing = True
        self._stop_reader()
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._conn.abort()
        self._call_connection_lost(exc)

    def _stop_reader(self) -> None:
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task() and not reader.done():
            reader.cancel()

    def _call_connection_lost(self, exc) -> None:
        if self._lost:
            return
        self._lost = True
        self._queue.clear()
        self._queued = 0
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._server is not None:
                self._server._detach(self)

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_extra_info(self, name, default=None):
        if name == "connection":
            return self._conn
        return super().get_extra_info(name, default)


def _feed_buffered(protocol: asyncio.BufferedProtocol, data) -> None:
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        if n == 0:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class CompatServer(asyncio.AbstractServer):
    """What :func:`create_server` returns, with ``asyncio.Server``'s methods."""

    def __init__(self, listener: api.Server, protocol_factory):
        self._listener = listener
        self._factory = protocol_factory
        self._task: asyncio.Task | None = None
        self._transports: set[ConnectionTransport] = set()
        self._closed = asyncio.get_running_loop().create_future()
        self._serving_forever: asyncio.Future | None = None

    @property
    def local_address(self):
        return self._listener.local_address

    def _attach(self, transport):
        self._transports.add(transport)

    def _detach(self, transport):
        self._transports.discard(transport)

    async def _accept_loop(self) -> None:
        async for conn in self._listener:
            ConnectionTransport(conn, self._factory(), self)._start()

    def is_serving(self):
        return self._task is not None and not self._task.done()

    async def start_serving(self):
        if self._task is None and not self._closed.done():
            self._task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def serve_forever(self):
        await self.start_serving()
        self._serving_forever = asyncio.get_running_loop().create_future()
        try:
            await self._serving_forever
        finally:
            self.close()

    def close(self):
        if self._closed.done():
            return
        self._listener.close()
        if self._task is not None:
            self._task.cancel()
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        self._closed.set_result(None)

    async def wait_closed(self):
        await asyncio.shield(self._closed)

    def get_loop(self):
        return self._closed.get_loop()

    @property
    def sockets(self):
        return ()


async def serve_protocol(stack: api.NetworkStack, protocol_factory, address, *,
                         reuse_address=True, backlog=api.DEFAULT_BACKLOG,
                         start_serving=True) -> CompatServer:
    """The generic :meth:`NetworkStack.create_server`: a listener of *stack*
    whose connections each drive a protocol through a :class:`ConnectionTransport`."""
    listener = stack.listen(address, reuse_address=reuse_address, backlog=backlog)
    server = CompatServer(listener, protocol_factory)
    if start_serving:
        await server.start_serving()
    return server


async def connect_protocol(stack: api.NetworkStack, protocol_factory, address, *,
                           local_address=None, timeout=None):
    """The generic :meth:`NetworkStack.create_connection`."""
    conn = await stack.connect(address, local_address=local_address, timeout=timeout)
    protocol = protocol_factory()
    transport = ConnectionTransport(conn, protocol)
    transport._start()
    return transport, protocol


async def create_server(protocol_factory, host=None, port=None, *,
                        reuse_address=True, backlog=api.DEFAULT_BACKLOG,
                        start_serving=True):
    """Like ``loop.create_server``: serve *protocol_factory* on (host, port)
    with the shard's stack.  The server has ``asyncio.Server``'s methods and
    ``local_address``."""
    return await api.current_stack().create_server(
        protocol_factory, (host or "", port or 0), reuse_address=reuse_address,
        backlog=backlog, start_serving=start_serving)


async def create_connection(protocol_factory, host, port, *, local_addr=None,
                            timeout=None):
    """Like ``loop.create_connection`` with the shard's stack: (transport, protocol)."""
    return await api.current_stack().create_connection(
        protocol_factory, (host, port), local_address=local_addr, timeout=timeout)


__all__ = ["ConnectionTransport", "CompatServer", "serve_protocol", "connect_protocol",
           "create_server", "create_connection"]
