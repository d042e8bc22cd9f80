"""Unit tests of the TCP helpers: Seq, RTT estimator, congestion controllers, SACK scoreboard, ISN."""
import pytest
from hypothesis import given, strategies as st

from shoal.net.native.tcp import congestion
from shoal.net.native.tcp.isn import IsnGenerator
from shoal.net.native.tcp.rtt import RttEstimator
from shoal.net.native.tcp.sack import Scoreboard, dsack_block, receive_blocks
from shoal.net.native.tcp.seq import HALF, MASK, Seq, as_seq, seq_attribute, seq_max, seq_min, signed_distance

# ------------------------------------------------------------------ Seq


def test_seq_wraps_and_compares():
    a = Seq(0xFFFFFFF0)
    b = a + 0x20
    assert b == 0x10 and isinstance(b, Seq)
    assert a < b and b > a and b - a == 0x20 and a - b == -0x20
    assert seq_max(a, b) == b and seq_min(a, b) == a
    assert (b - 0x20) == a
    assert Seq(5).in_window(Seq(0xFFFFFFFE), 8) and not Seq(6).in_window(Seq(0xFFFFFFFE), 8)


@given(st.integers(0, 2**32 - 1), st.integers(-2**31 + 1, 2**31 - 1))
def test_seq_distance_property(x, d):
    a = Seq(x)
    b = a + d
    assert b - a == d
    assert (a < b) == (d > 0) and (a == b) == (d == 0)  # MUST-1 / REC-1: unsigned 32-bit arithmetic


def test_seq_attribute_is_a_seq_kept_as_a_plain_int():
    class Holder:
        nxt = seq_attribute("_nxt")

    h = Holder()
    h.nxt = Seq(0xFFFFFFF0) + 0x20  # across the wrap
    assert type(h._nxt) is int and h._nxt == 0x10
    assert type(h.nxt) is Seq and h.nxt > Seq(0xFFFFFFF0)  # the Seq rules, read back
    h._nxt = 0xFFFFFFFF  # what a hot path stores
    assert h.nxt + 1 == 0 and h.nxt < Seq(3)
    h.nxt = 2**32 + 7  # a write is masked into the sequence space
    assert h._nxt == 7


@given(st.integers(0, 2**32 - 1), st.integers(-2**31 + 1, 2**31 - 1))
def test_plain_int_rules_agree_with_seq(x, d):
    """The rules the connection's hot paths apply to plain ints (module docstring of `tcp.seq`)."""
    a = Seq(x)
    b = a + d
    assert signed_distance(b.real - a.real) == b - a == d
    assert (((a.real - b.real) & MASK) >= HALF) == (a < b)
    assert as_seq(b.real) == b and type(as_seq(b.real)) is Seq


# ------------------------------------------------------------------ RTT (RFC 6298)


def test_rtt_first_and_later_samples():
    r = RttEstimator(min_rto=0.0, granularity=0.001)
    assert r.rto == 1.0
    r.sample(0.1)
    assert (r.srtt, r.rttvar, r.rto) == pytest.approx((0.1, 0.05, 0.3))  # RFC 6298 2.2
    r.sample(0.2)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)  # 2.3
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    assert r.rto == pytest.approx(r.srtt + 4 * r.rttvar)


def test_rtt_min_max_and_backoff():
    r = RttEstimator(min_rto=1.0, max_rto=8.0)
    r.sample(0.01)
    assert r.rto == 1.0  # 2.4
    for expect in (2.0, 4.0, 8.0, 8.0):
        r.backoff()
        assert r.rto == expect  # 5.5, 2.5
    r.sample(0.01)
    assert r.rto == 1.0 and r.backoffs == 0


def test_rtt_after_syn_timeout_is_three_seconds():
    r = RttEstimator()
    r.backoff()
    r.reset_after_syn_timeout()
    assert r.rto == 3.0  # RFC 6298 5.7


# ------------------------------------------------------------------ congestion control


