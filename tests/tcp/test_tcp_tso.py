"""TSO: new data leaves in segments of many MSS that the device cuts, under the same rules.

With `TcpConfig.tso_max` set, one segment may carry as many whole MSS as the congestion
window (RFC 5681) and the peer's window (RFC 9293 3.8.6) leave room for; cut into MSS
pieces it must be exactly what the connection would have sent without TSO, including
which partial tail Nagle (RFC 9293 3.7.4) and sender SWS avoidance (3.8.6.2.1) let go.
Retransmissions stay MSS-sized.
"""
import pytest
from hypothesis import given, settings, strategies as st

from tcp_harness import ACK, FIN, IRS, ISS, T0, Sim, established, pull, send_seg, seg
from shoal.net.native.tcp import congestion
from shoal.net.native.tcp.connection import TSO_MAX_PAYLOAD, TcpConfig

BASE = ISS + 1
MSS = 1460
DATA = bytes(range(251)) * 4096  # a period that is no power of two: misplaced octets show


def tso_conn(**kw):
    kw.setdefault("send_buffer", 1 << 20)
    return established(tso_max=TSO_MAX_PAYLOAD, **kw)


def ack(conn, upto, now=T0, window=65535):
    send_seg(conn, seg(IRS + 1, upto, ACK, window), now)


def test_tso_max_bounded_by_an_ipv4_datagram():
    with pytest.raises(ValueError):
        TcpConfig(tso_max=TSO_MAX_PAYLOAD + 1)
    assert TcpConfig().tso_max == 0  # off unless the owner's device cuts segments


def test_one_segment_fills_the_initial_window():
    conn = tso_conn()
    conn.send(DATA[:100_000])
    [s] = pull(conn)
    assert s.seq == BASE and s.payload == DATA[:10 * MSS]  # initial window: 10 MSS (RFC 6928)
    assert not s.flags & FIN
    assert pull(conn) == []  # cwnd is full


def test_segments_stay_within_cwnd_and_peer_window_as_cwnd_grows():
    conn = tso_conn(initial_window=4)
    total = 400_000
    assert conn.send(DATA[:total]) == total
    now, sizes, rounds = T0, [], 0
    while conn.snd_una < BASE + total and rounds < 100:
        rounds += 1
        out = pull(conn, now)
        for s in out:
            end = s.seq + len(s.payload)
            assert end - BASE <= total and s.payload == DATA[s.seq - BASE:end - BASE]
            assert (end - int(conn.snd_una)) <= conn.cc.cwnd, "beyond the congestion window"
            assert (end - int(conn.snd_una)) <= conn.snd_wnd, "beyond the peer's window"
            assert len(s.payload) <= TSO_MAX_PAYLOAD
            sizes.append(len(s.payload))
        now += 0.01
        for upto in range(int(conn.snd_una) + 2 * MSS, int(conn.snd_max), 2 * MSS):
            ack(conn, upto, now)  # a receiver ACKs every second (cut) segment
        ack(conn, int(conn.snd_max), now)
    assert conn.snd_una == BASE + total
    assert max(sizes) == 44 * MSS  # the peer's 65535-octet window, in whole MSS
    assert all(n % MSS == 0 for n in sizes[:-1])


def test_window_limited_tail_waits_like_without_tso():
    # 5000 octets of window: 3 MSS go; the 620-octet rest is under half the largest
    # window, with data in flight, so SWS avoidance holds it.
    conn = tso_conn(peer_window=5000)
    conn.send(DATA[:20_000])
    [s] = pull(conn)
    assert len(s.payload) == 3 * MSS
    assert pull(conn) == []


def test_nagle_holds_the_partial_tail_but_nodelay_and_fin_send_it():
    conn = tso_conn()
    conn.send(DATA[:5000])
    [s] = pull(conn)
    assert len(s.payload) == 3 * MSS  # the 620-octet tail waits for an ACK (Nagle)
    ack(conn, BASE + 3 * MSS)
    [s] = pull(conn)
    assert s.seq == BASE + 3 * MSS and len(s.payload) == 620

    conn = tso_conn(nodelay=True)
    conn.send(DATA[:5000])
    assert [len(s.payload) for s in pull(conn)] == [5000]

    conn = tso_conn()
    conn.send(DATA[:5000])
    conn.close()
    [s] = pull(conn)
    assert len(s.payload) == 5000 and s.flags & FIN


def test_retransmission_timeout_resends_mss_sized_segments():
    conn = tso_conn()
    conn.send(DATA[:10 * MSS])
    [s] = pull(conn)
    assert len(s.payload) == 10 * MSS
    now = conn.poll_at()
    conn.poll(now)
    [r] = pull(conn, now)
    assert r.seq == BASE and r.payload == DATA[:MSS]  # loss window: one MSS (RFC 5681 3.1)
    ack(conn, BASE + MSS, now)
    out = pull(conn, now)
    assert [len(s.payload) for s in out] == [MSS, MSS]  # go-back: cwnd 2 MSS, one MSS each
    assert out[0].seq == BASE + MSS and out[1].payload == DATA[2 * MSS:3 * MSS]


