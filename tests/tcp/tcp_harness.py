"""Test helpers for shoal's TCP: connections built in any state, exact-reply checks, a netsim.

Style after smoltcp's socket tests: `established()` and friends return a connection
already in a state, driven there through real segments; `send_seg` feeds one
segment from the peer (through the wire format: build, then parse with the
checksum checked) and `pull` collects what the connection transmits. `Sim` joins
two TCP endpoints over a seeded lossy/reordering/duplicating/corrupting link with
a bottleneck rate and a drop-tail queue, on a fake clock; with ``tso=True`` the
link first cuts a segment longer than its sender's MSS as a TSO device would.
"""
import collections
import hashlib
import heapq
import random
import struct

from shoal.net.native.wire import WireError, checksum
from shoal.net.native.wire import tcp as wire
from shoal.net.native.wire.tcp import ACK, CWR, FIN, PSH, RST, SYN, TcpSegment
from shoal.net.native.tcp.connection import Connection, State, TcpConfig, reset_for
from shoal.net.native.tcp.isn import IsnGenerator
from shoal.net.native.tcp.listener import Listener

LOCAL = (0x0A000001, 49152)
REMOTE = (0x0A000002, 80)
ISS = 1000
IRS = 5000
T0 = 100.0

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "TcpSegment", "Connection", "State", "TcpConfig",
           "LOCAL", "REMOTE", "ISS", "IRS", "T0", "seg", "send_seg", "pull", "syn_sent",
           "established", "syn_received", "wire_roundtrip", "Sim", "reset_for", "Listener",
           "IsnGenerator", "drive", "config", "sha", "write_pcap", "WireCheck"]


def wire_roundtrip(s, src=REMOTE[0], dst=LOCAL[0]):
    """Serialize and re-parse a segment, checksum verified, as the stack would."""
    return wire.parse(bytes(wire.build(s, src, dst)), src, dst)


def seg(seq, ack=0, flags=ACK, window=65535, payload=b"", **opts):
    """A segment from the peer (REMOTE) to the connection (LOCAL)."""
    return TcpSegment(REMOTE[1], LOCAL[1], seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF, flags=flags,
                      window=window, payload=payload, **opts)


def send_seg(conn, s, now=T0):
    conn.segment_arrived(wire_roundtrip(s), now)


def pull(conn, now=T0, limit=64):
    """Everything the connection transmits now, each re-parsed from its wire bytes."""
    return [wire_roundtrip(s, LOCAL[0], REMOTE[0]) for s in conn.transmit(now, limit)]


def config(**kw):
    base = dict(timestamps=False, window_scaling=False, sack=False, delayed_ack=0.04,
                recv_buffer=65535, send_buffer=65536, mss=1460, initial_window=10)
    base.update(kw)
    return TcpConfig(**base)


def syn_sent(now=T0, **kw):
    """A connection in SYN-SENT whose SYN has been pulled; returns (conn, syn)."""
    conn = Connection.active(config(**kw), LOCAL, REMOTE, ISS, now)
    out = pull(conn, now)
    assert len(out) == 1 and out[0].flags & (SYN | ACK) == SYN
    return conn, out[0]


def established(now=T0, peer_window=65535, peer_mss=1460, peer_opts=None, **kw):
    """An ESTABLISHED connection (active open) with SND.UNA = ISS + 1, RCV.NXT = IRS + 1."""
    conn, _syn = syn_sent(now, **kw)
    opts = {"mss": peer_mss}
    opts.update(peer_opts or {})
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, peer_window, **opts), now)
    assert conn.state is State.ESTABLISHED, conn.state
    out = pull(conn, now)
    assert len(out) == 1 and out[0].flags == ACK
    conn.take_events()
    return conn


def syn_received(now=T0, **kw):
    """A passive connection in SYN-RECEIVED whose SYN,ACK has been pulled; returns (conn, synack)."""
    syn = wire_roundtrip(seg(IRS, 0, SYN, 65535, mss=1460))
    conn = Connection.passive(config(**kw), LOCAL, REMOTE, syn, ISS, now)
    out = pull(conn, now)
    assert len(out) == 1 and out[0].flags == SYN | ACK
    return conn, out[0]


def drive(conn, now, until):
    """Run the connection's timers from `now` to `until`, collecting transmitted segments."""
    out = []
    while True:
        t = conn.poll_at()
        if t is None or t > until:
            return out, now
        now = max(now, t)
        conn.poll(now)
        out.extend(pull(conn, now))


