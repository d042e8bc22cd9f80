"""State-machine tests: every RFC 9293 transition with exact replies, on a fake clock."""
import pytest

from tcp_harness import (ACK, FIN, IRS, ISS, LOCAL, PSH, REMOTE, RST, SYN, T0, Connection, State,
                         TcpConfig, config, drive, established, pull, reset_for, send_seg, seg,
                         syn_received, syn_sent, wire_roundtrip)
from shoal.net.native.tcp.connection import Event, TcpError
from shoal.net.native.wire.tcp import URG


def test_active_open_sends_syn_with_mss():
    conn, syn = syn_sent()
    assert syn.seq == ISS and syn.mss == 1460 and syn.ack == 0 and syn.flags == SYN
    assert conn.state is State.SYN_SENT
    assert conn.poll_at() == T0 + 1.0  # RFC 6298 2.1 initial RTO


def test_active_open_completes_and_acks():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 8000, mss=1000))
    assert conn.state is State.ESTABLISHED
    assert conn.take_events() == [Event.CONNECTED]
    [ack] = pull(conn)
    assert (ack.seq, ack.ack, ack.flags) == (ISS + 1, IRS + 1, ACK)
    assert ack.mss is None  # MUST-65: no MSS on non-SYN segments
    assert conn.snd_mss == 1000 and conn.snd_wnd == 8000
    assert conn.poll_at() is None


def test_missing_mss_option_means_536():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 8000))
    assert conn.snd_mss == 536  # MUST-15


def test_mss_clamped_to_mtu():
    conn, syn = syn_sent(mtu=1280, mss=9000)
    assert syn.mss == 1240  # MUST-67 / SHLD-6
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 8000, mss=8960))
    assert conn.snd_mss == 1240  # MUST-16: min(peer MSS, MTU - 40)


def test_syn_sent_bad_ack_gets_reset():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, ISS + 5, SYN | ACK))
    [rst] = pull(conn)
    assert (rst.seq, rst.flags) == (ISS + 5, RST)
    assert conn.state is State.SYN_SENT and conn.drops["bad-ack"] == 1


def test_syn_sent_rst_with_ack_is_refused():
    conn, _ = syn_sent()
    send_seg(conn, seg(0, ISS + 1, RST | ACK, 0))
    assert conn.state is State.CLOSED
    assert conn.take_events() == [Event.REFUSED, Event.CLOSED]


def test_syn_sent_rst_without_ack_ignored():
    conn, _ = syn_sent()
    send_seg(conn, seg(0, 0, RST, 0))
    assert conn.state is State.SYN_SENT and conn.drops["rst-without-ack"] == 1


def test_simultaneous_open():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, 0, SYN, 4000, mss=1460))
    assert conn.state is State.SYN_RECEIVED
    [synack] = pull(conn)
    assert (synack.seq, synack.ack, synack.flags) == (ISS, IRS + 1, SYN | ACK)
    # The peer's SYN,ACK (RFC 9293 figure 8) completes the handshake.
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, 4000, mss=1460))
    assert conn.state is State.ESTABLISHED
    [ack] = pull(conn)
    assert (ack.seq, ack.ack, ack.flags) == (ISS + 1, IRS + 1, ACK)


def test_simultaneous_open_via_plain_ack():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, 0, SYN, 4000, mss=1460))
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, 4000))
    assert conn.state is State.ESTABLISHED
    assert Event.CONNECTED in conn.take_events()


def test_passive_open():
    conn, synack = syn_received()
    assert (synack.seq, synack.ack, synack.mss) == (ISS, IRS + 1, 1460)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK))
    assert conn.state is State.ESTABLISHED
    assert conn.take_events() == [Event.CONNECTED]


def test_syn_received_duplicate_syn_resends_syn_ack():
    conn, _ = syn_received()
    send_seg(conn, seg(IRS, 0, SYN, mss=1460))
    [again] = pull(conn)
    assert (again.seq, again.ack, again.flags) == (ISS, IRS + 1, SYN | ACK)


