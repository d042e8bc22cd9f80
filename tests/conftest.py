"""Suite-wide guards: no test may leave shared-memory segments or child processes behind."""
import os
from multiprocessing import resource_tracker

import psutil
import pytest

# The first shared-memory segment a process makes starts multiprocessing's resource tracker, a
# child that outlives the test. It is started without waiting for its exec, so for a moment it
# shows this process's command line and the filter below cannot tell it apart: start it here,
# before any test, so that it is in every test's baseline.
resource_tracker.ensure_running()


def _our_segments():
    prefix = f"shoal-{os.getpid()}-"
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaks a /dev/shm segment or a child process of this one."""
    segments = _our_segments()
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    leaked = _our_segments() - segments
    assert not leaked, f"leaked shared memory segments: {sorted(leaked)}"
    left = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in children:
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(proc.cmdline()):
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    assert not left, f"leaked child processes: {[(p.pid, p.name()) for p in left]}"
