"""shoal httpd: a small HTTP/1.1 server on the shoal network API.

    python -m shoal.apps.httpd --port 10000 [--root DIR] [--smp N] [--network-stack posix]

* ``GET /`` answers a fixed small body (the benchmark request).
* ``GET /path`` with ``--root DIR`` streams the file ``DIR/path`` in 256 KiB
  chunks with its exact Content-Length (any size: the connection's
  back-pressure paces the disk reads).  A path that leaves DIR (``..``,
  ``%2e%2e``, a symlink pointing out) is answered 404 like a missing file.
* Persistent connections and pipelining (RFC 9112 9.3, 9.3.2): every request
  that arrived in one read is answered, in order, with one scatter write.
* 400 for a request httptools cannot parse, 431 when the request line and
  headers exceed ``--max-header-bytes`` (RFC 6585 5), 405 for methods other
  than GET and HEAD (RFC 9110 15.5.6); those close the connection
  (RFC 9112 9.6) except 405, which is a complete, valid exchange.

Every shard listens on the same port (the posix stack uses SO_REUSEPORT), so
the kernel spreads connections over the shards.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
import sys
import time
from collections import deque
from email.utils import formatdate
from urllib.parse import unquote

import httptools

from shoal import net
from shoal.runtime import smp

HELLO_BODY = b"Hello, World!\n"
DEFAULT_MAX_HEADER_BYTES = 8192

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}


class DateCache:
    """The Date header value (RFC 9110 6.6.1), formatted at most once a second."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._second = -1
        self.value = b""
        self.hello = {}

    def refresh(self) -> None:
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self.value = formatdate(second, usegmt=True).encode()
            self.hello = {keep: build_response(200, HELLO_BODY, self.value, keep_alive=keep)
                          for keep in (True, False)}


def build_head(status: int, length: int, date: bytes, *, keep_alive: bool,
               content_type: bytes = b"text/plain", extra: bytes = b"") -> bytes:
    """The status line and headers of a response whose body is *length* bytes."""
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status].encode()),
        b"Server: shoal\r\nDate: ", date,
        b"\r\nContent-Type: ", content_type,
        b"\r\nContent-Length: %d\r\n" % length,
        extra,
        b"" if keep_alive else b"Connection: close\r\n",
        b"\r\n",
    ))


def build_response(status: int, body: bytes, date: bytes, *, keep_alive: bool,
                   extra: bytes = b"") -> bytes:
    """A complete response with a small in-memory body."""
    return build_head(status, len(body), date, keep_alive=keep_alive, extra=extra) + body


class _FileBody:
    """A file to stream after its head has been sent."""
    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size


