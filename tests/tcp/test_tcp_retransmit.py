"""Retransmission (RFC 6298), fast retransmit/NewReno (RFC 5681/6582), persist and keepalive timers."""
import pytest

from tcp_harness import (ACK, FIN, IRS, ISS, RST, SYN, T0, State, drive, established, pull, send_seg, seg,
                         syn_received, syn_sent)
from shoal.net.native.tcp.connection import TSO_MAX_PAYLOAD, Event
from shoal.net.native.wire.tcp import ECE

BASE = ISS + 1


def test_rto_retransmits_with_exponential_backoff():
    conn = established()
    conn.send(b"x" * 100)
    pull(conn)
    now = T0
    for gap in (1.0, 2.0, 4.0, 8.0):  # RFC 6298 5.5 (MUST-19 backoff)
        t = conn.poll_at()
        assert t == pytest.approx(now + gap)
        now = t
        conn.poll(now)
        [r] = pull(conn, now)
        assert r.seq == BASE and len(r.payload) == 100
    assert conn.counters["rto"] == 4


def test_rto_clamped_to_max():
    conn = established(max_rto=3.0)
    conn.send(b"x")
    pull(conn)
    times = [T0]
    for _ in range(5):
        t = conn.poll_at()
        conn.poll(t)
        assert pull(conn, t)[0].seq == BASE
        times.append(t)
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    assert gaps == [1.0, 2.0, 3.0, 3.0, 3.0]  # RFC 6298 2.5: a maximum may be placed on RTO


def test_min_rto_applies():
    conn = established(min_rto=0.5)
    conn.send(b"x")
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE + 1, ACK), T0 + 0.01)
    assert conn.rtt.rto == 0.5


def test_r1_advice_then_r2_timeout_with_rst():
    conn = established(max_retransmits=5, r1_retransmits=3)
    conn.send(b"x" * 10)
    pull(conn)
    out, _now = drive(conn, T0, T0 + 10_000)
    events = conn.take_events()
    assert events.index(Event.RETRANSMITTING) < events.index(Event.TIMED_OUT)  # SHLD-9, MUST-20
    assert events[-1] is Event.CLOSED and conn.state is State.CLOSED
    assert sum(1 for s in out if s.payload) == 5 and out[-1].flags == RST


def test_user_timeout_is_settable():
    conn = established()
    conn.set_user_timeout(1)  # MUST-21
    conn.send(b"x")
    pull(conn)
    drive(conn, T0, T0 + 100)
    assert conn.state is State.CLOSED


def test_ack_clears_retries_and_restarts_timer():
    conn = established()
    conn.send(b"x" * 2000)
    pull(conn)
    conn.poll(T0 + 1)
    pull(conn, T0 + 1)
    assert conn.retries == 1
    send_seg(conn, seg(IRS + 1, BASE + 1460, ACK), T0 + 1.5)
    assert conn.retries == 0
    [rest] = pull(conn, T0 + 1.5)
    assert rest.seq == BASE + 1460
    assert conn.poll_at() == pytest.approx(T0 + 1.5 + conn.rtt.rto)  # RFC 6298 5.3


def test_timeout_collapses_cwnd_and_goes_back():
    conn = established(peer_mss=1000, nodelay=True, congestion="newreno")
    conn.send(b"x" * 5000)
    assert len(pull(conn)) == 5
    conn.poll(T0 + 1)
    [r] = pull(conn, T0 + 1)  # loss window: one segment (RFC 5681 3.1)
    assert r.seq == BASE and conn.cc.cwnd == 1000 and conn.cc.ssthresh == 2500
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), T0 + 1.1)
    assert [s.seq for s in pull(conn, T0 + 1.1)] == [BASE + 1000, BASE + 2000]  # slow start


def dupack(conn, ack, n, window=65535):
    for _ in range(n):
        send_seg(conn, seg(IRS + 1, ack, ACK, window=window))