def test_syn_received_bad_ack_gets_reset():
    conn, _ = syn_received()
    send_seg(conn, seg(IRS + 1, ISS + 7, ACK))
    [rst] = pull(conn)
    assert (rst.seq, rst.flags) == (ISS + 7, RST)
    assert conn.state is State.SYN_RECEIVED


def test_syn_received_passive_rst_returns_to_listen_quietly():
    conn, _ = syn_received()
    send_seg(conn, seg(IRS + 1, 0, RST, 0))
    assert conn.state is State.CLOSED
    assert conn.take_events() == [Event.CLOSED]  # no error for a never-accepted connection


def test_syn_received_active_rst_is_refused():
    conn, _ = syn_sent()
    send_seg(conn, seg(IRS, 0, SYN, 4000, mss=1460))
    pull(conn)
    send_seg(conn, seg(IRS + 1, 0, RST, 0))
    assert conn.take_events() == [Event.REFUSED, Event.CLOSED]


def test_syn_retransmitted_with_backoff_then_timed_out():
    conn, _syn = syn_sent(syn_retransmits=3)
    now = T0
    for expected_gap in (1.0, 2.0, 4.0):
        t = conn.poll_at()
        assert t == pytest.approx(now + expected_gap)
        now = t
        conn.poll(now)
        [again] = pull(conn, now)
        assert again.flags == SYN and again.seq == ISS
    conn.poll(conn.poll_at())
    assert conn.state is State.CLOSED
    assert Event.TIMED_OUT in conn.take_events()


def test_default_syn_retries_exceed_three_minutes():
    conn, _ = syn_sent()
    out, now = drive(conn, T0, T0 + 1000)
    assert all(s.flags == SYN for s in out)
    assert conn.state is State.CLOSED and now - T0 >= 180  # MUST-23


def test_rst_for_closed_port():
    r = reset_for(seg(IRS, 0, SYN, payload=b""))
    assert (r.seq, r.ack, r.flags) == (0, IRS + 1, RST | ACK)
    r = reset_for(seg(IRS, 777, ACK, payload=b"abc"))
    assert (r.seq, r.flags) == (777, RST)
    assert reset_for(seg(IRS, 0, RST)) is None


# ---------------------------------------------------------------- data transfer


def test_send_data_and_ack():
    conn = established()
    assert conn.send(b"hello") == 5
    [d] = pull(conn)
    assert (d.seq, d.ack, bytes(d.payload), d.flags) == (ISS + 1, IRS + 1, b"hello", ACK | PSH)
    assert conn.poll_at() == pytest.approx(T0 + 1.0)
    send_seg(conn, seg(IRS + 1, ISS + 6, ACK))
    assert conn.snd_una == ISS + 6 and conn.poll_at() is None


def test_receive_in_order_delayed_ack():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | PSH, payload=b"abc"))
    assert conn.take_events() == [Event.READABLE]
    assert pull(conn) == []  # delayed (SHLD-18)
    assert conn.poll_at() == pytest.approx(T0 + 0.04)  # MUST-40: < 0.5 s
    conn.poll(T0 + 0.04)
    [ack] = pull(conn, T0 + 0.04)
    assert ack.ack == IRS + 4
    assert conn.recv() == b"abc"


def test_ack_every_second_full_segment():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"x" * 1460))
    assert pull(conn) == []
    send_seg(conn, seg(IRS + 1461, ISS + 1, ACK, payload=b"y" * 1460))
    [ack] = pull(conn)
    assert ack.ack == IRS + 1 + 2920  # SHLD-19


def test_ack_every_second_full_segment_with_timestamps():
    """With timestamps a full-sized segment carries the MSS less the option's 12 octets
    (1,448): two of them are the two full segments of SHLD-19, though short of 2 * 1,460.
    So after a super-frame (segments the receiving device merged), which counts as a full
    segment of at most that size."""
    conn = established(timestamps=True, peer_opts={"timestamp": (7000, int(T0 * 1000))})
    assert conn.ts_ok
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"w" * 4344, timestamp=(7001, 0)))
    [ack] = pull(conn)
    seq = IRS + 1 + 4344
    assert ack.ack == seq
    send_seg(conn, seg(seq, ISS + 1, ACK, payload=b"x" * 1448, timestamp=(7002, 0)))
    assert pull(conn) == []
    send_seg(conn, seg(seq + 1448, ISS + 1, ACK, payload=b"y" * 1448, timestamp=(7003, 0)))
    [ack] = pull(conn)
    assert ack.ack == seq + 2896


