"""TIME-WAIT as a compact record: a revived connection answers as the connection did.

`Connection.hibernate` keeps what TIME-WAIT's rules read (`tcp.time_wait`); the owner
revives the machine for each segment that reaches the record. These tests feed the
same segments, at the same times, to a connection in TIME-WAIT and to its record
revived (and stored again after each step, as the owner does), and compare what each
returns, sends, and which state and deadline it is left in.
"""
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_harness import (ACK, FIN, IRS, ISS, PSH, RST, SYN, T0, Connection, State, established, pull,
                         seg, send_seg, wire_roundtrip)
from shoal.net.native.tcp import time_wait

MSL = 5.0


def active_close(**kw):
    """TIME-WAIT through FIN-WAIT-2, as an active closer."""
    conn = established(msl=MSL, **kw)
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK))
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN))
    pull(conn)
    return conn


def unread_then_close(**kw):
    """TIME-WAIT after a half-close, with text the application has not read: the window it advertises is smaller."""
    conn = established(msl=MSL, **kw)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | PSH, payload=b"x" * 3000))
    conn.shutdown()  # (a close with unread text would reset)
    pull(conn)
    send_seg(conn, seg(IRS + 3001, ISS + 2, ACK | FIN))
    pull(conn)
    assert conn.readable == 3000
    return conn


def simultaneous_close(**kw):
    """TIME-WAIT through CLOSING."""
    conn = established(msl=MSL, **kw)
    conn.close()
    pull(conn)
    send_seg(conn, seg(IRS + 1, ISS + 1, ACK | FIN))
    pull(conn)
    send_seg(conn, seg(IRS + 2, ISS + 2, ACK))
    pull(conn)
    return conn


OPTIONS = [
    {},
    {"timestamps": True, "sack": True, "window_scaling": True, "recv_buffer": 1 << 20,
     "peer_opts": {"timestamp": (500, 1), "sack_permitted": True, "wscale": 7}},
]
PATHS = [active_close, unread_then_close, simultaneous_close]


def view(conn, out, reopened):
    return (reopened, conn.state, conn.poll_at(), [(s.seq, s.ack, s.flags, s.window, s.timestamp, s.sack,
                                                    bytes(s.payload)) for s in out])


def step(conn, s, now):
    reopened = conn.segment_arrived(wire_roundtrip(s), now)
    return view(conn, pull(conn, now), reopened)


def rehibernate(conn, now):
    """What the owner does after each segment: store the record again while in TIME-WAIT."""
    if conn.state is State.TIME_WAIT and not conn.wants_transmit():
        return Connection.revive(conn.hibernate(), now)
    return conn


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "ts-sack-ws"])
def test_record_keeps_little(path, opts):
    conn = path(**opts)
    assert conn.state is State.TIME_WAIT
    record = conn.hibernate(conn.config)
    assert type(record) is tuple and record[time_wait.CONFIG] is None
    gc.collect()
    assert not gc.is_tracked(record)  # no collection ever looks at it again
    revived = Connection.revive(record, T0, conn.config)
    assert revived.state is State.TIME_WAIT and revived.poll_at() == conn.poll_at() == pytest.approx(T0 + 2 * MSL)
    assert revived.readable == 0 and revived.rcv_nxt == conn.rcv_nxt and revived.snd_una == conn.snd_una


def test_only_time_wait_with_nothing_to_send_hibernates():
    conn = established()
    with pytest.raises(ValueError, match="TIME-WAIT"):
        conn.hibernate()
    conn = active_close()
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN), T0 + 1)  # a retransmitted FIN: an ACK is due
    with pytest.raises(ValueError, match="nothing to send"):
        conn.hibernate()


def test_retransmitted_fin_restarts_2msl_in_a_revived_connection():
    conn = Connection.revive(active_close().hibernate(), T0)
    send_seg(conn, seg(IRS + 1, ISS + 2, ACK | FIN), T0 + 3)
    [ack] = pull(conn, T0 + 3)
    assert ack.flags == ACK and ack.ack == IRS + 2 and ack.seq == ISS + 2
    assert conn.poll_at() == pytest.approx(T0 + 3 + 2 * MSL)
    conn = Connection.revive(conn.hibernate(), T0 + 3)
    assert conn.poll_at() == pytest.approx(T0 + 3 + 2 * MSL)
    conn.poll(T0 + 3 + 2 * MSL)
    assert conn.state is State.CLOSED


FLAGS = st.sampled_from([ACK, ACK | FIN, ACK | PSH, SYN, SYN | ACK, RST, RST | ACK, FIN, 0, ACK | FIN | PSH])
OFFSET = st.one_of(st.integers(-3, 3), st.integers(-70_000, 70_000), st.sampled_from([-(1 << 31), 1 << 31]))
SEGMENT = st.tuples(FLAGS, OFFSET, OFFSET, st.integers(0, 3), st.one_of(st.none(), st.integers(-5, 5)),
                    st.floats(0, 4))


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(PATHS), opts=st.sampled_from(OPTIONS), segments=st.lists(SEGMENT, max_size=8))
def test_a_revived_record_answers_as_the_connection(path, opts, segments):
    conn = path(**opts)
    twin = Connection.revive(conn.hibernate(), T0)
    now = T0
    for flags, dseq, dack, plen, dts, dt in segments:
        now += dt
        extra = {}
        if dts is not None:
            extra["timestamp"] = ((conn.ts_recent + dts) & 0xFFFFFFFF, 0)
        if flags & SYN:
            extra["mss"] = 1460
        s = seg(conn.rcv_nxt + dseq, conn.snd_nxt + dack, flags, payload=b"y" * plen, **extra)
        for c in (conn, twin):
            t = c.poll_at()
            if t is not None and t <= now:
                c.poll(now)
        assert step(conn, s, now) == step(twin, s, now)
        twin = rehibernate(twin, now)
        if conn.state is State.CLOSED:
            assert twin.state is State.CLOSED
            break
