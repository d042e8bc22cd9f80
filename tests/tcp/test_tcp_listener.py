"""LISTEN processing, the accept backlog, bounded half-open connections and SYN cookies."""
import pytest

from tcp_harness import (ACK, FIN, RST, SYN, T0, IsnGenerator, Listener, State, TcpConfig, TcpSegment,
                         wire_roundtrip)
from shoal.net.native.tcp.connection import Event

LOCAL = (0x0A000002, 80)
SECRET = b"listener-secret!"


def client(i):
    return (0x0A000100 + i, 40000 + i)


def syn_from(i, seq=1000, **opts):
    opts.setdefault("mss", 1460)
    return wire_roundtrip(TcpSegment(client(i)[1], 80, seq=seq, flags=SYN, window=65535, **opts))


def ack_from(i, seq, ack, flags=ACK, payload=b""):
    return wire_roundtrip(TcpSegment(client(i)[1], 80, seq=seq, ack=ack, flags=flags, window=65535,
                                     payload=payload))


def make(**kw):
    return Listener(TcpConfig(), LOCAL, IsnGenerator(SECRET), **kw)


def handshake(lst, i, now=T0):
    lst.segment_arrived(syn_from(i), client(i), now)
    out = lst.transmit(now)
    [synack] = [s for r, s in out if r == client(i)]
    assert synack.flags == SYN | ACK and synack.ack == 1001
    lst.segment_arrived(ack_from(i, 1001, synack.seq + 1), client(i), now)
    return synack


def test_passive_open_and_accept():
    lst = make()
    handshake(lst, 1)
    assert not lst.half_open and len(lst.ready) == 1
    conn = lst.accept()
    assert conn.state is State.ESTABLISHED and conn.remote == client(1)
    assert conn.take_events() == [Event.CONNECTED]
    assert lst.accept() is None


def test_data_before_accept_is_buffered():
    lst = make()
    synack = handshake(lst, 1)
    lst.segment_arrived(ack_from(1, 1001, synack.seq + 1, ACK | FIN, b"early"), client(1), T0)
    conn = lst.accept()
    assert conn.recv() == b"early" and conn.state is State.CLOSE_WAIT


def test_listen_ignores_rst_and_resets_acks():
    lst = make()
    lst.segment_arrived(ack_from(1, 5, 0, RST), client(1), T0)
    assert lst.drops["rst-in-listen"] == 1 and lst.transmit(T0) == []
    lst.segment_arrived(ack_from(1, 5, 777), client(1), T0)
    [(remote, rst)] = lst.transmit(T0)
    assert rst.flags == RST and rst.seq == 777 and remote == client(1)
    lst.segment_arrived(ack_from(1, 5, 0, FIN), client(1), T0)
    assert lst.drops["no-syn"] == 1


def test_backlog_full_drops_syns():
    lst = make(backlog=2)
    handshake(lst, 1)
    handshake(lst, 2)
    lst.segment_arrived(syn_from(3), client(3), T0)
    assert lst.drops["backlog-full"] == 1 and not lst.half_open
    lst.accept()
    handshake(lst, 3)
    assert len(lst.ready) == 2


def test_syn_flood_without_cookies_is_bounded_and_counted():
    lst = make(max_half_open=16, syncookies=False)
    for i in range(1000):
        lst.segment_arrived(syn_from(i), client(i), T0)
    assert len(lst.half_open) == 16
    assert lst.drops["half-open-full"] == 1000 - 16
    assert len(lst.transmit(T0, 10_000)) == 16


def test_half_open_connections_expire():
    lst = make(max_half_open=4, syncookies=False)
    for i in range(4):
        lst.segment_arrived(syn_from(i), client(i), T0)
    now = T0
    for _ in range(100):
        lst.transmit(now, 100)
        t = lst.poll_at()
        if t is None:
            break
        now = t
        lst.poll(now)
    assert not lst.half_open and now - T0 > 100


def test_syn_flood_with_cookies_still_accepts_real_clients():
    lst = make(max_half_open=8)
    for i in range(500):
        lst.segment_arrived(syn_from(i), client(i), T0)
    assert len(lst.half_open) == 8
    assert lst.counters["syncookie-sent"] == 492
    replies = dict(lst.transmit(T0, 10_000))
    # a real client among the flood answers its cookie and gets a connection
    cookie = replies[client(300)]
    assert cookie.flags == SYN | ACK and cookie.mss == 1460 and cookie.wscale is None
    lst.segment_arrived(ack_from(300, 1001, cookie.seq + 1, ACK, b"GET /"), client(300), T0 + 1)
    conn = lst.accept()
    assert conn.remote == client(300) and conn.state is State.ESTABLISHED
    assert conn.snd_mss == 1460 and conn.recv() == b"GET /"
    assert lst.counters["syncookie-accepted"] == 1