def test_newreno_slow_start_and_avoidance():
    cc = congestion.make("newreno", 1000, 10_000)
    cc.on_ack(5000, 0.0, 0.1)
    assert cc.cwnd == 15_000  # slow start: + N, up to L * SMSS per ACK
    cc.on_ack(20_000, 0.0, 0.1)
    assert cc.cwnd == 15_000 + congestion.SLOW_START_L * 1000  # (RFC 9406 4.3's L, not eq. 2's 1)
    cc.cwnd = 11_000
    cc.ssthresh = 11_000
    for _ in range(11):
        cc.on_ack(1000, 0.0, 0.1)
    assert cc.cwnd == 12_000  # one SMSS per window acked
    cc.on_congestion(0.0, 12_000)
    assert cc.ssthresh == 6000 and cc.cwnd == 6000
    cc.on_timeout(0.0, 1000)
    assert cc.ssthresh == 2000 and cc.cwnd == 1000  # eq. 4 floor 2*SMSS; loss window


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_slow_start_limit_per_ack_counts_segments_sent_and_merged_acks(name):
    L = congestion.SLOW_START_L
    cc = congestion.make(name, 1000, 10_000, hystart=False)
    cc.on_ack(100_000, 0.0, 0.1, acks=3)  # three ACKs merged into one by the TCP layer
    assert cc.cwnd == 10_000 + 3 * L * 1000
    # with TSO, a segment is the largest one sent: tso_max in whole SMSS (64,000 here)
    cc = congestion.make(name, 1000, 10_000, hystart=False, tso_max=64_500)
    cc.on_ack(64_000, 0.0, 0.1)
    assert cc.cwnd == 74_000  # all of one super-frame acknowledged
    cc.on_ack(10 ** 6, 0.0, 0.1)
    assert cc.cwnd == 74_000 + L * 64_000


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_a_spurious_reduction_is_undone_from_the_snapshot(name):
    """RFC 9438 4.9 (and the same for NewReno): the state from before the reduction comes
    back, CUBIC's W_max, K and epoch included; cwnd and ssthresh never go down by it."""
    cc = congestion.make(name, 1000, 10_000)
    cc.on_congestion(0.5, 60_000)  # an earlier, real loss: congestion avoidance from here
    cc.cwnd = 40_000
    cc.on_ack(1000, 1.0, 0.05)
    before = cc.snapshot()
    cc.on_congestion(2.0, 40_000)
    assert cc.cwnd < 40_000
    cc.set_mss(1200)
    ssthresh = max(cc.ssthresh, before["ssthresh"])  # (raised here: cwnd had outgrown it)
    cc.restore(before)
    assert cc.snapshot() == dict(before, mss=1200, ssthresh=ssthresh)
    cc.on_timeout(3.0, 40_000)
    cc.cwnd = 90_000  # grown since the snapshot was taken
    ssthresh = max(cc.ssthresh, before["ssthresh"])
    cc.restore(before)
    assert cc.cwnd == 90_000 and cc.ssthresh == ssthresh


def test_dsack_block_is_told_by_rfc_2883_rules():
    ack = Seq(5000)
    assert dsack_block(((3000, 4000),), ack) == (3000, 4000)  # below the cumulative ACK
    assert dsack_block(((6000, 6500), (6000, 8000)), ack) == (6000, 6500)  # inside the second
    assert dsack_block(((6000, 6500), (7000, 8000)), ack) is None  # an ordinary SACK block
    assert dsack_block(((6000, 6500),), ack) is None
    assert dsack_block(((4000, 4000),), ack) is None  # empty: nothing reported
    assert dsack_block(((2**32 - 500, 100),), Seq(200)) == (Seq(2**32 - 500), Seq(100))  # across the wrap


def test_cubic_reduction_and_cubic_growth():
    cc = congestion.make("cubic", 1000, 100_000)
    cc.ssthresh = 100_000
    cc.on_congestion(10.0, 100_000)
    assert cc.cwnd == 70_000 and cc.w_max == 100  # beta 0.7 (RFC 9438 4.6)
    assert cc.k == pytest.approx((100 * 0.3 / 0.4) ** (1 / 3))
    now = 10.0
    # a window of ACKs per 500 ms RTT for K seconds: the window climbs back to W_max
    # (at this RTT the cubic curve is above the Reno-friendly estimate, RFC 9438 4.4)
    while now < 10.0 + cc.k:
        now += 0.5
        cc.on_ack(cc.cwnd, now, 0.5)
    assert 97_000 <= cc.cwnd <= 103_000
    # and beyond K it grows convexly past W_max
    for _ in range(10):
        now += 0.5
        cc.on_ack(cc.cwnd, now, 0.5)
    assert cc.cwnd > 110_000


