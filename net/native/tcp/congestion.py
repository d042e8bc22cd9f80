"""Congestion control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438), selectable.

Theory of operation: a controller owns `cwnd` and `ssthresh` (bytes) and decides how
they move; the connection owns loss *detection* and the recovery mechanics (dupack
counting, NewReno partial acks, RFC 6675 pipe), and tells the controller what
happened:

* `on_ack(acked, now, srtt, rtt, ack, snd_max, acks)` - `acked` new bytes were cumulatively
  acknowledged outside recovery: grow cwnd (slow start or congestion avoidance). `rtt` is
  this ACK's RTT sample (None if it gave none), `ack` and `snd_max` the acknowledgment and
  the highest sequence number sent, which mark HyStart++'s rounds; `acks` is how many
  ACKs of the peer this one stands for (the TCP layer merges a burst's pure ACKs).
* `on_congestion(now, flight)` - a loss was detected by duplicate ACKs or SACK:
  set ssthresh and cwnd for fast recovery (a multiplicative decrease).
* `on_timeout(now, flight)` - the retransmission timer expired: ssthresh as for a
  congestion event, cwnd to the loss window of one segment (RFC 5681 3.1 eq. 4).
* `restart(window)` - the connection sends again after more than an RTO without
  sending data: cwnd to at most the restart window (RFC 5681 4.1).
* `snapshot()` / `restore(state)` - the connection keeps the controller's state from
  before a reduction and gives it back when D-SACK later shows that every
  retransmission of that episode was spurious (RFC 3708): the reduction is undone,
  cwnd and ssthresh never below their current values (RFC 9438 4.9 for CUBIC's
  W_max, K and epoch; Linux's undo).

The connection calls `on_ack` only while the window is in use (at least half of cwnd
in flight when the ACK arrives): an application-limited connection, such as a
request/response one, does not grow a window it never fills (RFC 7661's idea, RFC 9438
section 5.8 for CUBIC), which would later let it send a burst the path never carried.

Both controllers start from the initial window given by the connection (RFC 5681
3.1 or RFC 6928) and use byte counting in slow start: cwnd += min(acked, L segments per
ACK) with L = `SLOW_START_L`, a segment being the largest the connection sends (one SMSS,
or with TSO `tso_max` in whole SMSS; see `SLOW_START_L`). The initial slow start runs
under HyStart++ (RFC 9406, `HyStartPlusPlus`), which leaves it when the round trip
grows, before the queue it is filling overflows. `make(name, ...)` picks one by name ("cubic" or "newreno").
"""
import math

from .seq import HALF, MASK

SLOW_START_L = 8
"""Slow start's per-ACK limit in segments: RFC 9406 section 4.3's value for a sender that
does not pace (RFC 3465's appropriate byte counting limit L; RFC 5681 eq. 2 is L = 1).

Why not 1: receivers that coalesce what they receive (GRO, LRO, a TAP handing the
kernel 64 KB super-frames) acknowledge tens of segments per ACK, and with L = 1 slow
start then grows cwnd by 2-5 % per round trip instead of doubling it. A 400 MB
download from a shard ran at 1.2-1.45 GB/s with L = 1 and 1.56-1.67 with L = 8.
(Linux has no such limit.)

Why a segment is the largest one sent, not one SMSS: L bounds the burst that one ACK
can release beyond what it acknowledges (RFC 3465 2.3), counted in the segments the
sender emits. With TSO the sender emits super-frames of up to `tso_max` octets (45
SMSS on a TAP), its bursts are made of those, and a receiver behind GRO acknowledges
one of them per ACK. Counted in SMSS, L = 8 let such an ACK grow cwnd by 8 of the 45
segments it acknowledged: about 18 % per round trip. 20 MB downloads from the httpd
over a TAP ran at a median of 1.72 GB/s with L = 8 SMSS and 1.87 with L = 64 SMSS
(`docs/benchmarks.md`)."""