class HttpSession:
    """Parses one connection's requests and queues their responses in order.

    ``responses`` holds bytes (a complete response) and :class:`_FileBody`
    items (a file to stream after the preceding head); ``close_after`` is set
    when the last queued response ends the connection.
    """

    def __init__(self, root: str | None, dates: DateCache,
                 max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
        self.root = root
        self.dates = dates
        self.max_header_bytes = max_header_bytes
        self.parser = httptools.HttpRequestParser(self)
        self.responses: deque = deque()
        self.close_after = False
        self._url = b""
        self._header_bytes = 0  # request line + headers of the current request
        self._in_headers = False
        self._began = False
        self._stalled_bytes = 0
        self._version: str | None = None
        self.too_large = False

    # httptools callbacks.  Only the ones needed are defined: httptools skips
    # absent callbacks, and each one costs a Python call per request.
    #
    # The header limit is enforced two ways.  Completed header lines and URL
    # spans are counted exactly as they are parsed.  A header line that never
    # ends is not reported by httptools until it does, so the bytes of every
    # later read that ended still inside the same header section count too:
    # a client can make the server hold at most the limit plus one read.
    def on_message_begin(self):
        self._in_headers = True
        self._began = True

    def on_url(self, url):
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._too_large()

    def on_header(self, name, value):
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._too_large()

    def on_headers_complete(self):
        self._in_headers = False

    def _too_large(self):
        self.too_large = True
        raise ValueError("header section too large")

    def on_message_complete(self):
        url, self._url, self._header_bytes = self._url, b"", 0
        if self.close_after:
            return  # a request after "Connection: close" is not answered
        parser = self.parser
        keep_alive = parser.should_keep_alive()
        if not keep_alive:
            self.close_after = True
        method = parser.get_method()
        if self._version is None:
            # Clients do not change HTTP version within a connection; asking
            # once keeps the per-request cost down.
            self._version = parser.get_http_version()
        if url == b"/" and method == b"GET" and self._version != "1.0":
            self.responses.append(self.dates.hello[keep_alive])  # the benchmark's path
        else:
            self.respond(method, url, keep_alive, self._version)

    def feed(self, data) -> None:
        """Parse *data*; queue the responses it completes and any error reply."""
        self.dates.refresh()
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.close_after = True  # no protocol switching: answer, then close
        except httptools.HttpParserError:
            self._error(431 if self.too_large else 400)
        else:
            if self._in_headers:
                self._stalled_bytes = 0 if self._began else self._stalled_bytes + len(data)
                if self._stalled_bytes > self.max_header_bytes:
                    self._error(431)

    def _error(self, status: int) -> None:
        if not self.close_after:
            self.responses.append(build_response(
                status, _REASONS[status].encode() + b"\n", self.dates.value, keep_alive=False))
            self.close_after = True

    def respond(self, method: bytes, url: bytes, keep_alive: bool, version: str) -> None:
        dates = self.dates
        head_only = method == b"HEAD"
        extra = b"Connection: keep-alive\r\n" if keep_alive and version == "1.0" else b""
        if method != b"GET" and not head_only:
            self.responses.append(build_response(
                405, b"Method Not Allowed\n", dates.value, keep_alive=keep_alive,
                extra=extra + b"Allow: GET, HEAD\r\n"))
            return
        try:
            path = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            self._error(400)
            return
        if path == b"/":
            if extra or head_only:
                response = build_response(200, HELLO_BODY, dates.value,
                                          keep_alive=keep_alive, extra=extra)
                self.responses.append(response[:-len(HELLO_BODY)] if head_only else response)
            else:
                self.responses.append(dates.hello[keep_alive])
            return
        opened = self._open(path)
        if opened is None:
            self.responses.append(build_response(404, b"Not Found\n", dates.value,
                                                 keep_alive=keep_alive, extra=extra))
            return
        fd, size, ctype = opened
        self.responses.append(build_head(200, size, dates.value, keep_alive=keep_alive,
                                         content_type=ctype, extra=extra))
        if head_only:
            os.close(fd)
        else:
            self.responses.append(_FileBody(fd, size))

    def _open(self, raw_path: bytes):
        """Open the regular file under root named by *raw_path*, or None."""
        if self.root is None:
            return None
        try:
            rel = unquote(raw_path.decode("utf-8"), errors="strict")
        except UnicodeDecodeError:
            return None
        if "\0" in rel:
            return None
        candidate = os.path.realpath(os.path.join(self.root, rel.lstrip("/")))
        if not candidate.startswith(self.root + os.sep):
            return None
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        ctype = (mimetypes.guess_type(candidate)[0] or "application/octet-stream").encode()
        return fd, st.st_size, ctype

    def release(self) -> None:
        """Close files still queued (the connection ended before they were sent), and let
        the parser go: it refers back to the session, and the cycle would leave both to
        the garbage collector, once per connection."""
        for item in self.responses:
            if isinstance(item, _FileBody):
                os.close(item.fd)
        self.responses.clear()
        self.parser = None


async def _send_file(conn: net.Connection, body: _FileBody) -> None:
    try:
        await conn.sendfile(body.fd, 0, body.size)
    finally:
        os.close(body.fd)


async def serve_connection(conn: net.Connection, root: str | None, dates: DateCache,
                           max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
    """Answer requests on *conn* until the client or an error ends it."""
    session = HttpSession(root, dates, max_header_bytes)
    feed = session.feed
    responses = session.responses
    try:
        while True:
            data = await conn.read()
            if not data:
                break
            feed(data)
            if not responses:
                continue
            if len(responses) == 1 and type(responses[0]) is bytes:
                await conn.write(responses.popleft())   # one request per read: the common case
                if session.close_after:
                    break
                continue
            batch = []
            while responses:
                item = responses.popleft()
                if type(item) is bytes:
                    batch.append(item)
                    continue
                if batch:
                    await conn.write(batch)
                    batch = []
                await _send_file(conn, item)
            if batch:
                await conn.write(batch if len(batch) > 1 else batch[0])
            if session.close_after:
                break
    except ConnectionError:
        pass  # the client went away; nothing to answer
    finally:
        session.release()
        await conn.close()


# --- the app ------------------------------------------------------------------

_servers: list = []


async def start_on_shard(args) -> None:
    """Listen on this shard and serve connections in the background."""
    root = os.path.realpath(args.root) if args.root else None
    server = net.listen((args.address, args.port), backlog=args.backlog)
    dates = DateCache()
    tasks: set[asyncio.Task] = set()

    async def accept_loop():
        async for conn in server:
            task = asyncio.get_running_loop().create_task(
                serve_connection(conn, root, dates, args.max_header_bytes))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    _servers.append((server, asyncio.get_running_loop().create_task(accept_loop()), tasks))


def make_app() -> net.AppTemplate:
    app = net.AppTemplate("shoal httpd: HTTP/1.1 with keep-alive and pipelining")
    app.parser.add_argument("--port", type=int, default=10000)
    app.parser.add_argument("--address", default="0.0.0.0", help="address to listen on")
    app.parser.add_argument("--root", help="serve files under this directory")
    app.parser.add_argument("--backlog", type=int, default=net.DEFAULT_BACKLOG)
    app.parser.add_argument("--max-header-bytes", type=int, default=DEFAULT_MAX_HEADER_BYTES,
                            help="request line + headers limit; above it: 431")
    return app


def main(argv=None) -> int:
    app = make_app()
    args = app.parse(argv)
    if args.root and not os.path.isdir(args.root):
        app.parser.error(f"--root {args.root}: not a directory")

    async def serve():
        await smp.invoke_on_all(start_on_shard, args)
        print(f"httpd: listening on {args.address}:{args.port} with {smp.count} shard(s), "
              f"{args.network_stack} stack, {args.reactor_backend} reactor", flush=True)
        await asyncio.get_running_loop().create_future()  # serve until stopped

    return app.run(serve)


if __name__ == "__main__":
    sys.exit(main())