def test_ack_every_second_segment_of_a_peer_with_a_smaller_mtu():
    conn = established(peer_mss=1200)  # its MTU: it sends 1,200 octets, not our 1,460
    seq = IRS + 1
    for k in range(3):
        send_seg(conn, seg(seq, ISS + 1, ACK, payload=b"z" * 1200))
        seq += 1200
        if k == 1:
            [ack] = pull(conn)
            assert ack.ack == IRS + 1 + 2400
        else:
            assert pull(conn) == []  # (the third waits for a fourth, or the timer)


def test_small_segments_are_not_full_sized():
    """A request-sized segment teaches nothing: two of them wait for the delayed ACK."""
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | PSH, payload=b"a" * 100))
    send_seg(conn, seg(IRS + 101, ISS + 1, ACK | PSH, payload=b"b" * 100))
    assert pull(conn) == []
    assert conn.poll_at() == pytest.approx(T0 + 0.04)


def test_out_of_order_queued_and_acked_immediately():
    conn = established()
    send_seg(conn, seg(IRS + 4, ISS + 1, ACK, payload=b"def"))
    [dup] = pull(conn)
    assert dup.ack == IRS + 1  # MAY-13 / RFC 5681 4.2
    assert conn.readable == 0
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"abc"))
    [ack] = pull(conn)
    assert ack.ack == IRS + 7  # hole filled: immediate ACK
    assert conn.recv() == b"abcdef"  # SHLD-31


def test_overlapping_and_duplicate_segments():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"abcd"))
    send_seg(conn, seg(IRS + 3, ISS + 1, ACK, payload=b"cdefg"))
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"ab"))  # old duplicate
    assert conn.recv() == b"abcdefg"
    assert conn.rcv_nxt == IRS + 8


def test_nagle_holds_small_segments():
    conn = established()
    conn.send(b"a")
    assert len(pull(conn)) == 1
    conn.send(b"b")
    conn.send(b"c")
    assert pull(conn) == []  # SHLD-7: unacked small data outstanding
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK))
    [d] = pull(conn)
    assert bytes(d.payload) == b"bc"


def test_nodelay_sends_immediately():
    conn = established(nodelay=True)
    conn.send(b"a")
    pull(conn)
    conn.send(b"b")
    [d] = pull(conn)  # MUST-17
    assert bytes(d.payload) == b"b"


def test_set_nodelay_at_runtime():
    conn = established()
    conn.set_nodelay(True)
    conn.send(b"a")
    pull(conn)
    conn.send(b"b")
    assert len(pull(conn)) == 1


def test_full_segments_coalesce_in_one_pull():
    conn = established(peer_mss=1000, nodelay=True)
    conn.send(b"z" * 2000)
    conn.send(b"z" * 1500)
    out = pull(conn)
    assert [len(s.payload) for s in out] == [1000, 1000, 1000, 500]  # SHLD-28
    assert [s.flags & PSH for s in out] == [0, 0, 0, PSH]  # SHLD-27 / MUST-61


def test_nagle_holds_only_the_tail():
    conn = established(peer_mss=1000)
    conn.send(b"z" * 3500)
    assert [len(s.payload) for s in pull(conn)] == [1000, 1000, 1000]
    send_seg(conn, seg(IRS + 1, ISS + 3001, ACK))
    [tail] = pull(conn)
    assert len(tail.payload) == 500 and tail.flags & PSH


def test_transmit_limit_is_respected():
    conn = established(peer_mss=1000)
    conn.send(b"z" * 5000)
    assert len(pull(conn, limit=2)) == 2
    assert conn.wants_transmit()
    assert len(pull(conn, limit=10)) == 3
    assert not conn.wants_transmit()


