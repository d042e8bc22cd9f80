"""The memcached text protocol, sans-I/O: an incremental parser and reply builders.

Theory of operation
-------------------
The reference is memcached's ``doc/protocol.txt`` (sections "Commands", "Storage
commands", "Retrieval command", "Deletion", "Increment/Decrement", "Touch",
"Get And Touch", "Statistics", "Other commands", "UDP protocol"); where that text is
silent, the behaviour of memcached 1.6 was observed and followed, and every place
where shoal deliberately differs says so.

:class:`Parser` owns a byte buffer. The connection feeds it whatever bytes arrived
(:meth:`Parser.feed`), then pulls events (:meth:`Parser.next_event`) until it gets
``None`` ("need more bytes"). An event is either a :class:`Request` to execute or an
:class:`Invalid` carrying the exact error line to send back. The parser has three
states:

``LINE``   waiting for a command line terminated by ``\\n`` (``\\r\\n`` is the norm,
           a bare ``\\n`` is accepted as memcached does);
``DATA``   a storage command was parsed and ``bytes + 2`` more bytes (the data block
           and its ``\\r\\n``) are awaited before the request is emitted;
``SWALLOW`` a storage command was refused (value too large, bad key, bad flags) but
           its length was readable, so the announced data block is discarded
           without being buffered: the connection stays in sync with the client
           and a huge value never sits in memory.

Because all state lives in the parser, feeding the same bytes in any chunking yields
the same events (a property test checks byte-at-a-time against whole input).

A line that grows past the line limit without a newline cannot be resynchronised;
the parser then emits ``CLIENT_ERROR line too long`` with ``close=True`` and stops.

``noreply`` (protocol.txt, "noreply" option of storage, delete, incr/decr, touch,
flush_all and verbosity) suppresses every reply of a command whose line was parsed
far enough to see it, errors included, as memcached does: a client that asked for
silence is not reading a reply, so sending one would desynchronise it.
"""
import struct

__all__ = [
    "Parser", "Request", "Invalid", "ProtocolError",
    "KEY_MAX", "REALTIME_MAXDELTA", "value_block", "stats_block", "number_reply",
    "UdpHeader", "parse_udp_header", "build_udp_header", "split_udp_reply",
]

#: protocol.txt "Keys": "the length limit of a key is set at 250 characters".
KEY_MAX = 250
#: protocol.txt "Expiration times": values up to 30 days are relative, beyond that
#: they are absolute unix times.
REALTIME_MAXDELTA = 60 * 60 * 24 * 30

#: A command line longer than this without a newline is refused (memcached: 2048).
LINE_MAX = 2048
#: Retrieval lines carry many keys, so they may be longer (250-byte keys x ~1000).
RETRIEVAL_LINE_MAX = 256 * 1024

UINT32_MAX = (1 << 32) - 1
UINT64_MAX = (1 << 64) - 1
#: memcached refuses announced lengths at or beyond INT_MAX - 2.
BYTES_MAX = (1 << 31) - 3

ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
LINE_TOO_LONG = b"CLIENT_ERROR line too long\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"

_STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
_RETRIEVAL = (b"get ", b"gets ", b"gat ", b"gats ")

_LINE, _DATA, _SWALLOW, _CLOSED = range(4)


class ProtocolError(Exception):
    """Untrusted bytes that cannot be interpreted (the one exception for bad input)."""


class Request:
    """One parsed command, ready to execute.

    ``command`` is the command name as ``str``. Fields that a command does not use
    keep their defaults. ``value`` is ``None`` for a storage command whose data block
    was too large and was swallowed: executing it must answer ``SERVER_ERROR object
    too large for cache`` (and, for ``set``, drop the stale item, as memcached does).
    """

    __slots__ = ("command", "keys", "flags", "exptime", "value", "cas", "delta", "noreply", "arg")

    def __init__(self, command, keys=(), *, flags=0, exptime=0, value=b"", cas=0, delta=0,
                 noreply=False, arg=None):
        self.command = command
        self.keys = keys
        self.flags = flags
        self.exptime = exptime
        self.value = value
        self.cas = cas
        self.delta = delta
        self.noreply = noreply
        self.arg = arg

    def __eq__(self, other):
        return type(other) is Request and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self):
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"Request({fields})"


