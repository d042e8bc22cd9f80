"""Retransmission timeout estimation (RFC 6298).

Theory of operation: the connection feeds RTT samples (`sample`) from segments that
were never retransmitted (Karn's algorithm, RFC 6298 section 3, MUST-18) or from
echoed timestamps (RFC 7323 section 4); the estimator keeps SRTT and RTTVAR and
derives RTO (section 2). On a retransmission timeout the connection calls `backoff`
(section 5.5, exponential backoff, MUST-19); a new valid sample recomputes RTO from
the estimates, which ends the backoff. RTO is clamped to [min_rto, max_rto]
(sections 2.4 and 2.5). All times are in seconds.
"""

ALPHA = 1 / 8
BETA = 1 / 4
K = 4


class RttEstimator:
    """SRTT/RTTVAR/RTO state of one connection.

    `min_rto` defaults to 1 s as RFC 6298 2.4 recommends; `granularity` is the clock
    granularity G of section 2 (the owner's timer resolution).
    """

    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto", "granularity", "backoffs", "min_rtt")

    def __init__(self, initial_rto=1.0, min_rto=1.0, max_rto=60.0, granularity=0.001):
        self.srtt = None
        self.rttvar = None
        self.min_rtt = None  # the smallest sample seen (RACK's min_RTT, RFC 8985 6.2)
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.rto = self._clamp(initial_rto)  # RFC 6298 2.1
        self.backoffs = 0

    def _clamp(self, rto):
        return min(max(rto, self.min_rto), self.max_rto)

    def sample(self, r):
        """Take an RTT measurement `r` (seconds); RFC 6298 sections 2.2 and 2.3."""
        if r < 0:
            return
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
            self.min_rtt = r
        else:
            if r < self.min_rtt:
                self.min_rtt = r
            srtt = self.srtt
            self.rttvar = (1 - BETA) * self.rttvar + BETA * (srtt - r if srtt > r else r - srtt)
            self.srtt = (1 - ALPHA) * srtt + ALPHA * r
        # (`_clamp` and `max`, inline without builtin calls: a sample per ACK)
        var = K * self.rttvar
        rto = self.srtt + (var if var > self.granularity else self.granularity)
        if rto < self.min_rto:
            rto = self.min_rto
        self.rto = rto if rto < self.max_rto else self.max_rto
        self.backoffs = 0

    def backoff(self):
        """Double RTO after a retransmission timeout (RFC 6298 5.5), up to max_rto."""
        self.rto = min(self.rto * 2, self.max_rto)
        self.backoffs += 1

    def reset_after_syn_timeout(self):
        """RFC 6298 5.7: a SYN was retransmitted, so use 3 s once data flows, unless sampled."""
        if self.srtt is None:
            self.rto = self._clamp(3.0)