def test_forged_or_stale_cookie_rejected():
    lst = make(max_half_open=0)
    lst.segment_arrived(syn_from(1), client(1), T0)
    [(_r, cookie)] = lst.transmit(T0)
    lst.segment_arrived(ack_from(1, 1001, cookie.seq + 2), client(1), T0)  # wrong cookie
    lst.segment_arrived(ack_from(2, 1001, cookie.seq + 1), client(2), T0)  # other client
    lst.segment_arrived(ack_from(1, 1001, cookie.seq + 1), client(1), T0 + 1000)  # too old
    assert lst.drops["ack-in-listen"] == 3 and not lst.ready
    assert all(s.flags == RST for _r, s in lst.transmit(T0))


def test_syn_with_small_mss_cookie_rounds_down():
    lst = make(max_half_open=0)
    lst.segment_arrived(syn_from(1, mss=1300), client(1), T0)
    [(_r, cookie)] = lst.transmit(T0)
    lst.segment_arrived(ack_from(1, 1001, cookie.seq + 1), client(1), T0)
    assert lst.accept().snd_mss == 1200


def test_rst_during_handshake_frees_half_open():
    lst = make()
    lst.segment_arrived(syn_from(1), client(1), T0)
    lst.transmit(T0)
    lst.segment_arrived(ack_from(1, 1001, 0, RST), client(1), T0)
    assert not lst.half_open and not lst.ready


def test_accept_queue_full_when_handshake_completes_resets():
    lst = make(backlog=1)
    lst.segment_arrived(syn_from(1), client(1), T0)
    lst.segment_arrived(syn_from(2), client(2), T0)
    out = dict(lst.transmit(T0))
    lst.segment_arrived(ack_from(1, 1001, out[client(1)].seq + 1), client(1), T0)
    lst.segment_arrived(ack_from(2, 1001, out[client(2)].seq + 1), client(2), T0)
    assert len(lst.ready) == 1 and lst.drops["backlog-full"] == 1
    assert any(s.flags == RST and r == client(2) for r, s in lst.transmit(T0))


@pytest.mark.parametrize("bad", [0x00000000, 0xE0000001, 0xFFFFFFFF, 0xF0000001])
def test_syn_from_non_unicast_source_discarded(bad):
    lst = make()
    syn = wire_roundtrip(TcpSegment(40000, 80, seq=1, flags=SYN, window=100, mss=1460))
    lst.segment_arrived(syn, (bad, 40000), T0)
    assert not lst.half_open and lst.transmit(T0) == []  # MUST-63
    assert lst.drops["syn-from-bad-address"] == 1


def test_a_full_half_open_table_costs_no_scan_per_segment(monkeypatch):
    """With 256 half-open connections (a SYN flood), a SYN answered with a cookie, and the
    owner's questions after it (deadline, anything to send, the pull), look at a few
    connections, not all of them."""
    from shoal.net.native.tcp.connection import Connection
    lst = make(max_half_open=256)
    for i in range(256):
        lst.segment_arrived(syn_from(i), client(i), T0)
    lst.transmit(T0, 10_000)
    assert lst.poll_at() is not None
    looked = []
    for name in ("poll_at", "wants_transmit"):
        real = getattr(Connection, name)
        monkeypatch.setattr(Connection, name, lambda self, real=real, name=name: looked.append(name) or real(self))
    lst.segment_arrived(syn_from(1000), client(1000), T0 + 0.1)
    assert lst.counters["syncookie-sent"] == 1
    assert lst.poll_at() is not None and lst.wants_transmit()
    [(remote, cookie)] = lst.transmit(T0 + 0.1)
    assert remote == client(1000) and cookie.flags == SYN | ACK
    assert len(looked) <= 4, looked


def test_deadlines_that_move_often_neither_pile_up_nor_get_lost():
    """Each retransmitted SYN moves a half-open connection's deadline (a heap entry each);
    the stale entries are swept, and the connection still times out."""
    lst = make(max_half_open=4, syncookies=False)
    lst.segment_arrived(syn_from(1), client(1), T0)
    now = T0
    for k in range(2000):
        now = T0 + k * 0.0001
        lst.segment_arrived(syn_from(1), client(1), now)  # the same SYN again: SYN,ACK again
        lst.transmit(now)
    assert len(lst._timers) <= 64 + 4
    for _ in range(100):
        t = lst.poll_at()
        if t is None:
            break
        now = t
        lst.poll(now)
        lst.transmit(now, 100)
    assert not lst.half_open and now - T0 > 60
