"""A connection in TIME-WAIT, kept as a compact record until 2*MSL has passed.

Why: a `Connection` costs about 4.4 KB and 24 objects the garbage collector tracks
(buffers, estimators, the congestion controller, counters; `bench/time_wait.py`). A
server that closes first keeps every connection it served for 2*MSL (60 s, RFC 9293
MUST-13): at 4,000 connections a second, 240,000 machines, 1 GB, and every full
collection walks them all (within 8 s of such a load a shard was stalled 300-550 ms at a
time). What TIME-WAIT still does (RFC 9293 3.10.7.4: acknowledge a retransmitted FIN and
restart the timer, answer or drop other segments, let a newer SYN open a new incarnation,
RFC 6191) depends on a few dozen numbers, which a record keeps (Linux does the same with
its ``inet_timewait_sock``).

The rules themselves are not written twice: a segment for a record is rare (a
retransmitted FIN, a stray ACK, an old SYN), and the owner then rebuilds the machine with
`Connection.revive`, hands it the segment, and stores the record again if it is still
in TIME-WAIT. The one that is not rare, a client's next connection from the same port
(a busy client cycles through its ports well within 2*MSL), the owner tells from the
record alone with `syn_reopens`, the rule the connection applies too.

`TIME_WAIT_FIELDS` is every attribute those rules read; the others a revived connection
takes from a new one, which is what a connection in TIME-WAIT holds too (empty buffers
and queues, no timer but 2*MSL). The tests compare a connection with its revived record
segment for segment.

A record is a plain tuple of ints, floats, None and tuples of those (sequence numbers
as ints, the configuration left out when it is the owner's): the garbage collector
stops tracking such a tuple once a collection has seen it (and the tuples inside it), so
records cost no collection time however many there are (960 bytes each).
"""

from operator import attrgetter

from ..wire.tcp import ACK, RST, SYN
from .seq import HALF, MASK, Seq

_PLAIN_FIELDS = (
    "passive_open",
    # send side: all acknowledged, FIN included (SND.UNA = SND.NXT = SND.MAX)
    "_snd_una", "_snd_nxt", "_snd_max", "_sndbuf_seq", "_fin_queued", "_recover",
    "snd_wnd", "max_snd_wnd", "_snd_wl1", "_snd_wl2", "snd_wscale", "snd_mss", "df", "path_mtu",
    # receive side: the FIN taken, RCV.NXT past it
    "_rcv_nxt", "_rcv_adv", "rcv_wscale", "rcv_mss", "_eof",
    # options and what answering a segment uses
    "ws_ok", "ts_ok", "sack_ok", "ecn_ok", "_ece_pending", "ts_recent",
    "_ts_offset", "_last_ack_sent", "_challenge_window", "_unacceptable_ack_at", "_last_rx",
    "timewait_at",
)
_SEQ_FIELDS = ("iss", "irs", "snd_up", "rcv_up", "_ofo_fin", "_ecn_recover")  # `Seq` or None
TIME_WAIT_FIELDS = _PLAIN_FIELDS + _SEQ_FIELDS
_plain = attrgetter(*_PLAIN_FIELDS)
_seqs = attrgetter(*_SEQ_FIELDS)

# A record: (configuration or None, local, remote, receive buffer's free space, *TIME_WAIT_FIELDS).
# The free space, not the size: the octets the application has not read stay with the
# connection it holds, and the window a revived connection advertises is the same.
CONFIG, LOCAL, REMOTE, RCV_FREE = range(4)
_FIRST = 4
_FIRST_SEQ = _FIRST + len(_PLAIN_FIELDS)
ISS, TS_OK, TS_RECENT, RCV_NXT, TS_OFFSET, TIMEWAIT_AT = (
    _FIRST + TIME_WAIT_FIELDS.index(name)
    for name in ("iss", "ts_ok", "ts_recent", "_rcv_nxt", "_ts_offset", "timewait_at"))


def record(conn, owner_config=None):
    """The record of `conn` (a `Connection` in TIME-WAIT); its configuration is left out
    when it is `owner_config`, which `restore`'s caller then supplies. (A `Seq` is an
    object the collector tracks: sequence numbers go in as plain ints.)"""
    return (None if conn.config is owner_config else conn.config, conn.local, conn.remote,
            conn.rcv_buffer - conn.readable, *_plain(conn),
            *[None if v is None else v.real for v in _seqs(conn)])


def restore(conn, rec):
    """Give `conn`, a new `Connection`, the numbers of record `rec`."""
    for name, value in zip(_PLAIN_FIELDS, rec[_FIRST:_FIRST_SEQ]):
        setattr(conn, name, value)
    for name, value in zip(_SEQ_FIELDS, rec[_FIRST_SEQ:]):
        setattr(conn, name, None if value is None else Seq(value))
    conn.rcv_buffer = rec[RCV_FREE]


def syn_reopens(seg, ts_ok, ts_recent, rcv_nxt):
    """May `seg`, reaching a connection in TIME-WAIT, open a new incarnation (MAY-2)? A SYN
    without ACK or RST whose sequence number is above RCV.NXT (RFC 1122 4.2.2.13), or with
    timestamps, whose TSval is newer than TS.Recent (RFC 6191, SHLD-4). Plain-int sequence
    arithmetic (see `tcp.seq`).
    """
    if seg.flags & (SYN | ACK | RST) != SYN:
        return False
    if ts_ok and seg.timestamp is not None:
        return 0 < (seg.timestamp[0] - ts_recent) & MASK < HALF
    return 0 < (seg.seq - rcv_nxt) & MASK < HALF
