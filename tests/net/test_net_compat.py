"""The asyncio compatibility layer: unmodified Protocol servers and Streams code.

The protocol classes below are written exactly as for asyncio's own
``loop.create_server``; nothing in them knows about shoal.  Every test runs
twice: on the posix stack's own path (the loop's transports) and on the
generic path every stack inherits (a transport over shoal connections), which
the native stack uses.
"""
import asyncio

import pytest

from shoal import net
from shoal.net import api
from shoal.net.posix import PosixStack


class GenericPosix(PosixStack):
    """The posix stack without its protocol shortcut: exercises the generic adapter."""
    create_server = api.NetworkStack.create_server
    create_connection = api.NetworkStack.create_connection


@pytest.fixture(params=["loop-transports", "generic"])
def crun(request, arun):
    stack_class = PosixStack if request.param == "loop-transports" else GenericPosix

    def run(coro):
        async def with_stack():
            api.use_stack(stack_class())
            return await coro
        return arun(with_stack())
    run.generic = request.param == "generic"
    return run

LOCAL = "127.0.0.1"


async def first_of(protos):
    """The first protocol a server made (the accept runs in its own task)."""
    async with asyncio.timeout(30):
        while not protos:
            await asyncio.sleep(0.01)
    return protos[0]


class EchoProtocol(asyncio.Protocol):
    """A textbook asyncio echo server protocol that records its callbacks."""

    instances = []

    def __init__(self):
        self.events = []
        self.lost = asyncio.get_running_loop().create_future()
        EchoProtocol.instances.append(self)

    def connection_made(self, transport):
        self.transport = transport
        self.events.append(("made", transport.get_extra_info("peername")))

    def data_received(self, data):
        self.events.append(("data", type(data)))
        self.transport.write(data)

    def eof_received(self):
        self.events.append(("eof",))
        return False  # close our side too

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


def test_protocol_server_with_streams_client(crun):
    async def main():
        EchoProtocol.instances.clear()
        server = await net.create_server(EchoProtocol, LOCAL, 0)
        port = server.local_address[1]
        reader, writer = await net.open_connection(LOCAL, port)
        writer.write(b"line one\nline two\n")
        await writer.drain()
        assert await reader.readline() == b"line one\n"
        assert await reader.readexactly(9) == b"line two\n"
        writer.writelines([b"abc", b"def\n"])
        assert await reader.readuntil(b"\n") == b"abcdef\n"
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b""        # the server closed after our EOF
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()
        proto = await first_of(EchoProtocol.instances)
        assert await asyncio.wait_for(proto.lost, 30) is None
        kinds = [e[0] for e in proto.events]
        assert kinds[0] == "made" and kinds[-2:] == ["eof", "lost"]
        assert kinds.count("lost") == 1
        assert ("data", bytes) in proto.events
        assert proto.events[0][1] == writer.get_extra_info("sockname")
        assert writer.get_extra_info("peername") == (LOCAL, port)
        server.close()
        await server.wait_closed()
    crun(main())


def test_stdlib_client_against_shoal_protocol_server(crun):
    async def main():
        async with await net.create_server(EchoProtocol, LOCAL, 0) as server:
            reader, writer = await asyncio.open_connection(LOCAL, server.local_address[1])
            payload = bytes(range(256)) * 4096        # 1 MiB
            writer.write(payload)
            got = await reader.readexactly(len(payload))
            assert got == payload
            writer.close()
            await writer.wait_closed()
    crun(main())


def test_start_server_streams_callback(crun):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await net.start_server(handle, LOCAL, 0)
        serving = asyncio.ensure_future(server.serve_forever())
        reader, writer = await net.open_connection(LOCAL, server.local_address[1])
        for word in (b"alpha\n", b"beta\n"):
            writer.write(word)
            assert await reader.readline() == word.upper()
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        assert not server.is_serving()
        await server.wait_closed()
    crun(main())


def test_reset_reaches_connection_lost_with_the_error(crun):
    async def main():
        EchoProtocol.instances.clear()
        server = await net.create_server(EchoProtocol, LOCAL, 0)
        client = await net.connect(server.local_address)
        await client.write(b"x")
        assert await client.read() == b"x"
        client.abort()
        exc = await asyncio.wait_for((await first_of(EchoProtocol.instances)).lost, 30)
        assert isinstance(exc, ConnectionResetError)
        if crun.generic:
            assert LOCAL in str(exc)             # shoal's errors name the peer
        server.close()
    crun(main())