def test_fast_retransmit_and_newreno_recovery():
    conn = established(peer_mss=1000, congestion="newreno")
    conn.send(b"x" * 8000)
    assert len(pull(conn)) == 8
    dupack(conn, BASE, 2)
    assert pull(conn) == []
    dupack(conn, BASE, 1)  # third duplicate: fast retransmit (RFC 5681 3.2)
    assert conn.recovery == "newreno"
    [r] = pull(conn)
    assert r.seq == BASE and len(r.payload) == 1000
    assert conn.cc.ssthresh == 4000 and conn.cc.cwnd == 4000 + 3000
    # partial ACK: the next hole is retransmitted at once (RFC 6582 3.2 step 4)
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK))
    [r2] = pull(conn)
    assert r2.seq == BASE + 3000 and conn.recovery == "newreno"
    # full ACK ends recovery
    send_seg(conn, seg(IRS + 1, BASE + 8000, ACK))
    assert conn.recovery is None and conn.cc.cwnd <= conn.cc.ssthresh + 1000


def _after_a_timeout(**kw):
    """A NewReno connection whose ten-segment flight timed out (recover = BASE + 10000) and
    whose retransmission of the first segment was acknowledged: cwnd two segments."""
    conn = established(peer_mss=1000, nodelay=True, congestion="newreno", initial_window=10, **kw)
    conn.send(b"x" * 20000)
    assert len(pull(conn)) == 10
    conn.poll(T0 + 1)
    assert [s.seq for s in pull(conn, T0 + 1)] == [BASE] and conn.recover == BASE + 10000
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), T0 + 1.1)
    assert [s.seq for s in pull(conn, T0 + 1.1)] == [BASE + 1000, BASE + 2000]
    return conn


def test_after_a_timeout_duplicate_acks_after_small_advances_start_fast_retransmit():
    """RFC 6582 4.1 (ACK heuristic): the retransmission proceeds a segment or two per ACK
    and one of it is lost. Three duplicate ACKs below "recover" then start recovery, instead
    of leaving the hole to a second, backed-off timeout."""
    conn = _after_a_timeout()
    send_seg(conn, seg(IRS + 1, BASE + 2000, ACK), T0 + 1.2)  # the segment at BASE + 2000 is lost
    pull(conn, T0 + 1.2)
    dupack(conn, BASE + 2000, 3)
    assert conn.recovery == "newreno" and conn.counters["fast-retransmit"] == 1
    r = pull(conn, T0 + 1.3)[0]
    assert r.seq == BASE + 2000 and len(r.payload) == 1000


def test_after_a_timeout_duplicate_acks_after_a_jump_start_no_fast_retransmit():
    """RFC 6582 section 4: the cumulative ACK jumped over text the receiver already had (its
    ACKs were lost, not the text); the duplicates that follow may be its answers to our
    unneeded retransmissions, and recover's guard holds."""
    conn = _after_a_timeout()
    send_seg(conn, seg(IRS + 1, BASE + 6000, ACK), T0 + 1.2)  # five segments at once
    pull(conn, T0 + 1.2)
    assert conn.cc.cwnd > 1000
    dupack(conn, BASE + 6000, 4)
    assert conn.recovery is None and conn.counters["fast-retransmit"] == 0


def test_duplicate_acks_right_after_a_timeout_start_no_fast_retransmit():
    """RFC 6582 4.1's window test: with cwnd at one segment (the loss window), duplicates
    that were on their way when the timer fired start nothing, however small the last
    advance was."""
    conn = established(peer_mss=1000, nodelay=True, congestion="newreno")
    conn.send(b"x" * 5000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), T0 + 0.05)
    dupack(conn, BASE + 1000, 2)
    conn.poll(conn.poll_at())
    assert conn.counters["rto"] == 1 and conn.cc.cwnd == 1000
    dupack(conn, BASE + 1000, 3)
    assert conn.recovery is None and conn.counters["fast-retransmit"] == 0


def test_after_a_timeout_a_sack_connection_keeps_the_recovery_point():
    """With SACK the heuristic does not apply: RFC 6675 5.1 keeps RecoveryPoint's rule."""
    conn = _after_a_timeout(sack=True, tail_loss_probe=False, peer_opts={"sack_permitted": True})
    assert conn.sack_ok
    send_seg(conn, seg(IRS + 1, BASE + 2000, ACK), T0 + 1.2)
    pull(conn, T0 + 1.2)
    dupack(conn, BASE + 2000, 3)
    assert conn.recovery is None and conn.counters["fast-retransmit"] == 0


def test_duplicate_ack_rules():
    conn = established(peer_mss=1000)
    conn.send(b"x" * 3000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=30000))  # window update: not a duplicate
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=30000, payload=b"d"))  # data: not a duplicate
    assert conn.dupacks == 0
    send_seg(conn, seg(IRS + 2, BASE, ACK, window=30000))
    assert conn.dupacks == 1


