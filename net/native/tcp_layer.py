"""The TCP layer of the native stack: demultiplexing, timers, transmit, and the shoal.net API.

Theory of operation
-------------------
`TcpLayer` joins the sans-I/O machines of `shoal.net.native.tcp` (a `Connection`
per 4-tuple, a `Listener` per listening port) to one `NativeStack`:

* **Receive.** An established connection's segment in a common layout
  (`wire.tcp_frame`) comes from the stack already parsed, with one unpack for its three
  headers and the same checks (`receive_segment`). Every other frame goes up through
  Ethernet and IPv4, which hands each protocol-6 datagram to `receive`. The segment is
  parsed with its checksum verified against the pseudo-header (RFC 9293 3.1,
  MUST-3), unless the device already did or vouches for it (the packet's
  ``checksum_verified``: a TAP frame the kernel built); a bad one is counted in
  `drops` by the wire parser's reason and dropped.
  Segments to a broadcast address are dropped (MUST-57). The 4-tuple dict
  ``(local port, remote ip, remote port)`` finds the connection; otherwise the
  port's listener gets it; otherwise it is answered with the RST of RFC 9293
  3.10.7.1 (never for a RST). A SYN that reopens a TIME-WAIT connection (the
  machine returns True) goes on to the listener. Payloads are views of the
  driver's buffer: the machine copies what it keeps, so no packet is held.
* **A burst's pure ACKs merged.** A bulk sender gets its ACKs in bursts (a receiver
  behind a TAP acknowledges each super-frame, and one poll reads tens of them), and
  each cumulative ACK makes the one before it moot. So `receive_segment` holds a pure
  ACK (no text, no flag but ACK, no SACK block) back. When the next segment is another
  pure ACK of the same connection from the same sequence number, with a timestamp not
  older (or neither with one), acknowledging more but nothing beyond SND.MAX (an
  injected ACK, dropped by RFC 5961 5.2's rule, must not stand for a valid one), the
  held one is dropped and the new one is held with its count (`TcpSegment.acks`, which
  slow start's limit per ACK takes into account). Anything else delivers the held ACK
  first, in order, and the stack ends each burst with `end_burst`. What is lost is only
  what each ACK of the burst would have done that the last one redoes: freeing the send
  buffer, an RTT sample, a window update (the last one's window is the one the
  SND.WL1/SND.WL2 rule would keep). A duplicate ACK never merges (it does not
  acknowledge more), nor does one with SACK blocks or ECN flags, so loss detection and
  ECN see every signal.
  Downloads over a TAP: about 17 % faster (`docs/benchmarks.md`).
* **Timers are data.** Every owner object (connection or server) has
  ``poll_at()``; the layer keeps one deadline heap of ``(deadline, n, owner)``
  with lazy deletion: an owner is pushed again only when its deadline moves
  earlier, and an entry whose deadline is no longer the owner's is skipped when
  popped. The stack asks `poll_at`/`poll` like any other timer client.
* **Transmit is pulled.** Anything that may make a machine want to send (a
  segment, a timer, an application call) puts its owner in the ordered `_dirty`
  set. When the device can take frames the stack calls `transmit(room, now)`:
  stateless replies go first, then each dirty owner builds up to the room left.
  An owner that filled the room moves to the back (round robin), one that sent
  less is clean. A segment becomes a `Packet` whose payload is the machine's
  bytes, attached as a fragment; the header is written into the headroom with
  `wire.tcp.emit_header`, whose checksum covers the payload (no payload copy), then
  IPv4 and Ethernet; for the segment of an established connection `Ipv4.send_tcp`
  writes all three headers in one pack (`wire.tcp_frame.emit`) when the peer's next
  hop is routed and its ARP entry fresh.
* **TSO.** When the device offers TCP segmentation (``device.offloads.tso``, the
  TAP with virtio-net headers), every connection's `TcpConfig.tso_max` is set, so
  bulk data leaves as segments of many MSS; `send_segment` marks such a packet
  with ``gso_size`` = the connection's MSS and the device cuts it. Anywhere else
  (the virtual wire, plain frames) segments stay within one MSS.
* **Connections after the application.** ``close`` queues the FIN and returns;
  the layer keeps driving the machine (retransmission, FIN-WAIT-2, TIME-WAIT)
  and forgets the 4-tuple when it reaches CLOSED, so the dict empties once
  TIME-WAIT (2*MSL) ends. An orphan in FIN-WAIT-2 is reset after
  `fin_wait_2_timeout` (a peer that never closes would pin it forever; Linux's
  tcp_fin_timeout), and data reaching an orphan is discarded and counted.
* **TIME-WAIT is a record.** A connection that reaches TIME-WAIT with nothing left
  to send stays in the 4-tuple dict as its `tcp.time_wait` record, a tuple the garbage
  collector does not track (960 bytes, against 4.4 KB and 24 tracked objects for the
  machine), and its 2*MSL deadline goes on a heap of its own, ``(deadline, 4-tuple)``. A
  segment for it revives the machine (`Connection.revive`), which answers it by RFC
  9293's rules and goes back to a record if still in TIME-WAIT; a SYN that opens a new
  incarnation goes straight to the listener (`time_wait.syn_reopens`). At
  `max_time_wait` records (``--tcp-max-time-wait``; Linux's tcp_max_tw_buckets), a
  connection closes without TIME-WAIT, counted in ``time-wait-overflow``: a server that
  closes first would otherwise hold one per connection of the last 2*MSL (240,000 at
  4,000 a second).
* **Errors.** REFUSED, RESET and TIMED_OUT become ConnectionRefusedError,
  ConnectionResetError and TimeoutError naming both addresses; an ICMP error that
  aborts (protocol/port unreachable) keeps its errno; a soft error (ICMP net or
  host unreachable, or ARP giving up) is remembered and, as Linux does, reported
  instead of a plain time-out if the connection then times out (RFC 1122 4.2.3.9).
  ICMP errors must quote a sequence number in SND.UNA..SND.MAX (RFC 5927 4.1).
"""
import asyncio
import errno
import heapq
import itertools
import mmap
import os
import struct
from collections import Counter, OrderedDict, deque
from dataclasses import replace

