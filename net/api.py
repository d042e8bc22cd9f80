"""The stack-agnostic network API of shoal.

Theory of operation
-------------------
Applications write against four small interfaces defined here: a
:class:`NetworkStack` (``listen``/``connect``/``udp_channel``), the
:class:`Server` it returns from ``listen``, the :class:`Connection` a server
accepts or ``connect`` opens, and the :class:`UdpChannel`.  Every shard owns
exactly one stack instance, kept in a module global: shards are processes, so
"per module" is "per shard".  The module-level functions :func:`listen`,
:func:`connect` and :func:`udp_channel` forward to the current shard's stack.

Stacks are found by name in a registry.  A stack module calls
:func:`register_stack` when it is imported; the network extension
(``shoal.net.app``) imports the modules named in :data:`STACK_MODULES` before it
parses the command line, so ``--network-stack NAME`` selects any stack that
registered itself, and a stack that is absent or failed to import is refused
with a message that says so.  When no stack was selected (a plain asyncio
program, a test), the first use installs the posix stack.

Addresses are ``(host, port)`` tuples, as in :mod:`socket`; ``host`` may be an
IPv4 or IPv6 literal or a name, ``""`` meaning every local address.
"""

from __future__ import annotations

import abc
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

Address = tuple  # (host, port) as socket uses it
Buffer = Union[bytes, bytearray, memoryview]

#: Default number of pending connections a listener lets the kernel (or the
#: native stack) hold before the application accepts them.
DEFAULT_BACKLOG = 1024

#: Stack name -> module that registers it on import.  Third-party stacks may
#: add themselves with :func:`register_stack` before the app template parses
#: its options.
STACK_MODULES = {
    "posix": "shoal.net.posix",
    "native": "shoal.net.native",
}


class ServerClosedError(ConnectionAbortedError):
    """Raised by :meth:`Server.accept` once the server has been closed."""


def format_address(address: Any) -> str:
    """Render an address for an error message: ``host:port`` or ``[v6]:port``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(address)


def with_address(exc: BaseException, what: str) -> BaseException:
    """Return an exception of the same type whose message names *what*.

    Kernel errors (``[Errno 111] Connection refused``) do not say which peer
    refused; every error the API raises does, so logs of a server with
    thousands of connections are usable.  The type is kept, so code catching
    ``ConnectionRefusedError`` or ``TimeoutError`` keeps working.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        # os.strerror, not exc.strerror: loops put their own text there
        # ("Connect call failed (...)"); the message should read the same on all.
        new = type(exc)(exc.errno, f"{os.strerror(exc.errno)}: {what}")
    else:
        text = str(exc) or type(exc).__name__
        try:
            new = type(exc)(f"{text}: {what}")
        except TypeError:
            return exc
    new.__cause__ = exc.__cause__
    return new


SENDFILE_CHUNK = 256 * 1024
"""Octets `Connection.sendfile` reads per write, in its default form."""


