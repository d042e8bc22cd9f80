"""shoal iperf3: a server the iperf3 client (3.x) measures against, on either stack.

    python -m shoal.apps.iperf3 [--port 5201] [--smp N] [--network-stack native ...]
    iperf3 -c HOST [-t SECONDS | -n BYTES | -k BLOCKS] [-P STREAMS] [-R | --bidir | -u [-b RATE]]
                   [-l LENGTH] [-O SECONDS]

Theory of operation. An iperf3 test is one control connection and N data
connections ("streams"), all to the server's port, each opening with the client's
37-octet cookie (with --bidir, 2N: the N the client sends on, then N it receives
on). The server drives the control connection with one-octet states:
PARAM_EXCHANGE (the client answers with its parameters), CREATE_STREAMS (it
connects the streams), TEST_START and TEST_RUNNING (data flows: client to server,
server to client with -R, both with --bidir), then the client's TEST_END (at its
-t, or once -n or -k is carried: a sending server sends exactly that), EXCHANGE_RESULTS
(each side sends its per-stream byte counts), DISPLAY_RESULTS, and the client's
IPERF_DONE. Parameters and results are JSON after a 4-octet big-endian length. As
with ``iperf3 -s``, one test runs at a time: another client is told ACCESS_DENIED.
With -u the streams are UDP flows to the same port instead (`serve_udp`): each opens
with a 4-octet connect datagram that the server answers; the server counts the
client's datagrams as iperf3's does (`_UdpStream`: octets, losses, reordering,
jitter), or sends its own at the test's rate (-b, per stream). What this server does
not do (SCTP, a download without an end, authentication) is refused with SERVER_ERROR
and iperf3's IEUNIMP, which the client prints as "an option you are trying to set is
not implemented yet". The socket settings a client asks of the server's side (-w, -M,
-S, -C) are not applied there, and --get-server-output gets no text: the client runs
and reports as usual.

Sharding: every shard listens on the port, and the kernel (posix, SO_REUSEPORT) or
the NIC queue (native) picks the shard of each connection, so the control
connection and the streams of one test are usually on different shards. Shard 0
keeps the registry of the running test (`_classify`): a new connection reads its
cookie and asks shard 0 whether it starts a test (its shard then controls it), is a
stream of the running test (it stays on its own shard, which counts its bytes), or
is turned away. A UDP flow names no test: its connect datagram joins the running -u
test while that expects streams (`_classify_udp`). The controlling shard starts,
stops and collects the streams with `smp.invoke_on_all`. Only cookies, counts and
times cross shards.

Streams are numbered as iperf3 numbers them (1, 3, 4, ...) in the order the client
connected them, which it does one after the other. Their shards may accept them in
any order, so the order comes from the client's ports instead (`connect_order`):
Linux gives consecutive connections to one destination increasing ports. (UDP flows
join in order: the client sends the next connect datagram only after the answer.)
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import struct
import sys
import time
from dataclasses import dataclass

from shoal import net
from shoal.runtime import smp

COOKIE_LEN = 37  # 36 characters and a NUL
TEST_START, TEST_RUNNING, TEST_END = 1, 2, 4
PARAM_EXCHANGE, CREATE_STREAMS, CLIENT_TERMINATE = 9, 10, 12
EXCHANGE_RESULTS, DISPLAY_RESULTS, IPERF_DONE = 13, 14, 16
ACCESS_DENIED, SERVER_ERROR = -1, -2
IEUNIMP, IERECVPARAMS, IESTREAMCONNECT = 13, 114, 203  # iperf3's i_errno values the client explains
MAX_JSON = 1 << 16
MAX_STREAMS = 128  # iperf3's own limit for -P
MAX_BLOCK = 1 << 20  # iperf3's largest -l for TCP
MAX_TIME = 86400
MAX_OMIT = 600
COOKIE_S = 10.0  # a connection must name its test within this
STREAMS_S = 10.0  # and a test's streams must all connect within this
FINISH_S = 10.0  # a stream's last block and FIN must leave within this, or it is reset
DRAIN_S = 2.0  # how long what the client says it sent may still be on its way
UDP_QUIET_S = 0.1  # a UDP stream's drain ends when no datagram came for this long
WRITE_OCTETS = 1 << 20  # what a sending stream writes at once (`_Stream.send`)
PORT_WRAP_GAP = 16384  # (a connection's next port is a few above; Linux's range is 28232 wide)
UDP_CONNECT_REPLIES = {
    b"9876": b"6789", b"6789": b"9876",  # 0x36373839, answered with 0x39383736
    b"\x15\xcd\x5b\x07": b"\xb1\x68\xde\x3a", b"\x07\x5b\xcd\x15": b"\x3a\xde\x68\xb1",  # 123456789, 987654321
}
"""A UDP stream's first datagram, and the answer its client compares: both are a 32-bit
value the client writes and reads in its own byte order (little-endian on x86 and ARM,
big-endian on s390x). Older iperf3 clients use the numeric pair, current ones the text
pair; each gets the answer of its own pair."""
UDP_HEADER = struct.Struct("!III")  # a UDP datagram's send time (seconds, microseconds) and number
UDP_HEADER_64 = struct.Struct("!IIQ")  # (the number with --udp-counters-64bit)
UDP_BURST = 32  # datagrams a sending UDP stream sends before it lets the shard's other tasks run


class Refused(Exception):
    """A test the server will not run: iperf3's i_errno and a text for the log."""

    def __init__(self, i_errno, text):
        super().__init__(text)
        self.i_errno = i_errno


