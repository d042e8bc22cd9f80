"""Option negotiation: window scaling and timestamps (RFC 7323), SACK (RFC 2018), MSS."""
import pytest

from tcp_harness import (ACK, IRS, ISS, LOCAL, REMOTE, RST, SYN, T0, Connection, State, config,
                         established, pull, send_seg, seg, syn_sent, wire_roundtrip)
from shoal.net.native.tcp.connection import Event
from shoal.net.native.wire.tcp import CWR, ECE

BASE = ISS + 1  # the first octet of data after the SYN


def full_opts(**kw):
    base = dict(window_scaling=True, timestamps=True, sack=True, recv_buffer=1 << 20, recv_buffer_max=1 << 20)
    base.update(kw)
    return base


def test_syn_offers_all_options():
    _conn, syn = syn_sent(**full_opts())
    assert syn.wscale == 5 and syn.sack_permitted and syn.timestamp == (int(T0 * 1000), 0)
    assert syn.window == 65535  # a SYN's window is never scaled


def test_window_scaling_negotiated():
    conn = established(peer_window=1000, peer_opts={"wscale": 4}, **full_opts(timestamps=False))
    assert conn.ws_ok and conn.snd_wscale == 4 and conn.rcv_wscale == 5
    assert conn.snd_wnd == 1000  # SYN,ACK window unscaled
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, window=1000))
    assert conn.snd_wnd == 16000
    conn.send(b"x")
    [d] = pull(conn)
    assert d.window == (1 << 20) >> 5 and d.wscale is None  # option only on SYN


def test_window_scaling_off_when_peer_does_not_offer_it():
    conn = established(**full_opts(timestamps=False))
    assert not conn.ws_ok and conn.rcv_wscale == 0
    conn.send(b"x")
    [d] = pull(conn)
    assert d.window == 65535


def test_passive_syn_ack_echoes_only_offered_options():
    syn = wire_roundtrip(seg(IRS, 0, SYN, 65535, mss=1460, sack_permitted=True))
    conn = Connection.passive(config(**full_opts()), LOCAL, REMOTE, syn, ISS, T0)
    [sa] = pull(conn)
    assert sa.sack_permitted and sa.wscale is None and sa.timestamp is None
    assert conn.sack_ok and not conn.ws_ok and not conn.ts_ok


def test_passive_syn_ack_with_everything():
    syn = wire_roundtrip(seg(IRS, 0, SYN, 65535, mss=1460, sack_permitted=True, wscale=7,
                             timestamp=(555, 0)))
    conn = Connection.passive(config(**full_opts()), LOCAL, REMOTE, syn, ISS, T0)
    [sa] = pull(conn)
    assert sa.wscale == 5 and sa.timestamp == (int(T0 * 1000), 555)
    assert conn.snd_mss == 1460 - 12  # MUST-16: timestamps take 12 octets


def ts_conn(**kw):
    conn = established(peer_opts={"timestamp": (7000, int(T0 * 1000))}, **full_opts(**kw))
    assert conn.ts_ok and conn.ts_recent == 7000
    return conn


def test_timestamps_echoed():
    conn = ts_conn()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a", timestamp=(7100, 0)), T0 + 0.5)
    conn.poll(T0 + 1)
    [a] = pull(conn, T0 + 1)
    assert a.timestamp == (int((T0 + 1) * 1000), 7100)


def test_paws_drops_old_timestamp():
    conn = ts_conn()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"old", timestamp=(6000, 0)))
    assert conn.readable == 0 and conn.drops["paws"] == 1
    [a] = pull(conn)
    assert a.ack == IRS + 1


def test_rtt_sampled_from_timestamp_echo():
    conn = ts_conn(min_rto=0.1)
    before = conn.rtt.srtt  # the handshake gave the first sample (RFC 6298 2.2)
    conn.send(b"x" * 100)
    [d] = pull(conn, T0 + 1)
    send_seg(conn, seg(IRS + 1, ISS + 101, ACK, timestamp=(7001, d.timestamp[0])), T0 + 1.25)
    assert conn.rtt.srtt == pytest.approx(7 / 8 * before + 1 / 8 * 0.25, abs=0.002)  # RFC 6298 2.3