class Endpoint:
    """One side of the simulation: TCP machines plus the application's data."""

    def __init__(self, ip, sim):
        self.ip = ip
        self.sim = sim
        self.conns = {}          # (local port, remote) -> Connection
        self.listeners = {}      # port -> Listener
        self.drops = {}
        self.resets_sent = 0

    def count(self, reason):
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def receive(self, frame, src_ip, now, ce=False):
        try:
            s = wire.parse(frame, src_ip, self.ip)
        except WireError as e:
            self.count(e.reason)
            return
        remote = (src_ip, s.src_port)
        conn = self.conns.get((s.dst_port, remote))
        if conn is not None and conn.state is not State.CLOSED:
            if not conn.segment_arrived(s, now, ce):
                return  # else: a SYN reopening a TIME-WAIT connection goes to the listener
        lst = self.listeners.get(s.dst_port)
        if lst is not None:
            lst.segment_arrived(s, remote, now)
            return
        r = reset_for(s)
        if r is not None:
            self.resets_sent += 1
            self.sim.emit(self, remote[0], r)

    def transmit(self, now):
        n = 0
        for (_lport, remote), conn in list(self.conns.items()):
            if conn.wants_transmit():
                out = conn.transmit(now, 64)
                assert out, f"wants_transmit() but nothing to send: {conn!r}"  # a poller would spin
                for s in out:
                    self.sim.emit(self, remote[0], s, conn.snd_mss)
                    n += 1
        for lst in self.listeners.values():
            if lst.wants_transmit():
                for remote, s in lst.transmit(now, 64):
                    self.sim.emit(self, remote[0], s)
                    n += 1
        return n

    def deadlines(self):
        ts = [c.poll_at() for c in self.conns.values()] + [l.poll_at() for l in self.listeners.values()]
        return [t for t in ts if t is not None]

    def poll(self, now):
        for c in list(self.conns.values()):
            t = c.poll_at()
            if t is not None and t <= now:
                c.poll(now)
        for lst in self.listeners.values():
            lst.poll(now)


