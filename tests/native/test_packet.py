"""Packet: headroom prepends, zero-copy fragments, linearize, slicing and the release hook."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.packet import DEFAULT_HEADROOM, Packet


def test_prepend_writes_headers_in_front_without_copying_payload():
    payload = bytearray(b"payload")
    p = Packet(payload)
    struct.pack_into("!I", p.buf, p.prepend(4), 0xDEADBEEF)
    struct.pack_into("!H", p.buf, p.prepend(2), 0x0102)
    assert len(p) == 13 and p.header_len == 6
    assert bytes(p.linearize()) == b"\x01\x02\xde\xad\xbe\xefpayload"
    payload[0:1] = b"P"  # the payload fragment is a view, not a copy
    assert bytes(p.linearize()).endswith(b"Payload")


def test_prepend_beyond_headroom_grows_header_region():
    p = Packet(b"xy", headroom=4)
    p.buf[p.prepend(3) : p.head + 3] = b"abc"
    off = p.prepend(10)
    p.buf[off : off + 10] = b"0123456789"
    assert bytes(p.linearize()) == b"0123456789abcxy"


def test_linearize_returns_views_when_already_contiguous():
    data = bytearray(b"frame")
    rx = Packet.wrap(memoryview(data))
    lin = rx.linearize()
    assert isinstance(lin, memoryview) and lin.obj is data
    hdr_only = Packet()
    hdr_only.buf[hdr_only.prepend(2) :] = b"hi"
    assert hdr_only.linearize().obj is hdr_only.buf
    assert bytes(Packet().linearize()) == b""


def test_views_lists_header_then_fragments():
    p = Packet(b"aa")
    p.append(b"bb")
    p.append(b"")
    p.buf[p.prepend(1)] = 0x7A
    assert [bytes(v) for v in p.views()] == [b"z", b"aa", b"bb"]
    assert len(p) == 5


def test_views_of_headers_that_fill_the_headroom_start_with_the_region_itself():
    """TCP's segments get headroom for exactly their headers (`TcpLayer.send_segment`): the
    views start with `buf` itself, no view made per frame. Without headers, only fragments."""
    p = Packet(b"data", headroom=4)
    p.buf[p.prepend(4):4] = b"head"
    views = p.views()
    assert views[0] is p.buf and [bytes(v) for v in views] == [b"head", b"data"]
    assert [bytes(v) for v in Packet(b"xy", headroom=0).views()] == [b"xy"]
    assert [bytes(v) for v in Packet.wrap(b"frame").views()] == [b"frame"]


def test_release_hook_runs_once_after_last_holder():
    calls = []
    p = Packet.wrap(memoryview(b"frame"), release=lambda: calls.append(1))
    p.hold()
    p.release()
    assert calls == [] and p.refs == 1
    p.release()
    assert calls == [1] and p.refs == 0 and p.frags == []
    with pytest.raises(RuntimeError):
        p.release()
    assert calls == [1]


def test_slice_shares_bytes_and_keeps_parent_alive():
    calls = []
    p = Packet(b"0123456789", release=lambda: calls.append("parent"))
    off = p.prepend(2)
    p.buf[off : off + 2] = b"HH"
    s = p.slice(1, 6)
    assert bytes(s.linearize()) == b"H0123"
    assert s.header_len == 0 and s.head == DEFAULT_HEADROOM
    p.release()
    assert calls == []  # the slice still holds the parent
    s.release()
    assert calls == ["parent"]


@settings(deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=6), st.binary(max_size=30), st.data())
def test_slice_matches_bytes(frags, header, data):
    p = Packet(headroom=8)
    for f in frags:
        p.append(f)
    if header:
        off = p.prepend(len(header))
        p.buf[off : off + len(header)] = header
    whole = header + b"".join(frags)
    assert bytes(p.linearize()) == whole and len(p) == len(whole)
    start = data.draw(st.integers(0, len(whole)))
    stop = data.draw(st.integers(start, len(whole)))
    s = p.slice(start, stop)
    assert bytes(s.linearize()) == whole[start:stop] and len(s) == stop - start


def test_wrap_always_has_a_first_fragment():
    p = Packet.wrap(b"")
    assert len(p.frags) == 1 and len(p) == 0 and bytes(p.linearize()) == b""