class Invalid:
    """A refused command: ``reply`` is the exact bytes to send (empty under noreply).

    ``close`` is true when the stream cannot be resynchronised and the connection
    must be closed after the reply is written.
    """

    __slots__ = ("reply", "close")

    def __init__(self, reply, close=False):
        self.reply = reply
        self.close = close

    def __eq__(self, other):
        return type(other) is Invalid and self.reply == other.reply and self.close == other.close

    def __repr__(self):
        return f"Invalid({self.reply!r}, close={self.close})"


def _uint(token, limit):
    """A decimal number in 0..limit, or None (memcached's safe_strtoul family)."""
    if not token.isdigit() or len(token) > 20:
        return None
    value = int(token)
    return value if value <= limit else None


def _int(token):
    """A signed decimal number that fits in 64 bits, or None."""
    body = token[1:] if token[:1] == b"-" else token
    if not body.isdigit() or len(body) > 19:
        return None
    value = int(token)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _key_ok(key):
    """protocol.txt "Keys": at most 250 bytes, no whitespace or control characters.

    Tokens are already split on spaces, so only the other control bytes and DEL
    remain to be refused.
    """
    if len(key) > KEY_MAX:
        return False
    if key.isalnum():
        return True
    return not any(b < 0x21 or b == 0x7F for b in key)