class HyStartPlusPlus:
    """HyStart++ (RFC 9406 section 4): slow start that watches the round trip.

    Slow start doubles cwnd each round until a loss, and on a path with a deep
    queue that loss comes a whole window late: the queue overflows by up to
    half a window at once. HyStart++ takes the smallest of the first RTT samples
    of each round (rounds end when SND.MAX at their start is acknowledged); once a
    round's minimum exceeds the last one's by `rtt_threshold` (the queue is
    growing), it enters Conservative Slow Start, growing a quarter as fast. If a
    later round's minimum falls below the one that started CSS, the rise was jitter
    and slow start resumes; after `CSS_ROUNDS` rounds of CSS slow start ends
    (ssthresh = cwnd) and congestion avoidance takes over. It runs in the initial
    slow start only (4.2: SHOULD); a loss or an RTO ends it, as they end slow start.

    `on_ack` returns the divisor of this ACK's slow start increase (1, or
    `CSS_GROWTH_DIVISOR`), or 0 when slow start is over.
    """

    MIN_RTT_THRESH = 0.004
    MAX_RTT_THRESH = 0.016
    MIN_RTT_DIVISOR = 8
    N_RTT_SAMPLE = 8
    CSS_GROWTH_DIVISOR = 4
    CSS_ROUNDS = 5

    def __init__(self):
        self.window_end = None          # SND.MAX when this round began
        self.last_round_min = math.inf
        self.round_min = math.inf
        self.samples = 0
        self.css_baseline = None        # the round minimum that started CSS; None outside CSS
        self.css_rounds = 0

    def __eq__(self, other):
        return type(other) is HyStartPlusPlus and vars(self) == vars(other)

    @classmethod
    def rtt_threshold(cls, last_round_min):
        """How much a round's minimum RTT must grow to leave slow start (RFC 9406 4.2)."""
        return max(cls.MIN_RTT_THRESH, min(last_round_min / cls.MIN_RTT_DIVISOR, cls.MAX_RTT_THRESH))

    def on_ack(self, rtt, ack, snd_max):
        if self.window_end is None or (ack - self.window_end) & MASK < HALF:
            # a new round: the data sent when the last one began is acknowledged
            if self.css_baseline is not None:
                self.css_rounds += 1
                if self.css_rounds >= self.CSS_ROUNDS:
                    return 0
            self.last_round_min = self.round_min
            self.round_min = math.inf
            self.samples = 0
            self.window_end = snd_max
        if rtt is not None:
            self.samples += 1
            if rtt < self.round_min:
                self.round_min = rtt
        if self.samples >= self.N_RTT_SAMPLE and self.last_round_min < math.inf:
            if self.css_baseline is None:
                if self.round_min >= self.last_round_min + self.rtt_threshold(self.last_round_min):
                    self.css_baseline = self.round_min
                    self.css_rounds = 0
            elif self.round_min < self.css_baseline:
                self.css_baseline = None  # the rise was jitter: back to slow start
        return 1 if self.css_baseline is None else self.CSS_GROWTH_DIVISOR


class _Controller:
    """What both controllers share: slow start (with HyStart++ in the initial one) and the
    undo of a spurious reduction (see the module docstring)."""

    def _slow_start(self, acked, rtt, ack, snd_max, acks):
        """RFC 5681 slow start with byte counting up to L segments per ACK (`SLOW_START_L`;
        `acks` ACKs merged into one count as many), under HyStart++ while `hystart` runs:
        a quarter of that in CSS, and ssthresh set to cwnd when CSS is over (RFC 9406 4.2)."""
        mss = self.mss
        increase = min(acked, SLOW_START_L * acks * max(mss, self.tso_max - self.tso_max % mss))
        hystart = self.hystart
        if hystart is not None and ack is not None:
            divisor = hystart.on_ack(rtt, ack, snd_max)
            if not divisor:
                self.ssthresh = self.cwnd
                self.hystart = None
                return
            increase //= divisor
        self.cwnd += increase

    def snapshot(self):
        return dict(vars(self))

    def restore(self, state):
        cwnd, ssthresh = self.cwnd, self.ssthresh
        vars(self).update((k, v) for k, v in state.items() if k != "mss")
        self.cwnd = max(self.cwnd, cwnd)
        self.ssthresh = max(self.ssthresh, ssthresh)