def test_rtt_sampled_without_timestamps_and_karn():
    conn = established(min_rto=0.1)
    assert conn.rtt.srtt == 0.0  # SYN answered at once
    conn.send(b"x" * 100)
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 101, ACK), T0 + 0.2)
    assert conn.rtt.srtt == pytest.approx(0.2 / 8)
    srtt = conn.rtt.srtt
    # a retransmitted segment yields no sample (Karn, MUST-18)
    conn.send(b"y" * 100)
    pull(conn, T0 + 0.2)
    t = conn.poll_at()
    conn.poll(t)
    pull(conn, t)
    send_seg(conn, seg(IRS + 1, ISS + 201, ACK), t + 5.0)
    assert conn.rtt.srtt == srtt


def test_no_rtt_sample_from_a_syn_ack_sent_again_for_a_retransmitted_syn():
    """The peer's SYN came again (its first SYN,ACK lost): the ACK that follows may answer
    either SYN,ACK, so it gives no sample (Karn, MUST-18), not the second's wait."""
    syn = wire_roundtrip(seg(IRS, 0, SYN, 65535, mss=1460))
    conn = Connection.passive(config(), LOCAL, REMOTE, syn, ISS, T0)
    pull(conn)
    send_seg(conn, syn, T0 + 1.0)
    [again] = pull(conn, T0 + 1.0)
    assert again.flags == SYN | ACK and conn.counters["syn-ack-retransmit"] == 1
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK), T0 + 1.01)
    assert conn.state is State.ESTABLISHED
    assert conn.rtt.srtt is None and conn.rtt.rto == 1.0


@pytest.mark.parametrize("echo_of, srtt", [("first SYN", None), ("second SYN", 0.01)])
def test_after_a_syn_retransmission_only_an_echo_of_the_last_syn_is_a_sample(echo_of, srtt):
    """A peer whose SYN,ACK was lost sends it again with the echo of the first SYN it got
    (RFC 7323 4.3): timed from that SYN, the sample would be our timeout's wait (here 1 s),
    and the RTO would start near 3 s above it. Only an echo of the SYN sent last is
    unambiguous; otherwise RFC 6298 5.7's 3 s holds until data gives a sample."""
    conn, first = syn_sent(**full_opts())
    conn.poll(T0 + 1.0)
    [second] = pull(conn, T0 + 1.0)
    assert second.flags == SYN and second.timestamp[0] == first.timestamp[0] + 1000
    echo = first.timestamp[0] if echo_of == "first SYN" else second.timestamp[0]
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 65535, mss=1460, sack_permitted=True, wscale=7,
                       timestamp=(9000, echo)), T0 + 1.01)
    assert conn.state is State.ESTABLISHED
    if srtt is None:
        assert conn.rtt.srtt is None and conn.rtt.rto == 3.0  # RFC 6298 5.7
    else:
        assert conn.rtt.srtt == pytest.approx(srtt, abs=0.001)


def sack_conn(**kw):
    conn = established(peer_mss=1000, peer_opts={"sack_permitted": True},
                       **full_opts(timestamps=False, **kw))
    assert conn.sack_ok
    return conn


def test_receiver_sends_sack_blocks_most_recent_first():
    conn = sack_conn()
    send_seg(conn, seg(IRS + 101, ISS + 1, ACK, payload=b"b" * 100))
    [a1] = pull(conn)
    assert a1.ack == IRS + 1 and a1.sack == ((IRS + 101, IRS + 201),)
    send_seg(conn, seg(IRS + 301, ISS + 1, ACK, payload=b"d" * 100))
    [a2] = pull(conn)
    assert a2.sack == ((IRS + 301, IRS + 401), (IRS + 101, IRS + 201))  # RFC 2018 4
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 100))
    [a3] = pull(conn)
    assert a3.ack == IRS + 201 and a3.sack == ((IRS + 301, IRS + 401),)


def test_receiver_repeats_the_blocks_it_reported_last_before_older_ones():
    """RFC 2018 section 4: after the block of the segment that triggered the ACK come the
    blocks that went first in the latest ACKs, so each block is reported in at least three
    successive ACKs: the lowest ranges do not crowd out what the sender last heard of.
    Six islands, each newer one higher; then a segment joins the lowest three."""
    conn = sack_conn()
    for start in (101, 301, 501, 701, 901, 1101):
        send_seg(conn, seg(IRS + start, ISS + 1, ACK, payload=b"x" * 100))
        [ack] = pull(conn)
    assert ack.sack == ((IRS + 1101, IRS + 1201), (IRS + 901, IRS + 1001), (IRS + 701, IRS + 801),
                        (IRS + 501, IRS + 601))
    send_seg(conn, seg(IRS + 201, ISS + 1, ACK, payload=b"y" * 100))
    [ack] = pull(conn)
    assert ack.sack == ((IRS + 101, IRS + 401), (IRS + 1101, IRS + 1201), (IRS + 901, IRS + 1001),
                        (IRS + 701, IRS + 801))


