"""The posix stack: shoal's network API on kernel sockets and the shard's loop.

Theory of operation
-------------------
Listening: every shard binds its own listening socket to the same port with
``SO_REUSEPORT`` (when the app runs more than one shard), so the kernel spreads
incoming connections over the shards and a connection stays on the shard that
accepted it.  ``accept`` calls the non-blocking ``accept(2)`` first and only
waits for readability when the queue is empty, so a burst of connections costs
one wake-up.

Connections: each accepted or connected socket is handed to the loop as a
transport whose protocol is the connection object itself.  Received bytes are
either handed straight to the task waiting in ``read`` (resolving its future)
or queued.  On uvloop the protocol is a plain ``asyncio.Protocol``: uvloop
makes exactly-sized ``bytes`` in C.  On the stdlib loop it is an
``asyncio.BufferedProtocol`` that receives into one reused 64 KiB buffer and
copies out what arrived, avoiding the stdlib trap of a fresh 256 KiB buffer
per read (served by mmap/munmap until the process has seen a close).  When
more than :data:`RECV_HIGH_WATER` bytes are queued and unread, the connection
pauses reading so the kernel's receive window closes: receive back-pressure.

Sending goes straight to the transport, which writes to the kernel at once and
buffers what the kernel did not take.  ``pause_writing``/``resume_writing``
from the transport (above/below its watermarks) make ``write`` wait: that is
send back-pressure.

Errors: the transport reports a failed send or receive by ``connection_lost``
with the kernel's exception; it is re-raised by the next ``read`` (after any
data that arrived before it), ``write`` or ``flush``, re-typed with the peer
address in its message by :func:`shoal.net.api.with_address`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections import deque

from .. import api

#: Size of the per-connection receive buffer handed to the loop.
RECV_BUFFER = 64 * 1024
#: Unread bytes queued on a connection before reading is paused.
RECV_HIGH_WATER = 256 * 1024
#: Transport write-buffer watermarks (bytes the kernel has not taken yet).
SEND_HIGH_WATER = 256 * 1024
SEND_LOW_WATER = 64 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)
#: Largest UDP payload (RFC 768 length field minus headers).
UDP_MAX = 65535
#: This shard's traffic counters (module state is per shard: shards are
#: processes), reported by :meth:`PosixStack.counters` in the native stack's layout.
STATS = {"tcp": dict.fromkeys(("connections-accepted", "connections-opened", "connections-closed",
                               "bytes-received", "bytes-sent"), 0),
         "udp": dict.fromkeys(("datagrams-received", "datagrams-sent", "bytes-received", "bytes-sent"), 0)}
_TCP, _UDP = STATS["tcp"], STATS["udp"]


class _Completed:
    """An awaitable that is already complete (``await`` returns None at once)."""
    __slots__ = ()

    def __await__(self):
        return iter(())


_COMPLETED = _Completed()


def _resolve(address, kind) -> tuple[int, tuple]:
    """Resolve ``(host, port)`` to (family, sockaddr) without blocking the loop
    on numeric hosts (the common case); names go through getaddrinfo."""
    host, port = address[0], address[1]
    if host in ("", None):
        return socket.AF_INET, ("0.0.0.0", port)
    try:
        infos = socket.getaddrinfo(host, port, type=kind,
                                   flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = socket.getaddrinfo(host, port, type=kind)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _short(sockaddr) -> tuple:
    """Trim IPv6 flowinfo/scope from a sockaddr so addresses are (host, port)."""
    return (sockaddr[0], sockaddr[1]) if sockaddr else sockaddr


class PosixConnection(api.Connection, asyncio.Protocol):
    """A kernel TCP connection; it is also the protocol of its transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._reader: asyncio.Future | None = None
        self._reading_paused = False
        self._eof = False
        self._exc: BaseException | None = None
        self._closed = loop.create_future()
        self._write_paused = False
        self._drainers: list[asyncio.Future] = []
        self._closing = False
        self._sock = None
        self._local: tuple = ()
        self._peer: tuple = ()

    # -- protocol side (called by the loop) --------------------------------

    def connection_made(self, transport):
        self._transport = transport
        transport.set_write_buffer_limits(SEND_HIGH_WATER, SEND_LOW_WATER)
        self._sock = transport.get_extra_info("socket")
        self._local = _short(transport.get_extra_info("sockname"))
        self._peer = _short(transport.get_extra_info("peername"))

    def data_received(self, data):
        _TCP["bytes-received"] += len(data)
        reader = self._reader
        if reader is not None and not reader.done() and not self._chunks:
            reader.set_result(data)
            return
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued > RECV_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self):
        self._eof = True
        self._wake_reader()
        return True  # keep the transport open: we may still send (half-close)

    def connection_lost(self, exc):
        _TCP["connections-closed"] += 1
        if exc is not None and self._exc is None:
            self._exc = api.with_address(exc, self._describe())
        self._eof = True
        self._wake_reader()
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self):
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    def _wake_reader(self):
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _describe(self) -> str:
        return f"connection {api.format_address(self._local)} -> {api.format_address(self._peer)}"

    def __repr__(self) -> str:
        return f"<posix {self._describe()}>"

    # -- application side ----------------------------------------------------

    def read(self):
        return self._read(False)

    def read_buffers(self):
        return self._read(True)

    async def _read(self, buffers):
        """`read` (the chunks joined) or `read_buffers` (the chunks as they came)."""
        while True:
            chunks = self._chunks
            if chunks:
                if buffers:
                    data = list(chunks)
                else:
                    data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._queued = 0
                if self._reading_paused and not self._closing:
                    self._reading_paused = False
                    self._transport.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return [] if buffers else b""
            if self._reader is not None:
                raise RuntimeError(f"read() already waiting on {self._describe()}")
            self._reader = reader = self._loop.create_future()
            try:
                data = await reader
            except asyncio.CancelledError:
                # A result set just before the cancellation must not be lost.
                if reader.done() and not reader.cancelled() and reader.result():
                    self._chunks.appendleft(reader.result())
                raise
            finally:
                self._reader = None
            if data is not None:
                return [data] if buffers else data

    def write(self, data):
        """See :meth:`shoal.net.api.Connection.write`.

        A plain method returning an awaitable: while the send buffer has room
        (nearly always) it returns a shared already-complete awaitable, which
        saves building and running a coroutine per write on the hot path.
        """
        if self._exc is not None:
            raise self._exc
        transport = self._transport
        if self._closing or transport.is_closing():
            raise BrokenPipeError(errno.EPIPE, f"write after close: {self._describe()}")
        if type(data) is list or type(data) is tuple:
            transport.writelines(data)
            _TCP["bytes-sent"] += sum(map(len, data))
        else:
            transport.write(data)
            _TCP["bytes-sent"] += len(data)
        if self._write_paused:
            return self.flush()
        return _COMPLETED

    async def flush(self):
        while self._write_paused and self._exc is None and not self._closed.done():
            fut = self._loop.create_future()
            self._drainers.append(fut)
            await fut
        if self._exc is not None:
            raise self._exc

    def shutdown_output(self):
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write_eof()

    async def close(self):
        if not self._closing:
            self._closing = True
            self._transport.close()
        await asyncio.shield(self._closed)

    def abort(self):
        self._closing = True
        if self._transport is not None:
            if self._sock is not None and not self._transport.is_closing():
                # A zero linger time makes close(2) send RST (RFC 9293 3.10.5
                # ABORT); without it the kernel would send a FIN.
                try:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass  # already failed: nothing left to reset
            self._transport.abort()

    @property
    def local_address(self):
        return self._local

    @property
    def peer_address(self):
        return self._peer

    def set_nodelay(self, enabled=True):
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))

    def set_keepalive(self, enabled=True, *, idle=None, interval=None, count=None):
        sock = self._sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(enabled))
        if idle is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        if interval is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(interval)))
        if count is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, int(count))