from shoal.net import api

from .config import DEFAULT_MAX_TIME_WAIT
from .counts import Counts
from .packet import DEFAULT_HEADROOM, Packet
from .tcp.connection import (CLOSE_WAIT, CLOSED, ERRORS, ESTABLISHED, FIN_WAIT_2, SYN_RECEIVED, TIME_WAIT,
                             TSO_MAX_PAYLOAD, Connection, Event, TcpConfig, TcpError, reset_for)
from .tcp.isn import IsnGenerator
from .tcp.listener import Listener
from .tcp import time_wait
from .tcp.seq import HALF, MASK, Seq
from .wire import WireError
from .wire import tcp as wire_tcp
from .wire.tcp_frame import HEADER_LEN, PLAIN_HEADER_LEN
from .wire.tcp import ACK

PROTO_TCP = 6
EPHEMERAL = (49152, 65535)
"""Ephemeral port range (RFC 6056 section 2.1, the IANA range)."""
MAX_REPLIES = 1024
"""Stateless replies (RSTs for segments to no socket) waiting for a pull; more are dropped."""
FIN_WAIT_2_TIMEOUT = 60.0
"""Seconds an orphan (closed by the application) may wait in FIN-WAIT-2 for the peer's FIN."""
FLUSH_LOW_WATER = 64 * 1024
"""Unsent octets under which `flush` returns."""
SENDFILE_WINDOW = 1 << 20
"""Octets of a file `NativeTcpConnection.sendfile` maps at once (a multiple of the page size)."""
SENDFILE_CACHE = 128 << 20
"""Octets of file mappings a shard keeps for the next `sendfile` of the same bytes (`FileMappings`)."""
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
MAX_HALF_OPEN = 256
"""Half-open connections per listener; beyond them SYNs get SYN cookies (see `tcp.listener`)."""
_QUOTE = struct.Struct("!HHI")
_WAKE_READER = (Event.READABLE, Event.EOF, Event.URGENT)
"""The events that wake a waiting reader (as globals: on CPython 3.11 each ``Event.X`` in
`settle`, which looks at every segment's events, would go through EnumType's lookup)."""
PATH_MTU_LIFETIME = 600.0
"""Seconds a learned path MTU is given to new connections: RFC 1191 6.3's ten minutes, after
which a path may have widened (Linux's mtu_expires)."""
PATH_MTUS_KEPT = 4096
"""Peers whose path MTU is remembered; past that the memory starts over (bounded under forged reports)."""


def _text(ip):
    """Dotted quad of an int address (`stack.ip_text`; imported here late: stack imports us)."""
    from .stack import ip_text
    return ip_text(ip)