def test_cubic_fast_convergence():
    cc = congestion.make("cubic", 1000, 100_000)
    cc.on_congestion(0.0, 100_000)
    cc.cwnd = 80_000
    cc.on_congestion(1.0, 80_000)
    assert cc.w_max == pytest.approx(80 * 1.7 / 2)  # RFC 9438 4.7


def test_cubic_reno_friendly_region_on_short_rtt():
    cc = congestion.make("cubic", 1000, 20_000)
    cc.on_congestion(0.0, 20_000)
    start = cc.cwnd
    now = 0.0
    for _ in range(200):  # tiny RTT, many ACKs: the Reno estimate dominates early on
        now += 0.001
        cc.on_ack(1000, now, 0.001)
    assert cc.cwnd > start


def test_cubic_timeout():
    cc = congestion.make("cubic", 1000, 50_000)
    cc.on_timeout(3.0, 50_000)
    assert cc.cwnd == 1000 and cc.ssthresh == 35_000 and cc.t_epoch is None


def test_unknown_congestion_control():
    with pytest.raises(ValueError):
        congestion.make("vegas", 1000, 10_000)


# ------------------------------------------------------------------ SACK scoreboard


def board(*blocks, una=0, smax=100_000):
    sb = Scoreboard()
    sb.update([(a, b) for a, b in blocks], Seq(una), Seq(smax))
    return sb


def test_scoreboard_merges_and_advances():
    sb = board((100, 200), (300, 400))
    assert sb.update([(200, 300)], Seq(0), Seq(1000))
    assert sb.blocks == [(100, 400)]
    assert not sb.update([(150, 250)], Seq(0), Seq(1000))  # nothing new
    sb.advance(Seq(250))
    assert sb.blocks == [(250, 400)]
    sb.advance(Seq(500))
    assert sb.blocks == []


def test_scoreboard_ignores_invalid_blocks():
    sb = board((50, 40), (0, 10), (900, 2000), una=5, smax=1000)
    assert sb.blocks == []


def test_is_lost_rules():
    mss = 100
    sb = board((200, 300), (400, 500), (600, 700))
    assert sb.is_lost(Seq(100), mss)        # three discontiguous SACKed ranges above
    assert not sb.is_lost(Seq(550), mss)    # one range above
    sb2 = board((200, 501))
    assert sb2.is_lost(Seq(100), mss)       # more than 2 * SMSS octets SACKed above
    assert not board((200, 400)).is_lost(Seq(100), mss)


def test_pipe_and_next_seg():
    mss = 100
    sb = board((200, 300), (400, 500), (600, 700))
    una, smax = Seq(0), Seq(800)
    # holes: 0-200 lost (3 ranges above); 300-400, 500-600, 700-800 not (200 octets is not > 2*SMSS)
    assert sb.pipe(una, smax, None, mss) == 300
    rng, rule = sb.next_seg(una, smax, None, mss)
    assert rng == (0, 100) and rule == 1
    assert sb.pipe(una, smax, Seq(200), mss) == 300 + 200  # retransmitted octets count
    rng, rule = sb.next_seg(una, smax, Seq(200), mss)
    assert rng == (300, 400) and rule == 3
    sb.update([(450, 500), (520, 560)], una, smax)
    rng, rule = sb.next_seg(una, smax, Seq(200), mss)
    assert rng == (300, 400) and rule == 1  # now 4 ranges above it


def _holes(sb, una, smax):
    """The unSACKed ranges in [una, smax)."""
    out, cur = [], una
    for a, b in sb.blocks:
        if a > cur:
            out.append((cur, a))
        cur = seq_max(cur, b)
    return out + [(cur, smax)] if smax > cur else out


def _set_pipe_by_definition(sb, una, smax, high_rxt, mss):
    """RFC 6675 section 4's SetPipe as written: IsLost asked for each hole."""
    pipe = 0
    for a, b in _holes(sb, una, smax):
        if not sb.is_lost(a, mss):
            pipe += b - a
        if high_rxt is not None and high_rxt > a:
            pipe += seq_min(b, high_rxt) - a
    return pipe