class _Reader:
    """Exact-length reads over `net.Connection.read`, which returns what arrived."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = bytearray()

    async def exactly(self, n):
        while len(self.buf) < n:
            data = await self.conn.read()
            if not data:
                raise EOFError(f"end of stream after {len(self.buf)} of {n} octets")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def state(self):
        return struct.unpack("!b", await self.exactly(1))[0]

    async def json(self):
        (length,) = struct.unpack("!I", await self.exactly(4))
        if not 0 < length <= MAX_JSON:
            raise Refused(IERECVPARAMS, f"a JSON message of {length} octets")
        try:
            value = json.loads(await self.exactly(length))
        except ValueError as e:
            raise Refused(IERECVPARAMS, f"malformed JSON: {e}") from None
        if not isinstance(value, dict):
            raise Refused(IERECVPARAMS, "the JSON message is not an object")
        return value


@dataclass(frozen=True)
class Parameters:
    """A test as this server runs it (`parse_params`).

    `streams` is -P: with --bidir (`bidir`) the client connects that many streams to send
    and as many again to receive. `octets`: with -n or -k, what the server's sending
    streams send in all (the client ends the test once it has received that much, and
    iperf3's own server sends exactly that); None when the client ends the test by its
    clock, or by what it sent itself. `udp`: the streams are UDP flows (-u), whose
    datagrams carry a 64-bit number with `counters_64bit`; the server sends its own at
    `rate` bits per second and stream (-b; 0, which the client leaves out: as fast as it
    can; the client's own default for UDP is 1 Mbit/s)."""
    streams: int
    reverse: bool
    bidir: bool
    block_len: int
    omit: int
    octets: int | None
    udp: bool = False
    counters_64bit: bool = False
    rate: int = 0


def parse_params(params):
    """The client's parameters as `Parameters`; `Refused` for what this server does not
    do or what cannot be right."""
    udp = bool(params.get("udp"))
    if params.get("sctp") or not (udp or params.get("tcp", True)):
        raise Refused(IEUNIMP, "only TCP and UDP tests")
    if params.get("authtoken") is not None:
        raise Refused(IEUNIMP, "no authentication")
    fields = {}
    for key, low, high, default in (("parallel", 1, MAX_STREAMS, 1), ("len", 1, MAX_BLOCK, 131072),
                                    ("omit", 0, MAX_OMIT, 0), ("time", 0, MAX_TIME, 10),
                                    ("num", 0, 1 << 62, 0), ("blockcount", 0, 1 << 62, 0),
                                    ("bandwidth", 0, 1 << 62, 0)):
        value = params.get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise Refused(IERECVPARAMS, f"{key} {value!r} is not an integer in {low}..{high}")
        fields[key] = value
    bidir = bool(params.get("bidirectional"))
    reverse = bool(params.get("reverse")) and not bidir
    octets = None
    if reverse or bidir:
        octets = fields["num"] or fields["blockcount"] * fields["len"] or None
        if octets is None and not fields["time"]:
            raise Refused(IEUNIMP, "a download needs a set time (-t), size (-n) or block count (-k)")
    return Parameters(fields["parallel"], reverse, bidir, fields["len"], fields["omit"], octets, udp,
                      bool(params.get("udp_counters_64bit")), fields["bandwidth"] if udp else 0)


# -- shard 0: the registry of the running test -----------------------------------------

_test = None  # on shard 0: {"cookie", "controller", "expected", "udp", "joined": [(client port, shard, key)]}
# ("udp": None for a TCP test, else (the bits of its datagrams' numbers, -l, -b))


def connect_order(ports):
    """Indices of `ports` (the client's, of connections it made one after the other)
    in the order it made them: increasing, unless the client's port range wrapped
    around between two of them, which shows as a gap of over `PORT_WRAP_GAP`."""
    ranked = sorted(range(len(ports)), key=ports.__getitem__)
    for i in range(1, len(ranked)):
        if ports[ranked[i]] - ports[ranked[i - 1]] > PORT_WRAP_GAP:
            return ranked[i:] + ranked[:i]
    return ranked


def _classify(cookie, shard, key, port):
    """Shard 0: what a new connection that sent `cookie` is. ("control",) starts a
    test controlled by `shard`; ("stream", controller) joins the running one;
    ("busy",) is turned away."""
    global _test
    if _test is None:
        _test = {"cookie": cookie, "controller": shard, "expected": None, "udp": None, "joined": []}
        return ("control",)
    if cookie == _test["cookie"] and _test["expected"] is not None and _test["udp"] is None \
            and len(_test["joined"]) < _test["expected"]:
        _test["joined"].append((port, shard, key))
        return ("stream", _test["controller"])
    return ("busy",)


def _classify_udp(shard, key):
    """Shard 0: a UDP flow's connect datagram. Its datagrams carry no cookie: it joins
    the running test if that expects UDP streams still (-u), as ("stream", controller,
    cookie, the test's `udp` settings); else ("busy",). The client connects a UDP
    stream only once the one before has its answer, so the order in which they join is
    the order it made them (their ports, which Linux picks at random for UDP, would not
    tell)."""
    if _test is None or _test["udp"] is None or _test["expected"] is None \
            or len(_test["joined"]) >= _test["expected"]:
        return ("busy",)
    _test["joined"].append((len(_test["joined"]), shard, key))
    return ("stream", _test["controller"], _test["cookie"], _test["udp"])


def _expect_streams(cookie, count, udp):
    """Shard 0: the running test's streams may join now: `count` of them, UDP flows with
    `udp` (the bits of their datagrams' numbers, their length, the rate to send them at),
    else (None) TCP connections."""
    if _test is not None and _test["cookie"] == cookie:
        _test["expected"] = count
        _test["udp"] = udp


def _stream_order(cookie):
    """Shard 0: the streams as (shard, key), in the order the client connected them."""
    if _test is None or _test["cookie"] != cookie:
        return []
    joined = _test["joined"]
    return [joined[i][1:] for i in connect_order([port for port, _shard, _key in joined])]


def _end_test(cookie):
    global _test
    if _test is not None and _test["cookie"] == cookie:
        _test = None


# -- every shard: its streams -------------------------------------------------------------

class _Stream:
    """One data connection on this shard: while the test runs it counts what it reads,
    or (-R) sends blocks of the test's length from a task of its own.

    At the test's end the server closes its streams, as iperf3's does when TEST_END
    comes: the client reads whole blocks, and its read of a last block that will
    never be complete ends at the FIN (without it, the client waits forever)."""

    def __init__(self, conn):
        self.conn = conn
        self.id = None
        self.octets = 0
        self.base = 0  # octets at the end of the omitted seconds
        self.running = False
        self.sends = False  # the server sends on it (-R, or the second half of a --bidir test's)
        self.limit = None  # octets to send in all (with -n or -k: its share of the test's)
        self.reader = asyncio.current_task()
        self.sender = None
        self.closed = False
        self.arrived = asyncio.Event()  # set by each read: `drain` waits on it

    async def receive(self):
        """Until the client closes the stream (where the server sends, the client sends
        nothing, but closes)."""
        while True:
            buffers = await self.conn.read_buffers()
            if not buffers:
                return
            if self.running:
                self.octets += sum(len(b) for b in buffers)
                self.arrived.set()

    def mark_omitted(self):
        """The omitted seconds (-O) are over: count from here."""
        self.base = self.octets

    def figures(self):
        """Its entry of the server's results: what it carried since the omitted seconds."""
        return {"bytes": self.octets - self.base, "jitter": 0, "errors": 0, "packets": 0}

    async def drain(self, sent, deadline):
        """Until the `sent` octets the client counted have arrived, or `deadline`."""
        await _drain(self, sent, deadline, None)

    async def send(self, blocks):
        """Write `blocks` (whole blocks of the test's length, about a MiB: one write, and
        TSO segments that seldom span two writes, which the send buffer would join)
        until stopped or, with a `limit`, until that much is sent (the client then ends
        the test), letting the shard's other tasks run after each write (`write` waits
        only for a full buffer). A reset ends it quietly: the client closes the streams it
        receives on unread when its test ends, which resets them, and its reader task (the
        connection's) sees the same reset."""
        view = memoryview(blocks)
        try:
            while self.running:
                n = len(blocks)
                if self.limit is not None:
                    n = min(n, self.limit - self.octets)
                    if n <= 0:
                        return
                self.octets += n
                await self.conn.write(view[:n] if n < len(blocks) else blocks)
                await asyncio.sleep(0)
        except ConnectionError:
            pass

    async def close(self):
        """The last block (if sending), then FIN; a reset if that takes over `FINISH_S`."""
        if self.closed:
            return
        self.closed = True
        self.running = False
        if self.sender is not None:
            await asyncio.wait([self.sender], timeout=FINISH_S)
        for task in (self.sender, self.reader):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        try:
            await asyncio.wait_for(self.conn.close(), FINISH_S)
        except (asyncio.TimeoutError, ConnectionError):
            self.conn.abort()


class _UdpStream:
    """One UDP flow of a -u test on this shard: counts the datagrams the client sends,
    as iperf3's receiver does, or sends its own (-R, --bidir). Each starts with the send
    time and a number (1, 2, ...): a number beyond the next counts the ones skipped as
    lost, one below it is out of order (and was counted lost: one less), and the jitter
    is RFC 3550 6.4.1's (the client's clock and ours differ by a constant, which the
    differences cancel)."""

    def __init__(self, channel, source, header, length, rate):
        self.channel = channel
        self.source = source
        self.header = header
        self.length = max(length, header.size)
        self.rate = rate
        self.id = None
        self.sends = False
        self.limit = None
        self.sender = None
        self.running = False
        self.octets = self.base = 0
        self.packets = self.errors = self.out_of_order = 0
        self.packets_base = self.errors_base = 0
        self.jitter = 0.0
        self._transit = None
        self.arrived = asyncio.Event()  # set by each datagram: `drain` waits on it

    def datagram(self, data, now):
        header = self.header
        if not self.running or len(data) < header.size:
            return
        sec, usec, number = header.unpack_from(data)
        self.octets += len(data)
        if number > self.packets:
            self.errors += number - 1 - self.packets
            self.packets = number
        else:
            self.out_of_order += 1
            if self.errors > 0:
                self.errors -= 1
        transit = now - (sec + usec / 1e6)
        if self._transit is not None:
            self.jitter += (abs(transit - self._transit) - self.jitter) / 16
        self._transit = transit
        self.arrived.set()

    def mark_omitted(self):
        self.base = self.octets
        self.packets_base = self.packets
        self.errors_base = self.errors

    def figures(self):
        return {"bytes": self.octets - self.base, "jitter": self.jitter, "errors": self.errors - self.errors_base,
                "packets": self.packets - self.packets_base}

    async def drain(self, sent, deadline):
        """Until the `sent` octets the client counted have arrived, or none came for
        `UDP_QUIET_S` (the rest was lost on the way), or `deadline`: a shard behind in its
        work may not have read all that reached it before the client's TEST_END."""
        await _drain(self, sent, deadline, UDP_QUIET_S)

    async def send(self, _blocks):
        """Datagrams of the test's length, numbered, with their send time, at the test's
        rate (ahead of it, wait until what was sent is due, as iperf3 paces), until
        stopped or, with a `limit`, until that much is sent."""
        header, rate = self.header, self.rate
        number_mask = (1 << 8 * (header.size - 8)) - 1
        datagram = bytearray(os.urandom(self.length))
        start = time.monotonic()
        while self.running and (self.limit is None or self.octets < self.limit):
            now = time.monotonic()
            if rate and start + self.octets * 8 / rate > now:
                await asyncio.sleep(start + self.octets * 8 / rate - now)
                continue
            self.packets += 1
            # (a number past the field's width wraps, as iperf3's own does without 64-bit counters)
            header.pack_into(datagram, 0, int(now) & 0xFFFFFFFF, int(now % 1 * 1e6),
                             self.packets & number_mask)
            self.octets += len(datagram)
            await self.channel.send(self.source, bytes(datagram))  # (the stack may keep what it is given)
            if not self.packets % UDP_BURST:
                await asyncio.sleep(0)  # (the stack's queue or socket holds the rest back when full)

    async def close(self):
        self.running = False
        if self.sender is not None:
            self.sender.cancel()
        if _udp_streams.get(self.source) is self:
            del _udp_streams[self.source]


async def _drain(stream, sent, deadline, quiet):
    """Until `stream` counted `sent` octets since the omitted seconds, or `deadline`, or
    (with `quiet`) that long passed without anything arriving."""
    while stream.octets - stream.base < sent:
        left = deadline - time.monotonic()
        if quiet is not None and quiet < left:
            left = quiet
        if left <= 0:
            return
        stream.arrived.clear()
        try:
            await asyncio.wait_for(stream.arrived.wait(), left)
        except asyncio.TimeoutError:
            return


_udp_streams: dict = {}  # source address -> _UdpStream, on every shard
_streams: dict = {}  # cookie -> {key: _Stream or _UdpStream}, on every shard
_closing: set = set()  # closes of sending streams under way (`_stop_streams`)
_ended = collections.deque(maxlen=16)  # tests this shard closed: a stream admitted just before is not kept
_controlled: dict = {}  # cookie -> [streams joined so far, asyncio.Event set at each join], on the controller
_cpu_at_start = None


def _start_streams(cookie, plan, block_len, omit):
    """Run this shard's streams of the test: `plan` maps each key to (its stream id,
    whether the server sends on it, the octets it sends in all or None)."""
    global _cpu_at_start
    loop = asyncio.get_running_loop()
    _cpu_at_start = (os.times(), time.monotonic())
    mine = _streams.get(cookie, {})
    blocks = None  # (of a TCP stream: a UDP one builds its datagrams)
    for key, stream in mine.items():
        stream.id, stream.sends, stream.limit = plan[key]
        stream.running = True
        stream.octets = stream.base = 0
        if stream.sends:
            if blocks is None and type(stream) is _Stream:
                blocks = os.urandom(block_len) * max(1, WRITE_OCTETS // block_len)
            stream.sender = loop.create_task(stream.send(blocks))
    if omit and mine:
        def omitted():
            for stream in mine.values():
                stream.mark_omitted()
        loop.call_later(omit, omitted)


async def _stop_streams(cookie, ended_at, sending, sent=None):
    """End this shard's streams on which the server sends (`sending`) or receives: their
    figures since the omitted seconds (`_Stream.figures`), the CPU time this shard used
    and the time from the start to `ended_at` (the client's TEST_END); then each is
    closed (`_Stream.close`).
    `sent`, for receiving streams: what the client says each carried, which they first
    wait for (the text behind TEST_END on other connections may still be arriving).
    Sending streams are closed in the background: the client may have stopped reading
    them (with --bidir, iperf3 3.12 reads no more after its TEST_END: their last block
    and FIN wait in the buffers until it closes them, after the results)."""
    times, at = _cpu_at_start if _cpu_at_start else (os.times(), time.monotonic())
    now_times = os.times()
    mine = {key: stream for key, stream in _streams.get(cookie, {}).items() if stream.sends == sending}
    if sent is not None:
        deadline = time.monotonic() + DRAIN_S
        await asyncio.gather(*(stream.drain(sent.get(stream.id, 0), deadline) for stream in mine.values()))
    counts = []
    for stream in mine.values():
        stream.running = False
        counts.append((stream.id, stream.figures()))
    if sending:
        for stream in mine.values():
            task = asyncio.ensure_future(stream.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
    else:
        await asyncio.gather(*(stream.close() for stream in mine.values()))
    return counts, now_times.user - times.user, now_times.system - times.system, ended_at - at


def client_counts(results):
    """The client's results: octets sent per stream id, for the streams to wait for."""
    streams = results.get("streams")
    if not isinstance(streams, list):
        raise Refused(IERECVPARAMS, "results without streams")
    out = {}
    for entry in streams:
        if not isinstance(entry, dict) or type(entry.get("id")) is not int or type(entry.get("bytes")) is not int:
            raise Refused(IERECVPARAMS, f"a malformed stream result {entry!r}")
        out[entry["id"]] = entry["bytes"]
    return out


async def _close_streams(cookie):
    _ended.append(cookie)
    for stream in _streams.pop(cookie, {}).values():
        await stream.close()


def _stream_joined(cookie):
    """On the controller: one more stream of its test connected (on some shard)."""
    joined = _controlled.get(cookie)
    if joined is not None:
        joined[0] += 1
        joined[1].set()


# -- the control connection ---------------------------------------------------------------

async def _send_state(conn, state):
    await conn.write(struct.pack("!b", state))


async def _send_json(conn, value):
    data = json.dumps(value).encode()
    await conn.write([struct.pack("!I", len(data)), data])


async def _await_streams(cookie, count, reader):
    """Until `count` streams joined. The client says nothing meanwhile: anything on
    the control connection (its CLIENT_TERMINATE, or the end of it) ends the test."""
    joined = _controlled[cookie]
    deadline = time.monotonic() + STREAMS_S
    control = asyncio.ensure_future(reader.state())
    try:
        while joined[0] < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Refused(IESTREAMCONNECT, f"{joined[0]} of {count} streams connected")
            joined[1].clear()
            waiter = asyncio.ensure_future(joined[1].wait())
            await asyncio.wait([waiter, control], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if control.done():
                state = control.result()  # (EOFError at the end of the connection)
                raise EOFError(f"the client sent state {state} while its streams connected")
    finally:
        control.cancel()


async def run_test(conn, reader, cookie):
    """Drive one test from its control connection (on the shard it arrived at)."""
    streams = 0
    _controlled[cookie] = [0, asyncio.Event()]
    try:
        host, port = conn.peer_address[:2]
        peer = f"{host} port {port}"
        conn.set_nodelay()  # one-octet states: none may wait for the ACK of the one before (Nagle)
        await _send_state(conn, PARAM_EXCHANGE)
        try:
            test = parse_params(await reader.json())
        except Refused as e:
            print(f"iperf3: test from {peer} refused: {e}", flush=True)
            await conn.write(struct.pack("!bii", SERVER_ERROR, e.i_errno, 0))
            return
        streams = test.streams * (2 if test.bidir else 1)
        await smp.submit_to(0, _expect_streams, cookie, streams,
                            (64 if test.counters_64bit else 32, test.block_len, test.rate) if test.udp else None)
        await _send_state(conn, CREATE_STREAMS)
        try:
            await _await_streams(cookie, streams, reader)
        except Refused as e:
            print(f"iperf3: test from {peer} failed: {e}", flush=True)
            await conn.write(struct.pack("!bii", SERVER_ERROR, e.i_errno, 0))
            return
        order = await smp.submit_to(0, _stream_order, cookie)
        plan = {}
        senders = len(order) - test.streams if test.bidir else len(order) if test.reverse else 0
        for n, (shard, key) in enumerate(order):
            # --bidir: the client connects the streams it sends on first, as iperf3's server expects
            sends = n >= len(order) - senders
            k = n - (len(order) - senders)  # (among the sending streams)
            # a test's -n or -k in equal shares (the first ones one octet more), so that the
            # streams, wherever they run, send exactly that much together
            limit = test.octets // senders + (k < test.octets % senders) if sends and test.octets else None
            plan.setdefault(shard, {})[key] = (1 if n == 0 else n + 2, sends, limit)  # iperf3 skips id 2
        await asyncio.gather(*(smp.submit_to(s, _start_streams, cookie, plan.get(s, {}), test.block_len, test.omit)
                               for s in range(smp.count)))
        await conn.write(struct.pack("!bb", TEST_START, TEST_RUNNING))
        state = await reader.state()
        ended_at = time.monotonic()
        if state != TEST_END:
            print(f"iperf3: test from {peer} ended by the client (state {state})", flush=True)
            return
        sent_counts = []
        if senders:  # stop sending first: the client's last read of a block ends at our FIN
            stopped = await smp.invoke_on_all(_stop_streams, cookie, ended_at, True)
            sent_counts = [c for s in stopped for c in s[0]]
        await _send_state(conn, EXCHANGE_RESULTS)
        results = await reader.json()  # the client's: what it sent on the streams it sends on
        received_counts = []
        if senders < len(order):
            stopped = await smp.invoke_on_all(_stop_streams, cookie, ended_at, False, client_counts(results))
            received_counts = [c for s in stopped for c in s[0]]
        elapsed = max(s[3] for s in stopped) - test.omit
        user = sum(s[1] for s in stopped)  # (the last call's: CPU from the test's start)
        system = sum(s[2] for s in stopped)
        await _send_json(conn, {
            "cpu_util_total": 100.0 * (user + system) / max(elapsed, 1e-9),
            "cpu_util_user": 100.0 * user / max(elapsed, 1e-9),
            "cpu_util_system": 100.0 * system / max(elapsed, 1e-9),
            # (as the receiver, -1 as iperf3 sends; as a sender, 0: the API has no retransmit count)
            "sender_has_retransmits": 0 if senders else -1,
            "streams": [{"id": sid, **figures, "retransmits": -1, "start_time": 0, "end_time": elapsed}
                        for sid, figures in sorted(sent_counts + received_counts, key=lambda c: c[0])],
        })
        await _send_state(conn, DISPLAY_RESULTS)
        moved = []
        if received_counts:
            moved.append(f"received {sum(figures['bytes'] for _sid, figures in received_counts)}")
        if sent_counts:
            moved.append(f"sent {sum(figures['bytes'] for _sid, figures in sent_counts)}")
        total = sum(figures["bytes"] for _sid, figures in sent_counts + received_counts)
        lost = ""
        if test.udp and received_counts:
            lost = f", {sum(f['errors'] for _sid, f in received_counts)} of " \
                f"{sum(f['packets'] for _sid, f in received_counts)} datagrams lost"
        print(f"iperf3: test from {peer}: {test.streams} {'UDP ' if test.udp else ''}stream(s)"
              f"{' each way' if test.bidir else ''}, {' and '.join(moved)} octets in {elapsed:.2f} s "
              f"({total / max(elapsed, 1e-9) / 1e6:.1f} MB/s){lost}", flush=True)
        try:
            await reader.state()  # IPERF_DONE, or the client just closes
        except EOFError:
            pass
    finally:
        _controlled.pop(cookie, None)
        await smp.invoke_on_all(_close_streams, cookie)
        await smp.submit_to(0, _end_test, cookie)


async def serve_connection(conn):
    """A new connection: read its cookie, ask shard 0 what it is, and act on it."""
    reader = _Reader(conn)
    keep = False
    try:
        cookie = await asyncio.wait_for(reader.exactly(COOKIE_LEN), COOKIE_S)
        key = id(conn)
        verdict = await smp.submit_to(0, _classify, cookie, smp.this_shard(), key, conn.peer_address[1])
        if verdict[0] == "control":
            await run_test(conn, reader, cookie)
        elif verdict[0] == "stream" and cookie not in _ended:
            stream = _Stream(conn)
            _streams.setdefault(cookie, {})[key] = stream
            keep = True
            await smp.submit_to(verdict[1], _stream_joined, cookie)
            await stream.receive()  # (reads until the client closes; -R sends from its own task)
        else:
            await _send_state(conn, ACCESS_DENIED)
    except (EOFError, asyncio.TimeoutError, ConnectionError, Refused):
        pass  # a client that vanished or never named a test: nothing to answer
    finally:
        if not keep:
            await conn.close()


async def serve_udp(channel):
    """This shard's UDP port: the datagrams of the UDP streams it holds, and the connect
    datagram of a new one, answered once shard 0 lets it join the running test (the
    client sends its next stream's only then; it sends the connect datagram again if
    the answer is lost)."""
    while True:
        data, source = await channel.receive()
        stream = _udp_streams.get(source)
        reply = UDP_CONNECT_REPLIES.get(bytes(data)) if len(data) == 4 else None
        if reply is not None:
            if stream is None:
                key = ("udp", source)
                verdict = await smp.submit_to(0, _classify_udp, smp.this_shard(), key)
                if verdict[0] != "stream":
                    continue  # no UDP test expects it: no answer (the client gives up)
                controller, cookie, (bits, length, rate) = verdict[1:]
                stream = _udp_streams[source] = _UdpStream(channel, source, UDP_HEADER_64 if bits == 64 else UDP_HEADER,
                                                           length, rate)
                _streams.setdefault(cookie, {})[key] = stream
                await smp.submit_to(controller, _stream_joined, cookie)
            try:
                await channel.send(source, reply)
            except OSError:
                pass  # (an answer we cannot send: the client asks again, or gives up)
        elif stream is not None:
            stream.datagram(data, time.monotonic())


_running: list = []


async def start_on_shard(args) -> None:
    """Listen on this shard (TCP, and UDP for -u tests); every connection gets its own task."""
    loop = asyncio.get_running_loop()
    server = net.listen((args.address, args.port))
    channel = net.udp_channel((args.address, args.port))
    _running.append((channel, loop.create_task(serve_udp(channel))))
    tasks: set[asyncio.Task] = set()

    async def accept_loop():
        async for conn in server:
            task = loop.create_task(serve_connection(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    _running.append((server, loop.create_task(accept_loop()), tasks))


def main(argv=None) -> int:
    app = net.AppTemplate("shoal iperf3 server (the iperf3 client's protocol, TCP and UDP)")
    app.parser.add_argument("--port", type=int, default=5201)
    app.parser.add_argument("--address", default="0.0.0.0", help="address to bind")
    args = app.parse(argv)

    async def serve():
        await smp.invoke_on_all(start_on_shard, args)
        print(f"iperf3: tcp and udp on {args.address}:{args.port} with {smp.count} shard(s), "
              f"{args.network_stack} stack", flush=True)
        await asyncio.get_running_loop().create_future()  # serve until stopped

    return app.run(serve)


if __name__ == "__main__":
    sys.exit(main())