def test_zero_window_probing_and_resume():
    conn = established(peer_mss=1000)
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=0))
    conn.send(b"p" * 3000)
    assert pull(conn) == []
    t1 = conn.poll_at()
    assert t1 == pytest.approx(T0 + 1.0)  # SHLD-29: first probe after one RTO
    conn.poll(t1)
    [probe] = pull(conn, t1)
    assert probe.seq == BASE and len(probe.payload) == 1  # MUST-36
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=0), t1)
    t2 = conn.poll_at()
    assert t2 == pytest.approx(t1 + 2.0)  # SHLD-30: exponential backoff
    # the window stays closed for a long time: no time-out while the peer answers (MUST-37)
    now = t2
    for _ in range(30):
        conn.poll(now)
        assert len(pull(conn, now)) == 1
        send_seg(conn, seg(IRS + 1, BASE, ACK, window=0), now)
        now = conn.poll_at()
    assert conn.state is State.ESTABLISHED
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=4000), now)
    out = pull(conn, now)
    assert [s.seq for s in out] == [BASE, BASE + 1000, BASE + 2000]


def test_probe_accepted_advances():
    conn = established(peer_mss=1000)
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=0))
    conn.send(b"p" * 10)
    assert pull(conn) == []  # the pull after an application call arms the persist timer
    t = conn.poll_at()
    conn.poll(t)
    pull(conn, t)
    send_seg(conn, seg(IRS + 1, BASE + 1, ACK, window=0), t)
    assert conn.snd_una == BASE + 1 and conn.snd_nxt == BASE + 1


def test_unanswered_zero_window_probes_time_out():
    conn = established(max_retransmits=4)
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=0))
    conn.send(b"p" * 10)
    pull(conn)
    drive(conn, T0, T0 + 10_000)
    assert conn.state is State.CLOSED and Event.TIMED_OUT in conn.take_events()


def test_shrunk_window_no_new_data_beyond_it():
    conn = established(peer_mss=1000)
    conn.send(b"s" * 3000)
    pull(conn)
    # the peer shrinks its window (MUST-34): nothing new is sent, retransmission continues
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK, window=500))
    assert pull(conn) == []
    conn.poll(conn.poll_at())
    assert pull(conn, T0 + 5)[0].seq == BASE + 1000


def test_keepalive_off_by_default():
    conn = established()
    assert conn.poll_at() is None  # MUST-25


def test_keepalive_probes_idle_connection():
    conn = established(keepalive=True, keepalive_idle=7200.0, keepalive_interval=75.0, keepalive_probes=3)
    assert conn.poll_at() == pytest.approx(T0 + 7200)  # MUST-28: at least 2 hours
    conn.poll(T0 + 7200)
    [p] = pull(conn, T0 + 7200)
    assert p.seq == BASE - 1 and not p.payload and p.ack == IRS + 1  # SHLD-12
    # the peer answers: the idle clock restarts (MUST-29 tolerates lost probes before that)
    send_seg(conn, seg(IRS + 1, BASE, ACK), T0 + 7200.1)
    assert conn.poll_at() == pytest.approx(T0 + 7200.1 + 7200)


def test_keepalive_gives_up_after_unanswered_probes():
    conn = established(keepalive=True, keepalive_idle=10.0, keepalive_interval=1.0, keepalive_probes=3)
    out, now = drive(conn, T0, T0 + 100)
    assert len(out) == 3 and conn.state is State.CLOSED  # MUST-29: several probes, not one
    assert Event.TIMED_OUT in conn.take_events()
    assert now == pytest.approx(T0 + 13)


def test_keepalive_enabled_at_runtime():
    conn = established()
    conn.set_keepalive(True, idle=30.0, interval=5.0)  # MUST-24, MUST-27
    assert conn.poll_at() == pytest.approx(T0 + 30)


def test_delayed_ack_timer_under_half_second():
    conn = established(delayed_ack=0.2)
    send_seg(conn, seg(IRS + 1, BASE, ACK, payload=b"x"))
    assert conn.poll_at() == pytest.approx(T0 + 0.2)


