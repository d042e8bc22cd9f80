"""Wire formats: pure parse/build functions over memoryview, one module per header.

Nothing in this package knows about sockets, connections, devices or clocks. Every
parser validates lengths (and checksums where the header has one) and raises
`WireError` for untrusted bytes that are malformed; `WireError.reason` is a short,
stable name (``"truncated"``, ``"bad-checksum"``, ...) that the receive path uses as
the drop-counter key. Any other exception escaping a parser is a bug.
"""


class WireError(ValueError):
    """Untrusted bytes that do not form a valid header. `reason` names the drop counter."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
