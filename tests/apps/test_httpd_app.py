"""shoal httpd as a process, driven by curl, wrk, http.client and raw sockets.

Each server runs as ``python -m shoal.apps.httpd`` on a free loopback port,
on both reactor backends and with one and two shards; it is awaited until it
accepts (generous bound), and stopped by its PID with SIGTERM, after which it
must exit with status 0.
"""
import hashlib
import http.client
import os
import re
import select
import shutil
import socket
import subprocess

import pytest
from app_process import LOCAL, AppProcess, free_port

IO_S = 30
HELLO = b"Hello, World!\n"


class Httpd(AppProcess):
    def __init__(self, root, *options):
        super().__init__("httpd", free_port(), "--root", str(root), *options)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("httpd")
    root = base / "www"
    (root / "sub").mkdir(parents=True)
    (root / "small.txt").write_bytes(b"small file\n")
    (root / "sub" / "page.html").write_bytes(b"<p>hi</p>\n")
    (root / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024 + 17))
    (base / "secret.txt").write_bytes(b"do not serve\n")
    (root / "escape").symlink_to(base / "secret.txt")
    return root


CONFIGS = [("asyncio", 1), ("uvloop", 1), ("asyncio", 2), ("uvloop", 2)]


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{b}-smp{n}" for b, n in CONFIGS])
def httpd(request, site):
    backend, shards = request.param
    server = Httpd(site, "--reactor-backend", backend, "--smp", str(shards), "--overprovisioned")
    yield server
    code, out = server.stop()
    assert code == 0, out
    assert "Traceback" not in out, out


def raw_exchange(port, request, until_closed=True):
    with socket.create_connection((LOCAL, port), timeout=IO_S) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if not until_closed and b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_curl_get_root(httpd):
    out = subprocess.run(["curl", "-sS", "-i", f"http://{LOCAL}:{httpd.port}/"],
                         capture_output=True, timeout=IO_S, check=True).stdout
    head, body = out.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: 14" in head and b"Date: " in head
    assert body == HELLO


def test_http_client_keep_alive_session(httpd, site):
    conn = http.client.HTTPConnection(LOCAL, httpd.port, timeout=IO_S)
    try:
        for path, status, body in [("/", 200, HELLO), ("/small.txt", 200, b"small file\n"),
                                   ("/sub/page.html", 200, b"<p>hi</p>\n"),
                                   ("/missing", 404, None), ("/", 200, HELLO)]:
            conn.request("GET", path)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == status, path
            if body is not None:
                assert data == body
            assert resp.getheader("Content-Length") == str(len(data))
        assert conn.sock is not None             # still the same persistent connection
        conn.request("HEAD", "/small.txt")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == "11"
        assert resp.read() == b""
        assert resp.getheader("Content-Type") == "text/plain"
        conn.request("POST", "/", body=b"data")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(httpd):
    request = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = raw_exchange(httpd.port, request)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", out)
    assert statuses == [b"200", b"200", b"404", b"200"]
    assert out.index(HELLO) < out.index(b"small file\n") < out.index(b"Not Found")
    assert out.endswith(HELLO)


def test_http_1_0_closes_unless_keep_alive(httpd):
    out = raw_exchange(httpd.port, b"GET / HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in out
    with socket.create_connection((LOCAL, httpd.port), timeout=IO_S) as s:
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            reply = b""
            while not reply.endswith(HELLO):
                data = s.recv(65536)
                assert data, "closed a keep-alive HTTP/1.0 connection"
                reply += data
            assert b"Connection: keep-alive" in reply


def test_malformed_request_gets_400_and_close(httpd):
    out = raw_exchange(httpd.port, b"GARBAGE / WHAT\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in out


def test_oversized_headers_get_431(httpd):
    big = b"X-Filler: " + b"a" * 10000 + b"\r\n"
    out = raw_exchange(httpd.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    # also while a header line keeps growing and never ends
    with socket.create_connection((LOCAL, httpd.port), timeout=IO_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\nX-More: ")
        for _ in range(1000):                    # bounded: 1 MB at most
            s.sendall(b"b" * 1000)
            if select.select([s], [], [], 0.01)[0]:
                break
        assert s.recv(65536).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("path", [b"/../secret.txt", b"/%2e%2e/secret.txt", b"/sub/../../secret.txt",
                                  b"/escape", b"/..%2fsecret.txt", b"/sub", b"/small.txt%00"])
def test_no_path_traversal(httpd, path):
    out = raw_exchange(httpd.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"do not serve" not in out
    assert out.startswith(b"HTTP/1.1 404") or out.startswith(b"HTTP/1.1 400"), out[:40]


def test_large_file_streams_intact(httpd, site, tmp_path):
    dest = tmp_path / "big.out"
    out = subprocess.run(["curl", "-sS", "-D", "-", "-o", str(dest),
                          f"http://{LOCAL}:{httpd.port}/big.bin"],
                         capture_output=True, timeout=120, check=True).stdout
    size = (site / "big.bin").stat().st_size
    assert f"Content-Length: {size}".encode() in out
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(
        (site / "big.bin").read_bytes()).digest()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_short_run_has_no_errors(httpd):
    out = subprocess.run(["wrk", "-t1", "-c16", "-d2s", f"http://{LOCAL}:{httpd.port}/"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