def _next_seg_by_definition(sb, una, smax, high_rxt, mss):
    """NextSeg rules 1 and 3 as written: IsLost asked for each candidate."""
    high = sb.high_sacked()
    if high is None:
        return None, 0
    candidate = None
    for a, b in _holes(sb, una, high):
        if high_rxt is not None:
            if b <= high_rxt:
                continue
            a = seq_max(a, high_rxt)
        if sb.is_lost(a, mss):
            return (a, seq_min(b, a + mss)), 1
        candidate = candidate or (a, seq_min(b, a + mss))
    return (candidate, 3) if candidate else (None, 0)


@given(st.integers(0, 2**32 - 1), st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), max_size=12),
       st.integers(0, 700), st.sampled_from([None, 0, 150, 333, 900]), st.integers(2, 6), st.integers(0, 9))
def test_scoreboard_answers_as_by_definition(base, gaps, rxt, lost_below, dup_thresh, tail):
    """`pipe` and `next_seg` judge all holes in one pass (suffix sums of the blocks above),
    `sacked_between` bisects: the answers are those of IsLost asked hole by hole and of a sum
    over every block, across the wrap of sequence space."""
    mss = 20
    una = Seq(base)
    blocks, at = [], 0
    for gap, size in gaps:
        blocks.append((una + at + gap, una + at + gap + size))
        at += gap + size
    smax = una + at + tail
    sb = Scoreboard()
    sb.update(blocks, una, smax + 1)
    sb.dup_thresh = dup_thresh
    sb.lost_below = None if lost_below is None else una + lost_below
    high_rxt = una + rxt if rxt < at else None
    assert sb.pipe(una, smax, high_rxt, mss) == _set_pipe_by_definition(sb, una, smax, high_rxt, mss)
    assert sb.next_seg(una, smax, high_rxt, mss) == _next_seg_by_definition(sb, una, smax, high_rxt, mss)
    for lo in range(0, at + tail, 7):
        for hi in (lo, lo + 1, lo + 13, lo + 61, at + tail):
            assert sb.sacked_between(una + lo, una + hi) == sum(
                max(0, min(b - una, hi) - max(a - una, lo)) for a, b in sb.blocks), (lo, hi)


def test_receive_blocks_order():
    ranges = [(Seq(10), Seq(20)), (Seq(30), Seq(40)), (Seq(50), Seq(60))]
    assert receive_blocks(ranges, Seq(35), 3) == ((30, 40), (10, 20), (50, 60))
    assert receive_blocks(ranges, None, 2) == ((10, 20), (30, 40))


def test_receive_blocks_repeat_the_latest_reported_then_go_in_sequence():
    """RFC 2018 section 4: the triggering segment's block, then those holding the first blocks
    of the latest earlier ACKs (latest first), then the rest in sequence order; a reported
    sequence number no range holds any more (acknowledged), or one inside a block already
    chosen (merged), adds nothing."""
    ranges = [(Seq(10), Seq(20)), (Seq(30), Seq(40)), (Seq(50), Seq(60)), (Seq(70), Seq(80)), (Seq(90), Seq(100))]
    assert receive_blocks(ranges, Seq(95), 3, [Seq(72), Seq(55)]) == ((90, 100), (70, 80), (50, 60))
    assert receive_blocks(ranges, Seq(95), 4, [Seq(91), Seq(5), Seq(35)]) == ((90, 100), (30, 40), (10, 20),
                                                                            (50, 60))


# ------------------------------------------------------------------ ISN (RFC 6528)


def test_isn_clock_component_and_prf():
    gen = IsnGenerator(b"0123456789abcdef")
    a = gen(1, 1000, 2, 80, 10.0)
    assert gen(1, 1000, 2, 80, 10.0) == a
    assert (gen(1, 1000, 2, 80, 10.004) - a) % 2**32 == 1000  # 4 us ticks (MUST-8)
    assert gen(1, 1001, 2, 80, 10.0) != a                       # per 4-tuple (SHLD-1)
    other = IsnGenerator(b"fedcba9876543210")
    assert other(1, 1000, 2, 80, 10.0) != a                    # keyed: secret needed (MUST-9)


def test_isn_secret_too_short():
    with pytest.raises(ValueError):
        IsnGenerator(b"short")