def test_duplicate_text_is_reported_once_in_a_dsack_block():
    """RFC 2883: the first SACK block names the duplicate text of the segment just received
    (4.1.1: already acknowledged, wholly or in part), in that ACK only (rule 2)."""
    conn = sack_conn()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 100))
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 100))  # a spurious retransmission
    [ack] = pull(conn)
    assert ack.ack == IRS + 101 and ack.sack == ((IRS + 1, IRS + 101),)
    send_seg(conn, seg(IRS + 51, ISS + 1, ACK, payload=b"b" * 100))  # half old, half new
    [ack] = pull(conn)
    assert ack.ack == IRS + 151 and ack.sack == ((IRS + 51, IRS + 101),)
    conn.send(b"reply")
    [data] = pull(conn)
    assert data.sack == () and conn.counters["unacceptable-ack"] == 1
    assert conn.recv() == b"a" * 100 + b"b" * 50


def test_duplicate_out_of_order_text_gets_a_dsack_block_then_its_block():
    """RFC 2883 4.1.2: a duplicate of text held above a hole: the D-SACK block, then the
    (larger) block that holds it (rule 4), then the others (RFC 2018)."""
    conn = sack_conn()
    send_seg(conn, seg(IRS + 201, ISS + 1, ACK, payload=b"c" * 100))
    send_seg(conn, seg(IRS + 401, ISS + 1, ACK, payload=b"e" * 100))
    pull(conn)
    send_seg(conn, seg(IRS + 251, ISS + 1, ACK, payload=b"c" * 50 + b"d" * 50))
    [ack] = pull(conn)
    assert ack.ack == IRS + 1
    assert ack.sack == ((IRS + 251, IRS + 301), (IRS + 201, IRS + 351), (IRS + 401, IRS + 501))
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 200))
    [ack] = pull(conn)
    assert ack.ack == IRS + 351 and ack.sack == ((IRS + 401, IRS + 501),)


def test_no_dsack_without_sack():
    conn = established(peer_mss=1000, **full_opts(timestamps=False, sack=False))
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 100))
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"a" * 100))
    [ack] = pull(conn)
    assert ack.ack == IRS + 101 and ack.sack == ()


def test_sack_recovery_retransmits_only_holes():
    conn = sack_conn()
    conn.send(b"z" * 6000)
    out = pull(conn)
    assert len(out) == 6
    # segments 2 and 4 lost: the peer SACKs 3, 5 and 6
    base = ISS + 1
    for blocks in ([(base + 2000, base + 3000)],
                   [(base + 4000, base + 5000), (base + 2000, base + 3000)],
                   [(base + 4000, base + 6000), (base + 2000, base + 3000)]):
        send_seg(conn, seg(IRS + 1, base + 1000, ACK, sack=tuple(blocks)))
    assert conn.recovery == "sack"
    rexmit = pull(conn)
    assert [(s.seq, len(s.payload)) for s in rexmit] == [(base + 1000, 1000), (base + 3000, 1000)]
    send_seg(conn, seg(IRS + 1, base + 6000, ACK))
    assert conn.recovery is None and conn.snd_una == base + 6000


def test_a_retransmission_cut_short_by_our_sack_blocks_leaves_nothing_behind():
    """Our own SACK block (the peer's text arrived out of order) takes 12 octets of the
    retransmission's room: it carries 988 of the hole's 1000. HighRxt ends where the
    retransmission did, so the last 12 go next instead of waiting for the RTO."""
    conn = sack_conn()
    conn.send(b"z" * 6000)
    assert len(pull(conn)) == 6
    send_seg(conn, seg(IRS + 101, BASE, ACK, payload=b"b" * 100))
    for n in (2, 3, 4):
        send_seg(conn, seg(IRS + 1, BASE, ACK, sack=((BASE + 1000, BASE + n * 1000),)))
    out = pull(conn)
    assert [(s.seq, len(s.payload)) for s in out][:2] == [(BASE, 988), (BASE + 988, 12)]
    assert out[0].sack == ((IRS + 101, IRS + 201),)


