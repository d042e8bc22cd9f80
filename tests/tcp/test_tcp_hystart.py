"""HyStart++ (RFC 9406): rounds, the delay test, Conservative Slow Start, and what it saves."""
import pytest

from tcp_harness import Sim, TcpConfig
from test_tcp_netsim import transfer
from shoal.net.native.tcp import congestion
from shoal.net.native.tcp.congestion import HyStartPlusPlus

MSS = 1000


class Rounds:
    """Feeds a `HyStartPlusPlus` whole rounds of ACKs, one RTT sample each."""

    def __init__(self, hystart):
        self.hystart = hystart
        self.snd_max = 0

    def round(self, rtts, per_round=10):
        """ACKs for one round: the first acknowledges what began it; returns their verdicts."""
        start, self.snd_max = self.snd_max, self.snd_max + per_round * MSS
        out = []
        for i, rtt in enumerate(rtts):
            out.append(self.hystart.on_ack(rtt, start + (i + 1) * MSS if i else start, self.snd_max))
        return out


def test_steady_round_trips_keep_slow_start():
    r = Rounds(HyStartPlusPlus())
    for _ in range(6):
        assert set(r.round([0.010] * 10)) == {1}


def test_a_round_trip_rise_past_the_threshold_enters_css_after_eight_samples():
    r = Rounds(HyStartPlusPlus())
    r.round([0.010] * 10)
    verdicts = r.round([0.0139] * 10)  # +3.9 ms: under MIN_RTT_THRESH (4 ms)
    assert set(verdicts) == {1}
    verdicts = r.round([0.0179] * 10)  # +4 ms over the last round's minimum
    assert verdicts[:7] == [1] * 7 and verdicts[7:] == [HyStartPlusPlus.CSS_GROWTH_DIVISOR] * 3
    assert r.hystart.css_baseline == pytest.approx(0.0179)


@pytest.mark.parametrize("last, threshold", [(0.010, 0.004), (0.080, 0.010), (0.200, 0.016)])
def test_the_threshold_is_an_eighth_of_the_last_minimum_between_4_and_16_ms(last, threshold):
    assert HyStartPlusPlus.rtt_threshold(last) == pytest.approx(threshold)


def test_a_css_round_back_under_the_baseline_resumes_slow_start():
    r = Rounds(HyStartPlusPlus())
    r.round([0.010] * 10)
    r.round([0.020] * 10)
    assert r.hystart.css_baseline is not None
    verdicts = r.round([0.019] * 10)  # jitter, not a queue: below the baseline that began CSS
    assert verdicts[-1] == 1 and r.hystart.css_baseline is None


def test_css_ends_slow_start_after_its_rounds():
    cc = congestion.make("cubic", MSS, 10 * MSS)
    snd_max = 0

    def round_of(rtt):
        nonlocal snd_max
        start, snd_max = snd_max, snd_max + 10 * MSS
        for i in range(10):
            cc.on_ack(MSS, 0.0, rtt, rtt, start + i * MSS, snd_max)

    round_of(0.010)
    before = cc.cwnd
    round_of(0.020)  # CSS from the eighth sample on: those ACKs grow cwnd by a quarter
    assert cc.cwnd == before + 7 * MSS + 3 * (MSS // 4)
    for _ in range(HyStartPlusPlus.CSS_ROUNDS - 1):
        round_of(0.020)
        assert cc.ssthresh == 1 << 30
    before = cc.cwnd
    round_of(0.020)  # its first ACK ends slow start; the rest grow cwnd by CUBIC's rule
    assert cc.ssthresh == before and cc.hystart is None and before <= cc.cwnd < before + MSS


@pytest.mark.parametrize("name", ["cubic", "newreno"])
def test_a_loss_or_timeout_ends_hystart_and_it_can_be_turned_off(name):
    cc = congestion.make(name, MSS, 10 * MSS)
    assert cc.hystart is not None
    cc.on_congestion(0.0, 10 * MSS)
    assert cc.hystart is None
    cc = congestion.make(name, MSS, 10 * MSS)
    cc.on_timeout(0.0, 10 * MSS)
    assert cc.hystart is None
    cc = congestion.make(name, MSS, 10 * MSS, hystart=False)
    cc.on_ack(8 * MSS, 0.0, 0.01, 0.01, 0, 10 * MSS)
    assert cc.hystart is None and cc.cwnd == 18 * MSS


def test_hystart_shrinks_the_slow_start_overshoot_into_a_deep_queue():
    """A 20 Mbit/s bottleneck, 20 ms of propagation, a 64-packet drop-tail queue: standard
    slow start overflows it by half a window (195 drops, an RTO); under HyStart++ the round
    trip's rise starts Conservative Slow Start first (82 drops, no RTO)."""
    runs = {}
    for hystart in (True, False):
        sim = Sim(seed=1, rate=20e6, queue=64, delay=0.01)
        client, _srv = transfer(sim, 3_000_000, 1000, TcpConfig(msl=1.0, min_rto=0.2, hystart=hystart))
        runs[hystart] = (sim.faults["queue-drop"], client.counters["retransmit"], client.counters["rto"])
    (drops_on, rexmit_on, rto_on), (drops_off, rexmit_off, _rto_off) = runs[True], runs[False]
    assert 3 * drops_on <= 2 * drops_off and rexmit_on < rexmit_off and rto_on == 0, runs
