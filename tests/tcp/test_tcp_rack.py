"""RACK's loss rule for retransmissions in SACK recovery and after an RTO (RFC 8985 6.2,
`Connection._rack_detect`), and what counts as a duplicate ACK with SACK (RFC 6675 section 2)."""
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


def sacks(conn, blocks, now, ack=0, window=65535):
    send_seg(conn, seg(IRS + 1, BASE + ack, ACK, window, sack=tuple((BASE + a, BASE + b) for a, b in blocks)), now)


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


def test_sack_blocks_with_new_octets_are_duplicate_acks_whatever_the_window():
    """RFC 6675 section 2: with SACK, an ACK is a duplicate when its blocks report octets not
    SACKed before. A Linux receiver's window moves with nearly every ACK as its application
    reads; under RFC 5681's rule (window unchanged) these three ACKs counted for nothing, and
    the lost first segment waited for the RTO."""
    conn = rack_conn()
    t = T0 + 1
    conn.send(b"z" * 6000)
    assert len(pull(conn, t)) == 6
    for n, window in ((2, 64000), (3, 62000), (4, 65000)):
        sacks(conn, [(1000, n * 1000)], t + RTT, window=window)
    assert conn.dupacks == 3 and conn.recovery == "sack"
    assert sent(pull(conn, t + RTT))[0] == (0, 1000)


def test_an_ack_repeating_known_sack_blocks_is_no_duplicate():
    """The same blocks again (no new octets SACKed, as a window update or a duplicate of the
    ACK would carry) are not a duplicate ACK under RFC 6675's definition."""
    conn = rack_conn()
    t = T0 + 1
    conn.send(b"z" * 6000)
    pull(conn, t)
    for _ in range(4):
        sacks(conn, [(1000, 2000)], t + RTT)
    assert conn.dupacks == 1 and conn.recovery is None


def test_after_an_rto_a_lost_retransmission_goes_again_when_later_ones_are_delivered():
    """After an RTO no SACK recovery may start before everything then outstanding is
    acknowledged (RFC 6675 5.1), and the text goes again from SND.UNA. When one of those
    retransmissions is lost too and one sent after it is SACKed a round trip later, RACK
    (RFC 8985 6.2) finds it lost and it goes again at once, not at the next, backed-off RTO."""
    conn = rack_conn(tail_loss_probe=False)  # (the probe would come before the RTO)
    t = T0 + 1
    conn.send(b"z" * 6000)
    assert len(pull(conn, t)) == 6
    t_rto = conn.rto_at
    conn.poll(t_rto)
    assert conn.counters["rto"] == 1
    assert sent(pull(conn, t_rto)) == [(0, 1000)]  # cwnd: one segment
    t1 = t_rto + RTT
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), t1)
    assert sent(pull(conn, t1)) == [(1000, 1000), (2000, 1000)]
    t2 = t1 + RTT
    sacks(conn, [(2000, 3000)], t2, ack=1000)  # 1000-2000 was lost again
    assert conn.recovery is None and conn.counters["rack-lost-retransmit"] == 1
    out = sent(pull(conn, t2))
    assert out[0] == (1000, 1000)
    assert conn.counters["rto"] == 1 and conn.retries == 0


def test_after_an_rto_a_retransmission_still_in_flight_is_not_resent():
    """Only what went before the delivered retransmission is lost: the one sent after it
    (still in flight) does not go again."""
    conn = rack_conn(tail_loss_probe=False)
    t = T0 + 1
    conn.send(b"z" * 6000)
    pull(conn, t)
    t_rto = conn.rto_at
    conn.poll(t_rto)
    pull(conn, t_rto)
    t1 = t_rto + RTT
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), t1)
    pull(conn, t1)
    t2 = t1 + RTT
    send_seg(conn, seg(IRS + 1, BASE + 2000, ACK), t2)  # 1000-2000 arrived, cwnd 3
    assert sent(pull(conn, t2)) == [(3000, 1000), (4000, 1000)]
    t3 = t2 + RTT
    sacks(conn, [(3000, 4000)], t3, ack=2000)  # 2000-3000 (sent at t1) lost; 4000-5000 sent after 3000-4000
    assert conn._rack_lost == [(BASE + 2000, BASE + 3000)]
    out = sent(pull(conn, t3))
    assert out[0] == (2000, 1000) and (4000, 1000) not in out