def test_send_window_limits():
    conn = established(peer_window=2000, peer_mss=1000)
    conn.send(b"q" * 5000)
    out = pull(conn)
    assert sum(len(s.payload) for s in out) == 2000
    send_seg(conn, seg(IRS + 1, ISS + 1001, ACK, window=2000))
    out = pull(conn)
    assert [s.seq for s in out] == [ISS + 2001]


def test_send_buffer_bounded_and_writable_event():
    conn = established(send_buffer=4000, send_buffer_max=4000, peer_mss=1000)
    assert conn.send(b"w" * 6000) == 4000
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2001, ACK))
    assert Event.WRITABLE in conn.take_events()
    assert conn.send_space == 2000


def test_receive_window_shrinks_as_buffer_fills_and_reopens():
    conn = established(recv_buffer=4000)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"x" * 1460))
    send_seg(conn, seg(IRS + 1461, ISS + 1, ACK, payload=b"x" * 1460))
    [ack] = pull(conn)
    assert ack.window == 4000 - 2920
    send_seg(conn, seg(IRS + 2921, ISS + 1, ACK, payload=b"x" * 1080))
    conn.poll(T0 + 1)
    [ack] = pull(conn, T0 + 1)
    assert ack.window == 0
    # beyond the window: trimmed, not accepted
    send_seg(conn, seg(IRS + 4001, ISS + 1, ACK, payload=b"y"), T0 + 1)
    assert conn.readable == 4000
    [ack] = pull(conn, T0 + 1)
    assert ack.window == 0 and ack.ack == IRS + 4001
    conn.recv(1000)
    assert pull(conn, T0 + 1) == []  # receiver SWS: 1000 < min(buffer/2, 2*MSS)
    conn.recv(1500)
    [upd] = pull(conn, T0 + 1)
    assert upd.window == 2500  # MUST-39 window update once it opened enough


def test_window_never_shrinks_from_the_right():
    conn = established(recv_buffer=4000)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"x" * 100))
    conn.poll(T0 + 1)
    [ack] = pull(conn, T0 + 1)
    assert IRS + 101 + ack.window >= IRS + 1 + 4000 - 1  # right edge kept (SHLD-14)


def test_close_sends_fin_after_data():
    conn = established()
    conn.send(b"bye")
    conn.close()
    assert conn.state is State.FIN_WAIT_1
    [d] = pull(conn)
    assert d.flags == ACK | PSH | FIN and bytes(d.payload) == b"bye"
    with pytest.raises(TcpError):
        conn.send(b"more")


def test_active_close_to_time_wait_and_closed():
    conn = established(msl=5)
    conn.close()
    [fin] = pull(conn)
    assert fin.flags == ACK | FIN and fin.seq == ISS + 1
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK))
    assert conn.state is State.FIN_WAIT_2
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    assert conn.state is State.TIME_WAIT
    [ack] = pull(conn)
    assert ack.ack == IRS + 2
    assert conn.poll_at() == pytest.approx(T0 + 10)  # 2 * MSL (MUST-13)
    # a retransmitted FIN is acknowledged again and restarts the timer
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN), T0 + 3)
    [ack] = pull(conn, T0 + 3)
    assert ack.ack == IRS + 2
    assert conn.poll_at() == pytest.approx(T0 + 13)
    conn.poll(T0 + 13)
    assert conn.state is State.CLOSED
    assert conn.take_events()[-1] is Event.CLOSED


def test_fin_wait_1_fin_and_ack_together_goes_to_time_wait():
    conn = established()
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    assert conn.state is State.TIME_WAIT


def test_simultaneous_close_goes_through_closing():
    conn = established()
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | FIN))
    assert conn.state is State.CLOSING
    [ack] = pull(conn)
    assert ack.ack == IRS + 2
    send_seg(conn, seg(IRS + 2, ISS + 2, ACK))
    assert conn.state is State.TIME_WAIT


