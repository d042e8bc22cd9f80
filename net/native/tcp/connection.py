"""The TCP connection state machine (RFC 9293), sans I/O.

Theory of operation
-------------------
A `Connection` is driven by four kinds of input, each stamped with ``now``
(seconds on the owner's clock): a segment (`segment_arrived`), the passage of time
(`poll`), application calls (`send`, `recv`, `close`, `abort`) and the transmit
pull (`transmit`). It never reads a clock, draws randomness or touches a device.
Its outputs are data:

* segments - *pulled*, not pushed: inputs only change state and set flags ("an ACK
  is due", "retransmit from SND.UNA"); the owner's driver poller calls
  ``transmit(now, limit)`` when it has room in a transmit batch and gets up to
  `limit` `TcpSegment`s built at that moment, so queued data coalesces into
  full-sized segments and one ACK covers everything received since the last
  pull (MUST-58, MUST-59). `wants_transmit()` says whether a pull would yield
  anything (cheap; the owner uses it to keep the connection on its transmit list).
  With `TcpConfig.tso_max` (the owner's device does TCP segmentation offload) a
  new-data segment may hold many MSS, up to 64 KiB; the device cuts it into the
  MSS-sized segments the rules would have produced here.
* timers - `poll_at()` is the earliest deadline (retransmission, delayed ACK, zero
  window probe, keepalive, TIME-WAIT) or None; the owner calls `poll(now)` at or
  after it. Timers are plain attributes, so a shard keeps one deadline heap.
* events - `take_events()` returns the `Event`s since the last call: CONNECTED,
  READABLE, WRITABLE, EOF, URGENT, RETRANSMITTING (R1 crossed), the errors REFUSED,
  RESET and TIMED_OUT, and finally CLOSED (the owner may forget the connection).
  They wait in the list `events`, which an owner may read and replace itself:
  after most segments it is empty, and looking is cheaper than a call.

Segment processing follows RFC 9293 section 3.10.7 step by step (sequence check,
RST, SYN, ACK, URG, text, FIN) with RFC 5961 challenge ACKs for in-window RSTs and
SYNs and for too-old ACKs, RFC 7323 PAWS and timestamps, RFC 2018 SACK (with RFC 2883
D-SACK blocks telling the peer about duplicate text), RFC 6675 loss recovery when SACK
is on and RFC 6582 NewReno recovery when it is not, and RFC 8985 tail loss probes
(`_tail_loss_probe`), so that a lost tail is not left to the RTO.
Untrusted input never raises: a segment that cannot be used is counted in
`drops[reason]` and dropped. The common segment of an ESTABLISHED connection (next
in sequence, ACK within what was sent, no loss recovery or out-of-order data under
way) takes a shortcut, header prediction (`_predicted_arrival`), that computes
exactly what those steps would, in one pass. Sequence numbers are `Seq`, whose
arithmetic the per-segment paths apply to plain ints (see `tcp.seq`): RFC 9293's
variables are kept as plain ints (``_snd_una`` behind ``snd_una``, `seq_attribute`), which
those paths read and write directly, and so are ``_sndbuf_seq`` and
``_last_ack_sent``; ``snd_max`` is the
highest sequence number sent (RFC 9293's SND.NXT for acceptability tests), while
``snd_nxt`` is where the next new transmission starts (it goes back to SND.UNA
after a retransmission timeout, RFC 5681 go-back-N with SACKed ranges skipped).
"""
import enum
from bisect import bisect_right
from dataclasses import dataclass, replace
from operator import itemgetter

from ..counts import Counts
from ..wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, TcpSegment
from . import congestion, time_wait
from .recvbuf import ReceiveBuffer
from .rtt import RttEstimator
from .sack import DUP_THRESH, MAX_DUP_THRESH, Scoreboard, dsack_block, receive_blocks
from .sendbuf import SendBuffer
from .seq import HALF, MASK, Seq, as_seq, seq_attribute, seq_max, seq_min, signed_distance

QUARTER = HALF >> 1  # (of the sequence space: `_new_ack`)

DEFAULT_MSS_IPV4 = 536  # MUST-15: assumed when the peer sends no MSS option
TLP_MIN_PTO = 0.01
"""Floor of the probe timeout: 2*SRTT of a TAP or a LAN is far below the jitter of a busy
host's ACKs (Linux's first TLP had the same 10 ms floor)."""
TLP_WORST_DELAYED_ACK = 0.2
"""WCDelAckT of RFC 8985 7.2: added to the PTO when one segment is in flight, whose ACK the
receiver may delay."""
RECOVER_HEURISTIC_SEGMENTS = 4
"""RFC 6582 4.1: a cumulative ACK that moved SND.UNA by at most this many segments before
duplicate ACKs below "recover" (`_loss_after_timeout`)."""
IPV4_TCP_HEADERS = 40
TS_OPTION_LEN = 12
MIN_PATH_MTU = 552
"""The smallest path MTU a "fragmentation needed" report may set (Linux's min_pmtu, an MSS
of 512): a forged report naming 68 would otherwise cut a connection to 28-octet segments
(RFC 5927 section 7). A hop reporting less makes the connection send without DF instead."""
PMTU_BLACK_HOLE_RTOS = 2
"""Consecutive timeouts of data sent with DF after which the connection stops setting DF
(`_retransmission_timeout`): the path may drop the ICMP that path MTU discovery needs."""
MTU_PLATEAUS = (32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)
"""RFC 1191 section 7's table: for a report from a router that names no MTU (section 5),
the path MTU becomes the largest plateau below the quoted datagram's length."""
TSO_MAX_PAYLOAD = 0xFFFF - 20 - 60
"""The most payload one TSO segment may carry: an IPv4 datagram's 64 KiB less the IP
header and the longest TCP header (RFC 791 total length; RFC 9293 3.1 data offset)."""


_entry_start = itemgetter(0)  # of RACK's send records (`Connection._rack_detect`)


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


# The states as module globals, used everywhere below: on CPython 3.11 each ``State.X``
# goes through EnumType.__getattr__ (about 60 ns more than a global), and the
# per-segment paths test the state dozens of times.
CLOSED = State.CLOSED
LISTEN = State.LISTEN
SYN_SENT = State.SYN_SENT
SYN_RECEIVED = State.SYN_RECEIVED
ESTABLISHED = State.ESTABLISHED
FIN_WAIT_1 = State.FIN_WAIT_1
FIN_WAIT_2 = State.FIN_WAIT_2
CLOSE_WAIT = State.CLOSE_WAIT
CLOSING = State.CLOSING
LAST_ACK = State.LAST_ACK
TIME_WAIT = State.TIME_WAIT


class Event(enum.Enum):
    CONNECTED = "connected"
    READABLE = "readable"
    WRITABLE = "writable"
    EOF = "eof"
    URGENT = "urgent"
    RETRANSMITTING = "retransmitting"  # R1 crossed (RFC 9293 3.8.3, SHLD-9)
    SOFT_ERROR = "soft-error"          # ICMP unreachable (net, host, source route): not fatal
    UNREACHABLE = "unreachable"        # ICMP protocol/port unreachable, fragmentation needed: fatal
    REFUSED = "refused"
    RESET = "reset"
    TIMED_OUT = "timed-out"
    CLOSED = "closed"


ERRORS = (Event.REFUSED, Event.RESET, Event.TIMED_OUT, Event.UNREACHABLE)
_READABLE, _WRITABLE = Event.READABLE, Event.WRITABLE  # (see the states above: `_emit` is hot)

ICMP_DEST_UNREACH = 3

# Tuples, not sets: membership is then an identity scan in C, where a set would call
# the Python-level Enum.__hash__ on every test (these run several times per segment).
_SYNCHRONIZED = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT)
_CAN_SEND = (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT)
_RECEIVES_TEXT = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2)
_SENDS_DATA = (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, LAST_ACK, CLOSING)


class TcpError(Exception):
    """An application call that the connection's state does not allow (RFC 9293 3.10)."""


