"""Selective acknowledgments: the sender's scoreboard (RFC 2018) and RFC 6675 recovery.

Theory of operation: the sender keeps the SACKed ranges above SND.UNA as a sorted
list of disjoint half-open ``[start, end)`` `Seq` intervals (`Scoreboard.blocks`).
The space between SND.UNA and SND.MAX that is not SACKed is a list of *holes*. RFC
6675's per-octet functions become per-hole ones because a hole contains no SACKed
octet, so every octet of a hole has the same SACKed data above it: `IsLost` is
constant across a hole. `pipe` (SetPipe, RFC 6675 section 4) and `next_seg`
(NextSeg, rules 1 and 3; rule 2, new data, is the connection's business) work hole
by hole, all holes judged in one pass (`_judged_holes`). After a retransmission
timeout the sender clears the board (RFC 2018 section 8: SACK information is
advisory and the receiver may renege).

`receive_blocks` is the receiver's half: which SACK blocks to put in an ACK.
`dsack_block` tells a D-SACK block (RFC 2883) in what a receiver sent.
"""
from bisect import bisect_right
from operator import itemgetter

from .seq import Seq, seq_max, seq_min

_block_end = itemgetter(1)

DUP_THRESH = 3
MAX_DUP_THRESH = 300
"""The most a connection raises its DupThresh to for the reordering it has seen (Linux's
tcp_max_reordering): beyond a window of that many segments, the RTO and the tail loss
probe detect losses anyway."""


class Scoreboard:
    """SACKed ranges above SND.UNA for one connection, and the connection's DupThresh.

    `dup_thresh` starts at RFC 6675's 3 and is raised by the connection when a fast
    retransmit proves spurious (see `Connection._episode_over`): the reordering the
    path showed then becomes what loss detection tolerates (RFC 4653's idea, Linux's
    reordering metric).

    `lost_below`, when set, is a sequence number below which every unSACKed octet is
    lost whatever `dup_thresh` says: RACK's verdict (RFC 8985 6.2) when text sent
    after all of it was delivered (`Connection._probe_shows_loss`, and in a recovery
    without reordering the highest SACKed octet, `Connection._rack_marks_holes`). It
    holds for one recovery.
    """

    __slots__ = ("blocks", "dup_thresh", "lost_below")

    def __init__(self):
        self.blocks = []
        self.dup_thresh = DUP_THRESH
        self.lost_below = None

    def __bool__(self):
        return bool(self.blocks)

    def clear(self):
        self.blocks = []
        self.lost_below = None

    def update(self, sack_blocks, snd_una, snd_max):
        """Merge received SACK blocks; return True if any octet became newly SACKed.

        Blocks not wholly inside (SND.UNA, SND.MAX] are ignored (RFC 2018 section 4:
        such blocks, e.g. D-SACKs of RFC 2883, carry no new loss information).
        """
        new = False
        for left, right in sack_blocks:
            left, right = Seq(left), Seq(right)
            if not (snd_una < right <= snd_max) or left >= right or left < snd_una:
                continue
            if self._add(left, right):
                new = True
        return new

    def _add(self, left, right):
        before = self.sacked_bytes()
        out = []
        placed = False
        for a, b in self.blocks:
            if b < left:
                out.append((a, b))
            elif right < a:
                if not placed:
                    out.append((left, right))
                    placed = True
                out.append((a, b))
            else:
                left, right = seq_min(a, left), seq_max(b, right)
        if not placed:
            out.append((left, right))
        self.blocks = out
        return self.sacked_bytes() > before

    def advance(self, snd_una):
        """Forget everything below the new cumulative ACK point."""
        blocks = self.blocks
        if not blocks or blocks[0][0] >= snd_una:
            return
        out = []
        for a, b in blocks:
            if b <= snd_una:
                continue
            out.append((seq_max(a, snd_una), b))
        self.blocks = out

    def sacked_bytes(self):
        return sum(b - a for a, b in self.blocks)

    def sacked_between(self, start, end):
        """SACKed octets in [start, end). The blocks are sorted and disjoint: a bisection
        finds the first that ends above `start`, and the scan stops at the first that starts
        at `end` or later (RACK asks this for every retransmission it watches, on every ACK)."""
        blocks = self.blocks
        n = 0
        for i in range(bisect_right(blocks, start, key=_block_end), len(blocks)):
            a, b = blocks[i]
            if a >= end:
                break
            n += (b if b < end else end) - (a if a > start else start)
        return n

    def high_sacked(self):
        """HighACK's counterpart: the end of the highest SACKed range, or None."""
        return self.blocks[-1][1] if self.blocks else None

    def is_lost(self, seq, mss):
        """IsLost(SeqNum) of RFC 6675 section 4.

        True if at least `dup_thresh` discontiguous SACKed ranges lie above `seq`
        or more than (dup_thresh - 1) * SMSS octets above it are SACKed, or if `seq`
        is below `lost_below`.
        """
        if self.lost_below is not None and seq < self.lost_below:
            return True
        dup_thresh = self.dup_thresh
        ranges = 0
        octets = 0
        for a, b in self.blocks:
            if b > seq:
                ranges += 1
                octets += b - seq_max(a, seq + 1)
        return ranges >= dup_thresh or octets > (dup_thresh - 1) * mss

    def _judged_holes(self, snd_una, snd_max, mss):
        """The unSACKed ranges in [SND.UNA, SND.MAX), lowest first, each with what `is_lost`
        says of its octets by the SACKed data above (`lost_below` is left to the caller):
        ``(start, end, lost)``.

        The ranges above a hole are exactly the blocks after it, so their count and
        octets are suffix sums, and one pass judges every hole. (`is_lost` per hole scans
        every block: quadratic in the blocks, which a small MSS and a wide window with
        many drops make hundreds, and SetPipe runs on every ACK of a recovery.)
        """
        blocks = self.blocks
        n = len(blocks)
        above = [0] * (n + 1)  # octets SACKed in blocks[i:]
        for i in range(n - 1, -1, -1):
            a, b = blocks[i]
            above[i] = above[i + 1] + (b - a)
        dup_thresh = self.dup_thresh
        octets = (dup_thresh - 1) * mss
        out = []
        cur = snd_una
        for i, (a, b) in enumerate(blocks):
            if a > cur:
                out.append((cur, a, n - i >= dup_thresh or above[i] > octets))
            cur = seq_max(cur, b)
        if snd_max > cur:
            out.append((cur, snd_max, False))  # nothing SACKed above the last hole
        return out

    def pipe(self, snd_una, snd_max, high_rxt, mss):
        """SetPipe (RFC 6675 section 4): octets believed to be in the network."""
        pipe = 0
        lost_below = self.lost_below
        for a, b, lost in self._judged_holes(snd_una, snd_max, mss):
            if not lost and (lost_below is None or a >= lost_below):
                pipe += b - a
            if high_rxt is not None and high_rxt > a:
                pipe += seq_min(b, high_rxt) - a
        return pipe

    def next_seg(self, snd_una, snd_max, high_rxt, mss):
        """NextSeg rules 1 and 3 (RFC 6675 section 4): the next range to retransmit.

        Returns ``(start, end)`` of at most `mss` octets: first an unSACKed range
        above HighRxt and below the highest SACKed octet that `is_lost` (rule 1),
        else such a range that is not yet deemed lost (rule 3) - in which case the
        caller must first prefer new data (rule 2). ``(None, rule)`` when none.
        """
        high = self.high_sacked()
        if high is None:
            return None, 0
        candidate = None
        lost_below = self.lost_below
        for a, b, lost in self._judged_holes(snd_una, high, mss):
            if high_rxt is not None:
                if b <= high_rxt:
                    continue
                a = seq_max(a, high_rxt)  # (still inside the hole: the same blocks lie above)
            seg = (a, seq_min(b, a + mss))
            if lost or (lost_below is not None and a < lost_below):
                return seg, 1
            if candidate is None:
                candidate = seg
        return (candidate, 3) if candidate is not None else (None, 0)


