"""The predicted paths of `Connection` against the full RFC 9293 ones.

Every segment that reaches an ESTABLISHED connection during the netsim transfers
below is processed twice: by header prediction (`_predicted_arrival`) and, on a deep
copy taken before, by the full path (`_synchronized_arrival` then `_update_timers`,
what `segment_arrived` runs otherwise). Every transmit pull of an ESTABLISHED
connection likewise runs `_predicted_transmit` and, on a copy, the full `_transmit`.
The segments produced and the two connections must then be identical in every
attribute, and a case the prediction declines must leave the connection untouched
before the full path runs. The faults (loss, reordering, duplicates, corruption),
the options and an ISN just below 2**32 steer both sides of every precondition.
"""
import copy

import pytest

from shoal.net.native.tcp.recvbuf import ReceiveBuffer
from shoal.net.native.tcp.sendbuf import SendBuffer
from tcp_harness import T0, Connection, Sim, State, TcpConfig, established, pull
from test_tcp_netsim import NearWrapIsn, transfer


def snapshot(conn):
    """Every attribute of `conn`, nested state objects included, as comparable values."""
    out = {}
    for name in type(conn).__slots__:
        value = getattr(conn, name)
        if isinstance(value, SendBuffer):  # the text and where it starts, however it is chunked
            value = ("SendBuffer", value._dropped, bytes(value.view(0, value.size)))
        elif isinstance(value, ReceiveBuffer):
            value = ("ReceiveBuffer", copy.deepcopy(value).take())
        elif hasattr(value, "__slots__") and not isinstance(value, (int, tuple)):
            value = (type(value).__name__, [getattr(value, s, None) for s in value.__slots__])
        elif hasattr(value, "__dict__") and not isinstance(value, (TcpConfig, type)):
            value = (type(value).__name__, dict(vars(value)))
        elif isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[name] = value
    return out


def segment_fields(segments):
    return [(s, s.ect) for s in segments]  # TcpSegment equality covers every field but `ect`


@pytest.fixture
def checked_prediction(monkeypatch):
    """Wrap `Connection.segment_arrived` and `transmit` with the comparisons; returns the
    tally of the paths taken."""
    full_arrival = Connection.segment_arrived
    tally = {"predicted": 0, "declined": 0, "predicted-tx": 0, "declined-tx": 0}

    def arrival(self, seg, now, ce=False):
        if self.state is not State.ESTABLISHED:
            return full_arrival(self, seg, now, ce)
        before = snapshot(self)
        twin = copy.deepcopy(self)
        if not self._predicted_arrival(seg, now, ce):
            assert snapshot(self) == before, f"declined but changed the connection: {seg}"
            tally["declined"] += 1
            return full_arrival(self, seg, now, ce)
        tally["predicted"] += 1
        twin._seg_ce = ce
        twin._synchronized_arrival(seg, now)
        twin._update_timers(now)
        mine, full = snapshot(self), snapshot(twin)
        assert mine == full, {k: (mine[k], full.get(k)) for k in mine if mine[k] != full.get(k)}
        return False

    def transmit(self, now, limit=64):
        if self.state is not State.ESTABLISHED:
            return self._transmit(now, limit)
        before = snapshot(self)
        twin = copy.deepcopy(self)
        out = self._predicted_transmit(now, limit)
        if out is None:
            assert snapshot(self) == before, "declined but changed the connection"
            tally["declined-tx"] += 1
            return self._transmit(now, limit)
        tally["predicted-tx"] += 1
        full_out = twin._transmit(now, limit)
        assert segment_fields(out) == segment_fields(full_out), (out, full_out)
        mine, full = snapshot(self), snapshot(twin)
        assert mine == full, {k: (mine[k], full.get(k)) for k in mine if mine[k] != full.get(k)}
        return out

    monkeypatch.setattr(Connection, "segment_arrived", arrival)
    monkeypatch.setattr(Connection, "transmit", transmit)
    return tally


CASES = [
    ("clean", dict(), dict()),
    ("loss", dict(loss=0.03), dict()),
    ("reorder-dup", dict(reorder=0.1, dup=0.1), dict()),
    ("corrupt", dict(corrupt=0.03, loss=0.01), dict()),
    ("no-options", dict(loss=0.02), dict(sack=False, timestamps=False, window_scaling=False,
                                         recv_buffer=65535, congestion="newreno")),
    ("small-window", dict(loss=0.02, reorder=0.05), dict(recv_buffer=8192, recv_buffer_max=8192, nodelay=True)),
    ("ecn", dict(rate=1e6, queue=8, ecn_threshold=4), dict(ecn=True)),
]


@pytest.mark.parametrize("name,faults,opts", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("wrap", [False, True], ids=["low-isn", "isn-near-wrap"])
def test_prediction_matches_the_full_path(checked_prediction, name, faults, opts, wrap):
    sim = Sim(seed=len(name) + 31 * wrap, **faults)
    transfer(sim, 800_000, 60_000, TcpConfig(msl=1.0, min_rto=0.2, **opts), max_time=20_000,
             isn=NearWrapIsn(b"w" * 16) if wrap else None)
    assert checked_prediction["predicted"] > 10, checked_prediction
    if faults:
        assert checked_prediction["declined"] > 0, checked_prediction
    assert checked_prediction["predicted-tx"] > 10, checked_prediction


def test_predicted_transmit_declines_a_go_back_and_keeps_karns_rule():
    """After a retransmission timeout (SND.NXT back at SND.UNA, below SND.MAX) the pull is
    the full path's: the prediction declines without touching the connection. Once the
    resent data reaches SND.MAX again, new data goes the predicted way, but is not timed
    while the retransmission is unacknowledged (Karn, RFC 6298 section 3)."""
    conn = established(nodelay=True)  # (so the small segment below is not held back by Nagle)
    conn.send(b"x" * 1000)
    first = pull(conn)
    assert [len(s.payload) for s in first] == [1000] and conn._rtt_seq is not None
    now = conn.rto_at
    conn.poll(now)
    assert conn.snd_nxt < conn.snd_max and conn._rtt_seq is None
    before = snapshot(conn)
    assert conn._predicted_transmit(now, 64) is None and snapshot(conn) == before
    again = pull(conn, now)
    assert [(s.seq, len(s.payload)) for s in again] == [(first[0].seq, 1000)]
    assert conn.snd_nxt == conn.snd_max and conn.retries == 1
    conn.send(b"y" * 400)  # (within the loss window: cwnd 1 MSS, 1000 octets in flight)
    out = conn._predicted_transmit(now, 64)
    assert out is not None and [len(s.payload) for s in out] == [400]
    assert conn._rtt_seq is None  # nothing timed until an ACK ends the retransmission
