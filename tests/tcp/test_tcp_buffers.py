"""Buffer sizes that follow the traffic.

Send: `TcpConfig.send_buffer` is the floor; once twice cwnd is larger, the buffer holds
that much, up to `send_buffer_max` (`Connection.send_limit`), so a bulk sender can keep
its window in flight. A writer the buffer turned away is woken (WRITABLE) once the free
space is at least half of what is queued, not by every ACK.

Receive: the buffer starts at `recv_buffer` and doubles, up to `recv_buffer_max`, when
in-order text uses up most of the advertised window while at most half of the buffer
waits unread (`Connection._grow_receive_buffer`); the window scale is chosen for the
maximum at the handshake.
"""
from shoal.net.native.tcp.connection import Event
from tcp_harness import ACK, IRS, ISS, T0, established, pull, send_seg, seg

BASE = ISS + 1


def test_the_limit_follows_twice_cwnd_up_to_the_maximum():
    conn = established(send_buffer=32_000, send_buffer_max=200_000)
    assert conn.send_limit == 32_000  # 2 * IW (29,200) is below the floor
    data = memoryview(bytes(1_000_000))
    taken = conn.send(data)
    assert taken == 32_000
    now, limits = T0, set()
    for _ in range(200):
        now += 0.01
        for s in pull(conn, now):
            send_seg(conn, seg(IRS + 1, s.seq + len(s.payload), ACK), now)
        assert conn.send_limit == min(max(32_000, 2 * conn.cc.cwnd), 200_000)
        limits.add(conn.send_limit)
        taken += conn.send(data[taken:])
        assert conn.send_queued <= conn.send_limit
        if conn.send_limit == 200_000 and conn.send_queued == 200_000:
            break
    else:
        raise AssertionError(f"the buffer never grew to its maximum: cwnd {conn.cc.cwnd}")
    assert len(limits) >= 3  # it grew in steps, with the window (doubling each round)


def test_a_shrunken_limit_takes_nothing_until_acks_free_room():
    conn = established(send_buffer=20_000, send_buffer_max=100_000, peer_mss=1000)
    conn.cc.cwnd = 50_000
    assert conn.send(bytes(100_000)) == 100_000
    conn.cc.cwnd = 1000  # a loss collapsed the window: the limit is now the floor
    assert conn.send_space == 0
    assert conn.send(b"more") == 0
    assert conn.send_queued == 100_000


def test_a_blocked_writer_is_woken_once_a_third_of_the_buffer_is_free():
    conn = established(send_buffer=30_000, send_buffer_max=30_000, peer_mss=1000)
    assert conn.send(bytes(40_000)) == 30_000
    out = pull(conn)
    assert sum(len(s.payload) for s in out) == 10_000  # the initial window
    send_seg(conn, seg(IRS + 1, BASE + 2000, ACK), T0 + 0.01)
    assert Event.WRITABLE not in conn.take_events()  # 2,000 free of 28,000 queued
    pull(conn, T0 + 0.01)
    send_seg(conn, seg(IRS + 1, BASE + 9000, ACK), T0 + 0.02)
    assert Event.WRITABLE not in conn.take_events()  # 9,000 free of 21,000
    send_seg(conn, seg(IRS + 1, BASE + 10_000, ACK), T0 + 0.03)
    assert Event.WRITABLE in conn.take_events()  # 10,000 free of 20,000
    assert conn.send_space == 10_000


def window_test_conn(**kw):
    conn = established(window_scaling=True, recv_buffer=64_000, recv_buffer_max=256_000,
                       peer_opts={"wscale": 0}, **kw)
    assert conn.ws_ok and conn.rcv_wscale == 2  # room for the maximum (256,000 >> 2 < 65,536)
    return conn


def fill_window(conn, rcv, now, read):
    """Send in-order 1,000-octet segments up to the advertised edge; returns the new RCV.NXT."""
    while (conn.rcv_adv - conn.rcv_nxt) >= 1000:
        send_seg(conn, seg(rcv, BASE, ACK, payload=b"d" * 1000), now)
        rcv += 1000
        if read:
            conn.recv()
    return rcv


def advertised(conn, now):
    [ack] = [s for s in pull(conn, now) if s.flags == ACK]
    return ack.window << conn.rcv_wscale


def test_the_receive_buffer_grows_while_the_reader_keeps_up_to_its_maximum():
    conn = window_test_conn()
    rcv, now, sizes = IRS + 1, T0, []
    for _ in range(4):
        rcv = fill_window(conn, rcv, now, read=True)
        sizes.append(conn.rcv_buffer)
        now += 0.001
        conn.poll(now)
        assert advertised(conn, now) >= conn.rcv_buffer - 1000  # the grown window goes out
    assert sizes == [128_000, 256_000, 256_000, 256_000]
    assert conn.counters["rcvbuf-grown"] == 2


def test_the_receive_buffer_keeps_its_size_when_the_reader_falls_behind():
    conn = window_test_conn()
    fill_window(conn, IRS + 1, T0, read=False)
    assert conn.rcv_buffer == 64_000 and conn.readable >= 63_000
    assert conn.counters["rcvbuf-grown"] == 0
    assert advertised(conn, T0 + 0.001) < 1000  # the full buffer closes the window