class Parser:
    """Incremental parser of a client's byte stream (see the module docstring).

    ``item_size_max`` bounds the data blocks that are buffered: a storage command
    announcing more is answered with ``SERVER_ERROR object too large for cache``
    and its block is swallowed.
    """

    def __init__(self, *, item_size_max=1024 * 1024, line_max=LINE_MAX, retrieval_line_max=RETRIEVAL_LINE_MAX):
        self._buf = bytearray()
        self._pos = 0          # start of unconsumed bytes in _buf
        self._scan = 0         # where the newline search resumes (absolute index)
        self._state = _LINE
        self._pending = None   # Request awaiting its data block
        self._need = 0         # bytes still to read (DATA) or discard (SWALLOW)
        self.item_size_max = item_size_max
        self.line_max = line_max
        self.retrieval_line_max = retrieval_line_max

    @property
    def closed(self):
        """True once the stream could not be resynchronised; no further events come."""
        return self._state == _CLOSED

    def buffered(self):
        """Number of received bytes not yet turned into events."""
        return len(self._buf) - self._pos

    def feed(self, data):
        """Append received bytes (any bytes-like object)."""
        if self._state == _CLOSED:
            return
        if self._state == _SWALLOW:
            data = memoryview(data)
            skip = min(self._need, len(data))
            self._need -= skip
            data = data[skip:]
            if self._need == 0:
                self._state = _LINE
        if self._pos and self._pos == len(self._buf):
            del self._buf[:]
            self._scan -= self._pos
            self._pos = 0
        self._buf += data

    def next_event(self):
        """The next :class:`Request` or :class:`Invalid`, or None if more bytes are needed."""
        while True:
            if self._state == _LINE:
                event = self._next_line()
                if event is not None or self._state == _LINE:
                    return event
                # a storage line was parsed: its data block comes next
            elif self._state == _DATA:
                return self._next_data()
            else:
                return None

    def events(self):
        """All events available now, as a list."""
        out = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    # -- states ---------------------------------------------------------------------

    def _compact(self):
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._scan -= self._pos
            self._pos = 0

    def _next_line(self):
        buf = self._buf
        scan, pos = self._scan, self._pos
        nl = buf.find(b"\n", scan if scan > pos else pos)  # (no builtin `max`: once per command)
        if nl < 0:
            self._scan = len(buf)
            pending = len(buf) - self._pos
            limit = self.retrieval_line_max if buf.startswith(_RETRIEVAL, self._pos) else self.line_max
            # +1: the line may still end in "\r\n", whose "\r" is not part of it.
            if pending > limit + 1:
                return self._close(LINE_TOO_LONG)
            return None
        end = nl - 1 if nl > self._pos and buf[nl - 1] == 0x0D else nl
        line = bytes(buf[self._pos:end])
        self._pos = nl + 1
        self._scan = self._pos
        limit = self.retrieval_line_max if line.startswith(_RETRIEVAL) else self.line_max
        if len(line) > limit:
            return self._close(LINE_TOO_LONG)
        event = self._parse_line(line)
        if self._state == _SWALLOW:
            self._start_swallow()
        elif self._state == _LINE:
            self._compact()
        return event

    def _next_data(self):
        available = len(self._buf) - self._pos
        if available < self._need:
            return None
        start, end = self._pos, self._pos + self._need
        self._pos = end
        self._scan = end
        self._state = _LINE
        request, self._pending = self._pending, None
        if self._buf[end - 2:end] != b"\r\n":
            # protocol.txt: the data block is followed by "\r\n"; memcached consumes
            # bytes + 2 either way and answers with this error.
            self._compact()
            return Invalid(b"" if request.noreply else BAD_CHUNK)
        request.value = bytes(self._buf[start:end - 2])
        self._compact()
        return request

    def _start_swallow(self):
        skip = min(self._need, len(self._buf) - self._pos)
        self._pos += skip
        self._scan = self._pos
        self._need -= skip
        if self._need == 0:
            self._state = _LINE
        self._compact()

    def _close(self, reply):
        self._state = _CLOSED
        del self._buf[:]
        self._pos = self._scan = 0
        return Invalid(reply, close=True)

    # -- command lines ---------------------------------------------------------------

    def _parse_line(self, line):
        tokens = [t for t in line.split(b" ") if t]
        if not tokens:
            return Invalid(ERROR)
        name = tokens[0]
        if name in _STORAGE:
            return self._parse_storage(name, tokens)
        handler = _HANDLERS.get(name)
        if handler is None:
            return Invalid(ERROR)
        return handler(tokens)

    def _parse_storage(self, name, tokens):
        """protocol.txt "Storage commands":
        ``<command> <key> <flags> <exptime> <bytes> [noreply]`` and
        ``cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]``.
        """
        is_cas = name == b"cas"
        base = 6 if is_cas else 5
        if len(tokens) not in (base, base + 1):
            return Invalid(ERROR)
        # A last token other than "noreply" is ignored, as memcached ignores it.
        noreply = len(tokens) == base + 1 and tokens[base] == b"noreply"
        quiet = b"" if noreply else None
        length = _uint(tokens[4], BYTES_MAX)
        if length is None:
            # The block's length is unknown, so it cannot be skipped (memcached does the same).
            return Invalid(quiet if quiet is not None else BAD_FORMAT)
        self._need = length + 2
        key = tokens[1]
        flags = _uint(tokens[2], UINT32_MAX)
        exptime = _int(tokens[3])
        cas = _uint(tokens[5], UINT64_MAX) if is_cas else 0
        if not _key_ok(key) or flags is None or exptime is None or cas is None:
            # shoal differs from memcached here: the announced block is swallowed, so
            # the value is never misread as commands.
            self._state = _SWALLOW
            return Invalid(quiet if quiet is not None else BAD_FORMAT)
        request = Request(name.decode(), (key,), flags=flags, exptime=exptime, cas=cas, noreply=noreply)
        if length > self.item_size_max:
            self._state = _SWALLOW
            request.value = None
            return request
        self._pending = request
        self._state = _DATA
        return None


def _parse_retrieval(tokens):
    """protocol.txt "Retrieval command": ``get|gets <key>*``."""
    keys = tuple(tokens[1:])
    if not keys:
        return Invalid(ERROR)
    if not all(_key_ok(k) for k in keys):
        return Invalid(BAD_FORMAT)
    return Request(tokens[0].decode(), keys)


def _parse_gat(tokens):
    """protocol.txt "Get And Touch": ``gat|gats <exptime> <key>*``."""
    if len(tokens) < 2:
        return Invalid(ERROR)
    exptime = _int(tokens[1])
    if exptime is None or len(tokens) < 3:
        return Invalid(BAD_EXPTIME)
    keys = tuple(tokens[2:])
    if not all(_key_ok(k) for k in keys):
        return Invalid(BAD_FORMAT)
    return Request(tokens[0].decode(), keys, exptime=exptime)


