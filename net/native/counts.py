"""`Counts`: the event counters the native stack's layers keep (drops by reason, segments).

A `collections.Counter` in all but speed. Counter defines ``__delitem__`` in Python, and
since a type's item assignment and deletion share one slot, every ``counts[key] += 1``
then stores through a Python-level lookup, at twice a dict's cost (79 against 38 ns
here). The per-segment paths count several events per segment, so `Counts` takes
dict's own assignment and deletion back; deleting a key that is not there raises
`KeyError`, as for a dict. The rest (missing keys read as 0 without being added,
`update` adding, `most_common`) is Counter's.
"""
from collections import Counter


class Counts(Counter):
    """Event counts by name (see the module docstring)."""

    __slots__ = ()
    __setitem__ = dict.__setitem__
    __delitem__ = dict.__delitem__