class _Readiness:
    """One shared wait for readability (or writability) of a non-blocking fd.

    Every task that found the fd not ready awaits the same future (shielded,
    so one cancelled waiter does not cancel the others); the loop callback
    unregisters the fd and wakes them all.  ``close`` wakes them too, and they
    then find the owner closed.
    """

    def __init__(self, fd: int, writable: bool = False):
        self._fd = fd
        self._writable = writable
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fut: asyncio.Future | None = None

    async def wait(self) -> None:
        fut = self._fut
        if fut is None:
            loop = self._loop = asyncio.get_running_loop()
            fut = self._fut = loop.create_future()
            if self._writable:
                loop.add_writer(self._fd, self._ready)
            else:
                loop.add_reader(self._fd, self._ready)
        await asyncio.shield(fut)

    def _ready(self) -> None:
        fut, self._fut = self._fut, None
        if self._writable:
            self._loop.remove_writer(self._fd)
        else:
            self._loop.remove_reader(self._fd)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def close(self) -> None:
        if self._fut is not None:
            self._ready()


class BufferedPosixConnection(PosixConnection, asyncio.BufferedProtocol):
    """The variant for the stdlib loop: receives into one reused buffer.

    The stdlib transport gives a plain protocol a fresh 256 KiB buffer per
    read (served by mmap/munmap until the process has seen a close, which made
    echo 4x slower); this receives into one 64 KiB buffer per connection and
    copies out exactly the bytes that arrived.
    """

    def __init__(self, loop):
        super().__init__(loop)
        self._view = memoryview(bytearray(RECV_BUFFER))

    def get_buffer(self, sizehint):
        return self._view

    def buffer_updated(self, nbytes):
        self.data_received(bytes(self._view[:nbytes]))