def test_keepalive_not_sent_while_data_outstanding():
    conn = established(keepalive=True, keepalive_idle=10.0)
    conn.send(b"x")
    pull(conn)
    assert conn.keepalive_at is None  # MUST-26: only when idle
    send_seg(conn, seg(IRS + 1, BASE + 1, ACK), T0 + 1)
    assert conn.keepalive_at == pytest.approx(T0 + 11)


def test_shrunk_window_with_live_peer_never_times_out():
    conn = established(peer_mss=1000, max_retransmits=3)
    conn.send(b"s" * 3000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE, ACK, window=0))
    now = T0
    for _ in range(10):
        now = conn.poll_at()
        conn.poll(now)
        pull(conn, now)
        send_seg(conn, seg(IRS + 1, BASE, ACK, window=0), now)
    assert conn.state is State.ESTABLISHED  # SHLD-17


def test_limited_transmit_on_first_two_dupacks():
    conn = established(peer_mss=1000, initial_window=4, congestion="newreno")
    conn.send(b"l" * 10_000)
    assert len(pull(conn)) == 4
    dupack(conn, BASE, 1)
    [n1] = pull(conn)  # RFC 3042: one new segment per duplicate ACK
    assert n1.seq == BASE + 4000
    dupack(conn, BASE, 1)
    [n2] = pull(conn)
    assert n2.seq == BASE + 5000


def test_old_ack_does_not_update_window():
    conn = established(peer_mss=1000)
    conn.send(b"w" * 3000)
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE + 2000, ACK, window=5000, payload=b"a"))
    # an older ACK (reordered) with a newer sequence number must not move the window
    send_seg(conn, seg(IRS + 2, BASE + 1000, ACK, window=100))
    assert conn.snd_wnd == 5000 and conn.snd_wl1 == IRS + 1


def test_an_ack_on_an_old_segment_keeps_the_peers_right_edge():
    """The peer's retransmission that fills a hole in its own text (SEG.SEQ < SND.WL1)
    acknowledges new data but may not update the window (RFC 9293 3.10.7.4). SND.UNA
    moves, SND.WND loses what was acknowledged: the right edge stays where the peer put it,
    and nothing goes beyond it (found by the seed sweep's wire check: the edge crept
    forward by the acknowledged octets)."""
    conn = established(peer_window=20000, peer_mss=1460)
    conn.send(b"x" * 60000)
    pull(conn)
    edge = BASE + 20000
    send_seg(conn, seg(IRS + 101, BASE, ACK, 20000, payload=b"b" * 100))  # out of order: IRS + 1 lost
    pull(conn)
    send_seg(conn, seg(IRS + 201, BASE + 2920, ACK, 20000 - 2920))  # SND.WL1 = IRS + 201
    pull(conn)
    send_seg(conn, seg(IRS + 1, BASE + 14600, ACK, 5400, payload=b"a" * 100))  # the hole filled
    assert conn.snd_wl1 == IRS + 201 and conn.snd_una == BASE + 14600
    assert conn.snd_una + conn.snd_wnd == edge
    assert all(s.seq + len(s.payload) <= edge for s in pull(conn))
    send_seg(conn, seg(IRS + 201, BASE + 14600, ACK, 10000))  # a window update proper moves it
    assert conn.snd_wnd == 10000
    assert edge < max(s.seq + len(s.payload) for s in pull(conn)) <= BASE + 24600


def test_the_window_of_the_ack_that_ends_the_handshake_counts_from_that_ack():
    """Both opens take the window of the segment that acknowledges the SYN whole: it is
    relative to its ACK (ISS + 1), so acknowledging the SYN takes nothing off it."""
    conn = established(peer_window=20000)
    assert conn.snd_una == BASE and conn.snd_wnd == 20000
    conn, _synack = syn_received()
    send_seg(conn, seg(IRS + 1, BASE, ACK, 20000))
    assert conn.state is State.ESTABLISHED and conn.snd_wnd == 20000


def tlp_conn(rtt=0.05, **kw):
    """ESTABLISHED with SACK, SRTT = `rtt` from the handshake; returns (conn, now)."""
    conn, _syn = syn_sent(T0, sack=True, **kw)
    now = T0 + rtt
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 65535, mss=1000, sack_permitted=True), now)
    pull(conn, now)
    conn.take_events()
    assert conn.sack_ok and conn.rtt.srtt == pytest.approx(rtt)
    return conn, now


