"""RACK's loss rule for retransmissions in SACK recovery (RFC 8985 6.2, `Connection._rack_detect`)."""
import pytest

from tcp_harness import ACK, IRS, ISS, SYN, T0, Sim, TcpConfig, pull, send_seg, seg, syn_sent
from test_tcp_netsim import transfer
from test_tcp_options import full_opts

BASE = ISS + 1
RTT = 0.1


def rack_conn(**kw):
    """SACK, MSS 1000, and an RTT (so min_RTT) of 100 ms from the handshake."""
    conn, _syn = syn_sent(T0, **full_opts(timestamps=False, **kw))
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 65535, mss=1000, sack_permitted=True), T0 + RTT)
    pull(conn, T0 + RTT)
    conn.take_events()
    assert conn.sack_ok and conn.rtt.min_rtt == pytest.approx(RTT)
    return conn


def sacks(conn, blocks, now):
    send_seg(conn, seg(IRS + 1, BASE, ACK, sack=tuple((BASE + a, BASE + b) for a, b in blocks)), now)


def sent(segs):
    return [(s.seq - BASE, len(s.payload)) for s in segs]


def first_lost_in_recovery(conn, now, dupacks=(2, 3, 4)):
    """Six segments out; the first is lost and SACKs of the next ones start recovery.
    Two more segments of new text are queued: the fast retransmit and those go at `now`."""
    conn.send(b"z" * 6000)
    assert len(pull(conn, now - RTT)) == 6
    for n in dupacks:
        sacks(conn, [(1000, n * 1000)], now)
    assert conn.recovery == "sack"
    conn.send(b"y" * 2000)
    return pull(conn, now)


def test_a_lost_retransmission_goes_again_when_later_text_is_delivered():
    """The fast retransmit of segment 1 is lost too. RFC 6675 alone never sends it again
    (HighRxt is past it) before the RTO; RACK sees text sent after it SACKed a round
    trip later, and retransmits it at once, ahead of anything else."""
    conn = rack_conn()
    t = T0 + 1
    assert sent(first_lost_in_recovery(conn, t)) == [(0, 1000), (6000, 1000), (7000, 1000)]
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT)
    assert conn.counters["rack-lost-retransmit"] == 1
    assert sent(pull(conn, t + RTT))[0] == (0, 1000)
    assert conn.counters["rto"] == 0
    send_seg(conn, seg(IRS + 1, BASE + 8000, ACK), t + 2 * RTT)
    assert conn.recovery is None and conn._rack_lost == [] and conn._rack_rxt == []


def test_a_retransmission_still_in_flight_is_not_lost():
    """Text sent in the same burst before the retransmission is delivered: nothing sent
    after it is, so it is not lost."""
    conn = rack_conn()
    t = T0 + 1
    first_lost_in_recovery(conn, t)
    sacks(conn, [(1000, 6000)], t + RTT)
    assert conn.counters["rack-lost-retransmit"] == 0
    assert all(s.seq != BASE for s in pull(conn, t + RTT))


def test_only_retransmissions_sent_before_the_delivered_text_are_lost():
    """Order, not only time: the rescue retransmission of segment 8 goes at the same
    instant as segment 7, but after it; when 7 is SACKed, the retransmission of 1 (sent
    before 7) is lost and the rescue is not."""
    conn = rack_conn()
    t = T0 + 1
    first_lost_in_recovery(conn, t)
    sacks(conn, [(1000, 6000)], t)
    assert sent(pull(conn, t)) == [(7000, 1000)] and conn.counters["rescue-retransmit"] == 1
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT)
    assert conn.counters["rack-lost-retransmit"] == 1 and conn._rack_lost == [(BASE, BASE + 1000)]


def test_after_reordering_a_retransmission_gets_a_quarter_min_rtt_more():
    """Once the connection has seen reordering (a raised DupThresh, `_reordering_seen`),
    the reordering window is min_RTT/4 (RFC 8985 6.2 step 4): the same SACK does not
    yet make the retransmission lost; a later ACK, past the window, does."""
    conn = rack_conn()
    conn.scoreboard.dup_thresh = 4  # as after a spurious fast retransmit
    t = T0 + 1
    first_lost_in_recovery(conn, t, dupacks=(2, 3, 4, 5))
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT)
    assert conn.counters["rack-lost-retransmit"] == 0
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT + RTT / 4 - 0.001)
    assert conn.counters["rack-lost-retransmit"] == 0
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT + RTT / 4)
    assert conn.counters["rack-lost-retransmit"] == 1
    assert sent(pull(conn, t + RTT + RTT / 4))[0] == (0, 1000)


def test_a_retransmission_delivered_faster_than_min_rtt_proves_nothing():
    """Segments 1 and 3 are missing and both are retransmitted. SACK of segment 3 ten
    milliseconds later, below min_RTT, is its late original, not the retransmission
    (RFC 8985 6.2 step 2): it must not make the retransmission of 1 lost."""
    conn = rack_conn()
    t = T0 + 1
    conn.send(b"z" * 8000)
    assert len(pull(conn, t - RTT)) == 8
    for n in (4, 5, 6, 7):
        sacks(conn, [(1000, 2000), (3000, n * 1000)], t)
    assert conn.recovery == "sack"
    assert sent(pull(conn, t))[:2] == [(0, 1000), (2000, 1000)]
    sacks(conn, [(1000, 7000)], t + 0.01)
    assert conn.counters["rack-lost-retransmit"] == 0


@pytest.mark.parametrize("seed", range(1, 9))
def test_no_retransmission_timeout_at_two_percent_loss(seed):
    """Over a lossy link (2%, both ways, 300 KB and 30 KB), every loss, of a retransmission
    too, is repaired without a timeout. Before RACK's rule these seeds had 8 RTOs in all;
    with it RACK repairs 9 lost retransmissions over them."""
    sim = Sim(seed=seed, loss=0.02)
    client, server = transfer(sim, 300_000, 30_000, TcpConfig(msl=1.0))
    assert client.counters["rto"] + server.counters["rto"] == 0
