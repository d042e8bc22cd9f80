"""Congestion control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438), selectable.

Theory of operation: a controller owns `cwnd` and `ssthresh` (bytes) and decides how
they move; the connection owns loss *detection* and the recovery mechanics (dupack
counting, NewReno partial acks, RFC 6675 pipe), and tells the controller what
happened:

* `on_ack(acked, now, srtt)` - `acked` new bytes were cumulatively acknowledged
  outside recovery: grow cwnd (slow start or congestion avoidance).
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
3.1 or RFC 6928) and use byte counting in slow start: cwnd += min(acked, L * SMSS) with
L = `SLOW_START_L` (see there). `make(name, ...)` picks one by name ("cubic" or "newreno").
"""

SLOW_START_L = 8
"""Slow start's per-ACK limit in SMSS: RFC 9406 section 4.3's value for a sender that
does not pace (RFC 3465's appropriate byte counting limit L; RFC 5681 eq. 2 is L = 1).

Why not 1: receivers that coalesce what they receive (GRO, LRO, a TAP handing the
kernel 64 KB super-frames) acknowledge tens of segments per ACK, and with L = 1 slow
start then grows cwnd by 2-5 % per round trip instead of doubling it. A 400 MB
download from a shard ran at 1.2-1.45 GB/s with L = 1 and 1.56-1.67 with L = 8.
(Linux has no such limit.)"""


class _Controller:
    """What both controllers share: the undo of a spurious reduction (see the module docstring)."""

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

    def __init__(self, mss, initial_window):
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = 1 << 30  # RFC 5681 3.1: arbitrarily high initially
        self._acc = 0

    def set_mss(self, mss):
        self.mss = mss

    def on_ack(self, acked, now, srtt):
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, SLOW_START_L * self.mss)  # RFC 5681 eq. 2 with L (above)
            return
        # Congestion avoidance, byte counting (RFC 5681 3.1, RFC 3465): +1 SMSS per cwnd acked.
        self._acc += acked
        if self._acc >= self.cwnd:
            self._acc -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, now, flight):
        self.ssthresh = max(flight // 2, 2 * self.mss)  # RFC 5681 eq. 4
        self.cwnd = self.ssthresh
        self._acc = 0

    def restart(self, window):
        """Sending resumes after an idle period: cwnd to at most `window` (RFC 5681 4.1)."""
        self.cwnd = min(self.cwnd, window)
        self._acc = 0

    def on_timeout(self, now, flight):
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss  # loss window
        self._acc = 0


class Cubic(_Controller):
    """CUBIC (RFC 9438): cubic window growth in time since the last congestion event.

    Windows inside the cubic formulas are in segments (section 4.1); `cwnd` and
    `ssthresh` are exposed in bytes like NewReno's. Fast convergence (4.7) and the
    Reno-friendly region (4.3) are implemented; HyStart++ is not (slow start is
    standard RFC 5681 byte counting).
    """

    name = "cubic"
    C = 0.4
    BETA = 0.7
    ALPHA = 3 * (1 - BETA) / (1 + BETA)  # RFC 9438 4.3

    def __init__(self, mss, initial_window):
        self.mss = mss
        self.cwnd = initial_window
        self.ssthresh = 1 << 30
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

    def on_ack(self, acked, now, srtt):
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, SLOW_START_L * self.mss)
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


def make(name, mss, initial_window):
    """A congestion controller by name; ValueError for unknown names."""
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown congestion control {name!r} (have {sorted(ALGORITHMS)})") from None
    return cls(mss, initial_window)