def test_tail_loss_probe_resends_the_last_segment_after_two_rtts():
    """RFC 8985 7.2-7.3: PTO = 2*SRTT after new data; the probe is the last segment again,
    the RTO is armed anew and no second probe follows in the same flight."""
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    assert len(pull(conn, now)) == 3
    assert conn.tlp_at == pytest.approx(now + 0.1) and conn.poll_at() == conn.tlp_at
    t = conn.tlp_at
    conn.poll(t)
    [probe] = pull(conn, t)
    assert (probe.seq, len(probe.payload)) == (BASE + 2000, 1000)
    assert conn.counters["tlp-probe"] == 1 and conn.tlp_at is None
    assert conn.poll_at() == conn.rto_at == pytest.approx(t + conn.rtt.rto)
    # only the last segment was lost: the probe's ACK covers the flight, and the next ACK
    # beyond it closes the episode as a repaired loss (7.4): cwnd is reduced once
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK), t + 0.05)
    cwnd = conn.cc.cwnd
    conn.send(b"y" * 1000)
    pull(conn, t + 0.05)
    send_seg(conn, seg(IRS + 1, BASE + 4000, ACK), t + 0.1)
    assert conn.counters["tlp-loss-repaired"] == 1 and conn.cc.cwnd < cwnd


def test_a_probe_that_arrives_above_a_hole_starts_fast_recovery():
    """Segments 2 and 3 of 3 lost: the probe (3 again) arrives and is SACKed while 2 is still
    missing: one duplicate ACK, but 2 was sent a PTO before a delivered segment, so it is
    lost (RFC 8985 6.2 applied to the probe) and goes out again at once, not after the RTO."""
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    pull(conn, now)
    t = conn.tlp_at
    conn.poll(t)
    [probe] = pull(conn, t)
    assert probe.seq == BASE + 2000
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK, sack=((BASE + 2000, BASE + 3000),)), t + 0.05)
    assert conn.recovery == "sack" and conn.counters["tlp-recovery"] == 1
    [rexmit] = pull(conn, t + 0.05)
    assert (rexmit.seq, len(rexmit.payload)) == (BASE + 1000, 1000)
    assert conn.counters["rto"] == 0
    # the original of the probe had arrived too: its D-SACK does not pass the real loss
    # of segment 2 off as spurious (the probe counts among the episode's retransmissions)
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK, sack=((BASE + 2000, BASE + 3000),)), t + 0.1)
    conn.send(b"y" * 1000)
    pull(conn, t + 0.1)
    send_seg(conn, seg(IRS + 1, BASE + 4000, ACK), t + 0.15)
    assert conn.counters["dsack-received"] == 1 and conn.counters["dsack-undo"] == 0


def test_a_probe_above_a_lost_burst_makes_the_whole_burst_lost():
    """A whole flight but its last segment lost at once (a TSO super-frame dropped whole):
    the probe is SACKed above seven missing segments. All of them were sent before it,
    so RACK's rule makes all of them lost (`Scoreboard.lost_below`), not only the first
    as RFC 6675's IsLost would with one segment SACKed above: they go at once, as cwnd
    allows, instead of the first alone and the rest after the RTO (the pipe would count
    them in flight)."""
    conn, now = tlp_conn()
    conn.send(b"x" * 8000)
    assert len(pull(conn, now)) == 8
    t = conn.tlp_at
    conn.poll(t)
    [probe] = pull(conn, t)
    assert probe.seq == BASE + 7000
    send_seg(conn, seg(IRS + 1, BASE, ACK, sack=((BASE + 7000, BASE + 8000),)), t + 0.05)
    assert conn.recovery == "sack" and conn.scoreboard.lost_below == BASE + 7000
    out = pull(conn, t + 0.05)
    assert [(s.seq - BASE, len(s.payload)) for s in out] == [(n * 1000, 1000) for n in range(7)]
    assert conn.cc.cwnd == 7000
    send_seg(conn, seg(IRS + 1, BASE + 8000, ACK), t + 0.1)
    assert conn.recovery is None and conn.scoreboard.lost_below is None and conn.counters["rto"] == 0


