"""Crafted and random bad segments: nothing escapes, memory stays bounded, drops are counted."""
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tcp_harness import (ACK, FIN, IRS, ISS, PSH, RST, SYN, T0, State, TcpSegment,
                         established, pull, send_seg, seg, syn_received, syn_sent)
from shoal.net.native.tcp.seq import Seq
from shoal.net.native.wire import WireError
from shoal.net.native.wire import tcp as wire

URG = 0x20
BASE = ISS + 1


def in_state(name):
    """A connection in the named state, reached through real segments."""
    kw = dict(timestamps=True, sack=True, window_scaling=True)
    if name == "SYN-SENT":
        return syn_sent(**kw)[0]
    if name == "SYN-RECEIVED":
        return syn_received(**kw)[0]
    conn = established(peer_opts={"sack_permitted": True, "timestamp": (1, 1), "wscale": 2}, **kw)
    if name == "ESTABLISHED":
        conn.send(b"d" * 3000)
        pull(conn)
        return conn
    ts = {"timestamp": (2, 1)}
    if name in ("FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "TIME-WAIT"):
        conn.close()
        pull(conn)
        if name == "FIN-WAIT-2":
            send_seg(conn, seg(IRS + 1, BASE + 1, ACK, **ts))
        elif name == "CLOSING":
            send_seg(conn, seg(IRS + 1, BASE, ACK | FIN, **ts))
        elif name == "TIME-WAIT":
            send_seg(conn, seg(IRS + 1, BASE + 1, ACK | FIN, **ts))
    elif name in ("CLOSE-WAIT", "LAST-ACK"):
        send_seg(conn, seg(IRS + 1, BASE, ACK | FIN, **ts))
        if name == "LAST-ACK":
            conn.close()
        pull(conn)
    assert conn.state.value == name, (conn.state, name)
    return conn


STATES = ["SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1", "FIN-WAIT-2", "CLOSE-WAIT",
          "CLOSING", "LAST-ACK", "TIME-WAIT"]


def check_invariants(conn):
    assert conn.snd_una <= conn.snd_nxt <= conn.snd_max or conn.state is State.CLOSED
    assert len(conn._sndbuf) <= conn.config.send_buffer
    assert sum(len(d) for _s, d in conn._ofo) <= conn.config.recv_buffer + (1 << 14)
    assert len(conn._replies) <= 16
    wanted = conn.wants_transmit()
    out = conn.transmit(T0 + 1, 64)
    for s in out:
        wire.parse(wire.build(s, 1, 2), 1, 2)  # everything it emits is well-formed
    # wants_transmit() is exact, so a poller never spins on a connection with nothing to send
    assert bool(out) == wanted or (out and out[-1].flags & RST)
    assert len(out) == 64 or not conn.wants_transmit()


@pytest.mark.parametrize("state", STATES)
def test_every_state_is_reachable(state):
    assert in_state(state).state.value == state


offsets = st.integers(-70_000, 70_000)
segments = st.builds(
    lambda ds, da, flags, win, payload, urg, ts, sack: (ds, da, flags, win, payload, urg, ts, sack),
    offsets, offsets, st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST))),
    st.integers(0, 65535), st.binary(max_size=1600), st.integers(0, 65535),
    st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.lists(st.tuples(offsets, offsets), max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(STATES), st.lists(segments, min_size=1, max_size=8))
def test_random_segments_in_every_state(state, segs):
    conn = in_state(state)
    for ds, da, flags, win, payload, urg, ts, sack in segs:
        s = seg(IRS + 1 + ds, BASE + da, flags, win, payload, urgent=urg, timestamp=ts,
                sack=tuple(((BASE + a) & 0xFFFFFFFF, (BASE + b) & 0xFFFFFFFF) for a, b in sack))
        send_seg(conn, s, T0 + 0.5)
        check_invariants(conn)
        conn.poll(T0 + 2)
        check_invariants(conn)


CRAFTED = [
    ("no flags at all", dict(seq=IRS + 1, ack=BASE, flags=0), "no-ack"),
    ("data without ACK", dict(seq=IRS + 1, flags=PSH, payload=b"x"), "no-ack"),
    ("far future seq", dict(seq=IRS + 10_000_000, ack=BASE, payload=b"x"), "out-of-window"),
    ("old seq", dict(seq=IRS - 10_000, ack=BASE, payload=b"x"), "out-of-window"),
    ("ack of unsent", dict(seq=IRS + 1, ack=BASE + 1_000_000), "ack-unsent"),
    ("ack far in past", dict(seq=IRS + 1, ack=BASE - 1_000_000), "ack-too-old"),
    ("in-window RST", dict(seq=IRS + 500, flags=RST), "rst-not-exact"),
    ("in-window SYN", dict(seq=IRS + 500, flags=SYN), "syn-in-window"),
    ("FIN+URG+PSH xmas without ACK", dict(seq=IRS + 1, flags=FIN | URG | PSH), "no-ack"),
]


@pytest.mark.parametrize("name,fields,reason", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_segments_dropped_by_reason(name, fields, reason):
    conn = established()
    before = (conn.state, conn.rcv_nxt, conn.snd_una, conn.readable)
    fields = dict(fields)
    s = TcpSegment(80, 49152, seq=fields.pop("seq") & 0xFFFFFFFF, ack=fields.pop("ack", 0) & 0xFFFFFFFF,
                   flags=fields.pop("flags", ACK), window=65535, **fields)
    send_seg(conn, s)
    assert conn.drops[reason] == 1, dict(conn.drops)
    assert (conn.state, conn.rcv_nxt, conn.snd_una, conn.readable) == before


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_random_bytes_through_parse_and_connection(data):
    conn = established()
    try:
        s = wire.parse(data)
    except WireError:
        return
    conn.segment_arrived(s, T0)
    check_invariants(conn)


def test_rst_storm_does_not_grow_memory():
    conn = established(challenge_ack_limit=50)
    for i in range(5000):
        send_seg(conn, seg(IRS + 2 + i, 0, RST, 0))
    assert conn.state is State.ESTABLISHED
    assert len(conn.transmit(T0, 10_000)) == 1  # one ACK covers every challenge
    assert conn.drops["rst-not-exact"] == 5000 and conn.counters["challenge-ack"] == 50


def test_out_of_order_flood_bounded_by_window():
    conn = established(recv_buffer=20_000)
    for i in range(200):
        send_seg(conn, seg(IRS + 1001 + i * 1000 + (i % 3), BASE, ACK, payload=b"o" * 1000))
    assert sum(len(d) for _s, d in conn._ofo) <= 20_000
    assert conn.drops["out-of-window"] > 0
    assert Seq(conn.rcv_nxt) == IRS + 1