def _after(a, b):
    """a - b in sequence space, signed."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class WireCheck:
    """What a TCP may put on the wire, checked on every segment it emits (before the link's
    faults): an ACK or SACK block never covers text the peer has not sent, and text never
    goes past the highest right edge (SEG.ACK + the scaled SEG.WND, RFC 9293 3.8.6.2.1) the
    peer ever offered, but for the one octet of a zero-window probe. Kept per direction of
    each connection; a connection reopened with a new ISN (TIME-WAIT) is not followed
    further, old and new sequence spaces being incomparable."""

    def __init__(self):
        # (src ip, port, dst ip, port) -> [ISN, end of the text sent, highest edge offered, SYN's wscale]
        self.sides = {}
        self.reopened = set()
        self.segments = 0

    def seen(self, src_ip, dst_ip, s):
        flow = (src_ip, s.src_port, dst_ip, s.dst_port)
        back = (dst_ip, s.dst_port, src_ip, s.src_port)
        if s.flags & RST or flow in self.reopened:
            return
        side = self.sides.get(flow)
        if s.flags & SYN:
            if side is not None and side[0] != s.seq:
                self.reopened.update((flow, back))
                return
            if side is None:
                side = self.sides[flow] = [s.seq, s.seq, None, s.wscale]
        if side is None:
            return  # (a segment of a connection whose SYN this link never carried)
        self.segments += 1
        end = (s.seq + len(s.payload) + (1 if s.flags & SYN else 0) + (1 if s.flags & FIN else 0)) & 0xFFFFFFFF
        if _after(end, side[1]) > 0:
            side[1] = end
        peer = self.sides.get(back)
        if s.flags & ACK and peer is not None:
            assert _after(s.ack, peer[1]) <= 0, f"ACK of text never sent (peer's end {peer[1]}): {s}"
            for left, right in s.sack or ():
                assert 0 < _after(right, left) and _after(right, peer[1]) <= 0, f"SACK of text never sent: {s}"
            shift = side[3] if side[3] is not None and peer[3] is not None else 0
            edge = (s.ack + (s.window if s.flags & SYN else s.window << shift)) & 0xFFFFFFFF
            if side[2] is None or _after(edge, side[2]) > 0:
                side[2] = edge
        if s.payload and peer is not None and peer[2] is not None:
            over = _after((s.seq + len(s.payload)) & 0xFFFFFFFF, peer[2])
            assert over <= 1, f"{over} octets beyond the peer's offered window: {s}"


class Sim:
    """Two endpoints over a seeded faulty link with a bottleneck (rate, drop-tail queue).

    With `ecn_threshold`, ECT frames that find at least that many frames queued are
    marked Congestion Experienced instead of waiting for the queue to overflow. Every
    segment sent passes `WireCheck` first.
    """

    def __init__(self, seed=1, loss=0.0, dup=0.0, reorder=0.0, corrupt=0.0, delay=0.005,
                 rate=20e6, queue=64, ecn_threshold=None, tso=False):
        self.rng = random.Random(seed)
        self.loss, self.dup, self.reorder, self.corrupt = loss, dup, reorder, corrupt
        self.delay = delay
        self.rate = rate / 8.0  # bytes per second
        self.queue = queue
        self.ecn_threshold = ecn_threshold
        self.tso = tso
        self.tso_segments = 0
        self.now = T0
        self.heap = []
        self._n = 0
        self.link_free = {}
        self.in_queue = {}
        self.a = Endpoint(0x0A000001, self)
        self.b = Endpoint(0x0A000002, self)
        self.frames = 0
        self.trace = collections.deque(maxlen=20_000)  # (time, src ip, dst ip, segment bytes)
        self.faults = {"loss": 0, "dup": 0, "reorder": 0, "corrupt": 0, "queue-drop": 0, "ce": 0}
        self.wire_check = WireCheck()

    def emit(self, src, dst_ip, s, mss=0):
        if mss and len(s.payload) > mss:
            assert self.tso, f"a segment of {len(s.payload)} octets over a link without TSO: {s}"
            self.tso_segments += 1
            for piece in cut(s, mss):
                self._emit_one(src, dst_ip, piece)
        else:
            self._emit_one(src, dst_ip, s)

    def _emit_one(self, src, dst_ip, s):
        self.wire_check.seen(src.ip, dst_ip, s)
        frame = bytearray(wire.build(s, src.ip, dst_ip))
        dst = self.a if dst_ip == self.a.ip else self.b
        self.frames += 1
        self.trace.append((self.now, src.ip, dst_ip, bytes(frame)))
        rng = self.rng
        if rng.random() < self.loss:
            self.faults["loss"] += 1
            return
        copies = 2 if rng.random() < self.dup else 1
        if copies == 2:
            self.faults["dup"] += 1
        for _ in range(copies):
            f = bytearray(frame)
            if rng.random() < self.corrupt:
                f[rng.randrange(len(f))] ^= rng.randrange(1, 256)
                self.faults["corrupt"] += 1
            self._enqueue(src, dst, bytes(f), s.ect)

    def _enqueue(self, src, dst, frame, ect=False):
        key = id(src)
        backlog = [t for t in self.in_queue.get(key, []) if t > self.now]
        if len(backlog) >= self.queue:
            self.faults["queue-drop"] += 1
            self.in_queue[key] = backlog
            return
        start = max(self.now, self.link_free.get(key, self.now))
        done = start + len(frame) / self.rate
        self.link_free[key] = done
        ce = ect and self.ecn_threshold is not None and len(backlog) >= self.ecn_threshold
        if ce:
            self.faults["ce"] += 1
        backlog.append(done)
        self.in_queue[key] = backlog
        arrival = done + self.delay
        if self.rng.random() < self.reorder:
            arrival += self.rng.uniform(0, 4 * self.delay)
            self.faults["reorder"] += 1
        self._n += 1
        heapq.heappush(self.heap, (arrival, self._n, src, dst, frame, ce))

    def step(self):
        """Pull transmissions, then advance the clock to the next arrival or deadline."""
        self.a.transmit(self.now)
        self.b.transmit(self.now)
        times = self.a.deadlines() + self.b.deadlines()
        if self.heap:
            times.append(self.heap[0][0])
        if not times:
            return False
        self.now = max(self.now, min(times))
        while self.heap and self.heap[0][0] <= self.now:
            _t, _n, src, dst, frame, ce = heapq.heappop(self.heap)
            dst.receive(frame, src.ip, self.now, ce)
        self.a.poll(self.now)
        self.b.poll(self.now)
        return True

    def run_until(self, cond, max_time=600.0, max_steps=2_000_000):
        end = self.now + max_time
        for _ in range(max_steps):
            if cond():
                return True
            if self.now > end or not self.step():
                return cond()
        return cond()


def cut(s, mss):
    """The `mss`-sized segments a TSO device makes of `s`: the header repeated with the
    sequence number advanced, PSH and FIN on the last piece only, CWR on the first only
    (as Linux's tcp_gso_segment does)."""
    payload = bytes(s.payload)
    pieces = []
    for off in range(0, len(payload), mss):
        p = TcpSegment(s.src_port, s.dst_port, (s.seq + off) & 0xFFFFFFFF, s.ack, s.flags, s.window, s.urgent,
                       timestamp=s.timestamp, sack=s.sack, payload=payload[off:off + mss])
        p.ect = s.ect
        if off:
            p.flags &= ~CWR
        if off + mss < len(payload):
            p.flags &= ~(FIN | PSH)
        pieces.append(p)
    return pieces


def write_pcap(path, trace):
    """Write (time, src, dst, TCP segment) records as IPv4 packets (LINKTYPE_RAW) for Wireshark."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for n, (t, src, dst, seg_bytes) in enumerate(trace):
            hdr = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(seg_bytes), n & 0xFFFF, 0, 64, 6, 0,
                                        src, dst))
            struct.pack_into("!H", hdr, 10, checksum.checksum(hdr))
            pkt = bytes(hdr) + seg_bytes
            f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(pkt), len(pkt)))
            f.write(pkt)


def sha(data):
    return hashlib.sha256(data).hexdigest()
