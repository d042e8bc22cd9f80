"""Half-close with unread data, and the answers to unacceptable segments, on a fake clock.

Two problems found when the machine met the native stack and the Linux kernel:

* `close()` resets a connection with unread data (RFC 9293 3.6, SHLD-3; RFC 2525
  2.17), which is right for a full close but wrong for a half-close: `shutdown()`
  sends the FIN and keeps receiving.
* Old duplicates (a network that duplicates or reorders) were answered through the
  RFC 5961 challenge-ACK limiter, so a duplicating link exhausted it and the drops
  looked like an attack. RFC 9293 3.10.7.4 answers an unacceptable segment with a
  plain ACK; RFC 5961 section 7 throttles only its own challenges (3.2, 4.2, 5.2).
"""
import pytest

from tcp_harness import ACK, FIN, IRS, ISS, RST, SYN, T0, State, established, pull, send_seg, seg
from shoal.net.native.tcp.connection import Event, TcpError


# ---------------------------------------------------------------- shutdown (half-close)

def test_shutdown_with_unread_data_sends_fin_not_rst_and_keeps_receiving():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"unread"))
    conn.send(b"last words")
    conn.shutdown()
    assert conn.state is State.FIN_WAIT_1
    out = pull(conn)
    assert [s.flags & (FIN | RST) for s in out] == [FIN]  # no reset (SHLD-3 is for close)
    assert out[-1].payload == b"last words" and out[-1].ack == IRS + 7
    send_seg(conn, seg(IRS + 7, ISS + 12, ACK))
    assert conn.state is State.FIN_WAIT_2
    send_seg(conn, seg(IRS + 7, ISS + 12, ACK, payload=b" and more"))
    send_seg(conn, seg(IRS + 16, ISS + 12, ACK | FIN))
    assert conn.state is State.TIME_WAIT
    assert conn.recv() == b"unread and more" and conn.at_eof
    assert Event.RESET not in conn.take_events()
    [a] = pull(conn)
    assert a.flags == ACK and a.ack == IRS + 17


def test_shutdown_in_close_wait_goes_to_last_ack_even_with_unread_data():
    conn = established()
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | FIN, payload=b"bye"))
    assert conn.state is State.CLOSE_WAIT
    pull(conn)
    conn.shutdown()
    assert conn.state is State.LAST_ACK
    [fin] = pull(conn)
    assert fin.flags == ACK | FIN and fin.seq == ISS + 1
    assert conn.recv() == b"bye"


def test_close_after_shutdown_with_unread_data_resets():
    conn = established()
    conn.shutdown()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK, payload=b"never read"))
    assert conn.state is State.FIN_WAIT_2
    conn.close()  # the application says it will not read: the peer must learn (SHLD-3)
    [rst] = pull(conn)
    assert rst.flags == RST and conn.state is State.CLOSED
    assert conn.counters["close-with-unread-data"] == 1


def test_send_after_shutdown_is_refused():
    conn = established()
    conn.shutdown()
    with pytest.raises(TcpError, match="closing"):
        conn.send(b"x")


# ---------------------------------------------------------------- unacceptable segments

def test_old_duplicates_get_plain_acks_without_spending_the_challenge_budget():
    conn = established(challenge_ack_limit=5)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"d" * 100))
    pull(conn, T0)
    for i in range(500):  # a duplicating link, all within one second
        now = T0 + i * 0.001
        send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"d" * 100), now)
        [a] = pull(conn, now)
        assert (a.seq, a.ack, a.flags) == (ISS + 1, IRS + 101, ACK)  # RFC 9293 3.10.7.4
    assert conn.drops["challenge-ack-limited"] == 0 and conn.counters["challenge-ack"] == 0
    assert conn.counters["unacceptable-ack"] == 500 and conn.drops["out-of-window"] == 500
    # the RFC 5961 budget is intact for what it is meant for: in-window RSTs (3.2)
    for i in range(7):
        send_seg(conn, seg(IRS + 200 + i, 0, RST, 0), T0 + 0.6)
    assert conn.counters["challenge-ack"] == 5 and conn.drops["challenge-ack-limited"] == 2


def test_retransmitted_fin_in_time_wait_always_acked():
    conn = established()
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    assert conn.state is State.TIME_WAIT
    pull(conn)
    for i in range(3):
        send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN), T0 + 0.01 * i)
        [a] = pull(conn, T0 + 0.01 * i)
        assert a.flags == ACK and a.ack == IRS + 2
    assert conn.timewait_at == T0 + 0.02 + 2 * conn.config.msl


def test_unacceptable_pure_acks_answered_at_most_once_per_interval():
    conn = established(unacceptable_ack_interval=0.5)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK, payload=b"x" * 10))
    pull(conn)
    old_ack = seg(IRS - 5, ISS + 1, ACK)  # no sequence space, left of the window
    send_seg(conn, old_ack, T0)
    assert len(pull(conn, T0)) == 1
    for i in range(1, 10):
        send_seg(conn, old_ack, T0 + i * 0.05)
        assert pull(conn, T0 + i * 0.05) == []  # no ACK war with a desynchronized peer
    assert conn.counters["unacceptable-ack-suppressed"] == 9
    send_seg(conn, old_ack, T0 + 0.5)
    assert len(pull(conn, T0 + 0.5)) == 1
    assert conn.drops["challenge-ack-limited"] == 0


def test_out_of_window_syn_still_gets_a_rate_limited_challenge():
    conn = established(challenge_ack_limit=2)
    for i in range(4):
        send_seg(conn, seg(IRS + 10_000_000 + i, 0, SYN, mss=1460))  # RFC 5961 4.2: any sequence number
    assert conn.state is State.ESTABLISHED
    assert conn.counters["challenge-ack"] == 2 and conn.drops["challenge-ack-limited"] == 2
    [a] = pull(conn)
    assert a.flags == ACK and a.ack == IRS + 1


def test_peer_keepalive_probes_are_answered():
    conn = established()
    for i in range(3):  # RFC 9293 3.8.4: SEG.SEQ = SND.NXT - 1, no data, 75 s apart
        now = T0 + 7200 + 75 * i
        send_seg(conn, seg(IRS, ISS + 1, ACK), now)
        [a] = pull(conn, now)
        assert (a.seq, a.ack, a.flags) == (ISS + 1, IRS + 1, ACK)
    assert conn.counters["unacceptable-ack-suppressed"] == 0