class PausingProtocol(asyncio.Protocol):
    """Stops reading after the first data until told to resume."""

    def __init__(self):
        self.received = 0
        self.first = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += len(data)
        if not self.first.done():
            self.transport.pause_reading()
            assert not self.transport.is_reading()
            self.first.set_result(None)


def test_pause_reading_pushes_back_on_the_sender(crun):
    async def main():
        protos = []

        def factory():
            protos.append(PausingProtocol())
            return protos[-1]

        server = await net.create_server(factory, LOCAL, 0)
        reader, writer = await net.open_connection(LOCAL, server.local_address[1])
        chunk = b"p" * 65536
        sent = 0

        async def pump():
            nonlocal sent
            for _ in range(1024):                # 64 MiB at most
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

        task = asyncio.ensure_future(pump())
        transport = writer.transport
        async with asyncio.timeout(30):           # until drain() has to wait
            while not (transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
                       or task.done()):
                await asyncio.sleep(0.005)
        await asyncio.sleep(0)
        assert not task.done(), "the sender was never held back"
        proto = await first_of(protos)
        stalled = proto.received
        proto.transport.resume_reading()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        while proto.received < sent:
            await asyncio.sleep(0.01)
        assert proto.received > stalled
        writer.transport.abort()
        server.close()
    crun(main())


class FloodProtocol(asyncio.Protocol):
    """Writes until paused; records pause_writing/resume_writing."""

    def __init__(self):
        self.paused = asyncio.get_running_loop().create_future()
        self.resumed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)
        assert transport.get_write_buffer_limits() == (64 * 1024, 256 * 1024)
        for _ in range(512):                     # 32 MiB: far more than any kernel buffer
            transport.write(b"f" * 65536)

    def pause_writing(self):
        self.paused.set_result(self.transport.get_write_buffer_size())

    def resume_writing(self):
        self.resumed.set_result(self.transport.get_write_buffer_size())


def test_protocol_flow_control_callbacks(crun):
    async def main():
        protos = []

        def factory():
            protos.append(FloodProtocol())
            return protos[-1]

        server = await net.create_server(factory, LOCAL, 0)
        client = await net.connect(server.local_address)
        proto = await first_of(protos)
        assert await asyncio.wait_for(proto.paused, 30) > 256 * 1024
        received = 0
        while not proto.resumed.done():
            received += len(await client.read())
        assert proto.resumed.result() <= 64 * 1024
        while received < 512 * 65536:
            received += len(await client.read())
        client.abort()
        server.close()
    crun(main())


class CollectingBuffered(asyncio.BufferedProtocol):
    def __init__(self):
        self.buf = bytearray(1000)
        self.data = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]

    def eof_received(self):
        self.done.set_result(bytes(self.data))
        self.transport.write(b"thanks")
        return False


def test_buffered_protocol_is_fed_through_its_buffer(crun):
    async def main():
        protos = []
        server = await net.create_server(lambda: protos.append(CollectingBuffered()) or protos[-1],
                                         LOCAL, 0)
        client = await net.connect(server.local_address)
        payload = bytes(range(256)) * 40         # larger than the protocol's buffer
        await client.write(payload)
        client.shutdown_output()
        assert await asyncio.wait_for((await first_of(protos)).done, 30) == payload
        assert await client.read() == b"thanks"
        assert await client.read() == b""
        await client.close()
        server.close()
    crun(main())


def test_protocol_client_with_create_connection(crun):
    class Client(asyncio.Protocol):
        def __init__(self):
            self.data = b""
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            transport.write(b"hello")
            transport.write_eof()

        def data_received(self, data):
            self.data += data

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server = await net.create_server(EchoProtocol, LOCAL, 0)
        transport, proto = await net.create_connection(Client, LOCAL, server.local_address[1])
        assert await asyncio.wait_for(proto.lost, 30) is None
        assert proto.data == b"hello"
        with pytest.raises(RuntimeError):
            transport.write(b"after eof")
        server.close()
    crun(main())


class WriteThenClose(asyncio.Protocol):
    """Writes a lot and closes at once, as asyncio protocols may."""
    payload = bytes(range(256)) * 8192           # 2 MiB

    def connection_made(self, transport):
        transport.write(self.payload)
        transport.close()
        assert transport.is_closing()
        transport.write(b"ignored after close")

    def connection_lost(self, exc):
        assert exc is None


def test_close_flushes_queued_data_first(crun):
    async def main():
        server = await net.create_server(WriteThenClose, LOCAL, 0)
        client = await net.connect(server.local_address)
        got = bytearray()
        while data := await client.read():
            got += data
        assert bytes(got) == WriteThenClose.payload
        await client.close()
        server.close()
    crun(main())
