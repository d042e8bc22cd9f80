"""Passive opens: the LISTEN state, the accept backlog and SYN-flood defence.

Theory of operation: a `Listener` owns everything about one listening port until
the application accepts a connection. It answers segments for which no
established connection exists (the owner routes them here):

* LISTEN processing (RFC 9293 3.10.7.2): an RST is ignored, an ACK gets
  ``<SEQ=SEG.ACK><CTL=RST>`` unless it is a valid SYN-cookie ACK, a SYN creates a
  half-open `Connection` in SYN-RECEIVED, anything else is dropped.
* Half-open connections are bounded by `max_half_open`. When that many exist (a
  SYN flood, or just a burst) new SYNs are answered statelessly with a SYN cookie
  (`syncookies=True`) or dropped and counted. A cookie is the ISS: 5 bits of a
  64-second counter, 3 bits of MSS index and 24 bits of a keyed PRF over the
  4-tuple, the peer's ISN and the counter; the final ACK of the handshake
  (ACK = cookie + 1) rebuilds the connection with `Connection.from_cookie`.
* A connection that reaches ESTABLISHED moves to the accept queue, bounded by
  `backlog`; while the queue is full new SYNs are dropped (counted), so the peer
  retries later, and a handshake that completes anyway is reset.
* `accept()` hands the oldest established connection over; from then on the
  owner routes its segments directly and drives it.

Like a connection, the listener is sans-I/O: `segment_arrived`, `poll`/`poll_at`,
and the transmit pull `transmit(now, limit)`, which yields ``(remote, segment)``.
None of these looks at every connection it holds: a deadline heap (lazy, like the TCP
layer's: an entry whose deadline is no longer its connection's is dropped when it comes
up) and the set of connections an input touched since the last pull stand for the
scans. A SYN flood fills the half-open table, and each SYN answered with a cookie
then cost a call per half-open connection; 63 % of the stack's time per SYN went there.
"""
import heapq
import itertools
import struct

from ..counts import Counts
from ..wire.tcp import ACK, RST, SYN, TcpSegment
from .connection import CLOSED, SYN_RECEIVED, Connection, unicast_ipv4
from .seq import Seq

COOKIE_MSS = (536, 1200, 1360, 1400, 1440, 1460, 4312, 8960)
COOKIE_PERIOD = 64.0
_COOKIE_DATA = struct.Struct("!IHIHII")


