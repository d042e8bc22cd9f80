"""The memcached text-protocol parser and reply builders (apps/memcached/protocol.py).

Golden requests, every error string, truncation, impossible lengths, oversized
values, pipelining, and the property that any chunking of the input gives the same
events as the whole input.
"""
import pytest
from hypothesis import given, settings, strategies as st

from shoal.apps.memcached.protocol import (
    BAD_CHUNK, BAD_DELETE, BAD_DELTA, BAD_EXPTIME, BAD_FORMAT, ERROR, LINE_TOO_LONG,
    Invalid, Parser, ProtocolError, Request, UdpHeader, build_udp_header, number_reply,
    parse_udp_header, split_udp_reply, stats_block, value_block,
)


def parse(data, **kw):
    parser = Parser(**kw)
    parser.feed(data)
    return parser.events()


def one(data, **kw):
    events = parse(data, **kw)
    assert len(events) == 1, events
    return events[0]


# -- golden requests -----------------------------------------------------------------

def test_set_golden():
    assert one(b"set k 5 100 3\r\nabc\r\n") == Request("set", (b"k",), flags=5, exptime=100, value=b"abc")


@pytest.mark.parametrize("command", ["set", "add", "replace", "append", "prepend"])
def test_storage_commands_with_noreply(command):
    line = f"{command} key 1 2 2 noreply\r\nhi\r\n".encode()
    assert one(line) == Request(command, (b"key",), flags=1, exptime=2, value=b"hi", noreply=True)


def test_cas_golden():
    assert one(b"cas k 0 0 1 42\r\nx\r\n") == Request("cas", (b"k",), value=b"x", cas=42)
    assert one(b"cas k 0 0 1 42 noreply\r\nx\r\n").noreply


def test_binary_safe_value_with_crlf_inside():
    value = bytes(range(256)) + b"\r\nset x 0 0 1\r\n"
    req = one(b"set k 0 0 %d\r\n" % len(value) + value + b"\r\n")
    assert req.value == value


def test_zero_length_value():
    assert one(b"set k 0 0 0\r\n\r\n").value == b""


def test_negative_exptime_is_accepted_by_the_parser():
    assert one(b"set k 0 -1 1\r\nx\r\n").exptime == -1


def test_bare_newline_is_accepted_as_line_end():
    assert one(b"get a\n") == Request("get", (b"a",))


def test_multiple_spaces_between_tokens():
    assert one(b"get  a   b \r\n") == Request("get", (b"a", b"b"))


@pytest.mark.parametrize("command", ["get", "gets"])
def test_multi_get(command):
    assert one(f"{command} a b c\r\n".encode()) == Request(command, (b"a", b"b", b"c"))


@pytest.mark.parametrize("command", ["gat", "gats"])
def test_gat(command):
    assert one(f"{command} 60 a b\r\n".encode()) == Request(command, (b"a", b"b"), exptime=60)


def test_other_commands_golden():
    assert one(b"delete k\r\n") == Request("delete", (b"k",))
    assert one(b"delete k 0 noreply\r\n") == Request("delete", (b"k",), noreply=True)
    assert one(b"incr k 18446744073709551615\r\n") == Request("incr", (b"k",), delta=2**64 - 1)
    assert one(b"decr k 3 noreply\r\n") == Request("decr", (b"k",), delta=3, noreply=True)
    assert one(b"touch k 10\r\n") == Request("touch", (b"k",), exptime=10)
    assert one(b"flush_all\r\n") == Request("flush_all")
    assert one(b"flush_all 30 noreply\r\n") == Request("flush_all", exptime=30, noreply=True)
    assert one(b"flush_all noreply\r\n") == Request("flush_all", noreply=True)
    assert one(b"version\r\n") == Request("version")
    assert one(b"verbosity 1\r\n") == Request("verbosity", arg=1)
    assert one(b"stats\r\n") == Request("stats")
    assert one(b"stats items\r\n") == Request("stats", arg="items")
    assert one(b"quit\r\n") == Request("quit")