class Connection(abc.ABC):
    """One TCP connection, owned by the shard that accepted or opened it.

    Reads return a bytes-like object (``bytes`` on both stacks today: the native
    stack keeps received segments as views of their frames and copies once, on
    the read; ``read_buffers`` hands the views over instead); an empty one means
    the peer closed its side (end of stream).
    Errors are the standard ``ConnectionError`` subclasses and ``TimeoutError``,
    with the peer address in the message.
    """

    @abc.abstractmethod
    async def read(self) -> Buffer:
        """Wait for data; return what arrived, empty at end of stream."""

    async def read_buffers(self) -> list[Buffer]:
        """Wait for data; return what arrived as a list of read-only buffers, in order,
        without joining or copying them where the stack can; an empty list at end of stream.

        The copy-less read: the native stack hands over views of the frames the device
        received (a frame stays alive while a view of it does), the posix stack the
        chunks its transport received, unjoined. ``read`` and ``read_buffers`` may be
        mixed: each returns what the other has not. This default returns ``read``'s one
        buffer.
        """
        data = await self.read()
        return [data] if data else []

    @abc.abstractmethod
    async def write(self, data: Buffer | Sequence[Buffer]) -> None:
        """Queue *data* (one buffer or a list of them, sent in order).

        Returns at once while the send buffer has room and waits when it is
        full (back-pressure); raises if the connection has failed.
        """

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        """Send *count* octets of the open file *fd* from *offset*, in order with what
        ``write`` queued before, with ``write``'s back-pressure.

        This default reads the file in chunks and writes them. A stack may send the file's
        pages without copying them in Python (the native stack maps the file), so the file
        must not change or shrink while it is sent, as with sendfile(2). A file that ends
        before *offset* + *count* raises ``OSError`` (part of it may have been sent).
        """
        end = offset + count
        while offset < end:
            chunk = os.pread(fd, min(SENDFILE_CHUNK, end - offset), offset)
            if not chunk:
                raise OSError(f"sendfile: the file ends at octet {offset}, before {end}")
            offset += len(chunk)
            await self.write(chunk)

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until the send buffer is back under its low-water mark."""

    @abc.abstractmethod
    def shutdown_output(self) -> None:
        """Send FIN after the queued data (half-close, RFC 9293 3.6)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Send queued data and FIN, then release the connection."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop queued data and reset the connection (RST)."""

    @property
    @abc.abstractmethod
    def local_address(self) -> Address:
        """The (host, port) this end is bound to."""

    @property
    @abc.abstractmethod
    def peer_address(self) -> Address:
        """The (host, port) of the remote end."""

    @abc.abstractmethod
    def set_nodelay(self, enabled: bool = True) -> None:
        """Turn Nagle's algorithm off (True) or on (RFC 9293 3.7.4)."""

    @abc.abstractmethod
    def set_keepalive(self, enabled: bool = True, *, idle: float | None = None,
                      interval: float | None = None, count: int | None = None) -> None:
        """Enable TCP keepalive probes (RFC 9293 3.8.4) with optional timings."""


class Server(abc.ABC):
    """A listening socket.  ``async for conn in server`` accepts until closed."""

    @abc.abstractmethod
    async def accept(self) -> tuple[Connection, Address]:
        """Wait for the next connection; return it with the peer address."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening; pending and future accepts raise ServerClosedError."""

    @property
    @abc.abstractmethod
    def local_address(self) -> Address:
        """The (host, port) the server listens on (the real port if 0 was asked)."""

    def __aiter__(self):
        return self

    async def __anext__(self) -> Connection:
        try:
            conn, _ = await self.accept()
        except ServerClosedError:
            raise StopAsyncIteration from None
        return conn

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        self.close()


class UdpChannel(abc.ABC):
    """A bound UDP socket."""

    @abc.abstractmethod
    async def receive(self) -> tuple[Buffer, Address]:
        """Wait for the next datagram; return (data, source address)."""

    @abc.abstractmethod
    async def send(self, dest: Address, data: Buffer) -> None:
        """Send one datagram to *dest*; waits while the send buffer is full."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the channel; pending receives raise ConnectionAbortedError."""

    @property
    @abc.abstractmethod
    def local_address(self) -> Address:
        """The (host, port) the channel is bound to."""


class NetworkStack(abc.ABC):
    """What a stack implements; one instance per shard."""

    name: str = "?"

    @abc.abstractmethod
    def listen(self, address: Address, *, reuse_address: bool = True,
               backlog: int = DEFAULT_BACKLOG) -> Server:
        """Listen for TCP connections on *address*."""

    @abc.abstractmethod
    async def connect(self, address: Address, *, local_address: Address | None = None,
                      timeout: float | None = None) -> Connection:
        """Open a TCP connection to *address*."""

    @abc.abstractmethod
    def udp_channel(self, address: Address) -> UdpChannel:
        """Bind a UDP channel to *address*."""

    async def create_server(self, protocol_factory, address: Address, *,
                            reuse_address: bool = True, backlog: int = DEFAULT_BACKLOG,
                            start_serving: bool = True):
        """Serve an ``asyncio.Protocol`` on *address*.

        The default drives the protocol through a transport over this stack's
        own connections (:mod:`shoal.net.protocols`), so every stack has it; a
        stack with a faster path of its own (posix: the loop's transports)
        overrides it.
        """
        from .protocols import serve_protocol
        return await serve_protocol(self, protocol_factory, address, reuse_address=reuse_address,
                                    backlog=backlog, start_serving=start_serving)

    async def create_connection(self, protocol_factory, address: Address, *,
                                local_address: Address | None = None,
                                timeout: float | None = None):
        """Connect an ``asyncio.Protocol``; return (transport, protocol)."""
        from .protocols import connect_protocol
        return await connect_protocol(self, protocol_factory, address,
                                      local_address=local_address, timeout=timeout)

    async def stop(self) -> None:
        """Release the stack's resources at shard shutdown."""


