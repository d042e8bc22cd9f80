"""The receive buffer of a connection: in-order text the application has not read yet,
kept as the payloads it came in.

Why payloads and not one bytearray: appending each segment to a bytearray copied every
octet once on arrival and again when the application read it, and a large window made
the bytearray a backlog that outgrew the caches. Here a segment's payload (a view of
the frame the device handed up, which the stack owns) is kept as it is; `take` makes
the one copy the application gets, with ``bytes.join``, or `take_buffers` hands the
views over, for the copy-less read. Holding a view keeps its frame alive until the text
is read, which the receive window bounds like the text itself.

A view and its frame cost a few hundred octets besides the text, so a payload under
`SMALL` octets is copied into a bytearray at the tail instead: a peer sending one-octet
segments must not turn a 1 MiB window into hundreds of MB (each view then carries at
least `SMALL` octets, and the overhead stays a fraction of the window).

`size` is an attribute, not a method, because the hot paths read it per segment.
"""
from collections import deque

SMALL = 1024
"""Payloads shorter than this are copied into the tail instead of kept as views."""


class ReceiveBuffer:
    """Received, not yet read text (see the module docstring)."""

    __slots__ = ("size", "_chunks")

    def __init__(self):
        self.size = 0
        self._chunks = deque()

    def __len__(self):
        return self.size

    def append(self, data):
        """Queue `data` (bytes-like, not modified afterwards), unless it is empty."""
        n = len(data)
        if n >= SMALL:
            self._chunks.append(data)
        elif n:
            chunks = self._chunks
            if chunks and type(chunks[-1]) is bytearray:
                chunks[-1] += data
            else:
                chunks.append(bytearray(data))
        self.size += n

    def take(self, n=-1):
        """The first `n` octets (all if `n` is negative or too large) as bytes, removed."""
        chunks = self._chunks
        if n < 0 or n >= self.size:
            if len(chunks) == 1:
                first = chunks[0]
                data = first if type(first) is bytes else bytes(first)  # (a tail is ours: copied too)
            else:
                data = b"".join(chunks)
            chunks.clear()
            self.size = 0
            return data
        parts = []
        need = n
        while need:
            first = chunks[0]
            size = len(first)
            if size <= need:
                parts.append(chunks.popleft())
                need -= size
            else:
                view = first if type(first) is memoryview else memoryview(first)
                parts.append(view[:need])
                chunks[0] = view[need:]
                need = 0
        self.size -= n
        return b"".join(parts)

    def take_buffers(self):
        """Everything, removed, as the buffers it is kept in: read-only views of the
        payloads (no copy) and the small tails as bytes (see the module docstring)."""
        out = [c.toreadonly() if type(c) is memoryview else bytes(c) for c in self._chunks]
        self._chunks.clear()
        self.size = 0
        return out

    def __deepcopy__(self, memo):
        """A copy holding its own bytes (views cannot be copied, and must not be shared):
        what copying a whole connection needs, as the header-prediction tests do."""
        twin = ReceiveBuffer()
        for chunk in self._chunks:
            twin.append(bytes(chunk))
        return twin