def test_pipelined_requests_come_out_in_order():
    events = parse(b"set a 0 0 1\r\n1\r\nget a\r\ndelete a\r\nbogus\r\nversion\r\n")
    assert [getattr(e, "command", e) for e in events] == ["set", "get", "delete", Invalid(ERROR), "version"]


# -- errors, as memcached 1.6 answers them ---------------------------------------------

@pytest.mark.parametrize("line", [
    b"\r\n", b"GET a\r\n", b"get\r\n", b"gets\r\n", b"bogus\r\n", b"delete\r\n", b"incr a\r\n",
    b"touch a\r\n", b"verbosity\r\n", b"cas a 0 0 1\r\n", b"set a 0 0\r\n", b"verbosity foo bar my\r\n",
    b"stats a b\r\n", b"flush_all 1 2 noreply\r\n", b"incr a 1 2 3\r\n",
])
def test_unknown_or_malformed_commands_answer_error(line):
    assert one(line) == Invalid(ERROR)


@pytest.mark.parametrize("line", [
    b"get " + b"k" * 251 + b"\r\n",
    b"get ok bad\x01key\r\n",
    b"get a\x7fb\r\n",
    b"incr " + b"k" * 251 + b" 1\r\n",
    b"touch a\tb 1\r\n",
    b"verbosity x\r\n",
])
def test_bad_keys_and_fields_answer_bad_format(line):
    assert one(line) == Invalid(BAD_FORMAT)


def test_extra_words_are_ignored_as_memcached_ignores_them():
    assert one(b"version foo bar\r\n") == Request("version")
    assert one(b"quit now\r\n") == Request("quit")
    assert one(b"set a 0 0 1 extra\r\nx\r\n") == Request("set", (b"a",), value=b"x")
    assert one(b"incr a 1 extra\r\n") == Request("incr", (b"a",), delta=1)
    assert one(b"touch a 1 extra\r\n") == Request("touch", (b"a",), exptime=1)
    assert one(b"verbosity 1 2\r\n") == Request("verbosity", arg=1)


def test_verbosity_noreply_alone_is_level_zero():
    assert one(b"verbosity noreply\r\n") == Request("verbosity", arg=0, noreply=True)


def test_key_of_250_bytes_is_accepted():
    assert one(b"get " + b"k" * 250 + b"\r\n").keys == (b"k" * 250,)


@pytest.mark.parametrize("line,reply", [
    (b"incr a x\r\n", BAD_DELTA),
    (b"incr a -1\r\n", BAD_DELTA),
    (b"decr a 18446744073709551616\r\n", BAD_DELTA),
    (b"touch a x\r\n", BAD_EXPTIME),
    (b"gat a\r\n", BAD_EXPTIME),
    (b"gat x a\r\n", BAD_EXPTIME),
    (b"flush_all x\r\n", BAD_EXPTIME),
    (b"delete a 5\r\n", BAD_DELETE),
    (b"delete a 0 0\r\n", BAD_DELETE),
])
def test_argument_errors(line, reply):
    assert one(line) == Invalid(reply)


def test_noreply_silences_errors_it_could_parse():
    assert one(b"incr a x noreply\r\n") == Invalid(b"")
    assert one(b"delete a 5 noreply\r\n") == Invalid(b"")
    assert one(b"touch a x noreply\r\n") == Invalid(b"")


def test_bad_data_chunk_consumes_bytes_plus_two_like_memcached():
    # memcached reads bytes+2 ("abcde"), rejects the chunk, then parses "\r\n" as an
    # empty command line (ERROR) and the get normally.
    events = parse(b"set a 0 0 3\r\nabcde\r\nget a\r\n")
    assert events == [Invalid(BAD_CHUNK), Invalid(ERROR), Request("get", (b"a",))]


def test_bad_data_chunk_under_noreply_is_silent():
    assert parse(b"set a 0 0 1 noreply\r\nxyz\r\n") == [Invalid(b""), Invalid(ERROR)]