# --- registry ---------------------------------------------------------------

@dataclass
class StackInfo:
    """A registered stack: ``factory(args) -> NetworkStack`` runs on each shard;
    ``add_options(parser)`` adds the stack's own command-line options;
    ``check_options(args)`` raises ValueError for options the stack cannot run
    with (checked while parsing, before any shard starts); ``prepare(args,
    shard_count)`` runs in the launcher before the shards fork (to open device
    queues in shard order) and ``release(args)`` there after they have."""
    name: str
    factory: Callable[[Any], NetworkStack]
    add_options: Callable[[Any], None] | None = None
    description: str = ""
    check_options: Callable[[Any], None] | None = None
    prepare: Callable[[Any, int], None] | None = None
    release: Callable[[Any], None] | None = None


_registry: dict[str, StackInfo] = {}
_import_errors: dict[str, BaseException] = {}
_current: NetworkStack | None = None


def register_stack(name: str, factory: Callable[[Any], NetworkStack], *,
                   add_options: Callable[[Any], None] | None = None,
                   description: str = "",
                   check_options: Callable[[Any], None] | None = None,
                   prepare: Callable[[Any, int], None] | None = None,
                   release: Callable[[Any], None] | None = None) -> None:
    """Make a stack selectable as ``--network-stack NAME`` (see `StackInfo` for the hooks)."""
    _registry[name] = StackInfo(name, factory, add_options, description, check_options, prepare, release)


def load_stack_modules() -> None:
    """Import every module in :data:`STACK_MODULES` so they can register.

    An import failure is remembered, not raised: it only matters if that stack
    is chosen, and then :func:`stack_info` reports it.
    """
    for name, module in STACK_MODULES.items():
        if name in _registry or name in _import_errors:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # reported by stack_info when chosen
            _import_errors[name] = exc


def registered_stacks() -> list[str]:
    """Names of the stacks registered so far."""
    return sorted(_registry)


def stack_info(name: str) -> StackInfo:
    """Find a registered stack or raise LookupError saying why it is missing."""
    load_stack_modules()
    try:
        return _registry[name]
    except KeyError:
        pass
    reason = f"{name} stack not available"
    if name in _import_errors:
        err = _import_errors[name]
        reason += f" ({STACK_MODULES[name]} failed to import: {type(err).__name__}: {err})"
    raise LookupError(f"{reason}; available: {', '.join(registered_stacks()) or 'none'}")


def use_stack(stack: NetworkStack | None) -> None:
    """Install *stack* as this shard's stack (None forgets it)."""
    global _current
    _current = stack


def installed_stack() -> NetworkStack | None:
    """The stack installed on this shard, or None (no default is created)."""
    return _current


def current_stack() -> NetworkStack:
    """This shard's stack; the posix stack if none was selected."""
    global _current
    if _current is None:
        _current = stack_info("posix").factory(None)
    return _current


# --- forwarding functions: what applications call ---------------------------

def listen(address: Address, *, reuse_address: bool = True,
           backlog: int = DEFAULT_BACKLOG) -> Server:
    """Listen on *address* with this shard's stack (see :meth:`NetworkStack.listen`)."""
    return current_stack().listen(address, reuse_address=reuse_address, backlog=backlog)


async def connect(address: Address, *, local_address: Address | None = None,
                  timeout: float | None = None) -> Connection:
    """Connect to *address* with this shard's stack."""
    return await current_stack().connect(address, local_address=local_address,
                                         timeout=timeout)


def udp_channel(address: Address) -> UdpChannel:
    """Bind a UDP channel with this shard's stack."""
    return current_stack().udp_channel(address)


__all__ = [
    "Address", "Buffer", "Connection", "Server", "UdpChannel", "NetworkStack",
    "ServerClosedError", "StackInfo", "DEFAULT_BACKLOG", "STACK_MODULES",
    "register_stack", "registered_stacks", "stack_info", "load_stack_modules",
    "use_stack", "installed_stack", "current_stack", "listen", "connect", "udp_channel",
    "format_address", "with_address",
]
