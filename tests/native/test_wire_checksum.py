"""Internet checksum: the C sum against the pure-Python RFC 1071 reference, RFC 1624 updates."""
import struct

from hypothesis import given, settings, strategies as st

from shoal.net.native.wire import checksum as c


def test_rfc1071_example():
    # RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert c.sum16(data) == 0xDDF2
    assert c.reference_sum(data) == 0xDDF2
    assert c.checksum(data) == 0x220D


def test_empty_and_odd_lengths():
    assert c.sum16(b"") == 0
    assert c.sum16(b"\x01") == 0x0100  # the odd byte is the high byte of a padded word
    assert c.sum16(b"\x01\x02\x03") == 0x0402


@settings(deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_c_matches_reference(data, acc):
    assert c.sum16(data, acc) == c.add(c.reference_sum(data), acc)
    assert c.sum16(bytearray(data)) == c.reference_sum(data)
    assert c.sum16(memoryview(data)[1:]) == c.reference_sum(data[1:])


@settings(deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_chunks_equal_whole(chunks):
    assert c.sum_chunks([memoryview(x) for x in chunks]) == c.reference_sum(b"".join(chunks))


@settings(deadline=None)
@given(st.binary(min_size=2, max_size=200).filter(lambda b: len(b) % 2 == 0))
def test_checksum_verifies(data):
    buf = bytearray(data) + b"\x00\x00"
    struct.pack_into("!H", buf, len(data), c.checksum(buf))
    assert c.verify(buf)
    buf[0] ^= 0x01
    assert not c.verify(buf)


def _with_checksum(words):
    """A header-like buffer: a non-zero first word (as every real header has), the checksum, data."""
    buf = bytearray(b"\x45\x00\x00\x00" + words)
    struct.pack_into("!H", buf, 2, c.checksum(buf))
    return buf


@settings(deadline=None)
@given(st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0), st.data())
def test_incremental_update16_keeps_header_valid(words, data):
    # RFC 1624: patching the checksum by equation 3 after a 16-bit field changes yields a
    # header that still verifies, without summing it again.
    buf = _with_checksum(words)
    i = 4 + data.draw(st.integers(0, len(words) // 2 - 1)) * 2
    new = data.draw(st.integers(0, 0xFFFF))
    (old,) = struct.unpack_from("!H", buf, i)
    (old_csum,) = struct.unpack_from("!H", buf, 2)
    struct.pack_into("!H", buf, i, new)
    struct.pack_into("!H", buf, 2, c.update16(old_csum, old, new))
    assert c.verify(buf)


@settings(deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.binary(max_size=40).filter(lambda b: len(b) % 2 == 0))
def test_update32_keeps_header_valid(old, new, rest):
    buf = _with_checksum(struct.pack("!I", old) + rest)
    (old_csum,) = struct.unpack_from("!H", buf, 2)
    struct.pack_into("!I", buf, 4, new)
    struct.pack_into("!H", buf, 2, c.update32(old_csum, old, new))
    assert c.verify(buf)


def test_rfc1624_example():
    # RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285 gives HC' = 0x0000.
    assert c.update16(0xDD2F, 0x5555, 0x3285) == 0x0000


@settings(deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_header_sum(src, dst, proto, length):
    pseudo = struct.pack("!IIBBH", src, dst, 0, proto, length)
    assert c.pseudo_header_sum(src, dst, proto, length) == c.reference_sum(pseudo)


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_transport_checksum(segment):
    src, dst = 0x0A000001, 0x0A000002
    pseudo = struct.pack("!IIBBH", src, dst, 0, 6, len(segment))
    expected = ~c.reference_sum(pseudo + segment) & 0xFFFF
    half = len(segment) // 3
    assert c.transport_checksum(src, dst, 6, [segment[:half], segment[half:]]) == expected
