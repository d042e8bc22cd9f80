"""A Linux kernel as a network peer: a TAP whose kernel side lives in a private namespace.

`KernelPeer` is what shoal's tests (and benchmarks) use to talk to a real TCP/IP
implementation without touching the host's network::

    with KernelPeer() as peer:              # tap "shoalXXXXXXXX", netns "shoal-XXXXXXXX"
        dev = peer.device                   # shoal's end: a TapDevice (fd in our namespace)
                                            # (with queues=N: peer.devices, one per queue, steered)
        peer.run(["ping", "-c1", peer.shoal_ip])   # runs inside the namespace

It creates a uniquely named TAP (shoal keeps the descriptor), a uniquely named
network namespace, moves the tap's kernel side into the namespace (the descriptor
keeps working from the root namespace), brings it and ``lo`` up, disables IPv6
there (no router solicitations or DAD noise on the wire) and gives it
``<subnet>.1/24``; shoal is meant to take ``<subnet>.2``. Nothing is configured in
the root namespace, so no traffic can leave the machine. `close` (or leaving the
``with``) stops processes started through `popen`, closes the tap and deletes the
namespace, even after failures.

With ``open_device=False`` the tap is left to a shoal process started by the test
(``--tap-device peer.ifname``); once it is up (`interface_up`: shoal's apps bring it up
last, a program that does not can be waited for with `interface_exists`), `adopt` moves
it into the namespace and configures it. `start_shoal` does all of that for an app
run as ``python -m ...``, and `stop_process` stops it.

Needs root, ``/dev/net/tun`` and iproute2; `unavailable()` says why not.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

from shoal.drivers.tap import IFF_UP, TapDevice


def unavailable():
    """None when kernel-peer tests can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (TAP devices and network namespaces)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


def stop_process(proc, grace=30):
    """SIGTERM `proc` (by its PID), SIGKILL it after `grace` seconds; what it printed
    that was not read yet (when its output is a text pipe), for failure messages."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout is not None else ""


class KernelPeer:
    """A TAP device for shoal plus the kernel on its far side, in a namespace of its own."""

    def __init__(self, subnet="10.213.7", mtu=1500, mac=None, open_device=True, queues=1):
        token = os.urandom(4).hex()
        self.namespace = f"shoal-{token}"
        self.ifname = f"shoal{token}"
        self.subnet = subnet
        self.kernel_ip = f"{subnet}.1"
        self.shoal_ip = f"{subnet}.2"
        self.mtu = mtu
        self._procs = []
        self.devices = []
        self.device = None
        self._ns_made = False
        try:
            self._ip("netns", "add", self.namespace)
            self._ns_made = True
            self.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            self.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            self._ip("-n", self.namespace, "link", "set", "lo", "up")
            if open_device:
                self.devices = TapDevice.open_queues(self.ifname, queues, mac=mac, mtu=mtu, up=False)
                self.device = self.devices[0]
                self.adopt()
        except BaseException:
            self.close()
            raise

    def adopt(self):
        """Move the tap `ifname` (made by us, or by a shoal process told that name) into the
        namespace and configure the kernel's side of the link there."""
        self._ip("link", "set", self.ifname, "netns", self.namespace)
        self._ip("-n", self.namespace, "addr", "add", f"{self.kernel_ip}/24", "dev", self.ifname)
        self._ip("-n", self.namespace, "link", "set", self.ifname, "mtu", str(self.mtu), "up")

    def interface_exists(self):
        """True once the tap `ifname` exists in the root namespace (a process created it)."""
        return os.path.exists(f"/sys/class/net/{self.ifname}")

    def interface_up(self):
        """True once the tap `ifname` is up in the root namespace: a shoal process created it,
        and brings it up after it has attached every queue and made its last call that
        names it (`TapDevice.bring_up`)."""
        try:
            with open(f"/sys/class/net/{self.ifname}/flags") as f:
                return bool(int(f.read(), 16) & IFF_UP)
        except OSError:
            return False

    def start_shoal(self, args, timeout=60):
        """Start ``python ARGS --tap-device IFNAME`` (a shoal app on the native stack) in the
        root namespace, wait (bounded) until it has brought the tap up, and `adopt` the tap.
        Moved earlier, between the app's creating the tap and its last calls that name the
        interface (its MTU, its other queues), it would vanish from under the app. The
        process's output is a text pipe; stop it with `stop_process`."""
        proc = subprocess.Popen([sys.executable, *args, "--tap-device", self.ifname],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + timeout
        while not self.interface_up():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not bring tap {self.ifname} up:\n{stop_process(proc)}")
            time.sleep(0.05)
        self.adopt()
        return proc

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def command(self, argv):
        """`argv` wrapped to run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv, check=True, timeout=60, **kw):
        """Run `argv` in the namespace to completion (text output captured)."""
        return subprocess.run(self.command(argv), check=check, timeout=timeout, capture_output=True, text=True,
                              **kw)

    def popen(self, argv, **kw):
        """Start `argv` in the namespace; it is stopped by `close` if still running."""
        proc = subprocess.Popen(self.command(argv), **kw)
        self._procs.append(proc)
        return proc

    def close(self):
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []
        for device in self.devices:
            device.close()
        self.devices = []
        self.device = None
        if self._ns_made:
            subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
            self._ns_made = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