def receive_blocks(ofo_ranges, recent, limit, reported=()):
    """SACK blocks for an outgoing ACK (RFC 2018 section 4).

    `ofo_ranges` are the receiver's out-of-order ``(start, end)`` ranges. The one
    containing `recent` (the start of the most recently received segment) goes first,
    as the RFC requires. Then come the blocks most recently reported: `reported` holds
    a sequence number inside the first block of each earlier SACK option, the latest
    first, and the ranges holding them follow in that order (the RFC's SHOULD: every
    block is then reported in at least three successive ACKs, so a lost ACK does not
    hide it from the sender, whose RACK would take text it never heard of as lost).
    The others, in sequence order, fill the rest up to `limit` blocks.
    """
    out = []
    for x in (recent, *reported):
        if x is None:
            continue
        for a, b in ofo_ranges:
            if a <= x < b:
                if (a, b) not in out:
                    out.append((a, b))
                break
    for r in ofo_ranges:
        if len(out) >= limit:
            break
        if r not in out:
            out.append(r)
    return tuple(out[:limit])


def dsack_block(sack_blocks, ack):
    """The first of the received `sack_blocks` as a ``(Seq, Seq)`` range if it reports
    duplicate data (a D-SACK, RFC 2883 section 4: it lies at or below the cumulative
    `ack`, or inside the second block), else None."""
    left, right = Seq(sack_blocks[0][0]), Seq(sack_blocks[0][1])
    if left >= right:
        return None
    if right <= ack:
        return left, right
    if len(sack_blocks) > 1 and Seq(sack_blocks[1][0]) <= left and right <= Seq(sack_blocks[1][1]):
        return left, right
    return None
