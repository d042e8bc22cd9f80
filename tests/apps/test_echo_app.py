"""shoal echo as a process: TCP and UDP (--udp), both reactor backends, 1 and 2 shards.

The server is awaited until it answers (generous bound) and stopped by its PID
with SIGTERM, after which it must exit with status 0.
"""
import os
import socket
import subprocess
import sys

import pytest
from app_process import LOCAL, STARTUP_S, AppProcess, free_port

IO_S = 30


def udp_ask(port, payload, timeout):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (LOCAL, port))
        return s.recvfrom(65536)[0]


class Echo(AppProcess):
    def __init__(self, *options, udp=False):
        port = free_port(socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        super().__init__("echo", port, *(["--udp"] if udp else []), *options,
                         ready=(lambda: self._udp_answers(port)) if udp else None)
        self.udp = udp

    @staticmethod
    def _udp_answers(port):
        try:
            return udp_ask(port, b"?", 0.2) == b"?"
        except OSError:
            return False


CONFIGS = [("asyncio", 1), ("uvloop", 1), ("asyncio", 2), ("uvloop", 2)]
IDS = [f"{b}-smp{n}" for b, n in CONFIGS]


@pytest.fixture(params=CONFIGS, ids=IDS)
def options(request):
    backend, shards = request.param
    return ["--reactor-backend", backend, "--smp", str(shards), "--overprovisioned",
            "--network-stack", "posix"]


def stop_cleanly(server):
    code, out = server.stop()
    assert code == 0, out
    assert "Traceback" not in out, out


def test_tcp_echo_many_connections_and_half_close(options):
    server = Echo(*options)
    try:
        socks = [socket.create_connection((LOCAL, server.port), timeout=IO_S) for _ in range(8)]
        payload = os.urandom(300_000)
        for s in socks:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)           # the server echoes the rest, then closes
        for s in socks:
            got = bytearray()
            while data := s.recv(65536):
                got += data
            assert bytes(got) == payload
            s.close()
    finally:
        stop_cleanly(server)


def test_udp_echo(options):
    server = Echo(*options, udp=True)
    try:
        for size in (1, 1000, 8000):
            payload = os.urandom(size)
            assert udp_ask(server.port, payload, IO_S) == payload
    finally:
        stop_cleanly(server)


def test_port_in_use_fails_with_the_address():
    with socket.socket() as holder:
        holder.bind((LOCAL, 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--address", LOCAL,
                              "--port", str(port), "--smp", "1"],
                             capture_output=True, text=True, timeout=STARTUP_S)
    assert out.returncode != 0
    assert f"{LOCAL}:{port}" in out.stderr and "Address already in use" in out.stderr