def new_connection(loop: asyncio.AbstractEventLoop) -> PosixConnection:
    """The connection class suited to *loop*: uvloop hands ``data_received``
    exactly-sized bytes made in C, which is cheaper than two Python calls per
    read; the stdlib loop needs the reused buffer."""
    if isinstance(loop, asyncio.BaseEventLoop):
        return BufferedPosixConnection(loop)
    return PosixConnection(loop)


class PosixServer(api.Server):
    """A listening kernel socket on this shard."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._address = _short(sock.getsockname())
        self._readable = _Readiness(sock.fileno())
        self._closed = False

    @property
    def local_address(self):
        return self._address

    async def accept(self):
        while True:
            if self._closed:
                raise api.ServerClosedError(
                    errno.ECONNABORTED, f"server closed: {api.format_address(self._address)}")
            try:
                sock, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                await self._readable.wait()
                continue
            except (ConnectionAbortedError, ConnectionResetError):
                continue  # the peer gave up while queued: not our error
            except OSError as exc:
                raise api.with_address(exc, f"accept on {api.format_address(self._address)}") from None
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            conn = new_connection(loop)
            try:
                await loop.connect_accepted_socket(lambda: conn, sock)
            except OSError:
                sock.close()
                continue  # reset before the transport existed
            _TCP["connections-accepted"] += 1
            return conn, _short(peer)

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._readable.close()
        self._sock.close()


class PosixUdpChannel(api.UdpChannel):
    """A bound kernel UDP socket, read and written without a transport.

    Datagrams are received with ``recvfrom_into`` into one reused 64 KiB
    buffer and copied out at their exact size.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._address = _short(sock.getsockname())
        self._view = memoryview(bytearray(UDP_MAX))
        self._readable = _Readiness(sock.fileno())
        self._writable = _Readiness(sock.fileno(), writable=True)
        self._closed = False

    @property
    def local_address(self):
        return self._address

    def _check_open(self):
        if self._closed:
            raise ConnectionAbortedError(
                errno.ECONNABORTED, f"UDP channel closed: {api.format_address(self._address)}")

    async def receive(self):
        while True:
            self._check_open()
            try:
                n, source = self._sock.recvfrom_into(self._view)
            except (BlockingIOError, InterruptedError):
                await self._readable.wait()
                continue
            except ConnectionRefusedError:
                continue  # ICMP port unreachable for an earlier send: not this datagram
            _UDP["datagrams-received"] += 1
            _UDP["bytes-received"] += n
            return bytes(self._view[:n]), _short(source)

    async def send(self, dest, data):
        while True:
            self._check_open()
            try:
                self._sock.sendto(data, dest)
                _UDP["datagrams-sent"] += 1
                _UDP["bytes-sent"] += len(data)
                return
            except (BlockingIOError, InterruptedError):
                await self._writable.wait()
            except OSError as exc:
                raise api.with_address(exc, f"UDP send to {api.format_address(dest)}") from None

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._readable.close()
        self._writable.close()
        self._sock.close()


