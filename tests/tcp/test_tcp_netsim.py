"""Two TCP machines back to back over a seeded terrible network, data checked by sha256.

CI-sized transfers (a few hundred KB each way per case); the 50 MB runs of issue 5
are behind ``-m soak``. Each case also checks that nothing deadlocks (the run ends
well within the simulated-time bound) and that no connection state survives the
close (TIME-WAIT expires, the listener is empty).
"""
import os
import tempfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tcp_harness import Connection, IsnGenerator, Listener, Sim, State, TcpConfig, sha, write_pcap
from shoal.net.native.tcp.connection import ERRORS
from shoal.net.native.wire import tcp as wire
from shoal.net.native.wire.tcp import ACK, SYN

PORT = 80


class NearWrapIsn(IsnGenerator):
    """ISNs just below 2**32, so every transfer crosses the sequence-number wrap."""

    def __call__(self, local_ip, local_port, remote_ip, remote_port, now):
        return 2**32 - 20_000 - local_port


def transfer(sim, size_ab, size_ba, cfg=None, max_time=900.0, isn=None):
    """Client on A sends `size_ab` bytes, server on B sends `size_ba`; both close. Returns stats."""
    cfg = cfg or TcpConfig(msl=1.0)
    rng_bytes = sim.rng.randbytes
    data_ab = rng_bytes(size_ab)
    data_ba = rng_bytes(size_ba)
    isn = isn or IsnGenerator(b"k" * 16)
    lst = Listener(cfg, (sim.b.ip, PORT), isn)
    sim.b.listeners[PORT] = lst
    client = Connection.active(cfg, (sim.a.ip, 40000), (sim.b.ip, PORT),
                               isn(sim.a.ip, 40000, sim.b.ip, PORT, sim.now), sim.now)
    sim.a.conns[(40000, (sim.b.ip, PORT))] = client
    state = {"server": None, "sent_ab": 0, "sent_ba": 0, "got_ab": bytearray(), "got_ba": bytearray(),
             "client_closed": False, "server_closed": False}

    def app():
        srv = state["server"]
        if srv is None:
            srv = lst.accept()
            if srv is not None:
                state["server"] = srv
                sim.b.conns[(PORT, srv.remote)] = srv
        state["got_ba"] += client.recv()  # before close: unread data would mean a reset (SHLD-3)
        # client writes then closes
        if state["sent_ab"] < size_ab and client.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            state["sent_ab"] += client.send(data_ab[state["sent_ab"]:state["sent_ab"] + 65536])
        elif state["sent_ab"] >= size_ab and not state["client_closed"] and client.state is State.ESTABLISHED:
            client.close()
            state["client_closed"] = True
        if srv is not None:
            state["got_ab"] += srv.recv()
            if state["sent_ba"] < size_ba and srv.state in (State.ESTABLISHED, State.CLOSE_WAIT):
                state["sent_ba"] += srv.send(data_ba[state["sent_ba"]:state["sent_ba"] + 65536])
            elif state["sent_ba"] >= size_ba and not state["server_closed"] and srv.at_eof:
                srv.close()
                state["server_closed"] = True
        for c in (client, srv):
            if c is not None:
                errors = [e for e in c.take_events() if e in ERRORS]
                assert not errors, (errors, c)

    def done():
        app()
        srv = state["server"]
        return (srv is not None and client.state is State.CLOSED and srv.state is State.CLOSED)

    try:
        finished = sim.run_until(done, max_time=max_time)
        srv = state["server"]
        assert finished, (client, srv, sim.now, sim.faults)
        assert sha(bytes(state["got_ab"])) == sha(data_ab)
        assert sha(bytes(state["got_ba"])) == sha(data_ba)
        assert not lst.half_open and not lst.ready  # no leaked state
        assert client.poll_at() is None and srv.poll_at() is None
    except AssertionError as e:
        # The last frames of a failing run, for Wireshark (design brief 4.8).
        fd, path = tempfile.mkstemp(prefix="shoal-tcp-netsim-", suffix=".pcap",
                                    dir=os.environ.get("SHOAL_PCAP_DIR"))
        os.close(fd)
        write_pcap(path, sim.trace)
        raise AssertionError(f"{e} (last {len(sim.trace)} segments in {path})") from e
    return client, srv