class Listener:
    """One listening port; see the module docstring."""

    def __init__(self, config, local, isn, backlog=128, max_half_open=256, syncookies=True,
                 max_replies=1024):
        self.config = config
        self.local = local
        self.isn = isn
        self.backlog = backlog
        self.max_half_open = max_half_open
        self.syncookies = syncookies
        self.max_replies = max_replies  # stateless replies (RSTs, cookies) awaiting a pull
        self.half_open = {}
        self.ready = {}
        self._replies = []
        self._timers = []  # (deadline, n, remote), lazily deleted (see the module docstring)
        self._order = itertools.count()
        self._touched = {}  # remote -> None: connections an input changed since the last pull
        self.drops = Counts()
        self.counters = Counts()

    # --------------------------------------------------------------- segments

    def segment_arrived(self, seg, remote, now):
        """A segment for this port from `remote` (ip, port) with no accepted connection."""
        conn = self.half_open.get(remote) or self.ready.get(remote)
        if conn is not None:
            conn.segment_arrived(seg, now)
            self._settle(remote, conn, now)
            self._changed(remote, conn)
            return
        flags = seg.flags
        if flags & RST:
            self.drops["rst-in-listen"] += 1
            return
        if flags & ACK:
            if self.syncookies and not flags & SYN and self._cookie_ack(seg, remote, now):
                return
            self._reply(remote, TcpSegment(self.local[1], remote[1], seq=seg.ack, flags=RST))
            self.drops["ack-in-listen"] += 1
            return
        if not flags & SYN:
            self.drops["no-syn"] += 1
            return
        if not unicast_ipv4(remote[0]):
            self.drops["syn-from-bad-address"] += 1  # MUST-63: never answered
            return
        if len(self.ready) >= self.backlog:
            self.drops["backlog-full"] += 1
            return
        if len(self.half_open) >= self.max_half_open:
            if self.syncookies:
                self._reply(remote, self._cookie_syn_ack(seg, remote, now))
                self.counters["syncookie-sent"] += 1
            else:
                self.drops["half-open-full"] += 1
            return
        iss = self.isn(self.local[0], self.local[1], remote[0], remote[1], now)
        self.half_open[remote] = conn = Connection.passive(self.config, self.local, remote, seg, iss, now,
                                                           ts_offset=iss)
        self._changed(remote, conn)
        self.counters["syn-received"] += 1

    def _settle(self, remote, conn, now):
        """Move a connection along: half-open -> accept queue -> accepted, or forget it."""
        st = conn.state
        if st is CLOSED:
            self.half_open.pop(remote, None)
            self.ready.pop(remote, None)
        elif st is not SYN_RECEIVED and remote in self.half_open:
            del self.half_open[remote]
            if len(self.ready) >= self.backlog:
                conn.abort()
                self._drain_aborted(remote, conn, now)
                self.drops["backlog-full"] += 1
            else:
                self.ready[remote] = conn

    def _drain_aborted(self, remote, conn, now):
        for seg in conn.transmit(now, 4):
            self._reply(remote, seg)

    def _reply(self, remote, seg):
        if len(self._replies) < self.max_replies:
            self._replies.append((remote, seg))
        else:
            self.drops["reply-queue-full"] += 1

    # --------------------------------------------------------------- SYN cookies

    def _cookie_hash(self, remote, irs, counter):
        data = _COOKIE_DATA.pack(self.local[0], self.local[1], remote[0], remote[1], irs & 0xFFFFFFFF,
                                 counter)
        return self.isn.prf(data) & 0xFFFFFF

    def _cookie_syn_ack(self, syn, remote, now):
        counter = int(now // COOKIE_PERIOD) & 0x1F
        peer_mss = syn.mss if syn.mss is not None else 536
        idx = max(i for i, m in enumerate(COOKIE_MSS) if m <= max(peer_mss, 536))
        iss = (counter << 27) | (idx << 24) | self._cookie_hash(remote, syn.seq, counter)
        return TcpSegment(self.local[1], remote[1], seq=iss, ack=(syn.seq + 1) & 0xFFFFFFFF,
                          flags=SYN | ACK, window=min(self.config.recv_buffer, 0xFFFF),
                          mss=self.config.receive_mss())

    def _cookie_ack(self, seg, remote, now):
        """Validate a SYN-cookie ACK; on success queue the rebuilt connection. Returns True if used."""
        cookie = (seg.ack - 1) & 0xFFFFFFFF
        counter = cookie >> 27
        age = (int(now // COOKIE_PERIOD) - counter) & 0x1F
        if age > 1:
            return False
        irs = (seg.seq - 1) & 0xFFFFFFFF
        if cookie & 0xFFFFFF != self._cookie_hash(remote, irs, counter):
            return False
        if len(self.ready) >= self.backlog:
            self.drops["backlog-full"] += 1
            return True
        mss = COOKIE_MSS[(cookie >> 24) & 7]
        conn = Connection.from_cookie(self.config, self.local, remote, seg, mss, now,
                                      ts_offset=int(Seq(cookie)))
        self.ready[remote] = conn
        self._changed(remote, conn)
        self.counters["syncookie-accepted"] += 1
        return True

    # --------------------------------------------------------------- owner interface

    def accept(self):
        """The oldest established connection (the owner now drives it), or None."""
        for remote in self.ready:
            return self.ready.pop(remote)
        return None

    def _conn(self, remote):
        return self.half_open.get(remote) or self.ready.get(remote)

    def _changed(self, remote, conn):
        """An input reached `conn`: its deadline may have moved, and it may have something to send."""
        self._touched[remote] = None
        t = conn.poll_at()
        if t is not None:
            timers = self._timers
            heapq.heappush(timers, (t, next(self._order), remote))
            if len(timers) > 64 + 4 * (len(self.half_open) + len(self.ready)):
                self._rebuild_timers()

    def _rebuild_timers(self):
        """The heap again from the connections' deadlines: stale entries (a deadline that
        moved many times, deep in the heap) would otherwise pile up."""
        self._timers = [(t, next(self._order), remote) for remote, t in
                        ((r, c.poll_at()) for d in (self.half_open, self.ready) for r, c in d.items())
                        if t is not None]
        heapq.heapify(self._timers)

    def poll_at(self):
        timers = self._timers
        while timers:
            t, _n, remote = timers[0]
            conn = self._conn(remote)
            if conn is not None and conn.poll_at() == t:
                return t
            heapq.heappop(timers)  # gone, or its deadline moved (a later entry has it)
        return None

    def poll(self, now):
        timers = self._timers
        while timers and timers[0][0] <= now:
            t, _n, remote = heapq.heappop(timers)
            conn = self._conn(remote)
            if conn is None or conn.poll_at() != t:
                continue
            conn.poll(now)
            self._settle(remote, conn, now)
            if self._conn(remote) is conn:
                self._changed(remote, conn)

    def wants_transmit(self):
        if self._replies:
            return True
        touched = self._touched
        for remote in list(touched):
            conn = self._conn(remote)
            if conn is not None and conn.wants_transmit():
                return True
            del touched[remote]  # nothing to send until an input reaches it again
        return False

    def transmit(self, now, limit=64):
        """Up to `limit` ``(remote, segment)`` pairs: stateless replies, then connections' output."""
        out = []
        while self._replies and len(out) < limit:
            out.append(self._replies.pop(0))
        touched = self._touched
        for remote in list(touched):
            if len(out) >= limit:
                break
            conn = self._conn(remote)
            del touched[remote]
            if conn is None or not conn.wants_transmit():
                continue
            out.extend((remote, s) for s in conn.transmit(now, limit - len(out)))
            self._settle(remote, conn, now)
            if self._conn(remote) is conn:
                self._changed(remote, conn)  # its timers (SYN,ACK sent: the retransmission's)
                if not conn.wants_transmit():
                    del touched[remote]
        return out
