"""`Counts`: Counter's behaviour, dict's item assignment."""
from collections import Counter

import pytest

from shoal.net.native.counts import Counts


def test_counts_behave_as_a_counter():
    counts = Counts()
    assert counts["never"] == 0 and "never" not in counts  # reading inserts nothing
    counts["segments"] += 1
    counts["segments"] += 2
    counts.update(Counts(segments=1, drops=4))  # update adds, as Counter's does
    counts.update({"drops": 1})
    assert counts == Counter(segments=4, drops=5)
    assert counts.most_common(1) == [("drops", 5)]
    retired = Counter()
    retired.update(counts)  # (as the TCP layer folds a closed connection's counts into its own)
    assert retired == {"segments": 4, "drops": 5}


def test_counts_store_through_dicts_own_slot():
    # Counter's Python-level __delitem__ would route every store through Python (the
    # reason for the class); deleting a missing key is then a dict's KeyError
    assert Counts.__setitem__ is dict.__setitem__ and Counts.__delitem__ is dict.__delitem__
    counts = Counts(a=1)
    del counts["a"]
    with pytest.raises(KeyError):
        del counts["a"]