@dataclass
class TcpConfig:
    """Per-connection settings; every RFC knob the application may turn.

    `mss` is the largest segment we accept (advertised in the MSS option, clamped to
    `mtu` - 40, MUST-67, SHLD-6). Retransmission limits: after `r1_retransmits`
    consecutive timeouts the application is told (RETRANSMITTING); after
    `max_retransmits` (data) or `syn_retransmits` (SYN; with the default RTOs the
    SYN is tried for over 3 minutes, MUST-23) the connection times out (R2, MUST-20,
    settable per connection, MUST-21). TIME-WAIT lasts 2 * `msl` (MUST-13).
    Keepalive is off by default, 2 hours idle (MUST-25, MUST-28).
    `challenge_ack_limit` caps RFC 5961 challenge ACKs per second (section 7);
    `unacceptable_ack_interval` spaces the ACKs answering unacceptable pure ACKs
    (see `Connection._ack_unacceptable`).
    The send buffer holds `send_buffer` octets, or twice the congestion window once
    that is larger, up to `send_buffer_max` (see `Connection.send_limit`). The receive
    buffer starts at `recv_buffer` and doubles, up to `recv_buffer_max`, while the peer
    is held back by the window and not by the application (`Connection._grow_receive_buffer`).
    `tail_loss_probe` turns on RFC 8985's tail loss probes on connections with SACK.
    `hystart` runs the initial slow start under HyStart++ (RFC 9406,
    `congestion.HyStartPlusPlus`): it ends when the round trip grows, not at the first loss.
    `path_mtu_discovery` sends every segment with DF and takes ICMP "fragmentation
    needed" as the path's MTU (RFC 1191, see `Connection.icmp_arrived`); off, routers
    on a narrower path fragment the segments, and that ICMP message is a hard error.
    `tso_max` (0: off) is the largest payload one new-data segment may carry when the
    device segments TCP for us (TSO, `shoal.drivers.base.Offloads.tso`); the owner sets
    it from the device, since a segment longer than the MSS is only valid for a device
    that cuts it into MSS-sized segments (see `Connection._next_data_len`).
    """

    mss: int = 1460
    mtu: int = 1500
    send_buffer: int = 256 * 1024
    send_buffer_max: int = 4 * 1024 * 1024
    recv_buffer: int = 256 * 1024
    recv_buffer_max: int = 1024 * 1024
    window_scaling: bool = True
    timestamps: bool = True
    sack: bool = True
    nodelay: bool = False
    delayed_ack: float = 0.04
    initial_window: int = 10
    initial_rto: float = 1.0
    min_rto: float = 1.0
    max_rto: float = 60.0
    r1_retransmits: int = 3
    max_retransmits: int = 15
    syn_retransmits: int = 7
    msl: float = 30.0
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_probes: int = 9
    congestion: str = "cubic"
    challenge_ack_limit: int = 100
    unacceptable_ack_interval: float = 0.5
    ecn: bool = False
    ttl: int = 64     # for the IP header the owner builds (MUST-49)
    dscp: int = 0     # Diffserv codepoint, passed unchanged to IP (MUST-48, SHLD-22)
    tso_max: int = 0  # TSO: largest new-data payload; set by the owner from its device
    tso: bool = True  # let the owner use its device's TSO (--tcp-tso off: MSS-sized segments only)
    tail_loss_probe: bool = True  # RFC 8985 section 7 (with SACK only)
    path_mtu_discovery: bool = True  # RFC 1191: DF on every segment, "fragmentation needed" shrinks the MSS
    hystart: bool = True  # HyStart++ (RFC 9406) in the initial slow start

    def __post_init__(self):
        if not 0 <= self.delayed_ack < 0.5:
            raise ValueError("delayed_ack must be under 0.5 s (RFC 9293 MUST-40)")
        if self.congestion not in congestion.ALGORITHMS:
            raise ValueError(f"unknown congestion control {self.congestion!r}")
        if self.min_rto > self.max_rto or self.min_rto <= 0:
            raise ValueError("need 0 < min_rto <= max_rto")
        if not 1 <= self.ttl <= 255 or not 0 <= self.dscp <= 63:
            raise ValueError("ttl must be 1..255 and dscp 0..63")
        if not 0 < self.send_buffer <= self.send_buffer_max:
            raise ValueError("need 0 < send_buffer <= send_buffer_max")
        if not 0 < self.recv_buffer <= self.recv_buffer_max:
            raise ValueError("need 0 < recv_buffer <= recv_buffer_max")
        if not 0 <= self.tso_max <= TSO_MAX_PAYLOAD:
            raise ValueError(f"tso_max must be 0..{TSO_MAX_PAYLOAD} (an IPv4 datagram holds 64 KiB)")

    def receive_mss(self):
        """Our MSS option value: `mss` clamped to the device MTU (MUST-67, SHLD-6)."""
        return max(min(self.mss, self.mtu - IPV4_TCP_HEADERS), 88)

    def window_shift(self):
        """Window-scale shift that lets `recv_buffer_max` be advertised (RFC 7323 2.3): the
        shift is fixed at the handshake, the buffer may grow later."""
        shift = 0
        while (self.recv_buffer_max >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift


def unicast_ipv4(ip):
    """True if `ip` (an int) may be a TCP endpoint: not 0.0.0.0/8, multicast, class E or broadcast.

    RFC 9293 3.9.1 / RFC 1122 4.2.3.10: an OPEN to a broadcast or multicast address is
    rejected (MUST-46) and a SYN from one is discarded (MUST-63, MUST-57). A subnet's
    directed broadcast needs the interface's prefix, which the stack checks.
    """
    return (ip >> 24) != 0 and ip < 0xE0000000


def reset_for(seg):
    """The RST answering `seg` when no connection exists (RFC 9293 3.10.7.1).

    Returns None for an incoming RST (never answer a reset), otherwise the
    segment to send back, ports swapped.
    """
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        return TcpSegment(seg.dst_port, seg.src_port, seq=seg.ack, flags=RST)
    return TcpSegment(seg.dst_port, seg.src_port, seq=0, ack=(seg.seq + seg.seg_len) & 0xFFFFFFFF,
                      flags=RST | ACK)


class Connection:
    """One TCP connection; see the module docstring. Create with `active` or `passive`."""

    # Every attribute is a slot: the per-segment paths are mostly attribute reads and writes
    # on the machine, which a slot serves faster than a dict of a hundred keys (requests at 64
    # connections: +4 %, docs/benchmarks.md), and a machine is 4.4 KB instead of 6.9.
    __slots__ = (
        "_ack_advance", "_challenge_window", "_cwr_due", "_dsack", "_ece_pending", "_ecn_recover", "_ecn_syn",
        "_ecn_syn_reset", "_eof", "_fin_queued", "_ka_due", "_ka_probes",
        "_last_ack_sent", "_last_data_tx", "_last_rx", "_ofo", "_ofo_fin", "_persist_backoff",
        "_probe_due", "_probes", "_rack_lost", "_rack_new", "_rack_point", "_rack_rxt",
        "_rack_serial", "_rcv_adv", "_rcv_full", "_rcv_grown_edge", "_rcv_nxt", "_rcv_unacked", "_rcvbuf",
        "_recent_ofo", "_recover", "_replies", "_rescue_rxt", "_rexmit_ts", "_rexmit_una",
        "_rst_due", "_rtt_seq", "_rtt_time", "_rxt_at_exit", "_sack_reported", "_seg_ce",
        "_send_blocked", "_snd_max", "_snd_nxt", "_snd_una", "_snd_wl1", "_snd_wl2", "_sndbuf",
        "_sndbuf_seq", "_tlp_due", "_tlp_end", "_tlp_retrans", "_ts_offset", "_tx_flight",
        "_unacceptable_ack_at", "_undo_dsacked", "_undo_marker", "_undo_retrans", "_undo_span",
        "_undo_state", "_undo_until", "ack_now", "cc", "config", "counters", "delack_at", "df",
        "drops", "dupacks", "ecn_ok", "events", "high_rxt", "irs", "iss", "keepalive_at", "local",
        "max_snd_wnd", "passive_open", "path_mtu", "persist_at", "rcv_buffer", "rcv_mss", "rcv_up",
        "rcv_wscale", "recovery", "remote", "retries", "rto_at", "rtt", "sack_ok", "scoreboard",
        "snd_mss", "snd_up", "snd_wnd", "snd_wscale", "state", "timewait_at", "tlp_at", "ts_ok",
        "ts_recent", "ws_ok",
    )

    # RFC 9293 3.3.1's sequence variables (and RFC 6582's "recover"), each kept as the plain
    # int of the same name with a leading underscore, which the per-segment paths use
    snd_una = seq_attribute("_snd_una")
    snd_nxt = seq_attribute("_snd_nxt")
    snd_max = seq_attribute("_snd_max")
    snd_wl1 = seq_attribute("_snd_wl1")
    snd_wl2 = seq_attribute("_snd_wl2")
    rcv_nxt = seq_attribute("_rcv_nxt")
    rcv_adv = seq_attribute("_rcv_adv")
    recover = seq_attribute("_recover")

    def __init__(self, config, local, remote, iss, now, ts_offset=0):
        self.config = config
        self.local = local          # (ip, port)
        self.remote = remote
        self.state = CLOSED
        self.passive_open = False
        self.iss = Seq(iss)
        self.irs = Seq(0)
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.snd_max = self.iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = Seq(0)
        self.snd_wl2 = Seq(0)
        self.snd_wscale = 0
        self.rcv_wscale = 0
        self.snd_up = None
        self.rcv_nxt = Seq(0)
        self.rcv_adv = Seq(0)          # right edge of the window we advertised
        self.rcv_up = None
        self.rcv_mss = config.receive_mss()
        self.snd_mss = min(DEFAULT_MSS_IPV4, config.mtu - IPV4_TCP_HEADERS)
        self.df = config.path_mtu_discovery  # set DF on our segments (RFC 1191)
        self.path_mtu = None                 # the path's MTU, once a router has told (RFC 1191)
        # negotiated options (RFC 7323, RFC 2018)
        self.ws_ok = False
        self.ts_ok = False
        self.sack_ok = False
        self.ecn_ok = False             # RFC 3168
        self._ecn_syn = False           # the last SYN we sent asked for ECN
        self._ecn_syn_reset = False     # a reset answered it: SYNs go plain from then on
        self._ece_pending = False       # receiver: echo ECE until the sender's CWR
        self._cwr_due = False           # sender: mark the next new data with CWR
        self._ecn_recover = self.iss
        self._seg_ce = False
        self.ts_recent = 0
        self._ts_offset = ts_offset
        self._last_ack_sent = 0  # (a plain int, as `_sndbuf_seq`)
        self._last_data_tx = None       # when data was last sent (restart after idle, RFC 5681 4.1)
        # send buffer: its first octet has sequence number _sndbuf_seq (a plain int)
        self._sndbuf = SendBuffer()
        self._sndbuf_seq = (self.iss + 1).real
        self._fin_queued = False
        self._send_blocked = False
        # receive side
        self._rcvbuf = ReceiveBuffer()
        self.rcv_buffer = config.recv_buffer  # its current size (`_grow_receive_buffer`)
        self._rcv_grown_edge = None  # RCV.ADV when it last grew
        self._ofo = []                 # sorted [(Seq start, bytes)] disjoint, not adjacent
        self._ofo_fin = None
        self._recent_ofo = None
        self._sack_reported = []       # inside the first SACK block of recent ACKs, latest first
        self._dsack = None  # (start, end): duplicate text of the latest segment, for the next ACK only
        self._rcv_unacked = 0
        # The peer's full-sized segment, as far as seen: SHLD-19's "every second full-sized
        # segment" counts in these (`_full_segment`).
        self._rcv_full = min(DEFAULT_MSS_IPV4, self.rcv_mss - TS_OPTION_LEN)
        self._eof = False
        # machinery
        self.rtt = RttEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self.cc = congestion.make(config.congestion, self.snd_mss, config.initial_window * self.snd_mss,
                                  config.hystart, config.tso_max)
        self.scoreboard = Scoreboard()
        self._rtt_seq = None
        self._rtt_time = 0.0
        self._rexmit_ts = None
        self.dupacks = 0
        self.recovery = None            # None, "newreno" or "sack"
        self.recover = self.iss         # RFC 6582 "recover" / RFC 6675 RecoveryPoint
        self._ack_advance = 0           # how far the last new ACK moved SND.UNA (`_loss_after_timeout`)
        self.high_rxt = None
        self._rescue_rxt = None           # RFC 6675's RescueRxt (`_rescue_range`)
        self._rexmit_una = False
        # RACK's rule for retransmissions in SACK recovery and after an RTO (`_rack_detect`)
        self._rack_new = []       # (start, end, time sent, serial): new text sent, in order
        self._rack_rxt = []       # the same for retransmissions not yet delivered
        self._rack_serial = 0
        self._rack_point = None   # (time sent, serial, RACK.rtt) of the latest sent delivered one
        self._rack_lost = []      # [start, end) retransmissions found lost, to go again
        self._rxt_at_exit = []    # `_rack_rxt` as the last SACK recovery ended (`_enter_recovery`)
        # undo of a spurious reduction (RFC 3708): the open loss episode, if any
        self._undo_marker = None  # SND.UNA when it began
        self._undo_retrans = 0    # its retransmissions, less those D-SACK reported as duplicates
        self._undo_dsacked = False
        self._undo_state = None   # the congestion controller's `snapshot` from before it
        self._undo_until = None   # SND.MAX when it ended: D-SACKs for it come within a flight
        self._undo_span = 0       # octets received beyond SND.UNA when it began (`_loss_episode`)
        self._tx_flight = 0       # octets in flight just after new data was last sent (`_new_ack`)
        self.retries = 0
        self._probes = 0
        self._persist_backoff = 0
        self._probe_due = False
        self._tlp_due = False
        self._tlp_end = None      # TLP.end_seq: SND.MAX after the probe, while its episode lasts
        self._tlp_retrans = False  # the probe was a retransmission (TLP.is_retrans)
        self._ka_probes = 0
        self._ka_due = False
        self._last_rx = now
        self.ack_now = False  # an ACK is due at the next pull (the layer reads it after a `recv`)
        self._rst_due = None
        self._replies = []
        self._challenge_window = (0.0, 0)
        self._unacceptable_ack_at = None
        # timers (absolute deadlines or None)
        self.rto_at = None
        self.tlp_at = None  # the probe timeout, PTO (RFC 8985 7.2)
        self.delack_at = None
        self.persist_at = None
        self.keepalive_at = None
        self.timewait_at = None
        self.events = []
        self.drops = Counts()
        self.counters = Counts()

    # ------------------------------------------------------------------ opening

    @classmethod
    def active(cls, config, local, remote, iss, now, ts_offset=0):
        """Active OPEN: CLOSED -> SYN-SENT; the SYN goes out on the next `transmit`.

        Raises ValueError for a remote address that is not unicast (MUST-46).
        """
        if not unicast_ipv4(remote[0]):
            raise ValueError(f"cannot open a connection to {remote[0]:#010x}: not a unicast address")
        conn = cls(config, local, remote, iss, now, ts_offset)
        conn.state = SYN_SENT
        conn._update_timers(now)
        return conn

    @classmethod
    def passive(cls, config, local, remote, syn, iss, now, ts_offset=0):
        """A connection born from a SYN received in LISTEN (RFC 9293 3.10.7.2): SYN-RECEIVED.

        Data carried by the SYN is not accepted (it is not acknowledged, so the peer
        sends it again once the connection is synchronized).
        """
        conn = cls(config, local, remote, iss, now, ts_offset)
        conn.passive_open = True
        conn.state = SYN_RECEIVED
        conn._take_syn(syn, now)
        conn.snd_wnd = syn.window  # a SYN's window is never scaled (RFC 7323 2.2)
        conn.max_snd_wnd = conn.snd_wnd
        conn.snd_wl1 = conn.irs
        conn.snd_wl2 = conn.iss
        conn._update_timers(now)
        return conn

    @classmethod
    def from_cookie(cls, config, local, remote, ack_seg, mss, now, ts_offset=0):
        """A connection rebuilt from a valid SYN-cookie ACK (see `listener`): ESTABLISHED.

        The cookie carries only the MSS, so window scaling, timestamps and SACK
        are off for such connections.
        """
        iss = Seq(ack_seg.ack) - 1
        conn = cls(config, local, remote, iss, now, ts_offset)
        conn.passive_open = True
        conn.irs = Seq(ack_seg.seq) - 1
        conn.rcv_nxt = conn.irs + 1
        conn.rcv_adv = conn.rcv_nxt + min(config.recv_buffer, 0xFFFF)
        conn._set_snd_mss(mss)
        conn.snd_una = conn.snd_nxt = conn.snd_max = conn.iss + 1
        conn.state = ESTABLISHED
        conn.snd_wnd = ack_seg.window
        conn.max_snd_wnd = conn.snd_wnd
        conn.snd_wl1 = Seq(ack_seg.seq)
        conn.snd_wl2 = Seq(ack_seg.ack)
        conn._emit(Event.CONNECTED)
        conn._text_and_fin(ack_seg, Seq(ack_seg.seq), now)
        conn._update_timers(now)
        return conn

    def _take_syn(self, syn, now):
        """Record the peer's ISN and negotiate options from its SYN (RFC 7323, RFC 2018)."""
        cfg = self.config
        self.irs = Seq(syn.seq)
        self.rcv_nxt = self.irs + 1
        self.ws_ok = cfg.window_scaling and syn.wscale is not None
        if self.ws_ok:
            self.snd_wscale = syn.wscale
            self.rcv_wscale = cfg.window_shift()
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.ts_ok = cfg.timestamps and syn.timestamp is not None
        if self.ts_ok:
            self.ts_recent = syn.timestamp[0]
        self.sack_ok = cfg.sack and syn.sack_permitted
        ecn_bits = syn.flags & (ECE | CWR)
        # RFC 3168 6.1.1: an ECN-setup SYN carries ECE and CWR, its SYN,ACK carries ECE only
        # (and only answers an ECN-setup SYN: not one of the plain retransmissions).
        self.ecn_ok = cfg.ecn and (ecn_bits == ECE and self._ecn_syn if syn.flags & ACK else ecn_bits == ECE | CWR)
        self.rcv_adv = self.rcv_nxt + min(cfg.recv_buffer, 0xFFFF)
        self._set_snd_mss(syn.mss if syn.mss is not None else DEFAULT_MSS_IPV4)

    def _set_snd_mss(self, peer_mss):
        """Effective send MSS (RFC 9293 3.7.1, MUST-16): MSS option vs our MTU (or the path's,
        when known: `set_path_mtu`), minus options."""
        mtu = self.config.mtu if self.path_mtu is None else min(self.config.mtu, self.path_mtu)
        mss = min(peer_mss, mtu - IPV4_TCP_HEADERS)
        if self.ts_ok:
            mss -= TS_OPTION_LEN
        self.snd_mss = max(mss, 64)
        self.cc.set_mss(self.snd_mss)
        self.cc.cwnd = self.config.initial_window * self.snd_mss  # still in the handshake

    # ------------------------------------------------------------------ app calls

    def send(self, data, urgent=False, borrowed=False):
        """Queue `data` for sending; returns how many octets the send buffer took.

        With `borrowed`, the buffer keeps `data` (or a view of it) as it is, whatever its
        type, instead of copying a mutable one: the caller promises not to change it until
        it is acknowledged (`SendBuffer.append`).

        With `urgent`, the end of this data becomes the urgent pointer (RFC 9293
        3.8.5, RFC 6093: the pointer marks the octet after the urgent data).
        """
        if self.state not in _CAN_SEND or self._fin_queued:
            raise TcpError(f"connection closing ({self.state.value})")
        sndbuf = self._sndbuf
        n = size = len(data)
        room = self.config.send_buffer - sndbuf.size
        if room < n:
            # (the limit may now be below what is queued: cwnd shrank after a loss)
            room = max(self.send_limit - sndbuf.size, 0)
            if room < n:
                n = room
        if n < size:
            self._send_blocked = True
        if n:
            sndbuf.append(memoryview(data)[:n] if n < size else data, borrowed)  # (a slice of bytes would copy)
            if urgent:
                self.snd_up = Seq(self._sndbuf_seq + sndbuf.size)
        return n

    @property
    def send_limit(self):
        """How many octets the send buffer holds at most: `send_buffer`, or twice the
        congestion window once that is larger, up to `send_buffer_max`.

        Why it follows cwnd: to keep a window's worth in flight, the buffer must hold that
        window and as much again for the application to refill while ACKs free it (Linux
        sizes its sndbuf the same way, tcp_sndbuf_expand). A fixed 256 KiB capped a
        bulk sender at 256 KiB in flight, so ACKs freed a few KB at a time and most
        super-frames left short; the memory is only used by connections whose window
        has grown, that is those actually moving data.
        """
        config = self.config
        grown = 2 * self.cc.cwnd
        if grown <= config.send_buffer:
            return config.send_buffer
        return grown if grown < config.send_buffer_max else config.send_buffer_max

    @property
    def send_space(self):
        return max(self.send_limit - self._sndbuf.size, 0)

    @property
    def send_queued(self):
        """Octets written and not yet acknowledged."""
        return self._sndbuf.size

    @property
    def readable(self):
        """Octets the application can `recv` now."""
        return self._rcvbuf.size

    @property
    def at_eof(self):
        """True once the peer's FIN has been received and all data before it read."""
        return self._eof and not self._rcvbuf

    @property
    def urgent_pending(self):
        """Octets of urgent data not yet read by the application (MUST-33)."""
        if self.rcv_up is None:
            return 0
        read_seq = self.rcv_nxt - len(self._rcvbuf) - (1 if self._eof else 0)
        return max(self.rcv_up - read_seq, 0)

    def recv(self, max_bytes=-1):
        """Take up to `max_bytes` (all if negative) received octets; b"" if none.

        Reading opens the receive window; if it opened enough (receiver SWS
        avoidance, RFC 9293 3.8.6.2.2) a window update is due.
        """
        data = self._rcvbuf.take(max_bytes)
        if data:
            self._window_opened()
        return data

    def recv_buffers(self):
        """Take all received octets as the buffers they came in (`ReceiveBuffer.take_buffers`:
        views of the payloads, not copies); [] if none. The window opens as for `recv`."""
        buffers = self._rcvbuf.take_buffers()
        if buffers:
            self._window_opened()
        return buffers

    def _full_segment(self, plen):
        """Learn the peer's full-sized segment from one of `plen` octets, larger than any
        before: the delayed-ACK rule (SHLD-19, RFC 5681 4.2: an ACK for at least every
        second full-sized segment) counts in these. A full segment is not our MSS: with
        timestamps it carries 12 octets less (1,448 where the MSS is 1,460), and a peer
        with a smaller MTU sends less still; counted against twice the MSS, two of them
        fell short and only every third segment was acknowledged, which slowed the
        peer's ACK clock and sent it loss probes and timeouts for its last two. As Linux
        (its receive MSS estimate), it starts at the default MSS and grows with what
        arrives, up to the MSS less the timestamp option; a super-frame counts as one
        full segment."""
        cap = self.rcv_mss - (TS_OPTION_LEN if self.ts_ok else 0)
        full = self._rcv_full = plen if plen < cap else cap
        return full

    def _window_opened(self):
        """The application took text: a window update is due if the window opened enough."""
        if self.state in _RECEIVES_TEXT:
            # how far the right edge would move if all free space were advertised now,
            # against the update threshold
            buffer = self.rcv_buffer
            cur = (self._rcv_adv - self._rcv_nxt) & MASK  # RCV.ADV - RCV.NXT, if ahead
            increase = buffer - self._rcvbuf.size - (cur if 0 < cur < HALF else 0)
            step = 2 * self.rcv_mss
            if increase >= step or increase >= buffer >> 1:  # (`min(buffer // 2, step)`, without the call)
                self.ack_now = True

    def close(self):
        """CLOSE (RFC 9293 3.10.4): the application will neither send nor read any more.

        Closing with received data the application never read resets the connection
        instead, to show the peer that data was lost (RFC 9293 3.6, SHLD-3; RFC 2525
        2.17). That holds after a `shutdown` too (FIN-WAIT-1/2): the close is what
        says the data will never be read. Otherwise it is `shutdown`.
        """
        if self._rcvbuf and self.state in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, FIN_WAIT_2):
            self.counters["close-with-unread-data"] += 1
            self.abort()
            return
        self.shutdown()

    def shutdown(self):
        """Half-close (RFC 9293 3.10.4 CLOSE, MAY-1): FIN after queued data, keep receiving.

        The FIN follows everything already queued by `send` (which then raises);
        the receive side is untouched: buffered and later data stay readable, up to
        the peer's FIN (FIN-WAIT-1, FIN-WAIT-2), so unread data is no reason to
        reset here, unlike `close`. In CLOSE-WAIT this is the last step (LAST-ACK).
        """
        st = self.state
        if st in (CLOSED, LISTEN, SYN_SENT):
            self._enter_closed()  # RFC 9293 3.10.4: CLOSE in SYN-SENT deletes the TCB
        elif st in (SYN_RECEIVED, ESTABLISHED):
            self._fin_queued = True
            if st is ESTABLISHED:
                self.state = FIN_WAIT_1
        elif st is CLOSE_WAIT:
            self._fin_queued = True
            self.state = LAST_ACK
        # FIN-WAIT-*, CLOSING, LAST-ACK, TIME-WAIT: already closing ("error: connection closing").

    def abort(self):
        """ABORT (RFC 9293 3.10.5): send RST in synchronized states, drop everything, CLOSED."""
        if self.state in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._rst_due = TcpSegment(self.local[1], self.remote[1], seq=int(self.snd_max), flags=RST)
        self._sndbuf.clear()
        self._enter_closed()

    def set_user_timeout(self, max_retransmits):
        """Set R2 for this connection (MUST-21)."""
        self.config = replace(self.config, max_retransmits=max_retransmits)

    def set_nodelay(self, on):
        """TCP_NODELAY: disable (True) or enable Nagle's algorithm (MUST-17)."""
        self.config = replace(self.config, nodelay=on)

    def set_dscp(self, dscp):
        """Change the Diffserv codepoint for the rest of the connection (SHLD-21)."""
        self.config = replace(self.config, dscp=dscp)

    def set_keepalive(self, on, idle=None, interval=None):
        """Turn keepalives on or off and set their timing (MUST-24, MUST-27)."""
        kw = {"keepalive": on}
        if idle is not None:
            kw["keepalive_idle"] = idle
        if interval is not None:
            kw["keepalive_interval"] = interval
        self.config = replace(self.config, **kw)
        self.keepalive_at = None
        self._update_timers(self._last_rx)

    def icmp_arrived(self, icmp_type, icmp_code, now, next_hop_mtu=None, quoted_len=0):
        """An ICMP error quoting this connection (RFC 9293 3.9.1.5 / RFC 1122 4.2.3.9).

        Destination unreachable for net, host or source route (codes 0, 1, 5) is a
        soft error reported to the application without aborting (SHLD-25, MUST-56);
        protocol and port unreachable (2, 3) abort the connection (SHLD-26), and so
        does fragmentation needed (4) without path MTU discovery, when we never set DF.
        With it, code 4 is the path's answer to DF (RFC 1191): `next_hop_mtu` (the
        router's MTU, 0 from an older router) and `quoted_len` (the total length of the
        datagram it quotes) go to `_path_mtu_reported`. Source quench is ignored
        (MUST-55, RFC 6633); time exceeded and parameter problem never abort (MUST-56).
        """
        if self.state is CLOSED:
            return
        if icmp_type == ICMP_DEST_UNREACH:
            if icmp_code == 4 and self.config.path_mtu_discovery:
                self._path_mtu_reported(next_hop_mtu or 0, quoted_len, now)
            elif icmp_code in (2, 3, 4):
                self._error(Event.UNREACHABLE)
            else:
                self._emit(Event.SOFT_ERROR)
        else:
            self.counters["icmp-ignored"] += 1

    def _path_mtu_reported(self, next_hop_mtu, quoted_len, now):
        """A router could not forward a segment of ours without fragmenting it (RFC 1191).

        The path MTU is the router's `next_hop_mtu`, or for a router that names none
        (section 5) the largest `MTU_PLATEAUS` value below the quoted datagram's length;
        at least `MIN_PATH_MTU`, below which the connection sends without DF and lets
        routers fragment. The MSS only ever shrinks here (section 6.3: a report never
        raises the estimate), and a report whose MTU would have carried the quoted
        datagram is not believed. A smaller MSS is the path's shape, not congestion:
        cwnd and ssthresh stay, and every segment in flight, sent too big and so lost,
        goes again from SND.UNA at once (section 6.4 asks for the retransmission; Linux's
        tcp_simple_retransmit does the same), with no RTT sample from them (Karn).
        """
        if self.state not in _SYNCHRONIZED:
            self.counters["pmtu-ignored"] += 1  # a SYN is never too big: nothing to learn
            return
        mtu = next_hop_mtu
        if not mtu:
            mtu = next((p for p in MTU_PLATEAUS if p < quoted_len), MTU_PLATEAUS[-1])
        if quoted_len and mtu >= quoted_len:
            self.counters["pmtu-ignored"] += 1  # the datagram it quotes would have fit
            return
        if mtu < MIN_PATH_MTU:
            mtu = MIN_PATH_MTU
            self.df = False
        if self._use_path_mtu(mtu, now):
            self.counters["pmtu-reduced"] += 1
        # (else a report about a segment sent before the last reduction)

    def set_path_mtu(self, mtu, df, now):
        """Start from a path MTU the owner learned before, from another connection's
        report (RFC 1191 section 5: the estimate belongs to the path); `df` False if that
        report went below `MIN_PATH_MTU`. Without path MTU discovery, nothing changes."""
        if self.config.path_mtu_discovery:
            self.df = self.df and df
            self._use_path_mtu(mtu, now)

    def _use_path_mtu(self, mtu, now):
        """The path's MTU is at most `mtu`: shrink the MSS to it, and if it shrank with
        segments in flight, send them again (see `_path_mtu_reported`). True if it shrank.
        Before the handshake ends only the MTU is kept (`_set_snd_mss` applies it)."""
        self.path_mtu = mtu if self.path_mtu is None else min(self.path_mtu, mtu)
        mss = self.path_mtu - IPV4_TCP_HEADERS - (TS_OPTION_LEN if self.ts_ok else 0)
        if self.state not in _SYNCHRONIZED or mss >= self.snd_mss:
            return False
        self.snd_mss = mss
        self.cc.set_mss(mss)
        if self.snd_max != self.snd_una:
            self._go_back_to_una()
            self._undo_marker = self._undo_state = None  # a go-back is no spurious episode to undo
        self._update_timers(now)
        return True

    def take_events(self):
        ev = self.events
        self.events = []
        return ev

    def _emit(self, ev):
        if (ev is _READABLE or ev is _WRITABLE) and ev in self.events:
            return
        self.events.append(ev)

    # ------------------------------------------------------------------ segment arrival

    def hibernate(self, owner_config=None):
        """This connection, in TIME-WAIT with nothing left to send, as a compact record
        (`tcp.time_wait`) for its owner to keep until 2*MSL pass; `revive` rebuilds it. The
        record leaves the configuration out if it is `owner_config`."""
        if self.state is not TIME_WAIT or self.wants_transmit():
            raise ValueError(f"only a connection in TIME-WAIT with nothing to send hibernates: {self!r}")
        return time_wait.record(self, owner_config)

    @classmethod
    def revive(cls, record, now, owner_config=None):
        """The connection a `hibernate` record was made from, for a segment that reached it:
        a new connection given the numbers TIME-WAIT's rules read (RFC 9293 3.10.7.4)."""
        conn = cls(record[time_wait.CONFIG] or owner_config, record[time_wait.LOCAL],
                   record[time_wait.REMOTE], record[time_wait.ISS], now, record[time_wait.TS_OFFSET])
        time_wait.restore(conn, record)
        conn.state = TIME_WAIT
        return conn

    def acknowledges_new(self, ack):
        """SND.UNA < `ack` (a plain int) <= SND.MAX: an ACK of this value would take new data,
        not be dropped (RFC 9293 3.10.7.4, RFC 5961 5.2). The TCP layer asks before it lets
        an ACK stand for the ones before it (`TcpLayer.receive_segment`)."""
        una = self._snd_una
        return 0 < (ack - una) & MASK <= (self._snd_max - una) & MASK

    def segment_arrived(self, seg, now, ce=False):
        """Process one incoming segment (RFC 9293 3.10.7). Never raises for bad input.

        `ce` tells that the IP header carried Congestion Experienced (RFC 3168).

        Returns True in one case: a new SYN reached this connection in TIME-WAIT and
        may open a new incarnation (MAY-2: its sequence number is above RCV.NXT, RFC
        1122 4.2.2.13, or with timestamps its TSval is newer, RFC 6191 / SHLD-4). The
        connection is then CLOSED and the owner hands the same segment to the
        listener of the port.
        """
        st = self.state
        if st is ESTABLISHED and self._predicted_arrival(seg, now, ce):
            return False
        if st is CLOSED or st is LISTEN:
            self.drops["closed"] += 1
            return False
        self._seg_ce = ce
        if st is SYN_SENT:
            self._syn_sent_arrival(seg, now)
        elif st is TIME_WAIT and time_wait.syn_reopens(seg, self.ts_ok, self.ts_recent, self._rcv_nxt):
            self.counters["time-wait-reopen"] += 1
            self._enter_closed()
            return True
        else:
            self._synchronized_arrival(seg, now)
        self._update_timers(now)
        return False

    def _predicted_arrival(self, seg, now, ce):
        """Header prediction: the common segment of an ESTABLISHED connection, in one pass.

        The segment this handles is the next one in sequence (SEG.SEQ = RCV.NXT), with
        ACK and at most PSH set, an acknowledgment in SND.UNA..SND.MAX, text that fits the
        window, no SACK blocks, a timestamp (when negotiated) that passes PAWS, and a
        connection with no loss recovery, no SACKed or out-of-order ranges, no ECN
        reaction pending and no loss probe's or loss episode's end to watch for. For
        such a segment the steps of RFC 9293 3.10.7.4 reduce to: accept it, update
        TS.Recent (RFC 7323 4.3), take the ACK (`_new_ack`) and the window (SND.WL1/
        SND.WL2 rule), append the text. The result is exactly what
        `_synchronized_arrival` computes (the tests compare the two); everything else
        (and a duplicate ACK, which the loss detection must see) returns False with
        nothing changed, for the full path. Arithmetic is on plain ints with the
        wraparound rules of `tcp.seq` written out: ``(a - b) & MASK`` is the distance
        from b forward to a, and ``d >= HALF`` means a is before b.
        """
        flags = seg.flags
        if (flags & ~PSH != ACK or self._ofo or self._ofo_fin is not None or self.recovery is not None
                or self.scoreboard.blocks or (ce and self.ecn_ok) or (seg.sack and self.sack_ok)
                or self._tlp_end is not None or self._undo_marker is not None):
            return False
        seq = seg.seq
        rcv_nxt = self._rcv_nxt
        if seq != rcv_nxt:
            return False
        ts = seg.timestamp
        if self.ts_ok and (ts is None or (ts[0] - self.ts_recent) & MASK >= HALF):
            return False  # no timestamp, or PAWS would reject it
        payload = seg.payload
        plen = len(payload)
        rcv_wnd = (self._rcv_adv - rcv_nxt) & MASK
        if plen and (rcv_wnd >= HALF or plen > rcv_wnd):
            return False  # text beyond the window (or a zero-window probe)
        ack = seg.ack
        una = self._snd_una
        snd_max = self._snd_max
        acked = (ack - una) & MASK
        if acked > (snd_max - una) & MASK or (not acked and not plen and snd_max != una):
            return False  # an old or unsent ACK, or maybe a duplicate ACK
        # fifth step: the ACK (RFC 9293 3.10.7.4)
        self._seg_ce = ce
        self._last_rx = now
        self._ka_probes = 0
        if ts is not None and self.ts_ok:
            d = (seq - self._last_ack_sent) & MASK
            if d == 0 or d >= HALF:
                self.ts_recent = ts[0]  # RFC 7323 4.3: SEG.SEQ <= Last.ACK.sent
        if acked:
            self._new_ack(ack, seg, now)
        wl1 = self._snd_wl1
        d = (seq - wl1) & MASK
        if (0 < d < HALF) or (d == 0 and (ack - self._snd_wl2) & MASK < HALF):
            self.snd_wnd = wnd = seg.window << self.snd_wscale
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            if wnd:
                self._persist_backoff = 0
        self._probes = 0
        # (The full path's "peer shrank its window" reset of the retries has nothing to do
        # here: `_new_ack` cleared them, or SND.UNA = SND.MAX.)
        # seventh step: the text, in order, within the window
        if plen:
            self._rcvbuf.append(payload)
            self._rcv_nxt = (rcv_nxt + plen) & MASK
            self._rcv_unacked += plen
            if 4 * (rcv_wnd - plen) < self.rcv_buffer:
                self._grow_receive_buffer()
            full = self._rcv_full
            if plen > full:
                full = self._full_segment(plen)
            if self._rcv_unacked >= 2 * full:
                self.ack_now = True  # SHLD-19: at least every second full segment
            elif self.delack_at is None:
                self.delack_at = now + self.config.delayed_ack  # MUST-40
            if _READABLE not in self.events:  # (`_emit`, inline)
                self.events.append(_READABLE)
        self._update_timers(now)
        return True

    def _syn_sent_arrival(self, seg, now):
        flags = seg.flags
        # first: check the ACK bit
        if flags & ACK:
            ack = Seq(seg.ack)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._queue_reply(TcpSegment(self.local[1], self.remote[1], seq=seg.ack, flags=RST))
                self.drops["bad-ack"] += 1
                return
        # second: the RST bit
        if flags & RST:
            if flags & ACK and self._ecn_syn:
                # RFC 3168 6.1.1.1: a middlebox may reset what it takes for a malformed SYN
                # (ECE and CWR set); the MAY of a plain SYN at once, once. A reset for that
                # one is the peer's answer (a genuinely closed port costs one round trip more).
                self._ecn_syn_reset = True
                self.counters["ecn-syn-reset"] += 1
                self.snd_nxt = self.snd_una
                self._rtt_seq = None
            elif flags & ACK:
                self._error(Event.REFUSED)
            else:
                self.drops["rst-without-ack"] += 1
            return
        # fourth: the SYN bit
        if not flags & SYN:
            self.drops["no-syn"] += 1
            return
        self._take_syn(seg, now)
        if flags & ACK:
            self._new_ack(seg.ack & MASK, seg, now)  # (first: the window below is relative to this ACK)
        self.snd_wnd = seg.window  # unscaled in a SYN (RFC 7323 2.2)
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = Seq(seg.seq)
        if flags & ACK:
            self.snd_wl2 = Seq(seg.ack)
            self.state = ESTABLISHED
            self._emit(Event.CONNECTED)
            self.ack_now = True
            self._last_rx = now
            if self._fin_queued:
                self.state = FIN_WAIT_1
            self._text_and_fin(seg, Seq(seg.seq), now)
        else:
            # Simultaneous open (RFC 9293 3.5 figure 8): answer with SYN,ACK from ISS.
            self.state = SYN_RECEIVED
            self.snd_wl2 = self.iss
            self.snd_nxt = self.iss

    def _synchronized_arrival(self, seg, now):
        st = self.state
        flags = seg.flags
        seq = Seq(seg.seq)
        # SYN-RECEIVED special cases: a retransmitted SYN gets the SYN,ACK again; the
        # peer's SYN,ACK in a simultaneous open completes the handshake.
        if st is SYN_RECEIVED and flags & SYN and seq == self.irs and not flags & RST:
            if flags & ACK and self.snd_una < Seq(seg.ack) <= self.snd_max:
                self._established_from_syn_received(seg, now)
                self.ack_now = True
            else:
                self.snd_nxt = self.snd_una
                self.counters["syn-ack-retransmit"] += 1
            return
        # RFC 7323 5.3 PAWS: an old timestamp marks an old duplicate.
        ts = seg.timestamp
        if self.ts_ok and ts is not None and not flags & RST and Seq(ts[0]) < Seq(self.ts_recent):
            self.drops["paws"] += 1
            self._ack_unacceptable(seg, now)  # RFC 7323 5.3 R1: ACK and drop, as 3.10.7.4 says
            return
        # first: sequence number acceptability
        rcv_nxt = self.rcv_nxt  # (a `Seq` made once: RCV.NXT moves only in `_text_and_fin`)
        rcv_wnd = max(self.rcv_adv - rcv_nxt, 0)
        seg_len = seg.seg_len
        zero_window_probe = False
        if not _acceptable(seq, seg_len, rcv_wnd, rcv_nxt):
            if rcv_wnd == 0 and seq == rcv_nxt and not flags & SYN:
                # MUST-66: a zero window still processes ACK, URG and RST; the text is dropped.
                zero_window_probe = True
            else:
                if st is TIME_WAIT and flags & FIN:
                    self.timewait_at = now + 2 * self.config.msl  # retransmitted FIN restarts 2MSL
                if not flags & RST:
                    self._ack_unacceptable(seg, now)
                self.drops["out-of-window"] += 1
                return
        # second: RST (RFC 5961 3.2: only an exact match resets; in-window gets a challenge)
        if flags & RST:
            if seq == rcv_nxt:
                self._reset_received()
            else:
                self._challenge_ack(now)
                self.drops["rst-not-exact"] += 1
            return
        # fourth: SYN in a synchronized state (RFC 5961 4.2: challenge ACK)
        if flags & SYN:
            self._challenge_ack(now)
            self.drops["syn-in-window"] += 1
            return
        # fifth: ACK
        if not flags & ACK:
            self.drops["no-ack"] += 1
            return
        self._last_rx = now
        self._ka_probes = 0
        if flags & CWR and self.ecn_ok:
            self._ece_pending = False  # RFC 3168 6.1.3: the sender reacted
        if ts is not None and self.ts_ok and seq <= Seq(self._last_ack_sent):
            self.ts_recent = ts[0]  # RFC 7323 4.3
        ack = Seq(seg.ack)
        if st is SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self._established_from_syn_received(seg, now)
            else:
                self._queue_reply(TcpSegment(self.local[1], self.remote[1], seq=seg.ack, flags=RST))
                self.drops["bad-ack"] += 1
                return
        else:
            a = ack.real  # (plain-int rules, as in `_predicted_arrival`: this runs per segment)
            if 0 < (a - self._snd_max) & MASK < HALF:  # SEG.ACK > SND.MAX
                self._challenge_ack(now)  # RFC 9293: send an ACK and drop; RFC 5961 5.2
                self.drops["ack-unsent"] += 1
                return
            if (a - self._snd_una + self.max_snd_wnd) & MASK >= HALF:  # SEG.ACK < SND.UNA - MAX.SND.WND
                self._challenge_ack(now)  # RFC 5961 5.2
                self.drops["ack-too-old"] += 1
                return
            self._process_ack(seg, seq, ack, now)
            if self.state is CLOSED:
                return
        if zero_window_probe:
            self._urgent(seg, seq)
            self.ack_now = True
            if seg.payload:
                self.drops["zero-window"] += 1
            return
        self._text_and_fin(seg, seq, now)

    def _established_from_syn_received(self, seg, now):
        ack = Seq(seg.ack)
        self._new_ack(ack.real, seg, now)
        self.snd_wnd = seg.window << self.snd_wscale
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = Seq(seg.seq)
        self.snd_wl2 = ack
        self.state = FIN_WAIT_1 if self._fin_queued else ESTABLISHED
        self._emit(Event.CONNECTED)

    def _process_ack(self, seg, seq, ack, now):
        """Fifth step of RFC 9293 3.10.7.4 for synchronized states: SND.UNA, window, recovery."""
        st = self.state
        old_wnd = self.snd_wnd
        dsack = None
        sack_news = False
        una = self.snd_una  # (a `Seq` made once: SND.UNA moves only in `_new_ack`, below)
        if self.sack_ok and seg.sack:
            dsack = dsack_block(seg.sack, ack)
            if dsack is not None:
                self._dsack_arrived(dsack)
            if self.scoreboard.update(seg.sack, una, self.snd_max):
                self.counters["sack-updates"] += 1
                sack_news = True
        advanced = una < ack
        if advanced:
            self._new_ack(ack.real, seg, now)
            una = ack
        elif ack == una:
            self._maybe_dupack(seg, old_wnd, sack_news, now)
        if sack_news and self.recovery == "sack":
            self._rack_marks_holes()
        if self._rack_rxt or self._rack_lost:
            if self.recovery == "sack" or self._in_rto_recovery():
                if self._rack_rxt:
                    self._rack_detect(now)
            elif self.recovery is None:
                self._rack_reset()  # the recovery from an RTO is over
        if self._tlp_end is not None:
            self._tlp_ack(seg, ack, advanced, dsack, now)
            if self._tlp_end is not None and self.sack_ok and self.recovery is None:
                self._probe_shows_loss(now)
        if self._undo_marker is not None and self.recovery is None and una >= self.recover:
            self._episode_over()
        if seg.flags & ECE and self.ecn_ok and self.recovery is None and una >= self._ecn_recover:
            # RFC 3168 6.1.2: react to ECE like a loss, at most once per window of data.
            self.cc.on_congestion(now, self.snd_max - una)
            self._ecn_recover = self.snd_max
            self._cwr_due = True
            self.counters["ecn-reduction"] += 1
        # window update (RFC 9293 3.10.7.4: SND.WL1/SND.WL2 guard against old segments)
        wl1 = self._snd_wl1
        if una <= ack and (seq > wl1 or (seq.real == wl1 and (ack.real - self._snd_wl2) & MASK < HALF)):
            self.snd_wnd = seg.window << self.snd_wscale
            self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
            self._snd_wl1 = seq.real
            self._snd_wl2 = ack.real
            if self.snd_wnd:
                self._persist_backoff = 0
        self._probes = 0
        if ack == una and una + self.snd_wnd < self.snd_max:
            self.retries = 0  # the peer shrank its window and is alive: no time-out (SHLD-17)
        fin_acked = self._fin_queued and una == self._fin_seq() + 1
        if st is FIN_WAIT_1 and fin_acked:
            self.state = FIN_WAIT_2
        elif st is CLOSING and fin_acked:
            self._enter_time_wait(now)
        elif st is LAST_ACK and fin_acked:
            self._enter_closed()

    def _new_ack(self, a, seg, now):
        """SND.UNA < SEG.ACK = `a` (a plain int) <= SND.MAX: new data acknowledged (RFC 9293
        3.10.7.4, RFC 6298 5.3). Wraparound arithmetic on plain ints (see `_predicted_arrival`).

        SND.WND loses the acknowledged octets, so that SND.UNA + SND.WND, the right edge
        the sender fills up to, stays where the peer put it (as BSD keeps it). The window a
        segment offers is relative to its own ACK; only a segment that passes the SND.WL1/
        SND.WL2 test sets it afresh, after this. A segment that fails the test can still
        acknowledge new data: the peer's retransmission filling a hole in its own text
        (SEG.SEQ < SND.WL1), sent with its latest ACK. Without the subtraction the edge
        crept forward by what such a segment acknowledged, and text went beyond the window
        the peer had offered (RFC 9293 3.8.6.2.1), for the receiver to drop.
        """
        acked = (a - self._snd_una) & MASK
        self._ack_advance = acked
        wnd = self.snd_wnd - acked
        self.snd_wnd = wnd if wnd > 0 else 0
        sndbuf = self._sndbuf
        base = self._sndbuf_seq
        n = (a - base) & MASK
        if n >= HALF:
            n = 0
        elif n > sndbuf.size:
            n = sndbuf.size
        if n:
            sndbuf.drop(n)
            self._sndbuf_seq = (base + n) & MASK
        self._snd_una = a
        if (self._snd_nxt - a) & MASK >= HALF:
            self._snd_nxt = a
        if self.scoreboard.blocks:
            self.scoreboard.advance(as_seq(a))
        if QUARTER <= (a - self._recover) & MASK < HALF and self.recovery is None:
            # RecoveryPoint (and ECN's) only move at a loss (a congestion signal): left at the
            # ISS, after 2 GiB acknowledged without one they would compare as ahead of SND.UNA
            # (sequence space wraps, RFC 9293 3.4), and no fast retransmit, tail loss probe
            # (or ECN reaction) could start. Once a quarter of the space behind, they follow.
            self._recover = a
        if self.ecn_ok and QUARTER <= (a - self._ecn_recover.real) & MASK < HALF:
            self._ecn_recover = as_seq(a)
        # RTT: timestamps (RFC 7323 4.1) or the timed segment, skipped if retransmitted (Karn).
        ts = seg.timestamp
        sample = None
        if self.ts_ok and ts is not None and ts[1]:
            # An echo older than our last retransmission may be the receiver's
            # TS.Recent held across a loss (RFC 7323 4.3), not this data's timestamp:
            # like Karn's rule, take no sample from it.
            if self._rexmit_ts is None or (ts[1] - self._rexmit_ts) & MASK < HALF:
                r = ((int(now * 1000) + self._ts_offset - ts[1]) & MASK) / 1000.0  # (`_ts_now` inline)
                if r < self.config.max_rto:
                    self.rtt.sample(r)
                    sample = r
        elif self._rtt_seq is not None and (a - self._rtt_seq.real) & MASK < HALF:
            sample = now - self._rtt_time
            self.rtt.sample(sample)
            self._rtt_seq = None
        st = self.state
        if st is SYN_SENT or st is SYN_RECEIVED:
            if self.retries:
                self.rtt.reset_after_syn_timeout()  # RFC 6298 5.7
        elif self.recovery is None:
            if 2 * self._tx_flight >= self.cc.cwnd:
                # The window was in use: grow it. An application-limited connection (less
                # than half of cwnd in flight) keeps its window, so it cannot later send
                # a burst the path never carried (RFC 7661 4.1's test; RFC 9438 5.8).
                # The flight is the one new data last left with, not what this ACK finds:
                # ACKs come in bursts (a poll's worth, sent by a receiver that took many
                # segments at once), and before the sender refills, each one of a burst
                # finds less in flight than the last. Judged by that, the ACKs of the
                # burst's second half grew nothing, and slow start grew cwnd by about
                # half per round trip instead of doubling it (Linux decides "cwnd-limited"
                # at sending time too).
                self.cc.on_ack(acked, now, self.rtt.srtt, sample, a, self._snd_max, seg.acks)
            else:
                self.counters["cwnd-app-limited"] += 1
        else:
            self._recovery_ack(as_seq(a), acked)
        self.retries = 0
        self.rto_at = None  # restarted by _update_timers if data is still outstanding (5.3)
        self.tlp_at = None  # so is the PTO (RFC 8985 7.2)
        self._tlp_due = False  # and a probe not yet sent is moot: an ACK came
        self.dupacks = 0
        if self._send_blocked:
            space = self.send_space
            # A blocked writer is woken once a third of the buffer is free (free space at
            # least half of what is queued, as Linux's sk_stream_min_wspace), not by every
            # ACK: each wake-up then refills a useful amount instead of a few KB.
            if space and 2 * space >= self._sndbuf.size:
                self._send_blocked = False
                self._emit(Event.WRITABLE)

    def _recovery_ack(self, ack, acked):
        """New data acknowledged during loss recovery (outside it, the controller's `on_ack`)."""
        cc = self.cc
        if ack >= self.recover:
            # Full acknowledgment: leave recovery (RFC 6582 3.2 step 3; RFC 6675 5 step 4).
            if self.recovery == "newreno":
                flight = self.snd_max - self.snd_una
                cc.cwnd = min(cc.ssthresh, max(flight, self.snd_mss) + self.snd_mss)
            self.recovery = None
            self.high_rxt = None
            self.scoreboard.lost_below = None
            self._rxt_at_exit = [entry for entry in self._rack_rxt if entry[1] > ack]
            self._rack_reset()
            return
        if self.recovery == "newreno":
            # Partial acknowledgment (RFC 6582 3.2 step 4): retransmit, deflate.
            self._rexmit_una = True
            cc.cwnd = max(cc.cwnd - acked + (self.snd_mss if acked >= self.snd_mss else 0), self.snd_mss)

    def _maybe_dupack(self, seg, old_wnd, sack_news, now):
        """A duplicate ACK enters fast retransmit/recovery at DupThresh (RFC 5681 3.2).

        With SACK blocks, an ACK is a duplicate when they tell of octets between SND.UNA and
        SND.MAX not SACKed before (`sack_news`: RFC 6675 section 2's definition, which RFC
        5681 section 2 allows): whatever its window or text. RFC 5681's own definition
        also wants the window unchanged, and a Linux receiver's window moves with nearly
        every ACK of a bulk transfer as its application reads: under that rule, 40 segments
        SACKed above a hole made no duplicate ACK, and the hole waited for the RTO (seen
        against the kernel over a TAP with 2 % loss). Without SACK blocks, RFC 5681's
        definition stands."""
        if self._snd_max == self._snd_una:
            return
        if seg.sack and self.sack_ok:
            if not sack_news:
                return
        elif (seg.payload or seg.flags & (SYN | FIN) or (seg.window << self.snd_wscale) != old_wnd
                or seg.window == 0):
            return  # (a zero window answer to a probe says nothing about loss)
        self.dupacks += 1
        cc = self.cc
        if self.recovery is None:
            lost = self.sack_ok and self.scoreboard.is_lost(self.snd_una, self.snd_mss)
            # RFC 6582 3.2 step 2: no new recovery for losses from before the last one.
            if (self.dupacks >= self.scoreboard.dup_thresh or lost) and (
                    self.snd_una >= self.recover or self._loss_after_timeout()):
                self._enter_recovery(now)
        elif self.recovery == "newreno":
            cc.cwnd += self.snd_mss  # RFC 6582 3.2 step 3 (inflation)

    def _loss_after_timeout(self):
        """Do duplicate ACKs that do not cover "recover" show a new loss? RFC 6582 section 4.1's
        ACK heuristic, for a connection without SACK.

        After a timeout "recover" is SND.MAX (section 4), so that duplicate ACKs drawn by
        retransmissions of text the receiver already had start no fast retransmit. Those
        come after a cumulative ACK that jumped over that text. ACKs that move SND.UNA by
        a few segments at a time, with the window grown past one segment, are the
        retransmission proceeding instead, and duplicates then mean one of the
        retransmissions (or new text) was lost: without this, each such loss waits for a
        further, backed-off timeout (sweeps against the kernel at 9-14 % loss, without SACK
        and timestamps, saw RTOs up to 25 s). With SACK, the scoreboard tells the two
        apart (a D-SACK is no duplicate ACK), and RFC 6675 5.1 keeps RecoveryPoint's rule."""
        return (not self.sack_ok and self.cc.cwnd > self.snd_mss
                and self._ack_advance <= RECOVER_HEURISTIC_SEGMENTS * self.snd_mss)

    def _tlp_ack(self, seg, ack, advanced, dsack, now):
        """End of a loss-probe episode (RFC 8985 7.4): did the probe repair a loss?

        A probe of new data proves nothing either way. A retransmitted probe that the
        receiver reports as a duplicate (a D-SACK block over its end, RFC 2883), or that
        only draws a pure duplicate ACK once everything is acknowledged, found nothing
        lost. An ACK beyond the probe's end without either means the probe filled a
        hole: the congestion window is reduced as a fast retransmit would (7.4.2), as
        Linux does. While SEG.ACK stays below the end, the episode goes on. `dsack` is
        the ACK's D-SACK block (`sack.dsack_block`), or None.
        """
        end = self._tlp_end
        if ack < end:
            return
        if not self._tlp_retrans:
            self._tlp_end = None
        elif dsack is not None and dsack[0] < end <= dsack[1]:
            self._tlp_end = None
            self.counters["tlp-spurious"] += 1
        elif ack > end:
            self._tlp_end = None
            self.cc.on_congestion(now, self.snd_max - self.snd_una)
            self.counters["tlp-loss-repaired"] += 1
        elif not advanced and not seg.payload:
            self._tlp_end = None
            self.counters["tlp-spurious"] += 1

    def _probe_shows_loss(self, now):
        """The probe arrived (SACKed) while text sent before it, at least a PTO earlier, is
        still missing: that text is lost, and fast recovery starts now instead of waiting
        for three duplicate ACKs that a tail cannot produce. This is RFC 8985's RACK rule
        (6.2: a segment sent before one that was delivered, by more than the reordering
        window, is lost) applied to the probe alone, as 7.3 expects the probe's ACK to do;
        RFC 6582's guard against recovering twice from one loss applies as for dupacks.

        All of the missing text below the probe is lost (`Scoreboard.lost_below`), not only
        what RFC 6675's IsLost finds with one SACKed segment above it: a lost burst (a TSO
        super-frame dropped whole) would otherwise count as in flight, fill the pipe, and
        wait for the RTO after its first segment was resent. Not once the connection has
        seen reordering (a raised DupThresh): the missing text may then be late, and RFC
        6675's rules decide (in the Sim with 5 % reordering, marking it cost RTOs)."""
        end = self._tlp_end
        last = end - 1  # the probe's last octet of text (a FIN's sequence number is never SACKed)
        if self._fin_queued and end == self._fin_seq() + 1:
            last = end - 2
        if (self.snd_una < last and self.scoreboard.sacked_between(last, last + 1)
                and self.snd_una >= self.recover):
            self.counters["tlp-recovery"] += 1
            self._reordering_gone()
            probe_was_retransmission = self._tlp_retrans
            self._enter_recovery(now)
            board = self.scoreboard
            if board.dup_thresh == DUP_THRESH:
                board.lost_below = next(a for a, b in board.blocks if a <= last < b)
            if probe_was_retransmission:
                self._undo_retrans += 1  # the probe's own D-SACK, if its original arrived, cancels this

    def _loss_episode(self):
        """A fast retransmit or a first RTO reduces cwnd: keep what to undo it to (RFC 3708),
        and how far beyond SND.UNA the peer had already received (SACKed, else one segment
        per duplicate ACK): if the episode proves spurious, the text at SND.UNA was that far
        out of order."""
        self._undo_marker = self.snd_una
        self._undo_retrans = 0
        self._undo_dsacked = False
        self._undo_state = self.cc.snapshot()
        self._undo_until = None
        high = self.scoreboard.high_sacked()
        self._undo_span = high - self.snd_una if high is not None else self.dupacks * self.snd_mss

    def _dsack_arrived(self, block):
        """The peer reports octets it received twice (RFC 2883). Those at or above the open
        episode's start were, as far as the sender can tell, its retransmissions (RFC 3708
        3: a duplicated packet in the network would pass for one, a rare miscount)."""
        self.counters["dsack-received"] += 1
        marker = self._undo_marker
        if marker is not None and block[0] >= marker:
            self._undo_retrans -= max(1, -(-(block[1] - block[0]) // self.snd_mss))
            self._undo_dsacked = True

    def _episode_over(self):
        """The episode's recovery is over (everything outstanding at its start is
        acknowledged). If every retransmission came back as a duplicate, the losses were
        not losses (reordering, a late ACK) and its reduction is undone. The D-SACKs for
        the last retransmissions may follow the ACK that ended it: the episode stays open
        until what was in flight then is acknowledged too."""
        if self._undo_dsacked and self._undo_retrans <= 0:
            self.cc.restore(self._undo_state)
            self._undo_marker = self._undo_state = None
            self.counters["dsack-undo"] += 1
            self._reordering_seen(self._undo_span)
        elif self._undo_until is None:
            self._undo_until = self.snd_max
        elif self.snd_una > self._undo_until:
            self._undo_marker = self._undo_state = None

    def _reordering_seen(self, span):
        """A fast retransmit was spurious: the text at SND.UNA came after `span` octets sent
        behind it. Loss detection waits for one segment more than that from now on
        (`Scoreboard.dup_thresh`, at most `MAX_DUP_THRESH`), so the same reordering does
        not cost a retransmission and a window reduction again (RFC 4653 section 1; Linux
        raises its reordering metric the same way); an RTO or the tail loss probe still
        find real losses (RFC 8985 7), and one of them that the standard threshold would
        have made unnecessary puts it back to 3 (`_reordering_gone`)."""
        degree = -(-span // self.snd_mss) + 1
        board = self.scoreboard
        if degree > board.dup_thresh:
            board.dup_thresh = min(degree, MAX_DUP_THRESH)
            self.counters["reordering-raised"] += 1

    def _reordering_gone(self):
        """A loss found late, by an RTO or a tail loss probe: if the standard DupThresh would
        have caught it (three duplicate ACKs, or more than two segments SACKed), the
        reordering the threshold was raised for is gone, and it goes back to 3 (as Linux
        resets its reordering metric when entering loss with enough SACKed)."""
        board = self.scoreboard
        if board.dup_thresh > DUP_THRESH and (self.dupacks >= DUP_THRESH
                                              or board.sacked_bytes() > (DUP_THRESH - 1) * self.snd_mss):
            board.dup_thresh = DUP_THRESH
            self.counters["reordering-reset"] += 1

    def _enter_recovery(self, now):
        """Fast retransmit (RFC 5681 3.2) into NewReno (RFC 6582) or SACK (RFC 6675) recovery."""
        self._tlp_end = None  # (the recovery's own reduction covers a loss the probe showed)
        self._loss_episode()
        flight = self.snd_max - self.snd_una
        self.recover = self.snd_max
        self.cc.on_congestion(now, flight)
        self._rexmit_una = True
        self.high_rxt = None
        self._rescue_rxt = None
        self.scoreboard.lost_below = None
        self._rack_reset()
        self.counters["fast-retransmit"] += 1
        self._retransmission_on_its_way(now)
        if self.sack_ok:
            self.recovery = "sack"
        else:
            self.recovery = "newreno"
            self.cc.cwnd = self.cc.ssthresh + 3 * self.snd_mss

    def _retransmission_on_its_way(self, now):
        """A recovery that starts just after another ended may find SND.UNA's text still
        missing because the last episode's retransmission of it has not arrived yet (it
        went less than a round trip ago). Sending it again would be a duplicate, and its
        D-SACK would pass for proof that this episode was spurious: the reduction undone,
        and DupThresh raised for reordering there never was (seen in the Sim with 5 % loss
        and no reordering, seed 1). The fast retransmit is left out instead, HighRxt
        starts past that text, and RACK watches the earlier retransmission (RFC 8985 6.2:
        lost once text sent after it is delivered), counted in this episode's undo."""
        srtt = self.rtt.srtt
        una = self.snd_una
        for entry in self._rxt_at_exit:
            start, end, sent, _serial = entry
            if srtt is not None and start <= una < end and now - sent < srtt:
                self._rexmit_una = False
                self.high_rxt = end
                self._rack_rxt.append(entry)
                self._undo_retrans += 1
                self.counters["retransmission-on-its-way"] += 1
                break
        self._rxt_at_exit = []

    def _text_and_fin(self, seg, seq, now):
        """Steps six to eight (URG, segment text, FIN) of RFC 9293 3.10.7.4."""
        self._urgent(seg, seq)
        payload = seg.payload
        dseq = seq + 1 if seg.flags & SYN else seq
        fin = bool(seg.flags & FIN)
        rcv_nxt = self.rcv_nxt
        if dseq < rcv_nxt:
            cut = min(rcv_nxt - dseq, len(payload))
            if cut and self.sack_ok:
                self._dsack = (dseq, dseq + cut)  # RFC 2883 4.1.1: the part already received
                self.ack_now = True
            payload = payload[cut:]
            dseq = dseq + cut
        room = self.rcv_adv - dseq
        if len(payload) > room:
            payload = payload[:max(room, 0)]
            fin = False
            self.drops["beyond-window"] += 1
        if payload:
            if self.state not in _RECEIVES_TEXT:
                self.drops["text-after-fin"] += 1
                return
            if self._ofo and self.sack_ok and self._dsack is None:
                self._dsack_queued(dseq, dseq + len(payload))
            if self._seg_ce and self.ecn_ok:
                self._ece_pending = True  # RFC 3168 6.1.3
                self.ack_now = True
                self.counters["ce-received"] += 1
            if dseq == rcv_nxt:
                had_hole = bool(self._ofo)
                self._rcvbuf.append(payload)
                self._rcv_nxt = (self._rcv_nxt + len(payload)) & MASK
                left = (self._rcv_adv - self._rcv_nxt) & MASK
                if left >= HALF or 4 * left < self.rcv_buffer:
                    self._grow_receive_buffer()
                if had_hole:
                    self._drain_ofo()
                    self.ack_now = True  # RFC 5681 4.2: ACK at once when a hole fills
                else:
                    plen = len(payload)
                    self._rcv_unacked += plen
                    full = self._rcv_full
                    if plen > full:
                        full = self._full_segment(plen)
                    if self._rcv_unacked >= 2 * full:
                        self.ack_now = True  # SHLD-19: at least every second full segment
                    elif self.delack_at is None:
                        self.delack_at = now + self.config.delayed_ack  # MUST-40
                self._emit(Event.READABLE)
            else:
                self._ofo_insert(dseq, bytes(payload))
                self._recent_ofo = dseq
                self.ack_now = True  # RFC 5681 4.2: out-of-order data gets an immediate ACK
                self.counters["out-of-order"] += 1
        if fin and self._eof:
            # The peer's FIN came already: its sequence space has ended, and a FIN at or past
            # RCV.NXT is no retransmission (that would lie before it). Acknowledged, not taken:
            # RCV.NXT stays (Linux answers it in TIME-WAIT the same way).
            self.drops["fin-after-fin"] += 1
            self.ack_now = True
            fin = False
        if fin:
            fin_seq = dseq + len(payload)
            if fin_seq == self.rcv_nxt:
                self._fin_received(now)
            elif fin_seq > self.rcv_nxt:
                self._ofo_fin = fin_seq
        if self._ofo_fin is not None and self._ofo_fin == self.rcv_nxt:
            self._ofo_fin = None
            self._fin_received(now)

    def _urgent(self, seg, seq):
        """Sixth step: URG (RFC 9293 3.8.5, RFC 6093): track RCV.UP and tell the application."""
        if seg.flags & URG and seg.urgent and self.state in _RECEIVES_TEXT:
            up = seq + seg.urgent
            if self.rcv_up is None or up > self.rcv_up:
                self.rcv_up = up
                self._emit(Event.URGENT)

    def _dsack_queued(self, start, end):
        """Text [start, end) arrived: report its first overlap with out-of-order text already
        held as a D-SACK block (RFC 2883 4.1.2; rule 2: one block per duplicate run)."""
        for s, d in self._ofo:
            lo, hi = seq_max(s, start), seq_min(s + len(d), end)
            if lo < hi:
                self._dsack = (lo, hi)
                self.ack_now = True
                return

    def _ofo_insert(self, start, data):
        """Queue out-of-order text (SHLD-31), merging with overlapping or adjacent ranges."""
        merged_start, merged = start, bytearray(data)
        out = []
        for s, d in self._ofo:
            e = s + len(d)
            if e < merged_start or s > merged_start + len(merged):
                out.append((s, d))
                continue
            if s < merged_start:
                merged = bytearray(d[:merged_start - s]) + merged
                merged_start = s
            tail = (s + len(d)) - (merged_start + len(merged))
            if tail > 0:
                merged += d[len(d) - tail:]
        out.append((merged_start, bytes(merged)))
        out.sort(key=lambda item: int(item[0] - self.rcv_nxt))
        self._ofo = out

    def _grow_receive_buffer(self):
        """In-order text just used up most of the advertised window: double the receive
        buffer (up to `recv_buffer_max`) if the application is keeping up with it.

        Receive-buffer auto-tuning, in the spirit of Linux's (tcp_rcv_space_adjust): a
        peer that fills the window while at most half the buffer waits unread is held
        back by the window, not by the reader, and a larger buffer lets it keep more in
        flight; the grown window goes out with the next ACK (a window may always grow,
        RFC 9293 3.8.6). A reader that falls behind fills the buffer and stops the growth,
        so the memory goes to connections that move data. With a fixed 256 KiB the
        kernel sent at most four 64 KB super-frames per round trip through the TAP, and
        uploads to a shard ran at 0.6-0.7 GB/s.
        """
        size = self.rcv_buffer
        limit = self.config.recv_buffer_max
        if size < limit and 2 * self._rcvbuf.size <= size:
            mark = self._rcv_grown_edge
            if mark is not None and not 0 < (self._rcv_nxt - mark) & MASK < HALF:
                return  # once per window: the text must reach past the edge of the last growth
            self.rcv_buffer = 2 * size if 2 * size < limit else limit
            self._rcv_grown_edge = self._rcv_adv
            self.counters["rcvbuf-grown"] += 1

    def _drain_ofo(self):
        ofo = self._ofo
        while ofo and ofo[0][0] <= self.rcv_nxt:
            s, d = ofo.pop(0)
            skip = self.rcv_nxt - s
            if skip < len(d):
                self._rcvbuf.append(memoryview(d)[skip:])
                self.rcv_nxt = self.rcv_nxt + (len(d) - skip)

    def _fin_received(self, now):
        """Eighth step: the FIN (RFC 9293 3.10.7.4)."""
        self.rcv_nxt = self.rcv_nxt + 1
        self._eof = True
        self.ack_now = True
        self._emit(Event.EOF)
        st = self.state
        if st in (SYN_RECEIVED, ESTABLISHED):
            self.state = CLOSE_WAIT
        elif st is FIN_WAIT_1:
            if self.snd_una == self._fin_seq() + 1:
                self._enter_time_wait(now)
            else:
                self.state = CLOSING
        elif st is FIN_WAIT_2:
            self._enter_time_wait(now)

    def _reset_received(self):
        """An acceptable RST (RFC 9293 3.10.7.4 second step)."""
        st = self.state
        if st is SYN_RECEIVED:
            if self.passive_open:
                self._enter_closed()  # back to LISTEN: the listener forgets the half-open entry
            else:
                self._error(Event.REFUSED)
        elif st in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._error(Event.RESET)
        else:  # CLOSING, LAST-ACK, TIME-WAIT
            self._enter_closed()

    def _error(self, ev):
        self._emit(ev)
        self._sndbuf.clear()
        self._enter_closed()

    def _enter_closed(self):
        if self.state is not CLOSED:
            self.state = CLOSED
            self._emit(Event.CLOSED)
        self.rto_at = self.tlp_at = self.delack_at = self.persist_at = self.keepalive_at = self.timewait_at = None
        self._tlp_due = False
        self._ofo = []

    def _enter_time_wait(self, now):
        self.state = TIME_WAIT
        self.timewait_at = now + 2 * self.config.msl  # MUST-13
        self.rto_at = self.tlp_at = self.persist_at = self.keepalive_at = None
        self._tlp_due = False

    def _ack_unacceptable(self, seg, now):
        """Answer an unacceptable segment that is not a RST (RFC 9293 3.10.7.4 first step).

        RFC 9293 says to send ``<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>`` and drop the
        segment. That is a plain ACK, not an RFC 5961 challenge: RFC 5961 throttles
        (section 7) only the challenge ACKs it adds for in-window RSTs (3.2), SYNs
        (4.2) and ACK values outside SND.UNA - MAX.SND.WND .. SND.NXT (5.2), which
        are what a blind attacker can provoke. Old duplicates are normal on a
        network that duplicates or reorders, and the ACK is what tells a peer that
        retransmitted too early that its data arrived, so they must not eat the
        challenge budget. Two exceptions:

        * a SYN, whatever its sequence number, gets the RFC 5961 4.2 challenge ACK;
        * a segment occupying no sequence space (a pure ACK) is answered at most once
          per `unacceptable_ack_interval`: two endpoints that disagree about the
          window would otherwise ACK each other's ACKs forever (an ACK storm), and
          such a segment carries nothing the peer needs acknowledged. The ones not
          answered are counted in ``counters["unacceptable-ack-suppressed"]``. A
          peer's keepalive probe (SEG.SEQ = RCV.NXT - 1, RFC 9293 3.8.4) is one, but
          probes come tens of seconds apart, so each is answered.

        Several answers due before the next transmit pull share one ACK.
        """
        if seg.flags & SYN:
            self._challenge_ack(now)
            return
        if seg.payload and self.sack_ok:
            start = Seq(seg.seq)
            end = start + len(seg.payload)
            if end <= self.rcv_nxt:
                self._dsack = (start, end)  # RFC 2883 4.1.1: text the receiver already has
        if not seg.seg_len:
            last = self._unacceptable_ack_at
            if last is not None and now - last < self.config.unacceptable_ack_interval:
                self.counters["unacceptable-ack-suppressed"] += 1
                return
            self._unacceptable_ack_at = now
        self.ack_now = True
        self.counters["unacceptable-ack"] += 1

    def _challenge_ack(self, now):
        """Queue an RFC 5961 challenge ACK, rate limited per second (RFC 5961 section 7)."""
        start, count = self._challenge_window
        if now - start >= 1.0:
            start, count = now, 0
        if count >= self.config.challenge_ack_limit:
            self.drops["challenge-ack-limited"] += 1
            return
        self._challenge_window = (start, count + 1)
        self.ack_now = True
        self.counters["challenge-ack"] += 1

    def _queue_reply(self, seg):
        if len(self._replies) < 16:
            self._replies.append(seg)
        else:
            self.drops["reply-queue-full"] += 1

    # ------------------------------------------------------------------ timers

    def poll_at(self):
        """Earliest timer deadline, or None."""
        best = self.rto_at
        t = self.tlp_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.delack_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.persist_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.keepalive_at
        if t is not None and (best is None or t < best):
            best = t
        t = self.timewait_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def poll(self, now):
        """Run the timers that are due at `now`."""
        if self.timewait_at is not None and now >= self.timewait_at:
            self.timewait_at = None
            self._enter_closed()
            return
        if self.tlp_at is not None and now >= self.tlp_at:
            self.tlp_at = None
            self._tail_loss_probe(now)
        if self.rto_at is not None and now >= self.rto_at:
            self.rto_at = None
            self._retransmission_timeout(now)
        if self.delack_at is not None and now >= self.delack_at:
            self.delack_at = None
            self.ack_now = True
        if self.persist_at is not None and now >= self.persist_at:
            self.persist_at = None
            self._zero_window_probe_due(now)
        if self.keepalive_at is not None and now >= self.keepalive_at:
            self.keepalive_at = None
            self._keepalive_due(now)
        self._update_timers(now)

    def _tlp_armed(self):
        """May a loss probe be scheduled (RFC 8985 7.2)? With SACK (the probe's ACK must be
        able to say what arrived), data in flight, no loss recovery, no RTO recovery (SND.NXT
        going back, or what was in flight at the timeout not yet all acknowledged) and no
        probe's episode open, unless all that probe covered is acknowledged (a new flight
        gets a probe of its own: a request/response connection sends one per response).
        (Plain-int sequence arithmetic: this runs for every response.)"""
        una = self._snd_una
        smax = self._snd_max
        end = self._tlp_end
        return (self.sack_ok and self.recovery is None and not self._tlp_due
                and (end is None or (una - end.real) & MASK < HALF)
                and not self.retries and self._snd_nxt == smax != una
                and (una - self._recover) & MASK < HALF and self.config.tail_loss_probe
                and self.state in _SENDS_DATA)

    def _tail_loss_probe(self, now):
        """The PTO fired (RFC 8985 7.3): one probe goes out on the next pull (`_tlp_segment`),
        and the RTO, not the PTO, is armed again: at most one probe per flight."""
        if not self._tlp_armed():
            return
        self._tlp_due = True
        self.rto_at = now + self.rtt.rto
        self.counters["tlp-probe"] += 1

    def _tlp_segment(self, now):
        """The probe: a new segment of up to one MSS if there is unsent data and the peer's
        window takes it (beyond cwnd, RFC 8985 7.3), else the last segment sent again."""
        if self._tlp_end is not None and self._tlp_retrans:
            # The last probe's episode still waits for its verdict (7.4) though everything
            # it covered is acknowledged: without the D-SACK or duplicate ACK that would
            # clear it, it counts as a repaired loss, the cautious verdict.
            self.cc.on_congestion(now, self.snd_max - self.snd_una)
            self.counters["tlp-loss-repaired"] += 1
        mss = self.snd_mss
        unsent = Seq(self._sndbuf_seq + self._sndbuf.size) - self.snd_nxt
        room = self.snd_una + self.snd_wnd - self.snd_nxt
        if unsent > 0 and room > 0:
            seg = self._data_segment(self.snd_nxt, min(mss, unsent, room), now)
            self._tlp_retrans = False
        else:
            seg = self._retransmit_range(seq_max(self.snd_una, self.snd_max - mss), self.snd_max, now)
            self._tlp_retrans = True
        self._tlp_end = self.snd_max
        return seg

    def _retransmission_timeout(self, now):
        """RFC 6298 5.4-5.6 with RFC 5681 eq. 4 and go-back-N from SND.UNA."""
        st = self.state
        limit = self.config.syn_retransmits if st in (SYN_SENT, SYN_RECEIVED) \
            else self.config.max_retransmits
        if self.retries >= limit:
            if st is SYN_RECEIVED and self.passive_open:
                self._enter_closed()
            else:
                if st in _SYNCHRONIZED:
                    self._rst_due = TcpSegment(self.local[1], self.remote[1], seq=int(self.snd_max),
                                               flags=RST)
                self._error(Event.TIMED_OUT)
            return
        self.retries += 1
        self.counters["rto"] += 1
        if self.retries == self.config.r1_retransmits:
            self._emit(Event.RETRANSMITTING)
        if st in (SYN_SENT, SYN_RECEIVED):
            self.rtt.backoff()
        else:
            flight = self.snd_max - self.snd_una
            if self.retries == 1:
                if self._undo_marker is None:
                    self._loss_episode()
                self.cc.on_timeout(now, flight)
            else:
                self.cc.cwnd = self.snd_mss
            self.rtt.backoff()
            self._reordering_gone()
            if self.df and self.retries == PMTU_BLACK_HOLE_RTOS and min(flight, self.snd_mss) > DEFAULT_MSS_IPV4:
                # A path MTU black hole (RFC 2923 2.1): a router that cannot forward our
                # segments and whose "fragmentation needed" is filtered on the way back.
                # Without DF, it fragments them instead (what every segment got before
                # path MTU discovery); after an outage, the only cost is the lost DF.
                self.df = False
                self.counters["pmtu-black-hole"] += 1
        self._go_back_to_una()
        self.recover = self.snd_max  # RFC 6582 section 4

    def _go_back_to_una(self):
        """Send everything outstanding again from SND.UNA (go-back-N, after an RTO or a
        smaller path MTU): the SACK scoreboard (RFC 2018 8: advisory), any recovery and
        probe are dropped, and what goes again gives no RTT sample (Karn)."""
        self.snd_nxt = self.snd_una
        self.scoreboard.clear()
        self.recovery = None
        self._tlp_due = False
        self._tlp_end = None
        self.high_rxt = None
        self._rack_reset()
        self._rxt_at_exit = []
        self.dupacks = 0
        self._rexmit_una = False
        self._rtt_seq = None

    def _zero_window_probe_due(self, now):
        """Persist timer (RFC 9293 3.8.6.1, MUST-36): probe; give up only if probes go unanswered."""
        if self._probes >= self.config.max_retransmits:
            self._rst_due = TcpSegment(self.local[1], self.remote[1], seq=int(self.snd_max), flags=RST)
            self._error(Event.TIMED_OUT)
            return
        self._probe_due = True
        self._probes += 1
        self._persist_backoff += 1
        self.counters["zero-window-probe"] += 1

    def _keepalive_due(self, now):
        """Keepalive timer (RFC 9293 3.8.4): probe an idle connection, time out if silent."""
        if self._ka_probes >= self.config.keepalive_probes:
            self._error(Event.TIMED_OUT)
            return
        self._ka_due = True
        self._ka_probes += 1
        self.counters["keepalive-probe"] += 1

    def _update_timers(self, now):
        st = self.state
        if st is CLOSED or st is TIME_WAIT:
            return
        cfg = self.config
        # retransmission timer: armed while anything is outstanding (RFC 6298 5.1, 5.2)
        if 0 < (self._snd_nxt - self._snd_una) & MASK < HALF:  # SND.NXT > SND.UNA
            if self.rto_at is None:
                self.rto_at = now + self.rtt.rto
            # loss probe timeout (RFC 8985 7.2): 2*SRTT (floored), plus the receiver's worst
            # delayed ACK with one segment in flight, never later than the RTO
            if self.tlp_at is None and self.sack_ok and self._tlp_armed():
                srtt = self.rtt.srtt
                if srtt is None:
                    t = now + 1.0
                else:
                    t = now + (2 * srtt if srtt > TLP_MIN_PTO / 2 else TLP_MIN_PTO)
                    if (self._snd_max - self._snd_una) & MASK <= self.snd_mss:
                        t += TLP_WORST_DELAYED_ACK
                rto_at = self.rto_at
                self.tlp_at = t if t < rto_at else rto_at
        else:
            self.rto_at = None
            self.tlp_at = None
        # persist timer: zero window, data waiting, nothing in flight
        if (self.snd_wnd == 0 and st in _SENDS_DATA and self.snd_nxt == self.snd_una
                and Seq(self._sndbuf_seq + self._sndbuf.size) > self.snd_nxt):
            if self.persist_at is None and not self._probe_due:
                backoff = self.rtt.rto * (2 ** min(self._persist_backoff, 16))
                self.persist_at = now + min(backoff, cfg.max_rto)  # SHLD-29, SHLD-30
        else:
            self.persist_at = None
        # keepalive: only when idle (nothing outstanding), MUST-26
        if cfg.keepalive and st in (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2) \
                and self.snd_max == self.snd_una:
            due = self._last_rx + cfg.keepalive_idle + self._ka_probes * cfg.keepalive_interval
            if self.keepalive_at is None or self.keepalive_at != due:
                self.keepalive_at = due
        else:
            self.keepalive_at = None

    # ------------------------------------------------------------------ transmit

    def wants_transmit(self):
        """True if `transmit` would produce a segment now (cheap check for the poller)."""
        st = self.state
        if self._replies or self._rst_due is not None or self._probe_due or self._ka_due:
            return True
        if self.ack_now and st is not SYN_SENT and st is not CLOSED:
            return True
        if st in (SYN_SENT, SYN_RECEIVED):
            return self.snd_nxt == self.iss
        if st not in _SENDS_DATA:
            return False
        if self._rexmit_una or self._tlp_due:
            return True
        if not self._sndbuf.size and not self._fin_queued and self.recovery is None:
            return False  # nothing queued, nothing to retransmit: the request/response idle case
        if self.scoreboard.blocks:
            self._skip_sacked()
        if self._rack_lost and self._in_rto_recovery() and self._rto_resend_room():
            return True
        if self.recovery == "sack":
            if self.cc.cwnd - self._pipe() >= self.snd_mss and (
                    self._rack_range() is not None  # (what is left of RACK's list, as the pull sees it)
                    or self.scoreboard.next_seg(self.snd_una, self.snd_max, self.high_rxt, self.snd_mss)[1]
                    or self._rescue_open()):
                return True
        return self._next_data_len() > 0 or self._fin_sendable()

    def transmit(self, now, limit=64):
        """The transmit pull: up to `limit` segments to send now, in order."""
        last = self._last_data_tx
        if last is not None and now - last > self.rtt.rto:
            self._restart_after_idle()
        if self.state is ESTABLISHED:
            out = self._predicted_transmit(now, limit)
            if out is not None:
                return out
        return self._transmit(now, limit)

    def _predicted_transmit(self, now, limit):
        """The common pull of an ESTABLISHED connection, in one pass; None when it does not apply.

        It applies when all there is to send is new data from SND.NXT = SND.MAX (sized by
        `_next_data_len`, as always) and maybe an ACK: no reply, reset, retransmission,
        loss recovery, SACK state, retransmission RACK watches, probe, keepalive, FIN,
        urgent data, nor an ECN signal to give (ECE to echo, CWR to set; with ECN, the
        data goes as ECT, RFC 3168 6.1.5). The segments and the state after are exactly
        those of `_transmit` (the tests compare the two); `_data_segment`, `_build_data`
        and `_segment` are inlined for that case. Returns None, having changed nothing,
        otherwise.
        """
        if (self._replies or self._rst_due is not None or self._rexmit_una or self.recovery is not None
                or self.scoreboard.blocks or self._ka_due or self._probe_due or self._tlp_due or self._fin_queued
                or self._ece_pending or self._cwr_due or self.snd_up is not None or (self._ofo and self.sack_ok)
                or self._dsack is not None or self._rack_rxt or self._rack_lost):
            return None  # (RACK's lists: after an RTO, it must know what goes, `_rack_sent`)
        if self._snd_nxt != self._snd_max:
            return None  # going back after a timeout
        out = []
        sndbuf = self._sndbuf
        ect = self.ecn_ok
        while len(out) < limit:
            n = self._next_data_len()
            if n <= 0:
                break
            nxt = self._snd_nxt
            off = (nxt - self._sndbuf_seq) & MASK
            if off >= HALF:
                off -= 0x100000000  # (`signed_distance`, inline)
            end = off + n
            # PSH on the segment that empties the buffer (MUST-61, SHLD-27)
            flags = ACK | PSH if end == sndbuf.size else ACK
            seg = TcpSegment(self.local[1], self.remote[1], nxt, self._rcv_nxt, flags, self._window_field(),
                             0, None, None, False,
                             ((int(now * 1000) + self._ts_offset) & MASK, self.ts_recent) if self.ts_ok else None,
                             (), sndbuf.view(off, n))
            if ect:
                seg.ect = True
            # (`_ack_sent`, inline)
            self.ack_now = False
            self.delack_at = None
            self._rcv_unacked = 0
            self._last_ack_sent = self._rcv_nxt
            self._snd_nxt = self._snd_max = new_nxt = (nxt + n) & MASK
            self._tx_flight = (new_nxt - self._snd_una) & MASK
            self._last_data_tx = now
            if self._rtt_seq is None and self.retries == 0:
                self._rtt_seq, self._rtt_time = as_seq(new_nxt), now  # time this segment (RFC 6298 3)
            if self.rto_at is None:
                self.rto_at = now + self.rtt.rto
            self.tlp_at = None  # restarted by `_update_timers` after new data (RFC 8985 7.2)
            out.append(seg)
            if flags & PSH:
                break
        if self.ack_now and len(out) < limit:
            out.append(self._segment(self.snd_max, ACK, b"", now))
        self._update_timers(now)
        return out

    def _restart_after_idle(self):
        """No data sent for more than an RTO: before sending again, cwnd to at most the
        restart window, min(initial window, cwnd) (RFC 5681 4.1), if nothing is in flight."""
        rw = self.config.initial_window * self.snd_mss
        if self.cc.cwnd > rw and self._snd_max == self._snd_una:
            self.cc.restart(rw)
            self.counters["cwnd-restart"] += 1

    def _transmit(self, now, limit):
        """The full transmit pull (see `transmit`)."""
        out = []
        replies = self._replies
        while replies and len(out) < limit:
            out.append(replies.pop(0))
        if self._rst_due is not None and len(out) < limit:
            out.append(self._rst_due)
            self._rst_due = None
        st = self.state
        if st is CLOSED or len(out) >= limit:
            return out
        if st in (SYN_SENT, SYN_RECEIVED):
            if self.snd_nxt == self.iss:
                out.append(self._syn_segment(now))
        elif st in _SENDS_DATA:
            self._transmit_data(now, limit, out)
        if len(out) < limit and (self._ka_due or self._probe_due):
            if self._probe_due:
                self._probe_due = False
                out.append(self._probe_segment(now))
            if self._ka_due and len(out) < limit:
                self._ka_due = False
                # SHLD-12: no data; SEQ = SND.NXT - 1 makes the peer answer with an ACK.
                out.append(self._segment(self.snd_max - 1, ACK, b"", now))
        if self.ack_now and len(out) < limit and st is not SYN_SENT:
            out.append(self._segment(self.snd_max, ACK, b"", now))
        self._update_timers(now)
        return out

    def _syn_segment(self, now):
        cfg = self.config
        flags = SYN
        seg = TcpSegment(self.local[1], self.remote[1], seq=int(self.iss), flags=SYN,
                         mss=self.rcv_mss, window=min(cfg.recv_buffer, 0xFFFF))
        if self.state is SYN_RECEIVED:
            flags |= ACK | (ECE if self.ecn_ok else 0)
            seg.ack = int(self.rcv_nxt)
            if self.ws_ok:
                seg.wscale = self.rcv_wscale
            if self.sack_ok:
                seg.sack_permitted = True
            if self.ts_ok:
                seg.timestamp = (self._ts_now(now), self.ts_recent)
            self._ack_sent()
        else:
            # RFC 3168 6.1.1.1: a SYN that goes unanswered may have been dropped for its ECN
            # bits by a middlebox; retransmissions go without them (as Linux's tcp_ecn_fallback),
            # and so does the SYN that follows a reset of an ECN-setup SYN (`_syn_sent_arrival`)
            self._ecn_syn = cfg.ecn and not self.retries and not self._ecn_syn_reset
            if self._ecn_syn:
                flags |= ECE | CWR
            if cfg.window_scaling:
                seg.wscale = cfg.window_shift()
            if cfg.sack:
                seg.sack_permitted = True
            if cfg.timestamps:
                seg.timestamp = (self._ts_now(now), 0)
        seg.flags = flags
        if self.snd_max != self.iss:
            # Sent before (SND.MAX passed ISS with the first copy): an ACK may answer either
            # copy, so this one is not timed (Karn, RFC 6298 3, MUST-18), and with timestamps
            # an echo older than it is no sample either (`_new_ack`). A peer that retransmits
            # its SYN,ACK echoes the first SYN's TSval, which would time our wait as an RTT.
            self._rtt_seq = None
            if seg.timestamp is not None:
                self._rexmit_ts = seg.timestamp[0]
        else:
            self._rtt_seq, self._rtt_time = self.iss + 1, now
        self.snd_nxt = self.iss + 1
        self.snd_max = seq_max(self.snd_max, self.snd_nxt)
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto
        return seg

    def _fin_seq(self):
        return Seq(self._sndbuf_seq + self._sndbuf.size)

    def _fin_sendable(self):
        return self._fin_queued and self.snd_nxt == self._fin_seq()

    def _next_data_len(self):
        """Octets the next new-data segment from SND.NXT may carry now (0: hold back).

        At most one MSS, or with TSO (`TcpConfig.tso_max`) as many whole MSS as the
        congestion window, the peer's window and `tso_max` allow: the device cuts such a
        segment into MSS-sized ones, so each of them must pass the same rules as if it
        had been built here. A partial last piece therefore rides along only where the
        Nagle and SWS rules would send it behind the full ones (`_small_ok` with data in
        flight). Retransmissions (going back after a timeout) stay MSS-sized, and so does
        a segment carrying URG or CWR, whose meaning the device's cut would change.
        """
        size = self._sndbuf.size
        if not size:
            return 0  # (SND.NXT never lies before the buffer's start in the states that send data)
        # Plain-int wraparound arithmetic (see `_predicted_arrival`): ``Seq - Seq`` is
        # `signed_distance`, written out here (``d - 2**32 if d >= HALF``) for the calls it saves.
        nxt = self._snd_nxt
        d = (nxt - self._sndbuf_seq) & MASK
        avail = size - (d - 0x100000000 if d >= HALF else d)
        if avail <= 0:
            return 0
        mss = self.snd_mss
        una = self._snd_una
        if self.recovery is None:
            flight = (nxt - una) & MASK
            if flight >= HALF:
                flight = 0
            elif flight and self.scoreboard.blocks:
                flight -= self.scoreboard.sacked_between(self.snd_una, self.snd_nxt)
            cwnd_left = self.cc.cwnd - flight
            if 0 < self.dupacks < 3:
                cwnd_left += self.dupacks * mss  # limited transmit (RFC 3042)
        else:
            cwnd_left = self.cc.cwnd - self._flight()
        d = (una + self.snd_wnd - nxt) & MASK
        wnd_left = d - 0x100000000 if d >= HALF else d
        smax = self._snd_max
        at_max = (nxt - smax) & MASK < HALF  # SND.NXT >= SND.MAX: not going back
        tso = self.config.tso_max
        tso_ok = (tso >= 2 * mss and at_max and not self._cwr_due
                  and (self.snd_up is None or self.snd_up <= self.snd_nxt))
        n = tso - tso % mss if tso_ok else mss  # min(that, avail, wnd_left, cwnd_left), without the call
        if avail < n:
            n = avail
        if wnd_left < n:
            n = wnd_left
        if cwnd_left < n:
            n = cwnd_left
        if tso_ok and n > mss:
            tail = n % mss
            if tail and not self._small_ok(tail, n == avail, n == wnd_left, False):
                n -= tail
            return n
        if n <= 0:
            return 0
        if not at_max:
            return n  # going back after a timeout: resend what fits
        if n >= mss or self._small_ok(n, n == avail, n == wnd_left, smax == una):
            return n
        return 0

    def _small_ok(self, n, empties_buffer, fills_window, idle):
        """May a segment of `n` < MSS octets go now? `idle`: nothing else is in flight."""
        if empties_buffer and (self.config.nodelay or idle or self._fin_queued):
            return True  # Nagle allows the tail (SHLD-7, MUST-17)
        # Sender SWS avoidance (RFC 9293 3.8.6.2.1): fill at least half the largest
        # window seen, or the whole offered window when nothing is in flight.
        return fills_window and (n >= self.max_snd_wnd // 2 or idle)

    def _flight(self):
        if self.recovery == "sack":
            return self._pipe()
        if self.snd_nxt <= self.snd_una:
            return 0
        # SACKed octets below SND.NXT have left the network (matters when going back after RTO)
        return self.snd_nxt - self.snd_una - self.scoreboard.sacked_between(self.snd_una, self.snd_nxt)

    def _skip_sacked(self):
        """Going back after a timeout: move SND.NXT past a range the receiver already holds."""
        if self.scoreboard.blocks and (self._snd_nxt - self._snd_max) & MASK >= HALF:  # SND.NXT < SND.MAX
            nxt = self.snd_nxt
            for a, b in self.scoreboard.blocks:
                if a <= nxt < b:
                    self.snd_nxt = b
                    break

    def _transmit_data(self, now, limit, out):
        if self._tlp_due and len(out) < limit:
            self._tlp_due = False
            out.append(self._tlp_segment(now))
        if self._rexmit_una and len(out) < limit:
            self._rexmit_una = False
            seg = self._retransmit_from(self.snd_una, now)
            if seg is not None:
                out.append(seg)
        if self.recovery == "sack":
            self._sack_recovery(now, limit, out)
        elif self._rack_lost and self._in_rto_recovery():
            self._rto_recovery_resend(now, limit, out)
        while len(out) < limit:
            if self.scoreboard.blocks:
                self._skip_sacked()
            n = self._next_data_len()
            if n > 0:
                if self.scoreboard.blocks and self.snd_nxt < self.snd_max:
                    for a, _b in self.scoreboard.blocks:
                        if a > self.snd_nxt:
                            n = min(n, a - self.snd_nxt)
                            break
                seg = self._data_segment(self.snd_nxt, n, now)
                out.append(seg)
                if seg.flags & PSH and not self._fin_queued:
                    break  # PSH: this segment emptied the send buffer, nothing else is due
                continue
            if self._fin_sendable():
                out.append(self._data_segment(self.snd_nxt, 0, now))
            break

    def _sack_recovery(self, now, limit, out):
        """RFC 6675 section 5 step (C): send while cwnd - pipe >= 1 SMSS, NextSeg's order."""
        mss = self.snd_mss
        resent = {}  # start -> end of what RACK sent again in this pull
        while len(out) < limit:
            if self.cc.cwnd - self._pipe() < mss:
                return
            rng = self._rack_range()
            if rng is not None:
                seg = self._rack_resend(rng, now)
                resent[rng[0]] = rng[0] + len(seg.payload)
                out.append(seg)
                continue
            rng, rule = self.scoreboard.next_seg(self.snd_una, self.snd_max, self.high_rxt, mss)
            if rule and rng[0] in resent:
                # A rescue above HighRxt that RACK just sent again (`_rack_resend`): NextSeg
                # has reached it with every hole below retransmitted; it passes, not twice.
                self.high_rxt = resent[rng[0]]
                continue
            if rule == 1:
                out.append(self._retransmit_range(rng[0], rng[1], now))
                continue
            if self._next_data_len() > 0 or self._fin_sendable():
                return  # rule 2: new data, sent by the caller's loop under the same cwnd - pipe
            if rule == 3:
                out.append(self._retransmit_range(rng[0], rng[1], now))
                continue
            rescue = self._rescue_range()
            if rescue is not None:
                high_rxt = self.high_rxt
                out.append(self._retransmit_range(rescue[0], rescue[1], now))
                self.high_rxt = high_rxt  # (4): "HighRxt MUST NOT be updated"
                continue
            return

    def _rescue_open(self):
        """May `_rescue_range` send (no side effect: `wants_transmit` asks too)? Not while
        SND.UNA has not passed RescueRxt, nor when the highest octet sent is SACKed."""
        if self._rescue_rxt is not None and self.snd_una <= self._rescue_rxt:
            return False
        high = self.scoreboard.high_sacked()
        return high is None or high < self.snd_max

    def _rescue_range(self):
        """NextSeg rule (4) of RFC 6675 section 4: the rescue retransmission.

        When rules (1)-(3) give nothing but text above the highest SACKed octet is still
        outstanding, nothing above it can ever be SACKed to show it lost: a tail lost
        inside recovery would wait for the RTO. Once per entry into recovery (while
        SND.UNA has not passed RescueRxt), one segment ending with the highest outstanding
        octet goes, and RescueRxt becomes the RecoveryPoint. None when it does not apply.
        """
        if not self._rescue_open():
            return None
        high = self.scoreboard.high_sacked()
        start = seq_max(self.snd_max - self.snd_mss, high if high is not None else self.snd_una)
        self._rescue_rxt = self.recover
        self.counters["rescue-retransmit"] += 1
        return start, self.snd_max

    def _in_rto_recovery(self):
        """After an RTO, until everything outstanding at it is acknowledged: SACK recovery
        may not start (RFC 6675 5.1, RecoveryPoint = HighData), the text goes again from
        SND.UNA (go-back-N, `_go_back_to_una`), and RACK watches what goes (RFC 8985 6.3)."""
        return self.recovery is None and self.sack_ok and (self._snd_una - self._recover) & MASK >= HALF

    def _rto_recovery_resend(self, now, limit, out):
        """After an RTO, what went again and RACK found lost too (RFC 8985 6.2: sent before
        text since delivered, by more than RACK.rtt) goes once more, ahead of the rest of
        the go-back, while cwnd allows. RFC 6675 5.1 rules out a new SACK recovery until
        RecoveryPoint is acknowledged, so without this such a loss (a dropped burst of the
        go-back: the whole TSO super-frame or the one retransmission at cwnd = 1 SMSS)
        waits for the next, backed-off RTO while the peer SACKs everything around it.
        The lost ranges have left the network: they do not count as in flight."""
        while len(out) < limit and self._rto_resend_room():
            out.append(self._rack_resend(self._rack_range(), now))

    def _rto_resend_room(self):
        """Is there a lost retransmission to send again after an RTO, and cwnd room for it?"""
        return self._rack_range() is not None and \
            self.cc.cwnd - (self._flight() - self._rack_lost_octets()) >= self.snd_mss

    def _pipe(self):
        """SetPipe (`Scoreboard.pipe`), less the retransmissions RACK found lost and not yet
        sent again: they have left the network (RFC 8985 6.2 marks them lost)."""
        pipe = self.scoreboard.pipe(self.snd_una, self.snd_max, self.high_rxt, self.snd_mss)
        return max(pipe - self._rack_lost_octets(), 0)

    def _rack_lost_octets(self):
        """Octets RACK found lost, not SACKed and not yet sent again."""
        una = self.snd_una
        n = 0
        for start, end in self._rack_lost:
            start = seq_max(start, una)
            if end > start:
                n += (end - start) - self.scoreboard.sacked_between(start, end)
        return n

    def _rack_reset(self):
        self._rack_new = []
        self._rack_rxt = []
        self._rack_point = None
        self._rack_lost = []

    def _rack_sent(self, start, end, now, retransmission):
        self._rack_serial += 1
        (self._rack_rxt if retransmission else self._rack_new).append((start, end, now, self._rack_serial))

    def _rack_detect(self, now):
        """RACK's loss rule (RFC 8985 6.2) for the retransmissions of a SACK recovery, and of
        the go-back after an RTO (`_rto_recovery_resend`).

        RFC 6675 retransmits a hole once (HighRxt passes it): a retransmission that is
        lost too waits for the RTO, which goes back to SND.UNA with cwnd at one segment.
        RACK orders by send time instead. What the recovery sends is kept with its time;
        the latest sent of what is now delivered (ACKed or SACKed, in part) gives
        RACK.xmit_ts and RACK.rtt (its time since sending); a retransmission sent before
        it and still not delivered is lost once ``sent + RACK.rtt + reo_wnd <= now``, and
        goes again (`_rack_range`) ahead of NextSeg. A retransmission delivered sooner
        than min_RTT after it went was the original arriving and sets nothing (step 2).
        The reordering window is 0 until reordering was seen (DupThresh raised), then
        min_RTT/4 (6.2 step 4). Each ACK checks again; there is no timer of RACK's own:
        without further ACKs, the RTO remains the backstop.

        New text goes in sequence order, so the latest sent of it that was delivered
        holds the highest delivered octet: a bisection, not a scan, per ACK.
        """
        una = self.snd_una
        board = self.scoreboard
        point = self._rack_point
        new = self._rack_new
        if new:
            top = board.high_sacked()
            top = una - 1 if top is None or top < una else top - 1  # the highest delivered octet
            i = bisect_right(new, top, key=_entry_start) - 1
            if i >= 0 and top < new[i][1] and (point is None or new[i][3] > point[1]):
                sent, serial = new[i][2], new[i][3]
                point = (sent, serial, now - sent)
            if i >= 0:
                del new[:i + 1]  # older than any point to come
        min_rtt = self.rtt.min_rtt
        waiting = []
        for entry in self._rack_rxt:
            start, end, sent, serial = entry
            if start < una or board.sacked_between(start, end):
                rtt = now - sent
                if (point is None or serial > point[1]) and (min_rtt is None or rtt >= min_rtt):
                    point = (sent, serial, rtt)
            else:
                waiting.append(entry)
        self._rack_point = point
        self._rack_rxt = waiting
        if point is None:
            return
        reo_wnd = 0.0
        if board.dup_thresh > DUP_THRESH and min_rtt is not None:
            reo_wnd = min(min_rtt / 4, self.rtt.srtt)
        _sent, last, rack_rtt = point
        self._rack_rxt = []
        for entry in waiting:
            start, end, sent, serial = entry
            if serial < last and sent + rack_rtt + reo_wnd <= now:
                self._rack_lost.append((start, end))
                self.counters["rack-lost-retransmit"] += 1
            else:
                self._rack_rxt.append(entry)

    def _rack_range(self):
        """The next piece (at most one MSS, not SACKed) of a retransmission RACK found
        lost, or None; `_rack_resend` sends it."""
        lost = self._rack_lost
        while lost:
            start, end = lost[0]
            start = seq_max(start, self.snd_una)
            for a, b in self.scoreboard.blocks:
                if a <= start < b:
                    start = b
                elif a > start:
                    end = seq_min(end, a)
                    break
            if end > start:
                return start, seq_min(end, start + self.snd_mss)
            lost.pop(0)
        return None

    def _rack_marks_holes(self):
        """RACK's rule (RFC 8985 6.2) for the text sent once, inside a SACK recovery: every
        hole below the highest SACKed octet is lost, not only those RFC 6675's IsLost finds
        (DupThresh segments SACKed above).

        Text goes out in sequence order the first time, so a hole sent once went before
        the SACKed text above it, and by the time that text's SACK is here a round trip
        (RACK.rtt) has passed since the hole went: with a reordering window of 0, which
        RACK takes in recovery while no reordering has been seen (6.2 step 4), the hole is
        lost. Counted in flight, it kept a small window full: at cwnd of three or four
        segments, a hole at SND.UNA with one SACKed segment above it was never sent again
        while the last segments and their ACKs went missing, and only the RTO went on
        (the Sim at 10 % loss: 78 of 280 RTOs). Once reordering was seen (DupThresh
        raised), RFC 6675's rule stays. What went again already is RACK's (`_rack_detect`)."""
        board = self.scoreboard
        if board.dup_thresh == DUP_THRESH:
            high = board.high_sacked()
            if high is not None and (board.lost_below is None or high > board.lost_below):
                board.lost_below = high

    def _rack_resend(self, rng, now):
        """Retransmit `rng`, from `_rack_range`, and take what went out of RACK's list.

        HighRxt stays (RFC 6675's, for NextSeg's order): what RACK sends again went once
        already, below HighRxt or as the rescue retransmission above it, which rule (4)
        keeps out of HighRxt. Moved by a resent rescue, HighRxt passed holes never yet
        retransmitted, NextSeg never offered them, and only the RTO repaired them (in
        the simulator, a slow-start overshoot into a drop-tail queue, every seed)."""
        high_rxt = self.high_rxt
        seg = self._retransmit_range(rng[0], rng[1], now)
        self.high_rxt = high_rxt
        sent_end = rng[0] + len(seg.payload) + (1 if seg.flags & FIN else 0)
        lost = self._rack_lost
        if sent_end < lost[0][1]:
            lost[0] = (sent_end, lost[0][1])
        else:
            lost.pop(0)
        return seg

    def _retransmit_from(self, start, now):
        """Retransmit one segment from `start` (fast retransmit / partial ACK)."""
        end = self.snd_max
        for a, _b in self.scoreboard.blocks:
            if a > start:
                end = seq_min(end, a)
                break
        end = seq_min(end, start + self.snd_mss)
        if end <= start:
            return None
        return self._retransmit_range(start, end, now)

    def _retransmit_range(self, start, end, now):
        """Retransmit from `start` towards `end`: one segment, which may carry less when
        SACK blocks of our own take option room (`_build_data`). HighRxt moves to where
        it ended, so NextSeg still finds the rest of the range."""
        self.counters["retransmit"] += 1
        if self._undo_marker is not None:
            self._undo_retrans += 1
        self._rexmit_ts = self._ts_now(now)
        if self._rtt_seq is not None and self._rtt_seq > start:
            self._rtt_seq = None  # Karn: the timed segment is (maybe) this one
        fin_seq = self._fin_seq() if self._fin_queued else None
        data_end = seq_min(end, Seq(self._sndbuf_seq + self._sndbuf.size))
        n = max(data_end - start, 0)
        seg = self._build_data(start, n, fin_seq is not None and start + n == fin_seq and end > fin_seq, now)
        seg.resent = True
        if seg.payload or seg.flags & FIN:
            end = start + len(seg.payload) + (1 if seg.flags & FIN else 0)
        self.high_rxt = end if self.high_rxt is None else seq_max(self.high_rxt, end)
        if self.recovery == "sack" or self._in_rto_recovery():
            self._rack_sent(start, end, now, True)
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto
        return seg

    def _data_segment(self, start, n, now):
        """New (or go-back) data from `start`; advances SND.NXT and SND.MAX."""
        s = start.real
        smax = self._snd_max
        fin = self._fin_queued and (s + n) & MASK == self._fin_seq().real
        retransmission = (s - smax) & MASK >= HALF  # START < SND.MAX
        seg = self._build_data(start, n, fin, now, tso=not retransmission)
        fin = seg.flags & FIN
        n = len(seg.payload)
        if self.ecn_ok and n and not retransmission:
            seg.ect = True  # RFC 3168 6.1.5: never on retransmissions, 6.1.4: nor on pure ACKs
            if self._cwr_due:
                seg.flags |= CWR
                self._cwr_due = False
        new = (s + n + (1 if fin else 0)) & MASK
        self._snd_nxt = new
        if 0 < (new - smax) & MASK < HALF:
            self._snd_max = new
            self._tx_flight = (new - self._snd_una) & MASK
        new_nxt = as_seq(new)
        if retransmission:
            seg.resent = True
            self.counters["retransmit"] += 1
            if self._undo_marker is not None:
                self._undo_retrans += 1
            self._rexmit_ts = self._ts_now(now)
            if self._rtt_seq is not None and self._rtt_seq > start:
                self._rtt_seq = None
            if self._in_rto_recovery():
                self._rack_sent(start, new_nxt, now, True)  # going back after the RTO
        else:
            self.tlp_at = None  # new data restarts the PTO (RFC 8985 7.2)
            if self.recovery == "sack" or self._in_rto_recovery():
                self._rack_sent(start, new_nxt, now, False)
            if self._rtt_seq is None and self.retries == 0:
                self._rtt_seq, self._rtt_time = new_nxt, now
        if self.rto_at is None:
            self.rto_at = now + self.rtt.rto
        return seg

    def _build_data(self, start, n, fin, now, tso=False):
        """The segment carrying `n` octets from `start` (fewer if they do not fit).

        One MSS at most, less the room SACK blocks take; with `tso` (new data, sized by
        `_next_data_len`) up to `n`, unless SACK blocks ride along: the device repeats
        the header in every piece it cuts, so those pieces would not fit the MSS.
        """
        off = signed_distance(start.real - self._sndbuf_seq)
        seg = self._segment(start, ACK | (FIN if fin else 0), b"", now)
        sack_room = 4 + 8 * len(seg.sack) if seg.sack else 0
        if not tso or sack_room or n < self.snd_mss:
            n = max(min(n, self.snd_mss - sack_room), 0)
        if n:
            seg.payload = self._sndbuf.view(off, n)  # no copy unless it spans two writes
            self._last_data_tx = now
            if fin and n < self._fin_seq() - start:
                seg.flags &= ~FIN
            if off + n == self._sndbuf.size:
                seg.flags |= PSH  # MUST-61, SHLD-27: PSH on the segment that empties the buffer
        if self.snd_up is not None and self.snd_up > start:
            seg.flags |= URG
            seg.urgent = min(self.snd_up - start, 0xFFFF)
        return seg

    def _probe_segment(self, now):
        """One octet beyond the zero window (RFC 9293 3.8.6.1); SND.NXT stays put."""
        start = self.snd_nxt
        off = signed_distance(start.real - self._sndbuf_seq)
        seg = self._segment(start, ACK, b"", now)
        if 0 <= off < self._sndbuf.size:
            seg.payload = self._sndbuf.view(off, 1)
            self.snd_max = seq_max(self.snd_max, start + 1)
        return seg

    def _segment(self, seq, flags, payload, now):
        """A segment from this connection carrying ACK, window, timestamps and SACK blocks."""
        if self._ece_pending:
            flags |= ECE
        seg = TcpSegment(self.local[1], self.remote[1], seq.real, self._rcv_nxt, flags, self._window_field(),
                         0, None, None, False,
                         ((int(now * 1000) + self._ts_offset) & MASK, self.ts_recent) if self.ts_ok else None,
                         (), payload)  # (the timestamp is `_ts_now`'s, inline)
        if self.sack_ok and (self._ofo or self._dsack is not None):
            limit = 3 if self.ts_ok else 4
            ranges = [(s, s + len(d)) for s, d in self._ofo]
            dsack = self._dsack
            if dsack is None:
                blocks = receive_blocks(ranges, self._recent_ofo, limit, self._sack_reported)
                if blocks:
                    self._sack_reported = [blocks[0][0], *self._sack_reported[:limit - 1]]
            else:
                # RFC 2883 4: the D-SACK block first, then the out-of-order block holding the
                # duplicate if there is one (rule 4), then the rest as RFC 2018 orders them;
                # sent once (rule 2).
                self._dsack = None
                self.counters["dsack-sent"] += 1
                blocks = (dsack,) + receive_blocks(ranges, dsack[0], limit - 1, self._sack_reported)
            seg.sack = tuple((int(a), int(b)) for a, b in blocks)
        self._ack_sent()
        return seg

    def _ack_sent(self):
        self.ack_now = False
        self.delack_at = None
        self._rcv_unacked = 0
        self._last_ack_sent = self._rcv_nxt

    def _ts_now(self, now):
        return (int(now * 1000) + self._ts_offset) & 0xFFFFFFFF

    # ------------------------------------------------------------------ receive window

    def _window_field(self):
        """The window to advertise, scaled (RFC 7323 2.3), with receiver SWS avoidance.

        The right edge moves only by at least min(buffer/2, MSS) (RFC 9293 3.8.6.2.2)
        and never moves left (SHLD-14).
        """
        buffer = self.rcv_buffer
        avail = buffer - self._rcvbuf.size
        nxt = self._rcv_nxt
        adv = self._rcv_adv
        cur = (adv - nxt) & MASK  # RCV.ADV - RCV.NXT, 0 when the edge is behind
        if cur >= HALF:
            cur = 0
        step = buffer >> 1  # (no `min`: a builtin's call costs more than the test, per segment)
        mss = self.rcv_mss
        wnd = avail if avail - cur >= (step if step < mss else mss) else cur
        shift = self.rcv_wscale
        value = (wnd + (1 << shift) - 1) >> shift
        if value > 0xFFFF:
            value = 0xFFFF
        edge = (nxt + (value << shift)) & MASK
        if 0 < (edge - adv) & MASK < HALF:
            self._rcv_adv = edge
        return value

    def __repr__(self):
        return (f"<Connection {self.local}->{self.remote} {self.state.value} una={int(self.snd_una)} "
                f"nxt={int(self.snd_nxt)} max={int(self.snd_max)} rcv_nxt={int(self.rcv_nxt)}>")


def _acceptable(seq, seg_len, rcv_wnd, rcv_nxt):
    """RFC 9293 3.10.7.4 first step: the four cases of segment acceptability."""
    if seg_len == 0:
        if rcv_wnd == 0:
            return seq == rcv_nxt
        return seq.in_window(rcv_nxt, rcv_wnd)
    if rcv_wnd == 0:
        return False
    return seq.in_window(rcv_nxt, rcv_wnd) or (seq + seg_len - 1).in_window(rcv_nxt, rcv_wnd)


