"""The chunked send buffer against a bytearray model, and its no-copy promises."""
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.net.native.tcp.sendbuf import SendBuffer

operations = st.lists(st.one_of(
    st.tuples(st.just("append"), st.binary(max_size=40), st.sampled_from(["bytes", "bytearray", "view"])),
    st.tuples(st.just("drop"), st.integers(0, 60)),
    st.tuples(st.just("view"), st.integers(0, 80), st.integers(1, 90)),
    st.tuples(st.just("clear")),
), max_size=200)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_buffer_behaves_like_a_bytearray(ops):
    buf, model = SendBuffer(), bytearray()
    for op in ops:
        if op[0] == "append":
            data = {"bytes": bytes, "bytearray": bytearray, "view": lambda b: memoryview(bytes(b))}[op[2]](op[1])
            buf.append(data)
            model += op[1]
        elif op[0] == "drop":
            n = min(op[1], len(model))
            buf.drop(n)
            del model[:n]
        elif op[0] == "view":
            offset = min(op[1], len(model))
            assert bytes(buf.view(offset, op[2])) == bytes(model[offset:offset + op[2]])
        else:
            buf.clear()
            model.clear()
        assert len(buf) == buf.size == len(model)


def test_a_segment_is_a_view_of_the_bytes_written():
    buf = SendBuffer()
    first, second = bytes(range(100)), bytes(range(100, 200))
    buf.append(first)
    buf.append(second)
    assert buf.view(0, 100) is first  # a whole write: the object itself
    part = buf.view(10, 20)
    assert part.obj is first and bytes(part) == first[10:30]
    assert bytes(buf.view(90, 20)) == first[90:] + second[:10]  # across two writes: joined
    buf.drop(150)
    assert buf.view(0, 50).obj is second and bytes(buf.view(0, 50)) == second[50:]


def test_a_mutable_buffer_is_copied_so_later_changes_do_not_reach_the_wire():
    buf = SendBuffer()
    data = bytearray(b"hello")
    buf.append(data)
    data[0] = ord("j")
    assert bytes(buf.view(0, 5)) == b"hello"


def test_dropped_chunks_are_released_and_the_index_compacted():
    buf = SendBuffer()
    for i in range(1000):
        buf.append(bytes([i % 256]) * 10)
    buf.drop(9995)
    assert bytes(buf.view(0, 5)) == bytes([999 % 256]) * 5
    assert len(buf._chunks) == 1  # the 999 wholly acknowledged writes are gone


def test_a_borrowed_buffer_is_kept_as_it_is():
    mutable = bytearray(b"a" * 100)
    buf = SendBuffer()
    buf.append(memoryview(mutable)[10:90], borrowed=True)
    buf.append(bytearray(b"c" * 10))  # not borrowed: copied
    mutable[10:20] = b"b" * 10  # (a borrower promises not to: this shows no copy was made)
    assert bytes(buf.view(0, 12)) == b"b" * 10 + b"a" * 2
    assert bytes(buf.view(80, 10)) == b"c" * 10