def test_unreadable_length_cannot_be_swallowed():
    # Without a length the block cannot be skipped; it is then read as a command.
    assert parse(b"set a 0 0 -1\r\nabc\r\n") == [Invalid(BAD_FORMAT), Invalid(ERROR)]
    assert parse(b"set a 0 0 x\r\nabc\r\n") == [Invalid(BAD_FORMAT), Invalid(ERROR)]


@pytest.mark.parametrize("line", [
    b"set " + b"k" * 251 + b" 0 0 3\r\n",
    b"set a x 0 3\r\n",
    b"set a 4294967296 0 3\r\n",
    b"set a 0 x 3\r\n",
    b"set bad\x01key 0 0 3\r\n",
    b"cas a 0 0 3 x\r\n",
])
def test_bad_storage_line_swallows_its_block(line):
    # shoal keeps the connection in sync where memcached would read "abc" as a command.
    assert parse(line + b"abc\r\nget a\r\n") == [Invalid(BAD_FORMAT), Request("get", (b"a",))]


def test_oversized_value_is_swallowed_not_buffered():
    parser = Parser(item_size_max=1024)
    parser.feed(b"set big 0 0 5000\r\n")
    event = parser.next_event()
    assert event == Request("set", (b"big",), value=None)
    for _ in range(5):
        parser.feed(b"x" * 1000)
        assert parser.buffered() == 0
        assert parser.next_event() is None
    parser.feed(b"\r\nget big\r\n")
    assert parser.events() == [Request("get", (b"big",))]


def test_oversized_value_under_noreply_keeps_noreply():
    assert one(b"set big 0 0 5 noreply\r\nhello\r\n", item_size_max=4) == Request(
        "set", (b"big",), value=None, noreply=True)


def test_value_at_the_limit_is_buffered():
    assert one(b"set k 0 0 4\r\nabcd\r\n", item_size_max=4).value == b"abcd"


def test_line_too_long_closes():
    parser = Parser()
    parser.feed(b"x" * 3000)
    assert parser.next_event() == Invalid(LINE_TOO_LONG, close=True)
    assert parser.closed
    parser.feed(b"get a\r\n")
    assert parser.next_event() is None


def test_long_retrieval_lines_are_allowed():
    keys = [b"key%04d" % i for i in range(2000)]
    assert one(b"get " + b" ".join(keys) + b"\r\n").keys == tuple(keys)


def test_line_at_the_limit_with_crlf_is_not_too_long():
    line = b"verbosity 1" + b" " * (2048 - 11)
    parser = Parser()
    for byte in line + b"\r\n":
        parser.feed(bytes([byte]))
    assert parser.events() == [Request("verbosity", arg=1)]


def test_truncated_input_waits():
    for data in (b"get a", b"set a 0 0 3\r\nab", b"set a 0 0 3\r\nabc\r", b"set a 0 0 3"):
        assert parse(data) == []


def test_large_pipelines_compact_the_buffer():
    parser = Parser()
    batch = b"set k 0 0 100\r\n" + b"v" * 100 + b"\r\n"
    for _ in range(2000):
        parser.feed(batch)
        assert parser.next_event().value == b"v" * 100
    assert parser.buffered() == 0


# -- byte-at-a-time and arbitrary chunking ---------------------------------------------

_keys = st.sampled_from([b"a", b"key", b"k" * 250, b"k" * 251, b"bad\x01"])
_numbers = st.sampled_from([b"0", b"1", b"-1", b"x", b"4294967296", b"18446744073709551616", b"30"])


