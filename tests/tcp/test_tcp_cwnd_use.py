"""The congestion window grows only while it is used, and restarts after an idle period.

An application-limited connection (request/response: a few hundred octets in flight
against a window of ten segments) must not grow cwnd with every ACK (RFC 7661's idea,
RFC 9438 5.8), and a connection that sent nothing for more than an RTO starts again
from at most the initial window (RFC 5681 4.1), so neither can send a burst the path
never carried.
"""
import pytest

from tcp_harness import ACK, IRS, ISS, PSH, T0, established, pull, send_seg, seg

BASE = ISS + 1
MSS = 1460
IW = 10 * MSS


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_request_response_does_not_grow_the_window(congestion):
    conn = established(congestion=congestion)
    seq, rcv, now = BASE, IRS + 1, T0
    for _ in range(200):
        now += 0.001
        send_seg(conn, seg(rcv, seq, ACK | PSH, payload=b"GET / HTTP/1.1\r\n\r\n"), now)
        conn.recv()
        rcv += 18
        conn.send(b"x" * 100)
        [reply] = pull(conn, now)
        assert len(reply.payload) == 100
        seq += 100
    send_seg(conn, seg(rcv, seq, ACK), now + 0.001)
    assert conn.cc.cwnd == IW
    assert conn.counters["cwnd-app-limited"] == 200  # every ACK of a reply


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_a_window_in_use_grows(congestion):
    conn = established(congestion=congestion)
    conn.send(b"x" * 60_000)
    out = pull(conn)
    assert sum(len(s.payload) for s in out) == IW  # the initial window, all in flight
    send_seg(conn, seg(IRS + 1, BASE + 2 * MSS, ACK), T0 + 0.05)
    assert conn.cc.cwnd == IW + 2 * MSS  # slow start: + min(acked, L * SMSS) (`congestion.SLOW_START_L`)
    assert conn.counters["cwnd-app-limited"] == 0


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_every_ack_of_a_burst_grows_a_window_in_use(congestion):
    """ACKs that arrive together (one poll's burst) find less and less in flight, as
    nothing is sent between them; the window was in use all the same, when its data left."""
    conn = established(congestion=congestion)
    conn.send(b"x" * 60_000)
    assert sum(len(s.payload) for s in pull(conn)) == IW
    for k in range(1, 6):  # the receiver acknowledges every second segment; nothing sent between
        send_seg(conn, seg(IRS + 1, BASE + 2 * k * MSS, ACK), T0 + 0.05)
    assert conn.snd_una == conn.snd_max
    assert conn.cc.cwnd == IW + 10 * MSS  # each ACK: + 2 SMSS (slow start)
    assert conn.counters["cwnd-app-limited"] == 0


def grown_then_idle(idle, congestion="cubic"):
    """A connection that filled and grew its window, then sent nothing for `idle` seconds."""
    conn = established(congestion=congestion, send_buffer=1 << 20)
    conn.send(b"x" * 200_000)
    now = T0
    acked = BASE
    while acked < BASE + 200_000:
        out = pull(conn, now)
        now += 0.05
        end = max((s.seq + len(s.payload) for s in out), default=acked)
        send_seg(conn, seg(IRS + 1, end, ACK, window=65535), now)
        acked = end
    assert conn.cc.cwnd > IW and conn.snd_una == conn.snd_max
    grown = conn.cc.cwnd
    now += idle
    conn.send(b"y" * 100_000)
    return conn, grown, pull(conn, now)


@pytest.mark.parametrize("congestion", ["cubic", "newreno"])
def test_after_more_than_an_rto_without_sending_the_window_restarts(congestion):
    conn, _grown, out = grown_then_idle(5.0, congestion)
    assert conn.cc.cwnd == IW and conn.counters["cwnd-restart"] == 1
    assert sum(len(s.payload) for s in out) == IW


def test_a_short_pause_keeps_the_window():
    conn, grown, out = grown_then_idle(0.01)
    assert conn.cc.cwnd == grown and conn.counters["cwnd-restart"] == 0
    assert sum(len(s.payload) for s in out) > IW