def test_a_lost_retransmission_waiting_for_cwnd_after_an_rto_leaves_no_idle_pull():
    """Sim seed 27 over 20 % loss: after an RTO, RACK found a retransmission lost while no
    SACK block was left and cwnd was full. The predicted pull then ran and sent nothing
    though `wants_transmit` said there was work; the Sim asserts that the two agree (a
    device poller would spin). RACK's lists now keep the pull on the full path."""
    sim = Sim(seed=27, loss=0.2, reorder=0.02, dup=0.02, corrupt=0.01, rate=1e9, queue=512)
    client, server = transfer(sim, 300_000, 300_000, TcpConfig(msl=1.0, min_rto=0.2), max_time=1e5)
    assert client.counters["rack-lost-retransmit"] + server.counters["rack-lost-retransmit"] > 0


def test_in_sack_recovery_wants_transmit_is_what_the_pull_sends():
    """`wants_transmit` answers for the pull: in SACK recovery it sees the rescue
    retransmission (RFC 6675 NextSeg rule 4) and what is left of RACK's list, not the
    list itself. An entry the peer acknowledges before the pull (two ACKs in one receive
    burst: the first makes it lost, the second covers it) leaves nothing to send, and a
    True there is a poller that spins (the seed sweep found one in LAST-ACK)."""
    conn = rack_conn()
    t = T0 + 1
    first_lost_in_recovery(conn, t)
    sacks(conn, [(6000, 7000), (1000, 6000)], t + RTT)
    assert conn._rack_lost == [(BASE, BASE + 1000)]
    sacks(conn, [(6000, 7000)], t + RTT, ack=1000)  # the first retransmission arrived after all
    assert conn.recovery == "sack" and conn.wants_transmit()
    assert sent(pull(conn, t + RTT)) == [(7000, 1000)] and conn.counters["rescue-retransmit"] == 1
    conn._rack_lost.append((conn.snd_una - 1000, conn.snd_una))  # as the burst above leaves it
    assert not conn.wants_transmit() and pull(conn, t + RTT) == []


def test_a_recovery_starting_behind_the_last_ones_retransmission_does_not_send_it_twice():
    """Recovery E1 retransmits a hole (7000) and ends a moment later; the next duplicate ACK
    starts E2 with that hole still missing, its retransmission less than a round trip on its
    way. A second copy would come back as a D-SACK that undoes E2 and raises DupThresh for
    reordering that never happened (RFC 3708's test counts it as this episode's); instead
    E2 sends no fast retransmit and RACK watches the first copy (RFC 8985 6.2)."""
    conn = rack_conn()
    t = T0 + 1
    conn.send(b"z" * 6000)
    pull(conn, t - RTT)
    for n in (2, 3, 4):
        sacks(conn, [(1000, n * 1000)], t)  # segment 0 lost: E1, RecoveryPoint 6000
    conn.send(b"y" * 6000)
    assert sent(pull(conn, t)) == [(0, 1000), (6000, 1000), (7000, 1000), (8000, 1000), (9000, 1000)]
    t2 = t + RTT
    sacks(conn, [(1000, 7000)], t2)  # 6000, sent after it, arrived: the retransmission of 0 is lost too
    assert sent(pull(conn, t2))[0] == (0, 1000)
    sacks(conn, [(1000, 7000), (8000, 10000)], t2 + 0.001)  # 7000 is lost
    assert sent(pull(conn, t2 + 0.001))[0] == (7000, 1000)
    t3 = t2 + RTT
    sacks(conn, [(8000, 10000)], t3, ack=7000)  # 0 arrived: E1 is over
    assert conn.recovery is None
    sacks(conn, [(8000, 11000)], t3 + 0.0005, ack=7000)  # E2, with 7000's retransmission on its way
    assert conn.recovery == "sack" and conn.counters["retransmission-on-its-way"] == 1
    assert (7000, 1000) not in sent(pull(conn, t3 + 0.0005))
    send_seg(conn, seg(IRS + 1, BASE + 12000, ACK), t2 + 0.001 + RTT)  # it arrives: everything is in
    assert conn.recovery is None and conn.counters["dsack-undo"] == 0 and conn.scoreboard.dup_thresh == 3