@st.composite
def _command(draw):
    kind = draw(st.sampled_from(["storage", "cas", "get", "gat", "other", "garbage", "bad_chunk"]))
    noreply = draw(st.sampled_from([b"", b" noreply"]))
    key = draw(_keys)
    if kind in ("storage", "cas", "bad_chunk"):
        value = draw(st.binary(max_size=40))
        name = b"cas" if kind == "cas" else draw(st.sampled_from([b"set", b"add", b"append", b"prepend"]))
        extra = b" " + draw(_numbers) if kind == "cas" else b""
        length = len(value) if kind != "bad_chunk" else len(value) + draw(st.integers(-2, 2))
        return b"%s %s %s %s %d%s%s\r\n" % (name, key, draw(_numbers), draw(_numbers), max(length, 0),
                                             extra, noreply) + value + b"\r\n"
    if kind == "get":
        keys = draw(st.lists(_keys, min_size=0, max_size=4))
        return draw(st.sampled_from([b"get", b"gets"])) + b"".join(b" " + k for k in keys) + b"\r\n"
    if kind == "gat":
        return b"gat %s %s\r\n" % (draw(_numbers), key)
    if kind == "other":
        return draw(st.sampled_from([
            b"delete %s%s\r\n" % (key, noreply), b"incr %s %s%s\r\n" % (key, draw(_numbers), noreply),
            b"touch %s %s%s\r\n" % (key, draw(_numbers), noreply), b"flush_all %s%s\r\n" % (draw(_numbers), noreply),
            b"version\r\n", b"stats\r\n", b"verbosity %s\r\n" % draw(_numbers),
        ]))
    return draw(st.binary(max_size=30)) + draw(st.sampled_from([b"\r\n", b"\n", b""]))


def _chunked(data, cuts):
    parser = Parser(item_size_max=32, line_max=600)
    out, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        parser.feed(data[last:cut])
        last = cut
        out.extend(parser.events())
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(_command(), max_size=8))
def test_byte_at_a_time_equals_whole_input(commands):
    data = b"".join(commands)
    assert _chunked(data, range(len(data))) == _chunked(data, [])


@settings(max_examples=300, deadline=None)
@given(st.lists(_command(), max_size=8), st.lists(st.integers(0, 2000), max_size=10))
def test_any_chunking_equals_whole_input(commands, cuts):
    data = b"".join(commands)
    assert _chunked(data, [c for c in cuts if c < len(data)]) == _chunked(data, [])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_raises(data):
    for event in _chunked(data, range(0, len(data), 7)):
        assert isinstance(event, (Request, Invalid))


# -- replies -------------------------------------------------------------------------

def test_reply_builders():
    assert value_block(b"k", 3, b"ab") == b"VALUE k 3 2\r\nab\r\n"
    assert value_block(b"k", 0, b"", cas=9) == b"VALUE k 0 0 9\r\n\r\n"
    assert number_reply(2**64 - 1) == b"18446744073709551615\r\n"
    assert stats_block([("pid", 1), ("version", "x")]) == b"STAT pid 1\r\nSTAT version x\r\nEND\r\n"


# -- UDP frame header ----------------------------------------------------------------

def test_udp_header_golden():
    datagram = b"\x12\x34\x00\x00\x00\x01\x00\x00get a\r\n"
    header, payload = parse_udp_header(datagram)
    assert header == UdpHeader(0x1234, 0, 1)
    assert bytes(payload) == b"get a\r\n"
    assert build_udp_header(header) == datagram[:8]
    buf = bytearray(10)
    build_udp_header(UdpHeader(1, 2, 3, 4), buf, 2)
    assert bytes(buf) == b"\x00\x00\x00\x01\x00\x02\x00\x03\x00\x04"


@pytest.mark.parametrize("datagram", [b"", b"\x00" * 7, b"\x00\x01\x00\x00\x00\x00\x00\x00",
                                      b"\x00\x01\x00\x02\x00\x02\x00\x00"])
def test_udp_header_truncated_or_impossible(datagram):
    with pytest.raises(ProtocolError):
        parse_udp_header(datagram)


@given(st.integers(0, 0xFFFF), st.binary(max_size=5000))
def test_udp_reply_split_roundtrip(request_id, payload):
    datagrams = split_udp_reply(request_id, payload, max_payload=1400)
    assert all(len(d) <= 1408 for d in datagrams)
    joined = b""
    for seq, datagram in enumerate(datagrams):
        header, body = parse_udp_header(datagram)
        assert header == UdpHeader(request_id, seq, len(datagrams))
        joined += bytes(body)
    assert joined == payload