def _noreply(tokens, base):
    """Whether the optional token after ``base`` mandatory ones is ``noreply``; any
    other word there is ignored, as memcached ignores it."""
    return len(tokens) == base + 1 and tokens[base] == b"noreply"


def _parse_delete(tokens):
    """protocol.txt "Deletion": ``delete <key> [noreply]``; the legacy time argument
    is accepted only as ``0``, as memcached does."""
    if len(tokens) < 2:
        return Invalid(ERROR)
    args = tokens[2:]
    noreply = bool(args) and args[-1] == b"noreply"
    if noreply:
        args = args[:-1]
    if len(args) > 1 or (args and args[0] != b"0"):
        return Invalid(b"" if noreply else BAD_DELETE)
    if not _key_ok(tokens[1]):
        return Invalid(b"" if noreply else BAD_FORMAT)
    return Request("delete", (tokens[1],), noreply=noreply)


def _parse_arith(tokens):
    """protocol.txt "Increment/Decrement": ``incr|decr <key> <value> [noreply]``,
    value a 64-bit unsigned decimal."""
    if len(tokens) not in (3, 4):
        return Invalid(ERROR)
    noreply = _noreply(tokens, 3)
    quiet = b"" if noreply else None
    if not _key_ok(tokens[1]):
        return Invalid(quiet if quiet is not None else BAD_FORMAT)
    delta = _uint(tokens[2], UINT64_MAX)
    if delta is None:
        return Invalid(quiet if quiet is not None else BAD_DELTA)
    return Request(tokens[0].decode(), (tokens[1],), delta=delta, noreply=noreply)


def _parse_touch(tokens):
    """protocol.txt "Touch": ``touch <key> <exptime> [noreply]``."""
    if len(tokens) not in (3, 4):
        return Invalid(ERROR)
    noreply = _noreply(tokens, 3)
    quiet = b"" if noreply else None
    if not _key_ok(tokens[1]):
        return Invalid(quiet if quiet is not None else BAD_FORMAT)
    exptime = _int(tokens[2])
    if exptime is None:
        return Invalid(quiet if quiet is not None else BAD_EXPTIME)
    return Request("touch", (tokens[1],), exptime=exptime, noreply=noreply)


def _parse_flush_all(tokens):
    """protocol.txt "Other commands": ``flush_all [delay] [noreply]``."""
    args = tokens[1:]
    noreply = bool(args) and args[-1] == b"noreply"
    if noreply:
        args = args[:-1]
    if len(args) > 1:
        return Invalid(ERROR)
    delay = 0
    if args:
        delay = _int(args[0])
        if delay is None:
            return Invalid(b"" if noreply else BAD_EXPTIME)
    return Request("flush_all", exptime=delay, noreply=noreply)


def _parse_verbosity(tokens):
    """protocol.txt "Other commands": ``verbosity <level> [noreply]``.

    As in memcached, a lone ``noreply`` stands for level 0 and a third word other
    than ``noreply`` is ignored.
    """
    if len(tokens) not in (2, 3):
        return Invalid(ERROR)
    noreply = tokens[-1] == b"noreply"
    level = 0 if len(tokens) == 2 and noreply else _uint(tokens[1], UINT32_MAX)
    if level is None:
        return Invalid(b"" if noreply else BAD_FORMAT)
    return Request("verbosity", arg=level, noreply=noreply)


def _parse_stats(tokens):
    """protocol.txt "Statistics": ``stats [group]``; unknown groups are refused at execution."""
    if len(tokens) > 2:
        return Invalid(ERROR)
    return Request("stats", arg=tokens[1].decode("ascii", "replace") if len(tokens) == 2 else None)


def _parse_bare(tokens):
    """``version`` and ``quit``: memcached ignores any words after them."""
    return Request(tokens[0].decode())