class NativeTcpConnection(api.Connection):
    """A connection of the native stack: the API's `Connection` over a `tcp.Connection`.

    Reads return ``bytes`` (the octets the machine held, taken at once); writes
    wait while the machine's send buffer is full. The layer calls `transmit`,
    `poll_at`/`poll` and `settle`; the application calls the API methods.
    """

    revived = False  # rebuilt from a TIME-WAIT record (its closing was counted then)

    def __init__(self, layer, tcp):
        self._layer = layer
        self.tcp = tcp
        # the layer's "anything to send?" and "when next?" are the machine's own, asked after
        # every event without a wrapper; `poll_at` below takes over once an orphan's timer is set
        self.wants_transmit = tcp.wants_transmit
        self.poll_at = tcp.poll_at
        self.key = (tcp.local[1], tcp.remote[0], tcp.remote[1])
        self.alive = True
        self.timer_at = None
        self.orphan_at = None
        self._app = True
        self._exc = None
        self._soft = None
        self._icmp = None
        self._reader = None
        self._writers = []
        self._flushers = []
        self._connected = None
        self._local = (_text(tcp.local[0]), tcp.local[1])
        self._peer = (_text(tcp.remote[0]), tcp.remote[1])
        self._remote_ip = tcp.remote[0]
        self.on_send_error = self._send_failed
        # (made on the shard's loop: its futures come from it without `asyncio.get_running_loop`,
        # which costs a getpid system call per call, and a read waits once per request)
        self._loop = asyncio.get_running_loop()

    # -- layer side ------------------------------------------------------------------

    def poll_at(self):
        """The earliest of the machine's deadlines and the orphan's (FIN-WAIT-2 after close)."""
        t = self.tcp.poll_at()
        o = self.orphan_at
        if o is not None and (t is None or o < t):
            return o
        return t

    def poll(self, now):
        o = self.orphan_at
        if o is not None and now >= o:
            self.orphan_at = None
            if self.tcp.state is FIN_WAIT_2:
                self._layer.stats["orphan-timeouts"] += 1
                self.tcp.abort()
        t = self.tcp.poll_at()
        if t is not None and now >= t:
            self.tcp.poll(now)

    def transmit(self, now, limit):
        tcp = self.tcp
        segs = tcp.transmit(now, limit)
        if segs:
            layer = self._layer
            cfg = tcp.config
            tos = cfg.dscp << 2
            ip = self._remote_ip
            for seg in segs:
                layer.send_segment(seg, ip, now, cfg.ttl, tos | 2 if seg.ect else tos, self.on_send_error,
                                   tcp.snd_mss, tcp.df)
        return len(segs)

    def settle(self, now):
        """Handle the machine's events; returns True when the layer may forget the connection
        (it is CLOSED, or in TIME-WAIT, kept as a record, with nothing left to send)."""
        tcp = self.tcp
        events = tcp.events
        if events:
            tcp.events = []  # (`take_events`, without the call for the usual empty list)
        for ev in events:
            if ev in _WAKE_READER:
                self._wake_reader()
            elif ev is Event.WRITABLE:
                self._wake_writers()
            elif ev is Event.CONNECTED:
                fut = self._connected
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif ev is Event.SOFT_ERROR:
                self._soft = self._icmp
                self._layer.stats["soft-errors"] += 1
            elif ev is Event.RETRANSMITTING:
                self._layer.stats["retransmitting"] += 1
            elif ev in ERRORS:
                self._failed(ev)
            elif ev is Event.CLOSED:
                self._wake_all()
        if not self._app:
            if tcp.readable:
                self._layer.stats["data-after-close"] += tcp.readable
                tcp.recv()
            if tcp.state is FIN_WAIT_2 and self.orphan_at is None:
                self.orphan_at = now + self._layer.fin_wait_2_timeout
                del self.poll_at  # (the machine's: now the method, which counts this deadline too)
        if self._flushers and (self._exc is not None or tcp.state is CLOSED
                               or tcp.send_queued <= FLUSH_LOW_WATER):
            for fut in self._flushers:
                if not fut.done():
                    fut.set_result(None)
            self._flushers.clear()
        st = tcp.state
        return (st is CLOSED or st is TIME_WAIT) and not tcp.wants_transmit()

    def _failed(self, ev):
        self._layer.stats[f"connections-{ev.value}"] += 1
        if ev is Event.REFUSED:
            exc = ConnectionRefusedError(errno.ECONNREFUSED, "")
        elif ev is Event.RESET:
            exc = ConnectionResetError(errno.ECONNRESET, "")
        elif ev is Event.UNREACHABLE:
            code = self._icmp.errno if self._icmp is not None else errno.EHOSTUNREACH
            exc = OSError(code, "")
        elif self._soft is not None:
            exc = OSError(self._soft.errno, "")  # Linux reports the soft error after a time-out
        else:
            exc = TimeoutError(errno.ETIMEDOUT, "")
        what = f"connect to {api.format_address(self._peer)}" if self._connected is not None \
            and not self._connected.done() else self._describe()
        self._exc = api.with_address(exc, what)
        fut = self._connected
        if fut is not None and not fut.done():
            fut.set_exception(self._exc)
        self._wake_all()

    def _send_failed(self, exc):
        """A frame of this connection could not be sent (ARP gave up): a soft error."""
        if self._soft is None:
            self._layer.stats["soft-errors"] += 1
        self._soft = exc

    def icmp_error(self, exc, quoted_len, now):
        """An ICMP error about this connection; a path MTU report is no error to keep."""
        if exc.next_hop_mtu is None or not self.tcp.config.path_mtu_discovery:
            self._icmp = exc
        self.tcp.icmp_arrived(exc.icmp_type, exc.icmp_code, now, exc.next_hop_mtu, quoted_len)

    def _wake_reader(self):
        fut = self._reader
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _wake_writers(self):
        for fut in self._writers:
            if not fut.done():
                fut.set_result(None)
        self._writers.clear()

    def _wake_all(self):
        self._wake_reader()
        self._wake_writers()
        for fut in self._flushers:
            if not fut.done():
                fut.set_result(None)
        self._flushers.clear()
        fut = self._connected
        if fut is not None and not fut.done() and self.tcp.state is CLOSED:
            fut.set_exception(ConnectionAbortedError(errno.ECONNABORTED,
                                                     f"connect to {api.format_address(self._peer)} aborted"))

    def _describe(self):
        return f"connection {api.format_address(self._local)} -> {api.format_address(self._peer)}"

    # -- application side ------------------------------------------------------------

    def read(self):
        return self._read(False)

    def read_buffers(self):
        return self._read(True)

    async def _read(self, buffers):
        """`read` (one copy, `Connection.recv`) or `read_buffers` (the payload views,
        `Connection.recv_buffers`)."""
        while True:
            tcp = self.tcp
            if tcp.readable:
                if buffers:
                    size = tcp.readable
                    data = tcp.recv_buffers()
                else:
                    data = tcp.recv()
                    size = len(data)
                self._layer.stats["bytes-received"] += size  # (as the posix stack counts them)
                if tcp.ack_now:
                    # the window opened enough for an update (`recv`'s only news: what else
                    # there was to send, `_changed` saw when it came)
                    self._layer.transmit_due(self)
                return data
            if self._exc is not None:
                raise self._exc
            if tcp.at_eof or tcp.state is CLOSED or not self._app:
                return [] if buffers else b""
            if self._reader is not None:
                raise RuntimeError(f"read() already waiting on {self._describe()}")
            self._reader = fut = self._loop.create_future()
            try:
                await fut
            finally:
                self._reader = None

    async def write(self, data):
        if type(data) is list or type(data) is tuple:
            for part in data:
                rest = self._send(part, False)
                if rest is not None:
                    await self._send_when_writable(rest, False)
            return
        rest = self._send(data, False)  # (one buffer, the common write: no loop)
        if rest is not None:
            await self._send_when_writable(rest, False)

    async def _send_when_writable(self, data, borrowed):
        """Queue the rest of a write as the send buffer frees room (back-pressure)."""
        while data is not None:
            fut = self._loop.create_future()
            self._writers.append(fut)
            await fut
            data = self._send(data, borrowed)

    async def sendfile(self, fd, offset, count):
        """`api.Connection.sendfile` without a copy in Python: the send buffer keeps views of
        the file's mapping, one `SENDFILE_WINDOW` at a time (`FileMappings`), until they are
        acknowledged, and the kernel copies the pages straight into the device's frames.
        Against reading the file into bytes, the shard's CPU per 100 MB downloaded went
        from 70-74 to 63 ms (`docs/benchmarks.md`).
        """
        st = os.fstat(fd)
        end = offset + count
        if count and end > st.st_size:
            raise OSError(f"sendfile: the file ends before octet {end} (at {st.st_size})")
        mappings = self._layer.mappings
        while offset < end:
            base = offset - offset % SENDFILE_WINDOW
            mapping = mappings.window(fd, st, base)
            rest = self._send(memoryview(mapping)[offset - base:min(end - base, len(mapping))], True)
            del mapping  # the views (and the cache) hold it
            if rest is not None:
                await self._send_when_writable(rest, True)
            offset = base + SENDFILE_WINDOW

    def _send(self, data, borrowed=False):
        """Queue what the send buffer takes of `data`; returns the rest (None: all taken)."""
        if self._exc is not None:
            raise self._exc
        if not self._app:
            raise BrokenPipeError(errno.EPIPE, f"write after close: {self._describe()}")
        try:
            n = self.tcp.send(data, borrowed=borrowed)
        except TcpError:
            raise BrokenPipeError(errno.EPIPE, f"write after shutdown: {self._describe()}") from None
        if n:
            self._layer.stats["bytes-sent"] += n
            self._layer.transmit_due(self)
        if n == len(data):
            return None
        return memoryview(data)[n:] if n else data

    async def flush(self):
        tcp = self.tcp
        while self._exc is None and tcp.state is not CLOSED \
                and tcp.send_queued > FLUSH_LOW_WATER:
            fut = self._loop.create_future()
            self._flushers.append(fut)
            await fut
        if self._exc is not None:
            raise self._exc

    def shutdown_output(self):
        tcp = self.tcp
        if not self._app or tcp.state not in (SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT):
            return
        tcp.shutdown()  # FIN after queued data; unread and later data stay readable
        self._layer.changed(self)

    async def close(self):
        if not self._app:
            return
        self._app = False
        try:
            self.tcp.close()
        except TcpError:
            pass
        self._wake_all()
        self._layer.changed(self)

    def abort(self):
        self._app = False
        self.tcp.abort()
        self._wake_all()
        self._layer.changed(self)

    @property
    def local_address(self):
        return self._local

    @property
    def peer_address(self):
        return self._peer

    def set_nodelay(self, enabled=True):
        self.tcp.set_nodelay(bool(enabled))
        self._layer.changed(self)

    def set_keepalive(self, enabled=True, *, idle=None, interval=None, count=None):
        if count is not None:
            self.tcp.config = replace(self.tcp.config, keepalive_probes=int(count))
        self.tcp.set_keepalive(bool(enabled), idle, interval)
        self._layer.changed(self)

    def __repr__(self):
        return f"<NativeTcpConnection {self.tcp!r}>"