class NewReno(_Controller):
    """RFC 5681 slow start and congestion avoidance with ssthresh = max(FlightSize/2, 2*SMSS)."""

    name = "newreno"

    def __init__(self, mss, initial_window, hystart=True, tso_max=0):
        self.mss = mss
        self.tso_max = tso_max  # the largest new-data segment with TSO (0: off), for `SLOW_START_L`
        self.cwnd = initial_window
        self.ssthresh = 1 << 30  # RFC 5681 3.1: arbitrarily high initially
        self.hystart = HyStartPlusPlus() if hystart else None
        self._acc = 0

    def set_mss(self, mss):
        self.mss = mss

    def on_ack(self, acked, now, srtt, rtt=None, ack=None, snd_max=None, acks=1):
        if self.cwnd < self.ssthresh:
            self._slow_start(acked, rtt, ack, snd_max, acks)  # RFC 5681 eq. 2 with L (above)
            return
        # Congestion avoidance, byte counting (RFC 5681 3.1, RFC 3465): +1 SMSS per cwnd acked.
        self._acc += acked
        if self._acc >= self.cwnd:
            self._acc -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, now, flight):
        self.ssthresh = max(flight // 2, 2 * self.mss)  # RFC 5681 eq. 4
        self.cwnd = self.ssthresh
        self.hystart = None
        self._acc = 0

    def restart(self, window):
        """Sending resumes after an idle period: cwnd to at most `window` (RFC 5681 4.1)."""
        self.cwnd = min(self.cwnd, window)
        self._acc = 0

    def on_timeout(self, now, flight):
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # loss window
        self.hystart = None
        self._acc = 0


class Cubic(_Controller):
    """CUBIC (RFC 9438): cubic window growth in time since the last congestion event.

    Windows inside the cubic formulas are in segments (section 4.1); `cwnd` and
    `ssthresh` are exposed in bytes like NewReno's. Fast convergence (4.7) and the
    Reno-friendly region (4.3) are implemented; slow start is NewReno's, with
    HyStart++ in the initial one (RFC 9438 4.10 allows it; `_Controller._slow_start`).
    """

    name = "cubic"
    C = 0.4
    BETA = 0.7
    ALPHA = 3 * (1 - BETA) / (1 + BETA)  # RFC 9438 4.3

    def __init__(self, mss, initial_window, hystart=True, tso_max=0):
        self.mss = mss
        self.tso_max = tso_max  # the largest new-data segment with TSO (0: off), for `SLOW_START_L`
        self.cwnd = initial_window
        self.ssthresh = 1 << 30
        self.hystart = HyStartPlusPlus() if hystart else None
        self.w_max = None       # segments, window before the last reduction
        self.w_last_max = None  # for fast convergence
        self.k = 0.0
        self.t_epoch = None
        self.w_est = 0.0        # segments, Reno-friendly estimate

    def set_mss(self, mss):
        self.mss = mss

    def w_cubic(self, t):
        """W_cubic(t) = C*(t-K)^3 + W_max, in segments (RFC 9438 eq. 1)."""
        return self.C * (t - self.k) ** 3 + self.w_max

    def on_ack(self, acked, now, srtt, rtt=None, ack=None, snd_max=None, acks=1):
        if self.cwnd < self.ssthresh:
            self._slow_start(acked, rtt, ack, snd_max, acks)
            return
        mss = self.mss
        cwnd_seg = self.cwnd / mss
        if self.t_epoch is None:
            # First congestion avoidance after slow start or a timeout (RFC 9438 4.2, 4.8).
            self.t_epoch = now
            if self.w_max is None or self.w_max < cwnd_seg:
                self.w_max = cwnd_seg
                self.k = 0.0
            else:
                self.k = ((self.w_max - cwnd_seg) / self.C) ** (1 / 3)
            self.w_est = cwnd_seg
        t = now - self.t_epoch
        rtt = srtt if srtt is not None else 0.0
        target = min(max(self.w_cubic(t + rtt), cwnd_seg), 1.5 * cwnd_seg)  # RFC 9438 4.2
        self.w_est += self.ALPHA * (acked / mss) / cwnd_seg  # eq. 4
        if self.w_cubic(t) < self.w_est:
            new = self.w_est  # Reno-friendly region (4.3)
        else:
            new = cwnd_seg + (target - cwnd_seg) / cwnd_seg * (acked / mss)  # 4.4 / 4.5
        self.cwnd = max(int(new * mss), self.cwnd)

    def _reduce(self, now):
        self.hystart = None
        cwnd_seg = self.cwnd / self.mss
        if self.w_last_max is not None and cwnd_seg < self.w_last_max:
            self.w_last_max = cwnd_seg
            self.w_max = cwnd_seg * (1 + self.BETA) / 2  # fast convergence (4.7)
        else:
            self.w_last_max = cwnd_seg
            self.w_max = cwnd_seg
        self.ssthresh = max(int(self.cwnd * self.BETA), 2 * self.mss)  # 4.6
        self.k = ((self.w_max - self.ssthresh / self.mss) / self.C) ** (1 / 3) \
            if self.w_max > self.ssthresh / self.mss else 0.0
        self.t_epoch = now
        self.w_est = self.ssthresh / self.mss

    def on_congestion(self, now, flight):
        self._reduce(now)
        self.cwnd = self.ssthresh

    def on_timeout(self, now, flight):
        self._reduce(now)
        self.cwnd = self.mss
        self.t_epoch = None  # re-anchored when congestion avoidance resumes (4.8)

    def restart(self, window):
        """Sending resumes after an idle period: cwnd to at most `window` (RFC 5681 4.1); the
        cubic curve is re-anchored when congestion avoidance resumes, not run on from before."""
        self.cwnd = min(self.cwnd, window)
        self.t_epoch = None


ALGORITHMS = {"cubic": Cubic, "newreno": NewReno}


def make(name, mss, initial_window, hystart=True, tso_max=0):
    """A congestion controller by name (`hystart`: HyStart++ in its initial slow start;
    `tso_max`: the connection's `TcpConfig.tso_max`); ValueError for unknown names."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} (have {sorted(ALGORITHMS)})") from None
    return cls(mss, initial_window, hystart, tso_max)