def test_after_reordering_a_probe_leaves_the_burst_to_rfc_6675():
    """With reordering seen (a raised DupThresh), the missing text may be late: the probe
    still starts recovery, but only what IsLost finds is resent (the first segment)."""
    conn, now = tlp_conn()
    conn.scoreboard.dup_thresh = 5  # as after a spurious fast retransmit
    conn.send(b"x" * 8000)
    pull(conn, now)
    t = conn.tlp_at
    conn.poll(t)
    pull(conn, t)
    send_seg(conn, seg(IRS + 1, BASE, ACK, sack=((BASE + 7000, BASE + 8000),)), t + 0.05)
    assert conn.recovery == "sack" and conn.scoreboard.lost_below is None
    assert [(s.seq - BASE, len(s.payload)) for s in pull(conn, t + 0.05)] == [(0, 1000)]


def test_a_probe_carrying_the_fin_shows_loss_by_its_text():
    """The last segment carries FIN; the probe repeats it. SACK blocks cover text, never a
    FIN: the probe's last octet of text SACKed is what shows it arrived."""
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    conn.close()
    out = pull(conn, now)
    assert out[-1].flags & FIN
    t = conn.tlp_at
    conn.poll(t)
    [probe] = pull(conn, t)
    assert probe.seq == BASE + 2001 and probe.flags & FIN  # (the last MSS of sequence space, FIN included)
    send_seg(conn, seg(IRS + 1, BASE, ACK, sack=((BASE + 2000, BASE + 3000),)), t + 0.05)
    assert conn.recovery == "sack" and conn.counters["tlp-recovery"] == 1
    assert [(s.seq - BASE, len(s.payload)) for s in pull(conn, t + 0.05)][:2] == [(0, 1000), (1000, 1000)]


def test_tail_loss_probe_found_spurious_by_a_dsack_keeps_cwnd():
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    pull(conn, now)
    t = conn.poll_at()
    conn.poll(t)
    pull(conn, t)
    cwnd = conn.cc.cwnd
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK), t + 0.01)  # the originals' late ACK
    # the receiver got the probe twice and says so in a D-SACK block (RFC 2883)
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK, sack=((BASE + 2000, BASE + 3000),)), t + 0.05)
    assert conn.counters["tlp-spurious"] == 1
    conn.send(b"y" * 1000)
    pull(conn, t + 0.05)
    send_seg(conn, seg(IRS + 1, BASE + 4000, ACK), t + 0.1)
    assert conn.counters["tlp-loss-repaired"] == 0 and conn.cc.cwnd >= cwnd


def test_tail_loss_probe_timing_and_new_data_probe():
    conn, now = tlp_conn()
    conn.send(b"x" * 500)  # one segment in flight: the receiver may delay its ACK (WCDelAckT)
    pull(conn, now)
    assert conn.tlp_at == pytest.approx(now + 0.1 + 0.2)
    conn, now = tlp_conn(initial_window=2)
    conn.send(b"x" * 5000)  # cwnd lets 2 out; the probe is the next new segment (7.3)
    assert [s.seq for s in pull(conn, now)] == [BASE, BASE + 1000]
    t = conn.poll_at()
    conn.poll(t)
    [probe] = pull(conn, t)
    assert (probe.seq, len(probe.payload)) == (BASE + 2000, 1000) and conn.snd_max == BASE + 3000
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK), t + 0.05)
    assert conn.counters["tlp-loss-repaired"] == 0


def test_no_tail_loss_probe_without_sack_or_after_a_timeout():
    conn = established()  # no SACK
    conn.send(b"x" * 3000)
    pull(conn)
    assert conn.tlp_at is None and conn.poll_at() == conn.rto_at
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    pull(conn, now)
    t = conn.poll_at()
    conn.poll(t)
    pull(conn, t)  # the probe
    t = conn.poll_at()
    conn.poll(t)  # the RTO
    assert conn.counters["rto"] == 1 and pull(conn, t)[0].seq == BASE
    assert conn.tlp_at is None  # RTO recovery: no probe until new data is acknowledged
    send_seg(conn, seg(IRS + 1, BASE + 1000, ACK), t + 0.05)
    assert conn.tlp_at is None  # still going back (SND.NXT < SND.MAX)
    assert [s.seq for s in pull(conn, t + 0.05)] == [BASE + 1000, BASE + 2000]
    assert conn.tlp_at is None  # and what was in flight at the timeout is not all acknowledged
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK), t + 0.1)
    conn.send(b"y" * 1000)
    pull(conn, t + 0.1)
    assert conn.tlp_at is not None  # recovered: new data gets its probe timeout again