def test_fast_retransmit_is_one_mss():
    conn = tso_conn()
    conn.send(DATA[:30 * MSS])
    [s] = pull(conn)
    assert len(s.payload) == 10 * MSS
    ack(conn, BASE + 2 * MSS)
    [s] = pull(conn)
    assert len(s.payload) == 4 * MSS  # slow start: + the 2 MSS acked (up to L * SMSS), 8 in flight
    limited = []
    for _ in range(3):
        ack(conn, BASE + 2 * MSS)
        limited.append(pull(conn))
    # limited transmit (RFC 3042) sends new data within one extra MSS per duplicate ACK,
    # then the third duplicate triggers fast retransmit (RFC 5681 3.2) of one MSS
    assert [len(s.payload) for s in limited[0] + limited[1]] == [MSS, MSS]
    assert limited[2][0].seq == BASE + 2 * MSS and limited[2][0].payload == DATA[2 * MSS:3 * MSS]
    assert conn.counters["fast-retransmit"] == 1


@pytest.mark.parametrize("tso", [True, False])
def test_slow_start_grows_by_the_whole_super_frame_acknowledged(tso):
    # a receiver behind GRO acknowledges a super-frame with one ACK: slow start's limit
    # per ACK (`congestion.SLOW_START_L` segments) counts the segments as they were sent
    conn = established(send_buffer=1 << 20, peer_window=65535, tso_max=TSO_MAX_PAYLOAD if tso else 0)
    conn.send(DATA[:200_000])
    out = pull(conn)
    assert [len(s.payload) for s in out] == ([10 * MSS] if tso else [MSS] * 10)
    ack(conn, BASE + 10 * MSS, T0 + 0.01)
    assert conn.cc.cwnd == (20 if tso else 10 + congestion.SLOW_START_L) * MSS


def test_sack_blocks_keep_segments_within_one_mss():
    # receiving out of order data: our segments carry SACK blocks, so the device's
    # MSS-sized pieces would not have room for them; no TSO then
    conn = tso_conn(sack=True, peer_opts={"sack_permitted": True})
    send_seg(conn, seg(IRS + 1 + 100, BASE, ACK, 65535, payload=b"y" * 10))
    conn.send(DATA[:20_000])
    out = pull(conn)
    assert out and all(s.sack for s in out if s.payload)
    assert max(len(s.payload) for s in out) == MSS - 12


def test_urgent_data_is_not_cut():
    conn = tso_conn()
    conn.send(DATA[:20_000], urgent=True)
    out = pull(conn)
    assert [len(s.payload) for s in out] == [MSS] * 10


def run_scenario(tso_max, first, acked, second, window, nodelay, fin):
    """Payload octets sent and FIN, after: send `first`, pull, ACK `acked` of it, send `second`, pull."""
    conn = established(peer_window=window, nodelay=nodelay, send_buffer=1 << 20, tso_max=tso_max)
    conn.send(DATA[:first])
    sent = sum(len(s.payload) for s in pull(conn, limit=1000))
    # acknowledged two MSS at a time, below slow start's limit per ACK in either case
    # (which counts in the segments sent: `congestion.SLOW_START_L`)
    for end in [*range(2 * MSS, min(acked, sent), 2 * MSS), min(acked, sent)]:
        ack(conn, BASE + end, window=window)
    conn.send(DATA[first:first + second])
    if fin:
        conn.close()
    out = pull(conn, limit=1000)
    for s in out:
        assert len(s.payload) <= (tso_max or MSS)
    return sent, sum(len(s.payload) for s in out), any(s.flags & FIN for s in out)


@settings(max_examples=150, deadline=None)
@given(first=st.integers(0, 40_000), acked=st.integers(0, 40_000), second=st.integers(0, 60_000),
       window=st.integers(1000, 65535), nodelay=st.booleans(), fin=st.booleans())
def test_tso_sends_exactly_what_mss_segments_would(first, acked, second, window, nodelay, fin):
    plain = run_scenario(0, first, acked, second, window, nodelay, fin)
    assert run_scenario(TSO_MAX_PAYLOAD, first, acked, second, window, nodelay, fin) == plain


def test_without_tso_segments_stay_within_one_mss():
    conn = established(send_buffer=1 << 20)
    conn.send(DATA[:100_000])
    assert [len(s.payload) for s in pull(conn)] == [MSS] * 10


TSO_CASES = [
    ("clean", dict(rate=1e9, queue=1000)),
    ("loss-2", dict(loss=0.02)),
    ("reorder-dup", dict(reorder=0.05, dup=0.05)),
    ("bottleneck", dict(rate=10e6, queue=16)),
    ("everything", dict(loss=0.03, reorder=0.03, dup=0.03, corrupt=0.01)),
]


@pytest.mark.parametrize("name,faults", TSO_CASES, ids=[c[0] for c in TSO_CASES])
@pytest.mark.parametrize("opts", [dict(), dict(sack=False, timestamps=False, congestion="newreno"),
                                  dict(ecn=True)], ids=["sack", "newreno", "ecn"])
def test_tso_transfer_over_a_cutting_link(name, faults, opts):
    """Both ends use TSO over a link that cuts like the device: data intact, recovery works."""
    from test_tcp_netsim import transfer

    sim = Sim(seed=len(name) * 7 + len(opts), tso=True, ecn_threshold=8 if opts.get("ecn") else None, **faults)
    cfg = TcpConfig(msl=1.0, min_rto=0.2, tso_max=TSO_MAX_PAYLOAD, **opts)
    transfer(sim, 400_000, 150_000, cfg)
    assert sim.tso_segments > 0