_HANDLERS = {
    b"get": _parse_retrieval,
    b"gets": _parse_retrieval,
    b"gat": _parse_gat,
    b"gats": _parse_gat,
    b"delete": _parse_delete,
    b"incr": _parse_arith,
    b"decr": _parse_arith,
    b"touch": _parse_touch,
    b"flush_all": _parse_flush_all,
    b"verbosity": _parse_verbosity,
    b"stats": _parse_stats,
    b"version": _parse_bare,
    b"quit": _parse_bare,
}


# -- replies ----------------------------------------------------------------------------

def value_block(key, flags, value, cas=None):
    """One ``VALUE <key> <flags> <bytes> [<cas unique>]\\r\\n<data>\\r\\n`` block."""
    if cas is None:
        head = b"VALUE %s %d %d\r\n" % (key, flags, len(value))
    else:
        head = b"VALUE %s %d %d %d\r\n" % (key, flags, len(value), cas)
    return head + value + b"\r\n"


def number_reply(value):
    """The reply of a successful incr/decr: the new value as a decimal line."""
    return b"%d\r\n" % value


def stats_block(pairs):
    """``STAT <name> <value>\\r\\n`` lines for each (name, value) pair, then ``END``."""
    out = [b"STAT %s %s\r\n" % (str(name).encode(), str(value).encode()) for name, value in pairs]
    out.append(b"END\r\n")
    return b"".join(out)


# -- UDP --------------------------------------------------------------------------------

_UDP = struct.Struct("!HHHH")
#: protocol.txt "UDP protocol": each datagram starts with an 8-byte frame header.
UDP_HEADER_LEN = _UDP.size
#: Reply payload per datagram; keeps the datagram under a 1500-byte Ethernet MTU.
UDP_PAYLOAD_MAX = 1400


class UdpHeader:
    """The UDP frame header: request id, sequence number, datagram count, reserved."""

    __slots__ = ("request_id", "seq", "total", "reserved")

    def __init__(self, request_id, seq, total, reserved=0):
        self.request_id = request_id
        self.seq = seq
        self.total = total
        self.reserved = reserved

    def __eq__(self, other):
        return type(other) is UdpHeader and (self.request_id, self.seq, self.total, self.reserved) == (
            other.request_id, other.seq, other.total, other.reserved)

    def __repr__(self):
        return f"UdpHeader(request_id={self.request_id}, seq={self.seq}, total={self.total}, reserved={self.reserved})"


def parse_udp_header(datagram):
    """Split a datagram into (:class:`UdpHeader`, payload memoryview).

    Raises :class:`ProtocolError` when the datagram is shorter than the header or the
    header is impossible (sequence number not below the datagram count).
    """
    view = memoryview(datagram)
    if len(view) < UDP_HEADER_LEN:
        raise ProtocolError(f"udp datagram of {len(view)} bytes is shorter than the 8-byte frame header")
    request_id, seq, total, reserved = _UDP.unpack_from(view)
    if total == 0 or seq >= total:
        raise ProtocolError(f"udp frame header seq {seq} of {total} datagrams")
    return UdpHeader(request_id, seq, total, reserved), view[UDP_HEADER_LEN:]


def build_udp_header(header, buffer=None, offset=0):
    """Serialise a header; into ``buffer`` at ``offset`` when given, else as new bytes."""
    fields = (header.request_id, header.seq, header.total, header.reserved)
    if buffer is None:
        return _UDP.pack(*fields)
    _UDP.pack_into(buffer, offset, *fields)
    return buffer


def split_udp_reply(request_id, payload, max_payload=UDP_PAYLOAD_MAX):
    """Datagrams carrying ``payload`` as the reply to ``request_id`` (protocol.txt: a
    reply may span several datagrams, numbered 0..total-1)."""
    chunks = [payload[i:i + max_payload] for i in range(0, len(payload), max_payload)] or [b""]
    total = len(chunks)
    if total > 0xFFFF:
        raise ProtocolError(f"reply of {len(payload)} bytes needs more than 65535 datagrams")
    return [_UDP.pack(request_id, seq, total, 0) + bytes(chunk) for seq, chunk in enumerate(chunks)]