def test_passive_close_half_close_then_last_ack():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | FIN, payload=b"end"))
    assert conn.state is State.CLOSE_WAIT
    assert conn.take_events() == [Event.READABLE, Event.EOF]
    [ack] = pull(conn)
    assert ack.ack == IRS + 5
    # half-close (MAY-1): we can still send
    conn.send(b"reply")
    [d] = pull(conn)
    assert bytes(d.payload) == b"reply"
    assert conn.recv() == b"end" and conn.at_eof
    conn.close()
    assert conn.state is State.LAST_ACK
    [fin] = pull(conn)
    assert fin.flags & FIN and fin.seq == ISS + 6
    send_seg(conn, seg(IRS + 5, ISS + 7, ACK))
    assert conn.state is State.CLOSED


def test_fin_out_of_order_processed_when_hole_fills():
    conn = established()
    send_seg(conn, seg(IRS + 4, ISS + 1, ACK | FIN, payload=b"def"))
    assert conn.state is State.ESTABLISHED
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"abc"))
    assert conn.state is State.CLOSE_WAIT
    assert conn.recv() == b"abcdef"


def test_fin_retransmitted_on_timeout():
    conn = established()
    conn.close()
    pull(conn)
    conn.poll(T0 + 1.0)
    [fin] = pull(conn, T0 + 1.0)
    assert fin.flags & FIN and fin.seq == ISS + 1


def test_abort_sends_rst():
    conn = established()
    conn.send(b"x")
    pull(conn)
    conn.abort()
    [rst] = pull(conn)
    assert rst.flags == RST and rst.seq == ISS + 2
    assert conn.state is State.CLOSED


def test_close_in_syn_sent_just_closes():
    conn, _ = syn_sent()
    conn.close()
    assert conn.state is State.CLOSED and pull(conn) == []


def test_close_in_syn_received_sends_fin_after_handshake():
    conn, _ = syn_received()
    conn.close()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK))
    assert conn.state is State.FIN_WAIT_1
    [fin] = pull(conn)
    assert fin.flags & FIN


# ---------------------------------------------------------------- RST acceptance (RFC 5961)


def test_exact_rst_resets():
    conn = established()
    send_seg(conn, seg(IRS + 1, 0, RST, 0))
    assert conn.take_events() == [Event.RESET, Event.CLOSED]  # MUST-12


def test_in_window_rst_gets_challenge_ack():
    conn = established()
    send_seg(conn, seg(IRS + 100, 0, RST, 0))
    assert conn.state is State.ESTABLISHED
    [ch] = pull(conn)
    assert (ch.seq, ch.ack, ch.flags) == (ISS + 1, IRS + 1, ACK)


def test_out_of_window_rst_dropped_silently():
    conn = established()
    send_seg(conn, seg(IRS + 10_000_000, 0, RST, 0))
    assert conn.state is State.ESTABLISHED and pull(conn) == []
    assert conn.drops["out-of-window"] == 1


def test_syn_in_established_gets_challenge_ack():
    conn = established()
    send_seg(conn, seg(IRS + 50, 0, SYN, mss=1460))
    assert conn.state is State.ESTABLISHED
    [ch] = pull(conn)
    assert ch.flags == ACK and ch.ack == IRS + 1


def test_old_ack_gets_challenge_ack_and_data_dropped():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS - 200_000, ACK, payload=b"inject"))
    assert conn.readable == 0 and conn.drops["ack-too-old"] == 1
    [ch] = pull(conn)
    assert ch.ack == IRS + 1


def test_ack_of_unsent_data_is_acked_and_dropped():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 500, ACK, payload=b"zz"))
    assert conn.readable == 0
    [a] = pull(conn)
    assert a.ack == IRS + 1


def test_challenge_acks_rate_limited():
    conn = established(challenge_ack_limit=3)
    for i in range(10):
        send_seg(conn, seg(IRS + 100 + i, 0, RST, 0))
        pull(conn)
    assert conn.counters["challenge-ack"] == 3
    assert conn.drops["challenge-ack-limited"] == 7


def test_segment_without_ack_dropped():
    conn = established()
    send_seg(conn, seg(IRS + 1, 0, PSH, payload=b"noack"))
    assert conn.readable == 0 and conn.drops["no-ack"] == 1


