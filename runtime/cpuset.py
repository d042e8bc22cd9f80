"""Core masks: parse ``--cpuset 0-3,6`` and choose the cores the shards are pinned to."""
import os


def parse_cpuset(text):
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``. ValueError with the offending part otherwise."""
    cpus = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty element in cpuset {text!r}")
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"bad cpuset element {part!r} in {text!r} (expected N or N-M)") from None
        if first < 0 or last < first:
            raise ValueError(f"bad cpu range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpuset(cpus):
    """The inverse of `parse_cpuset`, with ranges collapsed."""
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def choose_cpus(smp=None, cpuset=None, overprovisioned=False, allowed=None):
    """The core of each shard, in shard order.

    `cpuset` decides which cores (default: every core this process may run on),
    `smp` how many shards. More shards than cores is refused unless
    `overprovisioned`, in which case shards share the cores round-robin."""
    allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if cpuset is not None:
        cpus = parse_cpuset(cpuset) if isinstance(cpuset, str) else sorted(set(cpuset))
        if not cpus:
            raise ValueError("--cpuset names no cpu")
        missing = [c for c in cpus if c not in allowed]
        if missing:
            raise ValueError(f"cpuset {format_cpuset(cpus)} names cpu {format_cpuset(missing)}, which this process "
                             f"may not run on (allowed: {format_cpuset(allowed)})")
    else:
        cpus = allowed
    if smp is None:
        return list(cpus)
    if smp < 1:
        raise ValueError(f"--smp must be at least 1, not {smp}")
    if smp > len(cpus) and not overprovisioned:
        raise ValueError(f"--smp {smp} needs {smp} cpus but only {len(cpus)} are available "
                         f"({format_cpuset(cpus)}); pass --overprovisioned to share cpus between shards")
    return [cpus[i % len(cpus)] for i in range(smp)]