def test_a_tail_lost_inside_recovery_gets_one_rescue_retransmission():
    """RFC 6675 NextSeg rule (4): segments 2 and 9-10 of ten are lost. The SACKs of 3-8
    start recovery for 2; nothing above 9-10 can be SACKed to show them lost (rules 1
    and 3 never pick them), so one segment ending at the highest octet sent goes at
    once, without moving HighRxt, instead of waiting for the RTO; one per recovery."""
    conn = sack_conn()
    conn.send(b"z" * 10_000)
    assert len(pull(conn)) == 10
    for n in range(3, 9):
        send_seg(conn, seg(IRS + 1, BASE + 1000, ACK, sack=((BASE + 2000, BASE + n * 1000),)))
    assert conn.recovery == "sack"
    out = pull(conn)
    assert [(s.seq, len(s.payload)) for s in out] == [(BASE + 1000, 1000), (BASE + 9000, 1000)]
    assert conn.high_rxt == BASE + 2000 and conn.counters["rescue-retransmit"] == 1
    send_seg(conn, seg(IRS + 1, BASE + 8000, ACK, sack=((BASE + 9000, BASE + 10_000),)))  # 2 and 10 arrived
    assert conn.recovery == "sack"
    assert [(s.seq, len(s.payload)) for s in pull(conn)] == [(BASE + 8000, 1000)]  # rule 3: 9, no second rescue
    assert conn.counters["rescue-retransmit"] == 1
    send_seg(conn, seg(IRS + 1, BASE + 10_000, ACK))
    assert conn.recovery is None and conn.snd_una == BASE + 10_000


def reordered_first_segment(conn):
    """Five segments out; the first is late: the peer SACKs 2-4, and the third duplicate
    ACK starts a fast retransmit of the first, followed by RFC 6675's rescue retransmission
    of the fifth (nothing above it was SACKed). Returns cwnd from before the reduction."""
    conn.send(b"z" * 5000)
    pull(conn)
    cwnd = conn.cc.cwnd
    for n in (2, 3, 4):
        send_seg(conn, seg(IRS + 1, BASE + 0, ACK, sack=((BASE + 1000, BASE + n * 1000),)))
    assert conn.recovery == "sack" and conn.cc.cwnd < cwnd
    rexmits = pull(conn)
    assert [(s.seq, len(s.payload)) for s in rexmits] == [(BASE, 1000), (BASE + 4000, 1000)]
    assert conn.counters["retransmit"] == 2 and conn.counters["rescue-retransmit"] == 1
    return cwnd


def dsack_both_retransmissions(conn, ack):
    """The peer had the originals: each retransmission comes back as a D-SACK (RFC 2883)."""
    for block in ((BASE, BASE + 1000), (BASE + 4000, BASE + 5000)):
        send_seg(conn, seg(IRS + 1, ack, ACK, sack=(block,)))


def test_dsack_of_every_retransmission_undoes_the_reduction():
    """RFC 3708: the late original, then the retransmission, reach the peer; its D-SACK
    shows the fast retransmit was spurious, and cwnd goes back (RFC 9438 4.9)."""
    conn = sack_conn()
    cwnd = reordered_first_segment(conn)
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK))  # the late original: recovery ends
    assert conn.recovery is None and conn.cc.cwnd < cwnd
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE, BASE + 1000),)))  # one D-SACK
    assert conn.counters["dsack-undo"] == 0  # the rescue's is still to come
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 4000, BASE + 5000),)))
    assert conn.counters["dsack-received"] == 2 and conn.counters["dsack-undo"] == 1
    assert conn.cc.cwnd >= cwnd


def test_a_spurious_fast_retransmit_raises_the_duplicate_threshold():
    """The undone episode shows the path reorders by four segments: DupThresh becomes five
    (`Scoreboard.dup_thresh`), so the same reordering in the next flight costs neither a
    retransmission nor a reduction, while a deeper hole still starts recovery."""
    conn = sack_conn()
    reordered_first_segment(conn)
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK))
    dsack_both_retransmissions(conn, BASE + 5000)
    assert conn.counters["dsack-undo"] == 1 and conn.counters["reordering-raised"] == 1
    assert conn.scoreboard.dup_thresh == 5
    conn.send(b"y" * 6000)
    assert len(pull(conn)) == 6
    cwnd = conn.cc.cwnd
    for n in (2, 3, 4, 5):  # four duplicate ACKs, four segments SACKed above the late one
        send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 6000, BASE + 5000 + n * 1000),)))
    assert conn.recovery is None and not pull(conn) and conn.cc.cwnd == cwnd
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 6000, BASE + 11000),)))  # a fifth
    assert conn.recovery == "sack" and pull(conn)[0].seq == BASE + 5000


