"""Path MTU discovery (RFC 1191): ICMP "fragmentation needed" as the path's answer to DF."""
from tcp_harness import ACK, IRS, ISS, SYN, T0, State, established, pull, send_seg, seg, syn_sent
from shoal.net.native.tcp.connection import Event

BASE = ISS + 1
FRAG_NEEDED = (3, 4)


def sent_flight(conn, size=10 * 1460, now=T0):
    conn.send(b"x" * size)
    out = pull(conn, now)
    assert sum(len(s.payload) for s in out) == size and max(len(s.payload) for s in out) == 1460
    return out


def test_fragmentation_needed_shrinks_the_mss_and_resends_the_flight_at_once():
    conn = established()
    assert conn.df
    sent_flight(conn)
    cwnd, ssthresh = conn.cc.cwnd, conn.cc.ssthresh
    conn.icmp_arrived(*FRAG_NEEDED, T0 + 0.01, next_hop_mtu=1280, quoted_len=1500)
    assert conn.state is State.ESTABLISHED and conn.take_events() == []  # not an error
    assert conn.snd_mss == 1240 and conn.counters["pmtu-reduced"] == 1
    again = pull(conn, T0 + 0.01)
    assert again[0].seq == BASE and all(len(s.payload) <= 1240 for s in again)
    assert sum(len(s.payload) for s in again) == 10 * 1460  # the whole flight, not one segment
    assert (conn.cc.cwnd, conn.cc.ssthresh) == (cwnd, ssthresh)  # the path's shape, not congestion
    assert conn.counters["rto"] == 0
    send_seg(conn, seg(IRS + 1, BASE + 10 * 1460, ACK), T0 + 0.05)
    assert conn.snd_una == BASE + 10 * 1460 and not pull(conn, T0 + 0.05)


def test_with_timestamps_the_option_comes_off_the_path_mss():
    conn = established(timestamps=True, peer_opts={"timestamp": (1, 0)})
    assert conn.ts_ok
    conn.send(b"x" * 5000)
    pull(conn)
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1280, quoted_len=1500)
    assert conn.snd_mss == 1280 - 40 - 12


def test_reports_never_raise_the_mss_and_unbelievable_ones_are_ignored():
    conn = established()
    sent_flight(conn)
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1280, quoted_len=1500)
    pull(conn)
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1400, quoted_len=1500)  # section 6.3
    assert conn.snd_mss == 1240 and conn.counters["pmtu-reduced"] == 1
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1100, quoted_len=1000)  # that datagram fit
    assert conn.snd_mss == 1240 and conn.counters["pmtu-ignored"] == 1
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1000, quoted_len=1280)
    assert conn.snd_mss == 960 and conn.counters["pmtu-reduced"] == 2


def test_a_router_that_names_no_mtu_gets_the_next_plateau_below_the_datagram():
    conn = established()
    sent_flight(conn)
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=0, quoted_len=1500)  # RFC 1191 sections 5, 7
    assert conn.snd_mss == 1492 - 40
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=0, quoted_len=1492)
    assert conn.snd_mss == 1006 - 40


def test_a_tiny_mtu_stops_at_the_floor_and_the_connection_drops_df():
    conn = established()
    sent_flight(conn)
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=296, quoted_len=1500)
    assert conn.snd_mss == 552 - 40 and not conn.df  # routers fragment from here on (RFC 5927 7)
    assert all(len(s.payload) <= 512 for s in pull(conn))


def test_before_the_connection_is_synchronized_nothing_is_learned():
    conn, _syn = syn_sent()
    mss = conn.snd_mss
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=576, quoted_len=1500)
    assert conn.snd_mss == mss and conn.state is State.SYN_SENT and conn.counters["pmtu-ignored"] == 1


def test_without_path_mtu_discovery_no_df_and_fragmentation_needed_is_a_hard_error():
    conn = established(path_mtu_discovery=False)
    assert not conn.df
    conn.icmp_arrived(*FRAG_NEEDED, T0, next_hop_mtu=1280, quoted_len=1500)
    assert conn.take_events()[0] is Event.UNREACHABLE and conn.state is State.CLOSED  # SHLD-26


def test_a_known_path_mtu_given_before_the_handshake_sets_the_first_mss():
    conn, _syn = syn_sent()
    conn.set_path_mtu(1200, True, T0)  # from the owner's memory of an earlier report
    assert conn.path_mtu == 1200 and conn.state is State.SYN_SENT and not pull(conn)  # the SYN is not resent
    send_seg(conn, seg(IRS, ISS + 1, SYN | ACK, mss=1460))
    assert conn.state is State.ESTABLISHED and conn.snd_mss == 1160 and conn.df


def test_a_known_path_mtu_below_the_floor_keeps_df_off_and_is_ignored_without_discovery():
    conn = established()
    conn.set_path_mtu(552, False, T0)
    assert conn.snd_mss == 512 and not conn.df
    off = established(path_mtu_discovery=False)
    off.set_path_mtu(1200, True, T0)
    assert off.snd_mss == 1460 and off.path_mtu is None and not off.df


def test_two_timeouts_of_full_segments_with_df_suspect_a_black_hole_and_drop_df():
    """RFC 2923 2.1: the path may filter the ICMP path MTU discovery waits for. After
    `PMTU_BLACK_HOLE_RTOS` timeouts in a row of a segment larger than a minimal one (536),
    the segments go without DF (a router then fragments them); the MSS stays."""
    conn = established()
    sent_flight(conn)
    for expected_df in (True, False):
        now = conn.poll_at()
        conn.poll(now)
        pull(conn, now)
        assert conn.df is expected_df
    assert conn.counters["rto"] == 2 and conn.counters["pmtu-black-hole"] == 1 and conn.snd_mss == 1460
    for small in (established(), established(peer_mss=500)):
        small.send(b"x" * 100 if small.snd_mss > 500 else b"x" * 3000)  # small segments, however many
        pull(small)
        for _ in range(3):
            t = small.poll_at()
            small.poll(t)
            pull(small, t)
        assert small.df and not small.counters["pmtu-black-hole"]  # no sign of a black hole
