"""The send buffer of a connection: the octets from SND.UNA on, kept in the chunks the
application wrote.

Why chunks and not one bytearray: a bytearray costs a copy of every write into it
and another of every segment out of it, and cannot give a segment a view of itself
(a bytearray with a live view cannot be resized, and acknowledged data is cut from
its front). Here an immutable `bytes` the application writes is kept as it is, and a
segment's payload is a view of the chunk that holds it: no copy on the way from
`write` to the device, which matters for bulk transfers (each byte was copied twice
in Python before). Only a segment that spans two chunks is joined (one copy), and a
mutable buffer the application writes is copied once, since it may change it after
`write` returns.

Positions are offsets from the buffer's first octet (the caller maps sequence
numbers to offsets); `size` is an attribute, not a method, because the hot paths read
it several times per segment.
"""
from bisect import bisect_right

_COMPACT_AT = 64
"""Dropped chunk slots kept before the lists are compacted (amortized O(1) drops)."""


def _owned(data):
    """`data` as an immutable object the buffer may keep: bytes, or a read-only view of bytes."""
    if type(data) is bytes:
        return data
    if type(data) is memoryview and data.readonly and type(data.obj) is bytes:
        return data
    return bytes(data)


class SendBuffer:
    """The octets written and not yet acknowledged (see the module docstring)."""

    __slots__ = ("size", "_chunks", "_starts", "_first", "_dropped")

    def __init__(self):
        self.size = 0
        self._chunks = []  # chunks[i] holds octets [starts[i], starts[i] + len) of the stream
        self._starts = []
        self._first = 0  # chunks before this index are wholly dropped (their slots are None)
        self._dropped = 0  # stream offset of the buffer's first octet (its last: + size)

    def __len__(self):
        return self.size

    def append(self, data, borrowed=False):
        """Queue `data` (any buffer) after what is buffered; kept as it is when `borrowed`
        (its owner will not change it, such as a read-only mapping of a file), else
        through `_owned`."""
        chunk = data if borrowed else _owned(data)
        n = len(chunk)
        if n:
            self._chunks.append(chunk)
            self._starts.append(self._dropped + self.size)
            self.size += n

    def drop(self, n):
        """Forget the first `n` octets (acknowledged); at most what is buffered."""
        if n >= self.size:
            self.clear()
            return
        self._dropped += n
        self.size -= n
        chunks, starts, first, dropped = self._chunks, self._starts, self._first, self._dropped
        while starts[first] + len(chunks[first]) <= dropped:
            chunks[first] = None
            first += 1
        if first >= _COMPACT_AT and first * 2 >= len(chunks):
            del chunks[:first], starts[:first]
            first = 0
        self._first = first

    def view(self, offset, n):
        """Octets ``[offset, offset + n)``, cut at the buffer's end: the chunk itself or a view
        of it when one chunk holds them, else one joined copy."""
        left = self.size - offset
        if n > left:
            n = left
        if n <= 0:
            return b""
        chunks, first = self._chunks, self._first
        if not offset and n == left and first == len(chunks) - 1 and len(chunks[first]) == n:
            return chunks[first]  # the whole buffer, one whole chunk: a response written in one piece
        pos = self._dropped + offset
        starts = self._starts
        i = bisect_right(starts, pos, first) - 1
        chunk = chunks[i]
        start = pos - starts[i]
        end = start + n
        size = len(chunk)
        if end <= size:
            if start == 0 and end == size:
                return chunk
            return memoryview(chunk)[start:end]
        parts = [memoryview(chunk)[start:]]
        left = end - size
        while left > 0:
            i += 1
            chunk = chunks[i]
            parts.append(memoryview(chunk)[:left])
            left -= len(chunk)
        return b"".join(parts)

    def clear(self):
        self._chunks.clear()
        self._starts.clear()
        self._first = 0
        self._dropped += self.size
        self.size = 0

    def __deepcopy__(self, memo):
        """A copy holding its own bytes (a view cannot be copied): what copying a whole
        connection needs, as the header-prediction tests do."""
        twin = SendBuffer()
        twin._dropped = self._dropped
        for chunk in self._chunks[self._first:]:
            twin._chunks.append(bytes(chunk))
        twin._starts = self._starts[self._first:]
        twin.size = self.size
        return twin