def test_a_timeout_the_standard_threshold_would_have_spared_resets_it():
    """DupThresh raised to 5 by a spurious episode; then a real loss with three segments
    SACKed above it waits (three would have been enough before) until the RTO fires, which
    puts DupThresh back to 3 (`reordering-reset`). (No tail loss probe here: it would find
    the loss first.)"""
    conn = sack_conn(tail_loss_probe=False)
    reordered_first_segment(conn)
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK))
    dsack_both_retransmissions(conn, BASE + 5000)
    assert conn.scoreboard.dup_thresh == 5
    conn.send(b"y" * 4000)
    pull(conn)
    for n in (2, 3, 4):
        send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 6000, BASE + 5000 + n * 1000),)))
    assert conn.recovery is None
    t = conn.poll_at()
    conn.poll(t)
    assert conn.counters["rto"] == 1 and conn.counters["reordering-reset"] == 1
    assert conn.scoreboard.dup_thresh == 3 and pull(conn, t)[0].seq == BASE + 5000


def test_a_probe_finding_what_the_standard_threshold_would_have_found_resets_it():
    """As above with tail loss probes: the probe (the last segment again) comes back SACKed
    above the hole, which starts recovery (`tlp-recovery`) and puts DupThresh back to 3."""
    conn = sack_conn()
    reordered_first_segment(conn)
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK))
    dsack_both_retransmissions(conn, BASE + 5000)
    conn.send(b"y" * 4000)
    pull(conn)
    for n in (2, 3, 4):
        send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 6000, BASE + 5000 + n * 1000),)))
    t = conn.poll_at()
    conn.poll(t)
    [probe] = pull(conn, t)
    assert probe.seq == BASE + 8000 and conn.counters["tlp-probe"] == 1 and conn.scoreboard.dup_thresh == 5
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK, sack=((BASE + 8000, BASE + 9000), (BASE + 6000, BASE + 9000))), t)
    assert conn.counters["tlp-recovery"] == 1 and conn.counters["reordering-reset"] == 1
    assert conn.recovery == "sack" and conn.scoreboard.dup_thresh == 3


def test_no_undo_after_a_real_loss():
    conn = sack_conn()
    cwnd = reordered_first_segment(conn)
    send_seg(conn, seg(IRS + 1, BASE + 5000, ACK))  # the retransmission filled a real hole
    reduced = conn.cc.cwnd
    conn.send(b"y" * 1000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE + 6000, ACK))  # a flight later, the episode is over
    # a duplicate the network made, reported afterwards, changes nothing
    send_seg(conn, seg(IRS + 1, BASE + 6000, ACK, sack=((BASE, BASE + 1000),)))
    assert conn.counters["dsack-received"] == 1 and conn.counters["dsack-undo"] == 0
    assert reduced <= conn.cc.cwnd < cwnd


def test_sack_ignores_blocks_outside_the_window():
    conn = sack_conn()
    conn.send(b"z" * 2000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, sack=((ISS + 5000, ISS + 6000), (ISS - 500, ISS))))
    assert not conn.scoreboard


def test_mss_option_only_on_syn():
    conn = established(**full_opts())
    conn.send(b"q")
    assert all(s.mss is None for s in pull(conn))  # MUST-65


def test_connection_survives_option_variety():
    for opts in ({}, {"sack_permitted": True}, {"wscale": 14}, {"timestamp": (1, 1)}):
        conn = established(peer_opts=opts, **full_opts())
        assert conn.state is State.ESTABLISHED


def test_ecn_negotiation_active():
    conn, syn = syn_sent(ecn=True)
    assert syn.flags == SYN | ECE | CWR  # ECN-setup SYN (RFC 3168 6.1.1)
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK | ECE, mss=1460))
    assert conn.ecn_ok
    conn.send(b"e" * 10)
    [d] = conn.transmit(T0)
    assert d.ect  # new data may be ECT(0)