def test_rst_in_time_wait_closes():
    conn = established()
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    send_seg(conn, seg(IRS + 2, 0, RST, 0))
    assert conn.state is State.CLOSED


def test_sequence_wraparound():
    conn = Connection.active(config(), LOCAL, REMOTE, 0xFFFFFF00, T0)
    pull(conn)
    send_seg(conn, seg(0xFFFFFFF0, 0xFFFFFF01, SYN | ACK, mss=1000))
    conn.send(b"a" * 600)
    out = pull(conn)
    assert out[0].seq == 0xFFFFFF01
    send_seg(conn, seg(0xFFFFFFF1, (0xFFFFFF01 + 600) & 0xFFFFFFFF, ACK, payload=b"b" * 100))
    assert conn.snd_una == (0xFFFFFF01 + 600) & 0xFFFFFFFF
    assert conn.recv() == b"b" * 100
    assert conn.rcv_nxt == (0xFFFFFFF1 + 100) & 0xFFFFFFFF


def test_urgent_data_received():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | URG, payload=b"abc!", urgent=4))
    assert Event.URGENT in conn.take_events()  # MUST-32
    assert conn.urgent_pending == 4  # MUST-33
    conn.recv(4)
    assert conn.urgent_pending == 0


def test_urgent_data_sent():
    conn = established()
    conn.send(b"xyz", urgent=True)
    [d] = pull(conn)
    assert d.flags & URG and d.urgent == 3  # MUST-62: points past the urgent data


def test_send_in_wrong_state_raises():
    conn, _ = syn_sent()
    conn.close()
    with pytest.raises(TcpError):
        conn.send(b"x")



def test_close_with_unread_data_resets():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"unread"))
    conn.close()
    [rst] = pull(conn)
    assert rst.flags == RST and conn.state is State.CLOSED  # SHLD-3


def test_rst_carrying_data_is_accepted():
    conn = established()
    send_seg(conn, seg(IRS + 1, 0, RST, 0, payload=b"diagnostic: go away"))
    assert conn.take_events() == [Event.RESET, Event.CLOSED]  # SHLD-2


def test_zero_window_still_processes_ack_rst_and_urg():
    conn = established(recv_buffer=2000)
    conn.send(b"q" * 10)
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"f" * 2000))
    conn.poll(T0 + 1)
    [a] = pull(conn, T0 + 1)
    assert a.window == 0
    # a segment at RCV.NXT with data: the text is dropped, its ACK and URG are used (MUST-66)
    send_seg(conn, seg(IRS + 2001, ISS + 11, ACK | URG, payload=b"x", urgent=1), T0 + 1)
    assert conn.snd_una == ISS + 11 and conn.readable == 2000 and conn.drops["zero-window"] == 1
    send_seg(conn, seg(IRS + 2001, 0, RST, 0), T0 + 1)
    assert conn.state is State.CLOSED


def test_long_urgent_data_marks_every_segment():
    conn = established(peer_mss=1000, nodelay=True)
    conn.send(b"u" * 5000, urgent=True)
    out = pull(conn)
    assert [s.urgent for s in out] == [5000, 4000, 3000, 2000, 1000]  # MUST-31
    assert all(s.flags & URG for s in out)


def test_sender_sws_avoidance_waits_for_a_useful_window():
    conn = established(peer_mss=1000, peer_window=60000)
    conn.send(b"s" * 70000)
    pull(conn)  # 10 segments in flight (initial window)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, window=10300))
    assert pull(conn) == []  # 300 octets of window: too small to use (MUST-38)
    send_seg(conn, seg(IRS + 1, ISS + 10001, ACK, window=30000))
    assert len(pull(conn)) > 0


