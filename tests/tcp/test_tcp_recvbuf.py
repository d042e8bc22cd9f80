"""The receive buffer against a bytearray model, and its one-copy promise."""
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.net.native.tcp.recvbuf import SMALL, ReceiveBuffer

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.one_of(st.binary(max_size=40), st.binary(min_size=SMALL, max_size=SMALL + 40)),
              st.sampled_from(["bytes", "view", "frame"])),
    st.tuples(st.just("take"), st.one_of(st.integers(-1, 90), st.integers(SMALL - 50, 3 * SMALL))),
    st.tuples(st.just("take_buffers")),
), max_size=200)


def as_kind(data, kind):
    """`data` as the stack hands it over: bytes, a view of bytes, or a view into a larger frame."""
    if kind == "bytes":
        return data
    if kind == "view":
        return memoryview(data)
    frame = bytearray(b"H" * 7 + data + b"T" * 3)  # headers before, padding after
    return memoryview(frame)[7:7 + len(data)]


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_buffer_behaves_like_a_bytearray(ops):
    buf, model = ReceiveBuffer(), bytearray()
    for op in ops:
        if op[0] == "append":
            buf.append(as_kind(op[1], op[2]))
            model += op[1]
        elif op[0] == "take_buffers":
            got = buf.take_buffers()
            assert all(type(b) is bytes or (type(b) is memoryview and b.readonly) for b in got)
            assert b"".join(got) == model and all(got)
            del model[:]
        else:
            n = op[1]
            want = bytes(model) if n < 0 else bytes(model[:n])
            got = buf.take(n)
            assert type(got) is bytes and got == want
            del model[:len(want)]
        assert len(buf) == buf.size == len(model)
        assert bool(buf) == bool(model)


def test_a_single_bytes_payload_is_handed_over_without_a_copy():
    buf = ReceiveBuffer()
    payload = bytes(SMALL)
    buf.append(payload)
    assert buf.take() is payload


def test_payloads_are_kept_as_views_until_taken():
    frame = bytearray(b"x" * 5000)
    buf = ReceiveBuffer()
    buf.append(memoryview(frame)[10:2010])
    buf.append(memoryview(frame)[2010:4010])
    assert buf.take(20) == b"x" * 20
    frame[30:4010] = b"y" * 3980  # (the stack never does this: it shows the text was not copied in)
    assert buf.take() == b"y" * 3980


def test_take_buffers_hands_over_read_only_views_of_the_frames():
    frame = bytearray(b"x" * 5000)
    buf = ReceiveBuffer()
    buf.append(memoryview(frame)[10:2010])
    buf.append(b"tail")
    views = buf.take_buffers()
    assert [len(v) for v in views] == [2000, 4] and views[1] == b"tail" and not buf
    frame[10:12] = b"yy"  # (the stack never does this: it shows the view is the frame's memory)
    assert views[0][:3] == b"yyx" and views[0].readonly
    assert buf.take_buffers() == []


def test_small_payloads_are_copied_together_so_overhead_stays_bounded():
    frames = [bytearray(b"h" * 54 + bytes([i % 256])) for i in range(10_000)]
    buf = ReceiveBuffer()
    for frame in frames:
        buf.append(memoryview(frame)[54:])  # one-octet segments
    assert len(buf._chunks) == 1 and buf.size == 10_000  # one tail, no view keeps a frame
    frames[0][54] = 99
    assert buf.take(3) == bytes([0, 1, 2])