CASES = [
    ("clean", dict()),
    ("loss-1", dict(loss=0.01)),
    ("loss-5", dict(loss=0.05)),
    ("loss-20", dict(loss=0.20)),
    ("reorder", dict(reorder=0.1)),
    ("dup", dict(dup=0.1)),
    ("corrupt", dict(corrupt=0.05)),
    ("everything", dict(loss=0.05, reorder=0.05, dup=0.05, corrupt=0.02)),
]


@pytest.mark.parametrize("name,faults", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("cc", ["cubic", "newreno"])
def test_transfer_sack(name, faults, cc):
    size = 60_000 if faults.get("loss", 0) >= 0.2 else 300_000
    sim = Sim(seed=zlib.crc32(name.encode()), **faults)
    transfer(sim, size, size // 2, TcpConfig(msl=1.0, congestion=cc, min_rto=0.2))
    if faults.get("corrupt"):
        assert sim.a.drops.get("tcp-bad-checksum", 0) + sim.b.drops.get("tcp-bad-checksum", 0) > 0


@pytest.mark.parametrize("name,faults", CASES[:6], ids=[c[0] for c in CASES[:6]])
def test_transfer_no_options(name, faults):
    """NewReno recovery without SACK, timestamps or window scaling."""
    size = 60_000 if faults.get("loss", 0) >= 0.2 else 200_000
    sim = Sim(seed=7 + len(name), **faults)
    cfg = TcpConfig(msl=1.0, sack=False, timestamps=False, window_scaling=False, recv_buffer=65535,
                    congestion="newreno", min_rto=0.2)
    transfer(sim, size, size // 4, cfg)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), loss=st.sampled_from([0, 0.01, 0.05, 0.2]), reorder=st.sampled_from([0, 0.1]),
       dup=st.sampled_from([0, 0.05]), corrupt=st.sampled_from([0, 0.03]),
       link=st.sampled_from([(1e6, 8, 4), (20e6, 64, None), (1e9, 1000, 20)]),
       opts=st.fixed_dictionaries({"sack": st.booleans(), "timestamps": st.booleans(),
                                   "window_scaling": st.booleans(), "nodelay": st.booleans(),
                                   "ecn": st.booleans(),
                                   "congestion": st.sampled_from(["cubic", "newreno"]),
                                   "recv_buffer": st.sampled_from([8192, 65535, 262144])}),
       sizes=st.tuples(st.integers(20_000, 150_000), st.integers(0, 40_000)))
def test_random_networks_and_options(seed, loss, reorder, dup, corrupt, link, opts, sizes):
    """Any mix of faults, link and options: the data arrives intact and nothing leaks."""
    rate, queue, ecn_threshold = link
    sim = Sim(seed=seed, loss=loss, reorder=reorder, dup=dup, corrupt=corrupt, rate=rate, queue=queue,
              ecn_threshold=ecn_threshold)
    transfer(sim, sizes[0], sizes[1], TcpConfig(msl=1.0, min_rto=0.2, **opts), max_time=20_000)


@pytest.mark.parametrize("sack", [True, False])
def test_transfer_across_sequence_wrap(sack):
    sim = Sim(seed=4, loss=0.03, reorder=0.05)
    client, srv = transfer(sim, 200_000, 200_000, TcpConfig(msl=1.0, min_rto=0.2, sack=sack),
                           isn=NearWrapIsn(b"w" * 16))
    assert int(client.snd_una) < 1_000_000 and int(srv.snd_una) < 1_000_000  # both wrapped


def test_spurious_fast_retransmits_under_reordering_are_undone():
    """10 % reordering and no loss: fast retransmits are mostly spurious; the peer's D-SACKs
    show it (RFC 3708), their reductions are undone (`dsack-undo`), and DupThresh grows."""
    sim = Sim(seed=2, reorder=0.1)
    client, _srv = transfer(sim, 1_000_000, 100_000, TcpConfig(msl=1.0, min_rto=0.2))
    assert client.counters["fast-retransmit"] > 0 and client.counters["dsack-received"] > 0
    assert client.counters["dsack-undo"] > 0
    # and the reordering they showed raised the duplicate threshold (fewer spurious ones after)
    assert client.counters["reordering-raised"] > 0 and client.scoreboard.dup_thresh > 3


def test_clean_transfer_uses_no_retransmissions():
    sim = Sim(seed=3, rate=100e6, queue=1000)
    client, srv = transfer(sim, 500_000, 10_000)
    assert client.counters["retransmit"] == 0 and srv.counters["retransmit"] == 0


def test_bottleneck_queue_drops_recovered_by_sack():
    sim = Sim(seed=11, rate=10e6, queue=8)
    client, _ = transfer(sim, 1_000_000, 1000, TcpConfig(msl=1.0, min_rto=0.2))
    assert sim.faults["queue-drop"] > 0
    assert client.counters["fast-retransmit"] > 0


@pytest.mark.parametrize("cc", ["cubic", "newreno"])
def test_slow_start_overshoot_into_a_drop_tail_queue_needs_no_timeout(cc):
    """No random loss: slow start overfills the bottleneck's queue, a burst is dropped,
    and the recovery's own sends (CUBIC's window stays larger) overflow it again. SACK
    recovery and RACK repair it all, with no RTO: a rescue retransmission that RACK sent
    again once let HighRxt pass holes never retransmitted (`Connection._rack_resend`)."""
    sim = Sim(seed=1)
    client, _ = transfer(sim, 1_000_000, 100_000, TcpConfig(msl=1.0, congestion=cc))
    assert sim.faults["queue-drop"] > 0 and client.counters["fast-retransmit"] > 0
    assert client.counters["rto"] == 0


def test_zero_window_reader_stalls_then_resumes():
    """A slow reader closes its window; the sender probes and resumes (MUST-36, MUST-37)."""
    sim = Sim(seed=5)
    cfg = TcpConfig(msl=1.0, recv_buffer=16384, window_scaling=False)
    isn = IsnGenerator(b"s" * 16)
    lst = Listener(cfg, (sim.b.ip, PORT), isn)
    sim.b.listeners[PORT] = lst
    client = Connection.active(cfg, (sim.a.ip, 40001), (sim.b.ip, PORT), 77, sim.now)
    sim.a.conns[(40001, (sim.b.ip, PORT))] = client
    data = sim.rng.randbytes(100_000)
    sent = [0]
    holder = {}

    def pump():
        if "srv" not in holder:
            s = lst.accept()
            if s is not None:
                holder["srv"] = s
                sim.b.conns[(PORT, s.remote)] = s
        if client.state is State.ESTABLISHED and sent[0] < len(data):
            sent[0] += client.send(data[sent[0]:sent[0] + 65536])
        return False

    sim.run_until(lambda: pump() or sim.now > 130.0, max_time=200)
    srv = holder["srv"]
    assert srv.readable == 16384 and client.counters["zero-window-probe"] >= 3
    assert client.state is State.ESTABLISHED  # never timed out while the peer answers
    got = bytearray()

    def read():
        pump()
        got.extend(srv.recv())
        return len(got) == len(data)

    assert sim.run_until(read, max_time=200)
    assert sha(bytes(got)) == sha(data)


def test_failing_run_leaves_a_pcap(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_PCAP_DIR", str(tmp_path))
    sim = Sim(seed=1)
    with pytest.raises(AssertionError, match=r"\.pcap"):
        transfer(sim, 1_000_000, 0, max_time=0.05)  # far too little simulated time
    [pcap] = tmp_path.glob("shoal-tcp-netsim-*.pcap")
    raw = pcap.read_bytes()
    assert raw[:4] == b"\xd4\xc3\xb2\xa1" and len(raw) > 24 + 16 + 40


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_simultaneous_open_and_close_over_the_wire(loss):
    """Both sides open at once (RFC 9293 3.5 figure 8) and close at once (figure 13)."""
    sim = Sim(seed=8, loss=loss)
    cfg = TcpConfig(msl=1.0, min_rto=0.2)
    a = Connection.active(cfg, (sim.a.ip, 5000), (sim.b.ip, 6000), 111, sim.now)
    b = Connection.active(cfg, (sim.b.ip, 6000), (sim.a.ip, 5000), 999_999, sim.now)
    sim.a.conns[(5000, (sim.b.ip, 6000))] = a
    sim.b.conns[(6000, (sim.a.ip, 5000))] = b
    payload = {"a": sim.rng.randbytes(30_000), "b": sim.rng.randbytes(30_000)}
    got = {"a": bytearray(), "b": bytearray()}
    sent = {"a": False, "b": False}

    def step():
        for name, conn in (("a", a), ("b", b)):
            got[name] += conn.recv()
            if conn.state is State.ESTABLISHED and not sent[name]:
                assert conn.send(payload[name]) == 30_000
                conn.close()
                sent[name] = True
            assert not [e for e in conn.take_events() if e in ERRORS]
        return a.state is State.CLOSED and b.state is State.CLOSED

    assert sim.run_until(step, max_time=3000)
    assert got["b"] == payload["a"] and got["a"] == payload["b"]
    if loss == 0.0:  # (with loss, one SYN may be lost and the open become an ordinary one)
        synacks = {src for _t, src, _d, raw in sim.trace if wire.parse(raw).flags & (SYN | ACK) == SYN | ACK}
        assert synacks == {sim.a.ip, sim.b.ip}  # both sides went through SYN-RECEIVED


def test_ecn_marks_replace_losses():
    """With an ECN-marking bottleneck the sender backs off without losing anything (RFC 3168)."""
    sim = Sim(seed=21, rate=10e6, queue=64, ecn_threshold=8)
    client, srv = transfer(sim, 1_000_000, 1000, TcpConfig(msl=1.0, ecn=True, min_rto=0.2))
    assert client.ecn_ok and srv.ecn_ok
    assert sim.faults["ce"] > 0 and client.counters["ecn-reduction"] > 0
    assert sim.faults["queue-drop"] == 0 and client.counters["retransmit"] == 0


@pytest.mark.soak
@pytest.mark.parametrize("loss", [0.0, 0.01, 0.05, 0.20])
def test_soak_50mb_each_way(loss):
    size = int(os.environ.get("SHOAL_TCP_SOAK_BYTES", 50 * 1024 * 1024))
    sim = Sim(seed=99, loss=loss, reorder=0.02, dup=0.02, corrupt=0.01, rate=1e9, queue=512)
    transfer(sim, size, size, TcpConfig(msl=1.0, min_rto=0.2, send_buffer=1 << 20, recv_buffer=1 << 20),
             max_time=1e6)


def request_response(sim, cfg, n=100, request=100, response=4000):
    """`n` exchanges on one connection: a request from A, a response from B, in turn.
    Returns the simulated time they took and B's connection."""
    isn = IsnGenerator(b"k" * 16)
    lst = Listener(cfg, (sim.b.ip, PORT), isn)
    sim.b.listeners[PORT] = lst
    client = Connection.active(cfg, (sim.a.ip, 40000), (sim.b.ip, PORT),
                               isn(sim.a.ip, 40000, sim.b.ip, PORT, sim.now), sim.now)
    sim.a.conns[(40000, (sim.b.ip, PORT))] = client
    st = {"server": None, "asked": False, "pending": 0, "got": 0, "done": 0}

    def app():
        srv = st["server"]
        if srv is None and (srv := lst.accept()) is not None:
            st["server"] = srv
            sim.b.conns[(PORT, srv.remote)] = srv
        if client.state is State.ESTABLISHED and not st["asked"]:
            client.send(b"q" * request)
            st["asked"] = True
        if srv is not None:
            st["pending"] += len(srv.recv())
            if st["pending"] >= request:
                st["pending"] -= request
                srv.send(b"r" * response)
        st["got"] += len(client.recv())
        if st["got"] >= response:
            st["got"] -= response
            st["done"] += 1
            st["asked"] = False
        return st["done"] >= n

    start = sim.now
    assert sim.run_until(app, max_time=3600.0), (client, st)
    return sim.now - start, st["server"]


@pytest.mark.parametrize("seed", [4, 5])
def test_tail_loss_probes_shorten_request_response_under_loss(seed):
    """RFC 8985 7: with 3 % loss, responses whose tail is lost are repaired by a probe
    after about 2*SRTT instead of waiting for the RTO (1 s): the same exchanges on the
    same seeded network take at most three quarters of the time, with fewer timeouts."""
    runs = {}
    for tlp in (False, True):
        sim = Sim(seed=seed, loss=0.03, rate=100e6, queue=1000)
        runs[tlp] = request_response(sim, TcpConfig(msl=1.0, tail_loss_probe=tlp))
    (slow, without), (fast, with_tlp) = runs[False], runs[True]
    assert without.counters["tlp-probe"] == 0 and with_tlp.counters["tlp-probe"] > 0
    assert with_tlp.counters["rto"] < without.counters["rto"]
    assert fast < 0.75 * slow, (fast, slow, dict(with_tlp.counters))