def test_icmp_soft_and_hard_errors():
    conn = established()
    conn.icmp_arrived(3, 1, T0)  # host unreachable: report, keep going (SHLD-25, MUST-56)
    assert conn.state is State.ESTABLISHED and conn.take_events() == [Event.SOFT_ERROR]
    conn.icmp_arrived(4, 0, T0)  # source quench: ignored (MUST-55)
    conn.icmp_arrived(11, 0, T0)  # time exceeded: never abort (MUST-56)
    conn.icmp_arrived(12, 0, T0)  # parameter problem: never abort (MUST-56)
    assert conn.state is State.ESTABLISHED and conn.take_events() == []
    conn.icmp_arrived(3, 3, T0)  # port unreachable: abort (SHLD-26)
    assert conn.take_events() == [Event.UNREACHABLE, Event.CLOSED]


def test_config_rejects_long_delayed_ack():
    with pytest.raises(ValueError):
        TcpConfig(delayed_ack=0.5)  # MUST-40
    with pytest.raises(ValueError):
        TcpConfig(congestion="bbr")


def test_recommended_r1_and_r2_defaults():
    cfg = TcpConfig()
    assert cfg.r1_retransmits == 3  # SHLD-10
    total, rto = 0.0, cfg.initial_rto
    for _ in range(cfg.max_retransmits + 1):
        total += rto
        rto = min(rto * 2, cfg.max_rto)
    assert total >= 100  # SHLD-11: R2 of at least 100 seconds


def time_wait(**kw):
    conn = established(**kw)
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    pull(conn)
    assert conn.state is State.TIME_WAIT
    return conn


def test_a_fin_past_the_peers_fin_is_acknowledged_not_taken():
    """After the peer's FIN its sequence space has ended: a FIN at RCV.NXT (no retransmission,
    which would lie before it) gets an ACK and leaves RCV.NXT where it is."""
    conn = time_wait()
    send_seg(conn, seg(IRS + 2, ISS + 2, ACK | FIN), T0 + 1)
    [a] = pull(conn, T0 + 1)
    assert a.flags == ACK and a.ack == IRS + 2 and conn.rcv_nxt == IRS + 2
    assert conn.state is State.TIME_WAIT and conn.drops["fin-after-fin"] == 1
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | FIN))
    pull(conn)
    send_seg(conn, seg(IRS + 2, ISS + 1, ACK | FIN))  # in CLOSE-WAIT too
    [a] = pull(conn)
    assert a.ack == IRS + 2 and conn.state is State.CLOSE_WAIT


def test_new_syn_in_time_wait_reopens():
    conn = time_wait()
    assert conn.segment_arrived(wire_roundtrip(seg(IRS + 100_000, 0, SYN, mss=1460)), T0 + 1)  # MAY-2
    assert conn.state is State.CLOSED and conn.counters["time-wait-reopen"] == 1


def test_old_syn_in_time_wait_is_challenged():
    conn = time_wait()
    assert not conn.segment_arrived(wire_roundtrip(seg(IRS + 1, 0, SYN, mss=1460)), T0 + 1)
    assert conn.state is State.TIME_WAIT
    [a] = pull(conn, T0 + 1)
    assert a.flags == ACK and a.ack == IRS + 2


def test_time_wait_reopen_by_timestamp():
    conn = time_wait(timestamps=True, peer_opts={"timestamp": (500, 1)})
    old = seg(IRS + 100_000, 0, SYN, mss=1460, timestamp=(400, 0))
    assert not conn.segment_arrived(wire_roundtrip(old), T0 + 1)
    new = seg(IRS - 100_000, 0, SYN, mss=1460, timestamp=(600, 0))
    assert conn.segment_arrived(wire_roundtrip(new), T0 + 1)  # SHLD-4: timestamps decide (RFC 6191)


@pytest.mark.parametrize("bad", [0xE0000001, 0xFFFFFFFF, 0x00000000])
def test_open_to_broadcast_or_multicast_rejected(bad):
    with pytest.raises(ValueError):
        Connection.active(config(), LOCAL, (bad, 80), ISS, T0)  # MUST-46


def test_ttl_and_dscp_for_the_ip_layer():
    conn = established(ttl=17, dscp=46)
    assert (conn.config.ttl, conn.config.dscp) == (17, 46)  # MUST-49, MUST-48
    conn.set_dscp(10)
    assert conn.config.dscp == 10  # SHLD-21
    with pytest.raises(ValueError):
        TcpConfig(dscp=64)
