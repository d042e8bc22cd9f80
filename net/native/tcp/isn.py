"""Initial sequence numbers (RFC 6528; RFC 9293 section 3.4.1).

ISN = M + F(localip, localport, remoteip, remoteport, secretkey), where M is a timer
that ticks every 4 microseconds (MUST-8, the clock-driven component) and F is a
keyed pseudorandom function (SHLD-1): here BLAKE2s keyed with a secret the owner
injects, so F cannot be computed from outside the host (MUST-9). The same PRF
keys the SYN cookies of `listener`. The clock is the `now` passed in (seconds).
"""
import hashlib
import struct

_TUPLE = struct.Struct("!IHIH")


class IsnGenerator:
    """RFC 6528 generator. `secret` is at least 16 random bytes from the owner."""

    __slots__ = ("_secret",)

    def __init__(self, secret):
        if len(secret) < 16:
            raise ValueError("ISN secret must be at least 16 bytes")
        self._secret = bytes(secret[:32])

    def prf(self, data):
        """32-bit keyed PRF of `data` (BLAKE2s, key = the secret)."""
        return int.from_bytes(hashlib.blake2s(data, key=self._secret, digest_size=4).digest(), "big")

    def __call__(self, local_ip, local_port, remote_ip, remote_port, now):
        """The ISN for a connection identified by its 4-tuple, at time `now` (seconds)."""
        m = int(now * 250_000)  # one tick per 4 us
        f = self.prf(_TUPLE.pack(local_ip, local_port, remote_ip, remote_port))
        return (m + f) & 0xFFFFFFFF