def test_a_due_probe_is_dropped_by_an_ack_or_the_end_of_the_connection():
    conn, now = tlp_conn()
    conn.send(b"x" * 3000)
    pull(conn, now)
    t = conn.tlp_at
    conn.poll(t)
    assert conn.wants_transmit()  # the probe waits for the next pull...
    send_seg(conn, seg(IRS + 1, BASE + 3000, ACK), t)
    assert not conn.wants_transmit() and conn.poll_at() is None  # ...and an ACK makes it moot
    conn.send(b"y" * 1000)
    pull(conn, t)
    conn.poll(conn.tlp_at)
    send_seg(conn, seg(IRS + 1, BASE + 4000, ACK | RST), conn.tlp_at)
    assert conn.state is State.CLOSED and not conn.wants_transmit() and conn.poll_at() is None


def test_each_response_gets_a_probe_though_the_last_episode_awaits_its_verdict():
    """A probe's ACK that covers exactly what it carried leaves the episode open (is a
    D-SACK still to come?); the next response, a new flight, still gets its PTO, and when
    that probe goes out the old episode counts as a repaired loss."""
    conn, now = tlp_conn()
    conn.send(b"x" * 500)
    pull(conn, now)
    t = conn.tlp_at
    conn.poll(t)
    pull(conn, t)
    send_seg(conn, seg(IRS + 1, BASE + 500, ACK), t + 0.05)  # the probe's ACK: verdict pending
    assert conn._tlp_end is not None and conn.counters["tlp-loss-repaired"] == 0
    conn.send(b"y" * 500)
    pull(conn, t + 0.1)
    t = conn.tlp_at
    assert t is not None  # the next response has its probe timeout
    conn.poll(t)
    [probe] = pull(conn, t)
    assert probe.seq == BASE + 500 and conn.counters["tlp-loss-repaired"] == 1


def acknowledge_two_gib(conn, now):
    """Send and acknowledge 2 GiB as 64 KB TSO segments, each ACKed as it goes; returns
    (the time after, the offset from ISS + 1 reached)."""
    chunk = memoryview(bytes(1 << 20))
    end = 0
    while end < 1 << 31:
        conn.send(chunk)
        end = max((s.seq - ISS - 1) % (1 << 32) + len(s.payload) for s in conn.transmit(now, 64))
        now += 0.001
        send_seg(conn, seg(IRS + 1, ISS + 1 + end, ACK, 65535), now)
    return now, end


def test_fast_retransmit_still_starts_after_two_gib_without_a_loss():
    """RecoveryPoint is set at a loss only; left at the ISS, after 2 GiB acknowledged without
    one it compares as ahead of SND.UNA (sequence numbers wrap, RFC 9293 3.4), and RFC 6582's
    guard (no recovery before SND.UNA passes it) would then refuse every fast retransmit. It
    follows SND.UNA once a quarter of the space behind. Then the first segment of the next
    megabyte is lost."""
    conn = established(tso_max=TSO_MAX_PAYLOAD, sack=True, window_scaling=True, send_buffer=1 << 20,
                       peer_window=65535, peer_opts={"sack_permitted": True, "wscale": 7})
    now, end = acknowledge_two_gib(conn, T0)
    conn.send(memoryview(bytes(1 << 20)))
    first, *rest = conn.transmit(now, 64)
    base = ISS + 1 + end
    lost = len(first.payload)
    for n in (1, 2, 3):
        send_seg(conn, seg(IRS + 1, base, ACK, 65535, sack=((base + lost, base + lost + n * 1460),)), now + 0.01)
    assert conn.recovery == "sack" and conn.counters["fast-retransmit"] == 1


def test_ecn_still_reacts_after_two_gib_without_a_congestion_signal():
    """The same for ECN's once-per-window point (RFC 3168 6.1.2): after 2 GiB, ECE still
    reduces cwnd."""
    conn, _syn = syn_sent(ecn=True, tso_max=TSO_MAX_PAYLOAD, window_scaling=True, send_buffer=1 << 20)
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK | ECE, mss=1460, wscale=7))
    pull(conn)
    now, end = acknowledge_two_gib(conn, T0)
    conn.send(memoryview(bytes(1 << 20)))
    conn.transmit(now, 64)
    send_seg(conn, seg(IRS + 1, ISS + 1 + end + 1460, ACK | ECE, 65535), now + 0.01)
    assert conn.counters["ecn-reduction"] == 1