class NativeTcpServer(api.Server):
    """A listening port of the native stack: the API's `Server` over a `tcp.Listener`.

    Established connections wait in the listener's accept queue (bounded by the
    backlog) until `accept` adopts them; only then does the 4-tuple dict route
    their segments directly.
    """

    def __init__(self, layer, listener, address):
        self._layer = layer
        self.listener = listener
        self.port = listener.local[1]
        self._address = address
        self.alive = True
        self.timer_at = None
        self._waiter = None

    def poll_at(self):
        return self.listener.poll_at()

    def poll(self, now):
        self.listener.poll(now)

    def wants_transmit(self):
        return self.listener.wants_transmit()

    def transmit(self, now, limit):
        pairs = self.listener.transmit(now, limit)
        send = self._layer.send_segment
        ttl = self.listener.config.ttl
        for remote, seg in pairs:
            send(seg, remote[0], now, ttl, 0, None)
        return len(pairs)

    def settle(self, now):
        if self.listener.ready:
            fut = self._waiter
            if fut is not None and not fut.done():
                fut.set_result(None)
        return False

    async def accept(self):
        while True:
            if not self.alive:
                raise api.ServerClosedError(errno.ECONNABORTED,
                                            f"server on {api.format_address(self.local_address)} closed")
            tcp = self.listener.accept()
            if tcp is not None:
                conn = self._layer.adopt(tcp)
                return conn, conn.peer_address
            self._waiter = fut = asyncio.get_running_loop().create_future()
            try:
                await fut
            finally:
                self._waiter = None

    def close(self):
        if self.alive:
            self._layer.close_server(self)
            fut = self._waiter
            if fut is not None and not fut.done():
                fut.set_result(None)

    @property
    def local_address(self):
        return (self._address or _text(self._layer.stack.ipv4.address), self.port)