def test_a_rescue_sent_again_leaves_the_holes_below_it_to_nextseg():
    """Segments 2 and 8-10 of ten are lost, and the peer's window holds no more. Recovery
    resends 2 and, as RFC 6675's rescue (rule 4), 10, which leaves HighRxt at 2. The
    rescue is lost as well: once an eleventh segment, sent after it, is SACKed, RACK sends
    it again. HighRxt must stay where it was, for 8 and 9 were never retransmitted: moved
    past them, NextSeg (rule 3: below the highest SACKed octet, above HighRxt) would never
    offer them, and only the RTO would (the simulator found it after slow start)."""
    conn = rack_conn()
    t = T0 + 1
    conn.send(b"z" * 11_000)
    assert sent(pull(conn, t - RTT)) == [(n * 1000, 1000) for n in range(10)]
    for n in range(3, 8):  # the right edge stays at 10,000 (window = edge - ack)
        sacks(conn, [(2000, n * 1000)], t, ack=1000, window=9000)
    assert conn.recovery == "sack"
    assert sent(pull(conn, t)) == [(1000, 1000), (9000, 1000)]
    assert conn.counters["rescue-retransmit"] == 1 and conn.high_rxt == BASE + 2000
    sacks(conn, [], t + RTT, ack=7000, window=4000)  # 2 arrived; room for the eleventh
    assert sent(pull(conn, t + RTT)) == [(10_000, 1000)]
    sacks(conn, [(10_000, 11_000)], t + 2 * RTT, ack=7000, window=4000)
    assert conn.counters["rack-lost-retransmit"] == 1
    assert sent(pull(conn, t + 2 * RTT)) == [(9000, 1000), (7000, 1000), (8000, 1000)]
    assert conn.high_rxt == BASE + 10_000  # (NextSeg passed the rescue RACK just sent again)
    sacks(conn, [], t + 3 * RTT, ack=11_000)
    assert conn.recovery is None and conn.counters["rto"] == 0


def lost_hole_with_one_segment_sacked_above(conn, reordering_seen):
    """Six segments out, 0 and 4 lost; recovery for 0 begins, and new text keeps coming.
    Then 5 is SACKed: one segment above the hole at 4, which RFC 6675's IsLost does not
    call lost (DupThresh segments above). Returns what the next pull sends."""
    t = T0 + 1
    conn.send(b"z" * 6000)
    assert len(pull(conn, t - RTT)) == 6
    for n in (2, 3, 4):
        sacks(conn, [(1000, n * 1000)], t)
    assert conn.recovery == "sack"
    conn.send(b"y" * 2000)
    assert sent(pull(conn, t)) == [(0, 1000), (6000, 1000), (7000, 1000)]
    conn.send(b"x" * 3000)
    if reordering_seen:
        conn.scoreboard.dup_thresh = 4  # (as a D-SACK showing reordering raises it)
    sacks(conn, [(1000, 4000), (5000, 6000)], t + RTT)
    return sent(pull(conn, t + RTT))


def test_in_recovery_a_hole_below_sacked_text_is_lost_at_once():
    """RACK (RFC 8985 6.2) with its reordering window at 0, as in recovery while no
    reordering has been seen: 4 was sent before 5, and 5's SACK is here, so 4 is lost
    and goes ahead of new text, instead of waiting, counted in flight, for more SACKs."""
    conn = rack_conn()
    assert lost_hole_with_one_segment_sacked_above(conn, reordering_seen=False)[0] == (4000, 1000)


def test_after_reordering_a_hole_below_sacked_text_waits_for_rfc_6675():
    """Once reordering was seen (DupThresh raised), 5 may simply have overtaken 4:
    RFC 6675's rule decides, and new text goes first (NextSeg rule 2 before rule 3)."""
    conn = rack_conn()
    assert lost_hole_with_one_segment_sacked_above(conn, reordering_seen=True)[0] == (8000, 1000)
