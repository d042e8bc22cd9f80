"""HttpSession, the httpd's per-connection request handling, without sockets."""
import os
import weakref

import pytest

from shoal.apps.httpd import HELLO_BODY, HttpSession, DateCache, _FileBody

REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def dates():
    d = DateCache(clock=lambda: 784111777)   # RFC 9110's example date
    d.refresh()
    return d


def responses(session):
    out = list(session.responses)
    session.release()
    return out


def test_date_header_follows_the_injected_clock():
    now = [784111777.2]
    d = DateCache(clock=lambda: now[0])
    d.refresh()
    assert d.value == b"Sun, 06 Nov 1994 08:49:37 GMT"
    now[0] += 1
    d.refresh()
    assert d.value == b"Sun, 06 Nov 1994 08:49:38 GMT"
    assert b"Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n" in d.hello[True]


def test_byte_at_a_time_gives_one_response(dates):
    s = HttpSession(None, dates)
    for i in range(len(REQ)):
        s.feed(REQ[i:i + 1])
    (resp,) = responses(s)
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and resp.endswith(HELLO_BODY)
    assert b"Connection: close" not in resp and not s.close_after


def test_pipelined_requests_in_one_feed_keep_their_order(dates, tmp_path):
    (tmp_path / "f.txt").write_bytes(b"file")
    s = HttpSession(str(tmp_path), dates)
    s.feed(REQ + b"GET /f.txt HTTP/1.1\r\n\r\n" + b"HEAD / HTTP/1.1\r\n\r\n" + REQ)
    out = s.responses
    assert out[0].endswith(HELLO_BODY)
    assert out[1].startswith(b"HTTP/1.1 200") and b"Content-Length: 4\r\n" in out[1]
    assert isinstance(out[2], _FileBody) and out[2].size == 4
    assert out[3].endswith(b"\r\n\r\n") and b"Content-Length: 14" in out[3]   # HEAD: no body
    assert out[4].endswith(HELLO_BODY)
    assert len(out) == 5
    s.release()


def test_nothing_is_answered_after_connection_close(dates):
    s = HttpSession(None, dates)
    s.feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + REQ)
    (resp,) = responses(s)
    assert b"Connection: close\r\n" in resp and s.close_after


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.1\r\nHost x\r\n\r\n", b"\x00\x01\x02\r\n\r\n",
                                 b"GET / HTTP/9.9x\r\n\r\n"])
def test_malformed_gives_400_and_close(dates, bad):
    s = HttpSession(None, dates)
    s.feed(bad)
    (resp,) = responses(s)
    assert resp.startswith(b"HTTP/1.1 400 ") and s.close_after


def test_header_limit_gives_431_even_before_the_headers_end(dates):
    s = HttpSession(None, dates, max_header_bytes=100)
    s.feed(b"GET / HTTP/1.1\r\nX-A: " + b"a" * 60)
    assert not s.responses
    s.feed(b"a" * 60)                         # a header line that does not end
    assert not s.responses
    s.feed(b"a" * 60)
    (resp,) = responses(s)
    assert resp.startswith(b"HTTP/1.1 431 ") and s.close_after


def test_header_limit_counts_completed_lines_exactly(dates):
    s = HttpSession(None, dates, max_header_bytes=100)
    s.feed(b"GET / HTTP/1.1\r\n" + b"X-A: 12345678\r\n" * 10)
    (resp,) = responses(s)
    assert resp.startswith(b"HTTP/1.1 431 ")


def test_limit_is_per_request(dates):
    s = HttpSession(None, dates, max_header_bytes=100)
    for _ in range(20):                       # 20 small requests: far more than 100 bytes in all
        s.feed(REQ)
    assert len(responses(s)) == 20 and not s.close_after


def test_files_stay_under_root(dates, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.txt").write_bytes(b"ok")
    (tmp_path / "secret").write_bytes(b"no")
    os.symlink(tmp_path / "secret", root / "link")
    s = HttpSession(str(root), dates)
    assert s._open(b"/ok.txt")[1] == 2
    os.close(s._open(b"/ok.txt")[0])
    for path in (b"/../secret", b"/%2e%2e/secret", b"/link", b"/", b"/ok.txt%00", b"/%ff"):
        assert s._open(path) is None, path
    assert HttpSession(None, dates)._open(b"/ok.txt") is None


def test_a_released_session_goes_without_the_garbage_collector(dates):
    """The parser refers back to its session; `release` (the end of every connection)
    breaks that cycle, so reference counting frees the session at once."""
    s = HttpSession(None, dates)
    s.feed(REQ)
    s.release()
    gone = weakref.ref(s)
    del s
    assert gone() is None