class FileMappings:
    """Windows of files mapped for `sendfile`, the last used kept up to `limit` octets.

    A window is mapped pre-faulted (MAP_POPULATE): the kernel then copies its pages into
    the device's frames without taking a page fault per 4 KiB. Mapping is what costs:
    populating the page table of 4 MiB of page cache took 320-390 us here, about a
    quarter of the shard's CPU per MiB downloaded, and the shard does nothing else
    meanwhile (the first byte of a download waited for it). So the windows stay mapped,
    keyed by the file's device, inode and offset, and serve the next `sendfile` of the
    same file as long as its size and modification time are the same. (A shared mapping
    shows what is written in place; a file that grew or shrank gets fresh windows, as
    a window past a new end would fault. sendfile's contract is that the file does not
    change while it is sent.) Windows are `SENDFILE_WINDOW` long (1 MiB: 85 us to
    populate), so the first byte goes after the first one. The least recently used go
    beyond `limit`; a window is unmapped when the cache and the last view in a send
    buffer let go of it.
    """

    def __init__(self, stats, limit=SENDFILE_CACHE):
        self.limit = limit
        self.stats = stats  # the layer's: "sendfile-maps", "sendfile-map-hits"
        self._windows = OrderedDict()  # (st_dev, st_ino, base) -> (st_size, st_mtime_ns, mmap)
        self._octets = 0

    def window(self, fd, st, base):
        """The mapping of `fd` (whose `os.fstat` is `st`) from `base` (a multiple of
        `SENDFILE_WINDOW`) for `SENDFILE_WINDOW` octets or to the end of the file."""
        key = (st.st_dev, st.st_ino, base)
        windows = self._windows
        entry = windows.get(key)
        if entry is not None:
            if entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
                windows.move_to_end(key)
                self.stats["sendfile-map-hits"] += 1
                return entry[2]
            self._drop(key)
        length = min(st.st_size - base, SENDFILE_WINDOW)
        try:
            mapping = mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ,
                                offset=base)
        except ValueError:  # (mmap's "length is greater than file size": it shrank since `st`)
            raise OSError(f"sendfile: the file ends before octet {base + length}") from None
        self.stats["sendfile-maps"] += 1
        windows[key] = (st.st_size, st.st_mtime_ns, mapping)
        self._octets += length
        while self._octets > self.limit:
            self._drop(next(iter(windows)))
        return mapping

    def _drop(self, key):
        self._octets -= len(self._windows.pop(key)[2])

    def clear(self):
        self._windows.clear()
        self._octets = 0


