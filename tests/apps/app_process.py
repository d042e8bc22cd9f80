"""A demo app run as a process the way a user runs it, for the app tests.

`AppProcess` starts ``python -m shoal.apps.NAME ...`` on a free loopback port,
waits (with a generous bound, never a fixed sleep) until `ready()` says it
answers, or until it prints `banner`, and stops it by its PID with SIGTERM,
returning the exit status and everything it printed.
"""
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import time

STARTUP_S = 90
LOCAL = "127.0.0.1"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


def accepts(port):
    """Whether a TCP connection to the port on loopback succeeds now."""
    try:
        socket.create_connection((LOCAL, port), timeout=5).close()
        return True
    except OSError:
        return False


class AppProcess:
    def __init__(self, app, port, *options, ready=None, banner=None):
        """`banner`: bytes the app prints once every shard listens. A port that accepts says
        only that one shard does: a UDP flow begun then may meet the others' sockets join
        the port's SO_REUSEPORT group, and its next datagrams go to another shard."""
        self.port = port
        self._head = b""  # output read while waiting for the banner
        cmd = [sys.executable, "-m", f"shoal.apps.{app}", "--address", LOCAL, "--port", str(port), *options]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if banner is not None:
            ready = functools.partial(self._printed, banner)
        ready = ready or (lambda: accepts(port))
        deadline = time.monotonic() + STARTUP_S
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{app} did not start:\n{(self._head + self.proc.stdout.read()).decode()}")
            time.sleep(0.05)

    def _printed(self, banner):
        """Whether the output so far holds `banner` (reads what is there, never waits)."""
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._head += chunk
        return banner in self._head

    def stop(self):
        """SIGTERM by PID; the exit status and the output."""
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=STARTUP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, (self._head + out).decode()

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()
