"""32-bit TCP sequence numbers with wraparound (RFC 9293 section 3.4; RFC 1982 style).

`Seq` is an int in [0, 2**32). Adding or subtracting an int wraps modulo 2**32 and
gives a `Seq`; subtracting two `Seq` gives the signed distance (an int in
[-2**31, 2**31)); comparisons order by that distance, so ``Seq(2**32 - 1) < Seq(3)``.
Comparing numbers more than 2**31 apart is meaningless, as in the RFC: TCP keeps
every window far below that.

Each `Seq` operation is a Python-level call, and a segment's processing needs dozens,
so the connection's per-segment paths (header prediction, the transmit pull, ACK
processing) apply the same rules to plain ints instead: ``(a - b) & MASK`` is how far a
lies after b, "a < b" is that distance being ``>= HALF``, `signed_distance` is
``Seq - Seq``. The connection keeps its hottest variables as plain ints behind
`seq_attribute`s, so those paths neither unwrap (``x.real`` is the plain int of a `Seq`)
nor wrap (`as_seq`) them. Everything else uses `Seq`.
"""

from functools import partial

MASK = 0xFFFFFFFF
HALF = 0x80000000
_new = int.__new__

# Speed: these run tens of times per segment. ``x.real`` is the plain int behind an int
# (or a Seq), so the arithmetic below runs on plain ints at C speed, with no detour
# through Seq's own operators and no ``int.__sub__`` slot-wrapper calls.


class Seq(int):
    """A sequence number; see the module docstring for the arithmetic.

    Comparisons look at d = (self - other) mod 2**32: self < other when d is in the
    upper half [2**31, 2**32), the same convention as the signed distance.
    """

    __slots__ = ()

    def __new__(cls, value):
        return _new(cls, value & MASK)

    def __add__(self, n):
        return _new(Seq, (self.real + n) & MASK)

    __radd__ = __add__

    def __sub__(self, other):
        d = (self.real - other.real) & MASK
        if type(other) is Seq:
            return d - 0x100000000 if d >= HALF else d
        return _new(Seq, d)

    def __lt__(self, other):
        return ((self.real - other.real) & MASK) >= HALF

    def __le__(self, other):
        d = (self.real - other.real) & MASK
        return d == 0 or d >= HALF

    def __gt__(self, other):
        return 0 < ((self.real - other.real) & MASK) < HALF

    def __ge__(self, other):
        return ((self.real - other.real) & MASK) < HALF

    def __eq__(self, other):
        return self.real == other.real & MASK if isinstance(other, int) else NotImplemented

    def __ne__(self, other):
        return self.real != other.real & MASK if isinstance(other, int) else NotImplemented

    __hash__ = int.__hash__

    def __repr__(self):
        return f"Seq({int(self)})"

    def in_window(self, start, size):
        """True if start <= self < start + size (RFC 9293 3.10.7.4 acceptability)."""
        return 0 <= self - Seq(start) < size


as_seq = partial(_new, Seq)
"""`Seq` of an int already in [0, 2**32), built without masking or a Python-level call
(for the plain-int paths described in the module docstring)."""


def seq_attribute(plain):
    """A class attribute read and written as a `Seq` and kept as the plain int attribute
    `plain` of the instance. Code that runs for every segment uses `plain` directly (no
    ``.real`` to take, no `Seq` to make: about 370 and 1,300 CPU instructions each);
    everything else keeps the `Seq` rules by using the attribute itself."""
    def get(self):
        return _new(Seq, getattr(self, plain))

    def set(self, value):
        setattr(self, plain, value & MASK)

    return property(get, set, doc=f"`Seq` view of ``{plain}``")


def signed_distance(d):
    """``Seq - Seq`` for plain ints: the signed distance in [-2**31, 2**31) that the int
    difference `d` of two sequence numbers stands for, modulo 2**32."""
    d &= MASK
    return d - 0x100000000 if d >= HALF else d


def seq_max(a, b):
    """The later of two sequence numbers."""
    return a if a >= b else b


def seq_min(a, b):
    """The earlier of two sequence numbers."""
    return a if a <= b else b