class TcpLayer:
    """TCP for one `NativeStack` (see the module docstring).

    ``config`` is the `TcpConfig` every connection starts from (its ``mtu`` is set
    to the device's, which clamps the MSS we advertise: MUST-67, SHLD-6, and its
    ``tso_max`` to `TSO_MAX_PAYLOAD` if the device offers TSO and ``config.tso``
    allows it, else 0); ``rng``
    gives the ISN secret (RFC 6528) and the first ephemeral port (RFC 6056).
    """

    def __init__(self, stack, rng, config=None, *, fin_wait_2_timeout=FIN_WAIT_2_TIMEOUT,
                 max_time_wait=DEFAULT_MAX_TIME_WAIT):
        self.stack = stack
        self.ipv4 = stack.ipv4
        base = config if config is not None else TcpConfig()
        self.config = replace(base, mtu=min(base.mtu, stack.device.mtu),
                              tso_max=TSO_MAX_PAYLOAD if base.tso and stack.device.offloads.tso else 0)
        self.fin_wait_2_timeout = fin_wait_2_timeout
        self.max_time_wait = max_time_wait
        self._time_waits = 0  # TIME-WAIT records in `conns`
        self._time_wait_heap = []  # (2*MSL over, 4-tuple)
        self._held = None  # (src, tos, segment): a pure ACK held back to merge (`receive_segment`)
        self._burst_segments = 0  # `receive_segment`'s count, into the stats at `end_burst`
        self._device_checksum = stack.device.offloads.tx_checksum
        self.isn = IsnGenerator(rng.randbytes(32))
        self.conns = {}
        self.servers = {}
        self.drops = Counts()
        self.stats = Counts()
        self.mappings = FileMappings(self.stats)  # files' windows for `sendfile`
        self._dirty = {}
        self._heap = []
        self._order = itertools.count()
        self._replies = deque()
        self._next_port = rng.randrange(EPHEMERAL[0], EPHEMERAL[1] + 1)
        self._retired_drops = Counter()
        self._retired_counters = Counter()
        self.path_mtus = {}  # remote IP -> (path MTU, DF, until): what reports taught (RFC 1191)
        self.ipv4.handlers[PROTO_TCP] = self.receive
        stack.icmp.error_handlers[PROTO_TCP] = self.icmp_error
        stack.add_tx_source(self.transmit)
        stack.add_timer_client(self)

    # -- receive ---------------------------------------------------------------------

    def receive_segment(self, src, tos, seg, now):
        """A segment from `src` to our address that the stack parsed and checked, checksum
        included, with its frame (`wire.tcp_frame.parse`): what `receive` does after parsing.
        A pure ACK is held back to merge with the next (see the module docstring); the
        stack calls `end_burst` after the frames of a burst, which also adds their count to
        the stats (an int per segment, and one `Counts` update per burst instead of one per
        segment)."""
        self._burst_segments += 1
        held = self._held
        if seg.flags == ACK and not seg.payload and not seg.sack:
            if held is not None:
                hsrc, htos, hseg = held
                ts, hts = seg.timestamp, hseg.timestamp
                if (src == hsrc and tos == htos and seg.src_port == hseg.src_port
                        and seg.dst_port == hseg.dst_port and seg.seq == hseg.seq
                        and 0 < (seg.ack - hseg.ack) & MASK < HALF
                        and ((ts[0] - hts[0]) & MASK < HALF if ts is not None and hts is not None else ts is hts)
                        and self._takes_new_ack(seg, src)):
                    seg.acks += hseg.acks
                    self.stats["acks-merged"] += 1
                    self._held = (src, tos, seg)
                    return
                self._segment(hseg, hsrc, htos, now)
            self._held = (src, tos, seg)
            return
        if held is not None:
            self.end_burst(now)
        self._segment(seg, src, tos, now)

    def _takes_new_ack(self, seg, src):
        """Would `seg`'s connection take its ACK as new data acknowledged? An ACK beyond
        SND.MAX (a blind injection, RFC 5961 5.2) is dropped: it must not stand for the
        valid one held before it."""
        conn = self.conns.get((seg.dst_port, src, seg.src_port))
        return conn is not None and type(conn) is not tuple and conn.tcp.acknowledges_new(seg.ack)

    def end_burst(self, now):
        """The stack's burst of received frames is over: deliver the pure ACK held back."""
        if self._burst_segments:
            self.stats["segments-received"] += self._burst_segments
            self._burst_segments = 0
        held = self._held
        if held is not None:
            self._held = None
            self._segment(held[2], held[0], held[1], now)

    def receive(self, hdr, datagram, packet, now):
        """IPv4 handler for protocol 6. Never raises on bad input."""
        self.end_burst(now)  # a held ACK goes first: segments of a connection stay in order
        self.stats["segments-received"] += 1
        if hdr.dst != self.ipv4.address:
            self.drops["not-unicast"] += 1  # MUST-57: no TCP on broadcast or multicast
            return
        src = hdr.src
        try:
            # the checksum is verified unless the device vouched for it (`VerifiedFrame`)
            seg = wire_tcp.parse(datagram[hdr.header_len:], None, None) if packet.checksum_verified \
                else wire_tcp.parse(datagram[hdr.header_len:], src, hdr.dst)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        self._segment(seg, src, hdr.tos, now)

    def _segment(self, seg, src, tos, now):
        """A valid segment from `src` to our address: its connection, else its listener, else a RST."""
        conn_key = (seg.dst_port, src, seg.src_port)
        conn = self.conns.get(conn_key)
        if conn is not None and type(conn) is tuple:
            conn = self._revive(conn_key, conn, seg, now)
        if conn is not None:
            reopen = conn.tcp.segment_arrived(seg, now, (tos & 3) == 3)
            self._changed(conn, now)
            if not reopen:
                return
        server = self.servers.get(seg.dst_port)
        if server is not None:
            server.listener.segment_arrived(seg, (src, seg.src_port), now)
            self._changed(server, now)
            return
        self.drops["no-socket"] += 1
        rst = reset_for(seg)
        if rst is not None:
            self._reply(src, rst)

    def icmp_error(self, exc, inner, rest, now):
        """An ICMP error quoting one of our segments (`Icmp.error_handlers[6]`)."""
        if len(rest) < _QUOTE.size:
            self.drops["icmp-short-quote"] += 1
            return
        sport, dport, seq = _QUOTE.unpack_from(rest)
        conn = self.conns.get((sport, inner.dst, dport))
        if conn is None or type(conn) is tuple:  # (nothing to tell a connection in TIME-WAIT)
            self.drops["icmp-no-connection"] += 1
            return
        tcp = conn.tcp
        if not Seq(seq).in_window(tcp.snd_una, max(tcp.snd_max - tcp.snd_una, 1)):
            self.drops["icmp-seq-out-of-window"] += 1  # RFC 5927 4.1: likely forged
            return
        self.stats["icmp-errors"] += 1
        conn.icmp_error(exc, inner.total_len, now)
        if exc.next_hop_mtu is not None and tcp.path_mtu is not None:  # a path MTU report it took
            if len(self.path_mtus) >= PATH_MTUS_KEPT:
                self.path_mtus.clear()
            self.path_mtus[inner.dst] = (tcp.path_mtu, tcp.df, now + PATH_MTU_LIFETIME)
        self._changed(conn, now)

    def _start_from_known_path_mtu(self, tcp, now):
        """A new connection to a peer whose path MTU a report taught another connection in
        the last `PATH_MTU_LIFETIME` seconds starts with it (no flight lost to learn it)."""
        known = self.path_mtus.get(tcp.remote[0])
        if known is not None:
            mtu, df, until = known
            if now < until:
                tcp.set_path_mtu(mtu, df, now)
            else:
                del self.path_mtus[tcp.remote[0]]

    def _reply(self, ip, seg):
        if len(self._replies) < MAX_REPLIES:
            self._replies.append((ip, seg))
        else:
            self.drops["reply-queue-full"] += 1

    # -- owners: events, timers, transmit list ---------------------------------------

    def _changed(self, owner, now):
        if owner.settle(now):
            self._forget(owner)
            return
        t = owner.poll_at()
        if t is not None and (owner.timer_at is None or t < owner.timer_at):
            owner.timer_at = t
            heapq.heappush(self._heap, (t, next(self._order), owner))
        if owner.wants_transmit():
            self._dirty[owner] = None

    def changed(self, owner):
        """An application call changed `owner`: settle it and make the reactor poll."""
        if owner.alive:
            self._changed(owner, self.stack.now())
            self.stack.wake()

    def transmit_due(self, owner):
        """An application call gave `owner` something to send (its timers are unchanged)."""
        if owner.alive:
            self._dirty[owner] = None
            self.stack.wake()

    def _forget(self, conn, keep_time_wait=True):
        """Drop an owner whose `settle` said so; a connection in TIME-WAIT stays as a record."""
        key = conn.key
        if self.conns.get(key) is conn:
            del self.conns[key]
        conn.alive = False
        conn.on_send_error = None  # (a bound method of its own: the cycle would leave the
        # connection to the garbage collector, and its whole machine with it)
        tcp = conn.tcp
        self._dirty.pop(conn, None)
        self._retired_drops.update(tcp.drops)
        self._retired_counters.update(tcp.counters)
        if not conn.revived:
            self.stats["connections-closed"] += 1
        if keep_time_wait and tcp.state is TIME_WAIT and key not in self.conns:
            if self._time_waits >= self.max_time_wait:
                self.stats["time-wait-overflow"] += 1
                return
            self.conns[key] = tcp.hibernate(self.config)
            self._time_waits += 1
            heapq.heappush(self._time_wait_heap, (tcp.timewait_at, key))

    def _revive(self, key, record, seg, now):
        """The machine of the TIME-WAIT record that `seg` reached, in its place; None (the record
        gone) for a SYN that opens a new incarnation: the client's next connection from that
        port, common enough (a busy client cycles through its ports well within 2*MSL) to
        be told from the record alone."""
        self._time_waits -= 1
        if time_wait.syn_reopens(seg, record[time_wait.TS_OK], record[time_wait.TS_RECENT],
                                 record[time_wait.RCV_NXT]):
            del self.conns[key]
            self.stats["time-wait-reopen"] += 1
            return None
        conn = NativeTcpConnection(self, Connection.revive(record, now, self.config))
        conn._app = False  # the application let it go
        conn.revived = True
        self.conns[key] = conn
        return conn

    def poll_at(self):
        heap = self._heap
        t = heap[0][0] if heap else None
        tw = self._time_wait_heap
        if tw and (t is None or tw[0][0] < t):
            return tw[0][0]
        return t

    def poll(self, now):
        tw = self._time_wait_heap
        while tw and tw[0][0] <= now:
            key = heapq.heappop(tw)[1]
            record = self.conns.get(key)
            if type(record) is tuple and record[time_wait.TIMEWAIT_AT] <= now:
                del self.conns[key]  # 2*MSL over (a record made again since has a later deadline)
                self._time_waits -= 1
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _n, owner = heapq.heappop(heap)
            if owner.timer_at != t or not owner.alive:
                continue  # superseded by an earlier entry, or the owner is gone
            owner.timer_at = None
            owner.poll(now)
            self._changed(owner, now)

    def transmit(self, room, now):
        """The stack's transmit source: send up to `room` segments."""
        sent = 0
        replies = self._replies
        while replies and sent < room:
            ip, seg = replies.popleft()
            self.send_segment(seg, ip, now, self.config.ttl, 0, None)
            sent += 1
        dirty = self._dirty
        if not dirty or sent >= room:
            return
        for owner in list(dirty):
            left = room - sent
            if left <= 0:
                break
            n = owner.transmit(now, left)
            sent += n
            del dirty[owner]
            if n >= left:
                dirty[owner] = None  # more to send: to the back of the line
            if owner.settle(now):
                self._forget(owner)
                continue
            t = owner.poll_at()
            if t is not None and (owner.timer_at is None or t < owner.timer_at):
                owner.timer_at = t
                heapq.heappush(self._heap, (t, next(self._order), owner))

    def send_segment(self, seg, dst, now, ttl, tos, on_error, mss=0, df=False):
        """Build `seg` into a packet (header in headroom, payload attached) and send it.

        A payload longer than `mss` (the sending connection's) is a TSO segment: the
        packet's ``gso_size`` tells the device to cut it into `mss`-sized segments.
        A retransmission (``seg.resent``) goes as a frame of its own (``Packet.alone``):
        merged with its neighbours into one super-frame, a burst of them shares one fate,
        and one drop on the way (a queue, a filter: the receiving kernel sees one packet)
        loses them all and leaves nothing to draw an ACK before the RTO (4 of 12 RTOs
        traced in downloads by the kernel over a TAP with 2 % loss each way).
        `df`: the IPv4 Don't Fragment flag, for the connection's path MTU discovery.
        A device that finishes checksums (``offloads.tx_checksum``) gets every segment with
        only the pseudo-header sum in its checksum field (``Packet.checksum_partial``):
        no pass over the payload here, and none in the kernel behind a TAP, which takes
        such a frame as already verified (Linux's CHECKSUM_PARTIAL).
        """
        self.stats["segments-sent"] += 1
        payload = seg.payload
        plen = len(payload)
        # no option but the timestamp: one pack writes all three headers (`Ipv4.send_tcp`), into
        # headroom of exactly their size, which `Packet.views` then hands on without a view
        one_pack = seg.mss is None and seg.wscale is None and not seg.sack and not seg.sack_permitted
        headroom = (HEADER_LEN if seg.timestamp is not None else PLAIN_HEADER_LEN) if one_pack else DEFAULT_HEADROOM
        pkt = Packet(payload if plen else None, headroom)
        tso = mss and plen > mss
        if tso:
            pkt.gso_size = mss
            self.stats["tso-segments-sent"] += 1
            partial = True
        else:
            if seg.resent:
                pkt.alone = True
            partial = pkt.checksum_partial = self._device_checksum
        if one_pack and self.ipv4.send_tcp(pkt, seg, dst, now, ttl, df, tos, partial):
            return  # an established connection's segment: all the frame's headers in one pack
        # the header into the headroom, its checksum over the payload, which stays a fragment
        # (or left to the device, which also computes that of each piece of a TSO segment)
        wire_tcp.emit_header(pkt.buf, pkt.prepend(wire_tcp.header_len(seg)), seg, self.ipv4.address, dst,
                             None, partial)
        self.ipv4.send(pkt, dst, PROTO_TCP, now, ttl, df, tos, on_error)

    # -- API -------------------------------------------------------------------------

    def adopt(self, tcp):
        """Take over a connection accepted from a listener."""
        self._start_from_known_path_mtu(tcp, self.stack.now())
        conn = NativeTcpConnection(self, tcp)
        self.conns[conn.key] = conn
        self.stats["connections-accepted"] += 1
        self.changed(conn)
        return conn

    def close_server(self, server):
        server.alive = False
        if self.servers.get(server.port) is server:
            del self.servers[server.port]
        self._dirty.pop(server, None)
        now = self.stack.now()
        listener = server.listener
        for remote, tcp in list(listener.half_open.items()) + list(listener.ready.items()):
            tcp.abort()  # RFC 9293 3.10.4: CLOSE of a listener resets what it did not hand over
            for seg in tcp.transmit(now, 4):
                self._reply(remote[0], seg)
            self._retired_drops.update(tcp.drops)
        listener.half_open.clear()
        listener.ready.clear()
        self._retired_drops.update(listener.drops)
        self._retired_counters.update(listener.counters)
        self.stack.wake()

    def _local_ip(self, address, what):
        from .stack import _parse_host
        ip = _parse_host(address[0], what)
        if ip and ip != self.ipv4.address:
            raise OSError(errno.EADDRNOTAVAIL,
                          f"{os.strerror(errno.EADDRNOTAVAIL)}: {api.format_address(address)} "
                          "is not this interface's address")
        return ip

    def listen(self, address, backlog=api.DEFAULT_BACKLOG):
        ip = self._local_ip(address, "TCP listen address")
        port = address[1]
        if not 0 <= port < 65536:
            raise OSError(errno.EINVAL, f"bad port in {api.format_address(address)}")
        if not port:
            port = self._ephemeral(lambda p: p not in self.servers)
        elif port in self.servers:
            raise OSError(errno.EADDRINUSE,
                          f"{os.strerror(errno.EADDRINUSE)}: TCP listen {api.format_address(address)}")
        listener = Listener(self.config, (self.ipv4.address, port), self.isn, backlog=max(1, backlog),
                            max_half_open=MAX_HALF_OPEN, syncookies=True)
        server = NativeTcpServer(self, listener, address[0] if ip else "")
        self.servers[port] = server
        return server

    def _ephemeral(self, free):
        lo, hi = EPHEMERAL
        span = hi - lo + 1
        start = self._next_port
        for i in range(span):
            port = lo + (start - lo + i) % span
            if free(port):
                self._next_port = lo + (port - lo + 1) % span
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral TCP port")

    async def connect(self, address, local_address=None, timeout=None):
        from .stack import _parse_host
        what = f"connect to {api.format_address(address)}"
        dst, dport = _parse_host(address[0], "TCP destination"), address[1]
        if not dst or not 0 < dport < 65536:
            raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)}: {what}")
        if not self.stack.configured:
            try:
                await self.stack.wait_configured(timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(errno.ETIMEDOUT, f"no address configured (DHCP): {what}") from None
        if self.ipv4.is_broadcast(dst) or dst >> 28 >= 0xE:
            raise OSError(errno.EINVAL, f"broadcast or multicast destination (MUST-46): {what}")
        if self.ipv4.route(dst) is None:
            raise OSError(errno.ENETUNREACH, f"{os.strerror(errno.ENETUNREACH)}: {what}")
        lport = 0
        if local_address is not None:
            self._local_ip(local_address, "TCP local address")
            lport = local_address[1]
        owns = self.stack.owns_flow
        if lport:
            if (lport, dst, dport) in self.conns:
                raise OSError(errno.EADDRINUSE, f"{os.strerror(errno.EADDRINUSE)}: {what} from port {lport}")
            if not owns(lport, dport):
                raise OSError(errno.EADDRNOTAVAIL, f"{os.strerror(errno.EADDRNOTAVAIL)}: {what} from port {lport}"
                              " (that flow belongs to another shard's device queue)")
        else:
            # Only a port whose flow the device steers to this shard: the replies must come here.
            lport = self._ephemeral(lambda p: owns(p, dport) and p not in self.servers
                                    and (p, dst, dport) not in self.conns)
        now = self.stack.now()
        src = self.ipv4.address
        iss = self.isn(src, lport, dst, dport, now)
        tcp = Connection.active(self.config, (src, lport), (dst, dport), iss, now, ts_offset=iss)
        self._start_from_known_path_mtu(tcp, now)
        conn = NativeTcpConnection(self, tcp)
        conn._connected = fut = asyncio.get_running_loop().create_future()
        self.conns[conn.key] = conn
        self.stats["connections-opened"] += 1
        self.changed(conn)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.abort()
            raise TimeoutError(errno.ETIMEDOUT, f"{os.strerror(errno.ETIMEDOUT)}: {what}") from None
        except asyncio.CancelledError:
            conn.abort()
            raise
        return conn

    def shutdown(self):
        """Stack stop: fail every waiting application call and forget all state."""
        for server in list(self.servers.values()):
            server.close()
        for conn in list(self.conns.values()):
            if type(conn) is not tuple:
                conn._exc = ConnectionAbortedError(errno.ECONNABORTED, f"stack stopped: {conn._describe()}")
                conn._wake_all()
                self._forget(conn, keep_time_wait=False)
        self.conns.clear()  # (and the TIME-WAIT records)
        self._time_waits = 0
        self._time_wait_heap.clear()
        self._dirty.clear()
        self._heap.clear()
        self._replies.clear()
        self.mappings.clear()

    def counters(self):
        """Layer counters plus those of every connection, live or gone."""
        drops = Counter(self.drops)
        drops.update(self._retired_drops)
        counters = Counter(self.stats)
        counters.update(self._retired_counters)
        for conn in self.conns.values():
            if type(conn) is not tuple:
                drops.update(conn.tcp.drops)
                counters.update(conn.tcp.counters)
        for server in self.servers.values():
            drops.update(server.listener.drops)
            counters.update(server.listener.counters)
        counters["connections"] = len(self.conns)
        counters["time-wait"] = self._time_waits
        return {"stats": dict(counters), "drops": dict(drops)}