class PosixStack(api.NetworkStack):
    """Kernel sockets driven by the shard's asyncio (or uvloop) loop.

    *reuse_port*: bind listeners and UDP channels with ``SO_REUSEPORT`` so all
    shards share the port.  It is on when the app runs more than one shard and
    off otherwise, so a single-shard server still fails loudly on a port that
    another program holds with ``SO_REUSEPORT``.
    """

    name = "posix"

    def __init__(self, *, reuse_port: bool = False):
        self.reuse_port = reuse_port

    def counters(self):
        """This shard's counters as the native stack reports them, ``{layer:
        {"stats": {...}, "drops": {}}}`` (the kernel keeps the drop counters)."""
        return {layer: {"stats": dict(stats), "drops": {}} for layer, stats in STATS.items()}

    def listen(self, address, *, reuse_address=True, backlog=api.DEFAULT_BACKLOG):
        return PosixServer(self._listening_socket(address, reuse_address, backlog))

    def _listening_socket(self, address, reuse_address, backlog) -> socket.socket:
        family, sockaddr = _resolve(address, socket.SOCK_STREAM)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise api.with_address(exc, f"listen on {api.format_address(address)}") from None
        return sock

    async def connect(self, address, *, local_address=None, timeout=None):
        loop = asyncio.get_running_loop()
        conn = new_connection(loop)
        await _open(loop, lambda: conn, address, local_address, timeout)
        _TCP["connections-opened"] += 1
        return conn

    async def create_server(self, protocol_factory, address, *, reuse_address=True,
                            backlog=api.DEFAULT_BACKLOG, start_serving=True):
        """The loop's own server on a shard-shared socket: asyncio protocols run
        exactly as on plain asyncio/uvloop, with nothing in between."""
        sock = self._listening_socket(address, reuse_address, backlog)
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(protocol_factory, sock=sock, backlog=backlog,
                                              start_serving=start_serving)
        except BaseException:
            sock.close()
            raise
        return PosixProtocolServer(server, _short(sock.getsockname()))

    async def create_connection(self, protocol_factory, address, *, local_address=None,
                                timeout=None):
        return await _open(asyncio.get_running_loop(), protocol_factory, address,
                           local_address, timeout)

    def udp_channel(self, address):
        family, sockaddr = _resolve(address, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(sockaddr)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise api.with_address(exc, f"UDP bind on {api.format_address(address)}") from None
        return PosixUdpChannel(sock)


async def _open(loop, protocol_factory, address, local_address, timeout):
    """``loop.create_connection`` with shoal's error messages and a deadline."""
    what = f"connect to {api.format_address(address)}"
    try:
        async with asyncio.timeout(timeout):
            return await loop.create_connection(
                protocol_factory, address[0], address[1],
                local_addr=tuple(local_address) if local_address else None)
    except TimeoutError as exc:
        if exc.errno is None:  # our deadline, not the kernel's ETIMEDOUT
            raise TimeoutError(errno.ETIMEDOUT, f"no answer within {timeout} s: {what}") from None
        raise api.with_address(exc, what) from None
    except OSError as exc:
        raise api.with_address(exc, what) from None


class PosixProtocolServer(asyncio.AbstractServer):
    """The loop's ``asyncio.Server``, with ``local_address`` like every shoal server."""

    def __init__(self, server: asyncio.AbstractServer, address: tuple):
        self._server = server
        self.local_address = address

    @property
    def sockets(self):
        return self._server.sockets

    def close(self):
        self._server.close()

    async def wait_closed(self):
        await self._server.wait_closed()

    async def start_serving(self):
        await self._server.start_serving()

    async def serve_forever(self):
        await self._server.serve_forever()

    def is_serving(self):
        return self._server.is_serving()

    def get_loop(self):
        return self._server.get_loop()


def _shard_count() -> int:
    try:
        from shoal.runtime import smp
        return int(smp.count or 1)
    except (ImportError, AttributeError, RuntimeError):
        return 1


def create(args) -> PosixStack:
    """Registry factory: one posix stack per shard, sharing ports across shards."""
    return PosixStack(reuse_port=_shard_count() > 1)


__all__ = ["PosixStack", "PosixConnection", "PosixServer", "PosixProtocolServer",
           "PosixUdpChannel", "create"]