def test_ecn_setup_only_on_the_first_syn():
    """RFC 3168 6.1.1.1: the SYN retransmitted after a timeout goes without ECE and CWR (a
    middlebox may drop ECN-setup SYNs), and a SYN,ACK with ECE then does not turn ECN on."""
    conn, syn = syn_sent(ecn=True)
    assert syn.flags == SYN | ECE | CWR
    t = conn.poll_at()
    conn.poll(t)
    [again] = pull(conn, t)
    assert again.flags == SYN
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK | ECE, mss=1460), t)
    assert conn.state is State.ESTABLISHED and not conn.ecn_ok


def test_a_reset_ecn_setup_syn_is_followed_by_a_plain_one_then_refused():
    """RFC 3168 6.1.1.1: a reset answering an ECN-setup SYN may come from a middlebox that
    rejects ECE and CWR, so one plain SYN goes at once; a reset of that one is final. With
    ECN off, the first reset refuses the connection as before."""
    conn, syn = syn_sent(ecn=True)
    assert syn.flags == SYN | ECE | CWR
    send_seg(conn, seg(0, ISS + 1, RST | ACK))
    assert conn.state is State.SYN_SENT and conn.take_events() == [] and conn.counters["ecn-syn-reset"] == 1
    [plain] = pull(conn)
    assert plain.flags == SYN and plain.seq == ISS
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK | ECE, mss=1460))  # a peer behind it answers
    assert conn.state is State.ESTABLISHED and not conn.ecn_ok
    conn, _ = syn_sent(ecn=True)
    send_seg(conn, seg(0, ISS + 1, RST | ACK))
    pull(conn)
    send_seg(conn, seg(0, ISS + 1, RST | ACK))
    assert conn.state is State.CLOSED and Event.REFUSED in conn.take_events()
    conn, _ = syn_sent()
    send_seg(conn, seg(0, ISS + 1, RST | ACK))
    assert conn.state is State.CLOSED and Event.REFUSED in conn.take_events()


def test_ecn_not_negotiated_without_ece_in_syn_ack():
    conn, _ = syn_sent(ecn=True)
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, mss=1460))
    assert not conn.ecn_ok


def test_ecn_passive_and_ce_echo_until_cwr():
    syn = wire_roundtrip(seg(IRS, 0, SYN | ECE | CWR, 65535, mss=1460))
    conn = Connection.passive(config(ecn=True), LOCAL, REMOTE, syn, ISS, T0)
    [sa] = pull(conn)
    assert sa.flags == SYN | ACK | ECE
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK))
    conn.segment_arrived(wire_roundtrip(seg(IRS + 1, ISS + 1, ACK, payload=b"ce")), T0, ce=True)
    [a] = pull(conn)
    assert a.flags & ECE  # RFC 3168 6.1.3
    send_seg(conn, seg(IRS + 3, ISS + 1, ACK, payload=b"more"))
    conn.poll(T0 + 1)
    [a] = pull(conn, T0 + 1)
    assert a.flags & ECE  # still echoing
    send_seg(conn, seg(IRS + 7, ISS + 1, ACK | CWR, payload=b"x"), T0 + 1)
    conn.poll(T0 + 2)
    [a] = pull(conn, T0 + 2)
    assert not a.flags & ECE


def test_ece_reduces_once_per_window_and_sets_cwr():
    conn, _ = syn_sent(ecn=True, congestion="newreno")
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK | ECE, mss=1000))
    pull(conn)
    conn.send(b"w" * 6000)
    out = conn.transmit(T0)
    assert len(out) == 6 and all(s.ect for s in out)
    send_seg(conn, seg(IRS + 1, ISS + 1001, ACK | ECE))
    assert conn.cc.cwnd == 2500 and conn.counters["ecn-reduction"] == 1
    send_seg(conn, seg(IRS + 1, ISS + 2001, ACK | ECE))
    assert conn.counters["ecn-reduction"] == 1  # same window: no second reduction
    send_seg(conn, seg(IRS + 1, ISS + 6001, ACK))
    conn.send(b"n" * 1000)
    [new] = conn.transmit(T0)
    assert new.seq == ISS + 6001 and new.flags & CWR and new.ect
    conn.poll(conn.poll_at())
    [rexmit] = conn.transmit(T0 + 5)
    assert rexmit.seq == ISS + 6001 and not rexmit.ect  # RFC 3168 6.1.5
