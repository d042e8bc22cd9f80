"""DHCP messages (RFC 2131 section 2, BOOTP layout of RFC 951) and options (RFC 2132).

Options are returned as a dict of code -> bytes. Repeated options are concatenated
(RFC 3396 section 5) and the `sname`/`file` fields are read for options when option 52
(overload, RFC 2132 section 9.3) says so.
"""
import struct
from typing import NamedTuple

from . import WireError

FIXED_LEN = 236
MAGIC_COOKIE = 0x63825363
MIN_LEN = FIXED_LEN + 4
BOOTP_MIN_LEN = 300  # RFC 1542 section 2.1: some relays drop shorter BOOTP messages

OP_REQUEST = 1
OP_REPLY = 2
FLAG_BROADCAST = 0x8000

SERVER_PORT = 67
CLIENT_PORT = 68

# Message types (option 53, RFC 2132 section 9.6)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)

# Option codes (RFC 2132)
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAMETER_LIST = 55
OPT_MESSAGE = 56
OPT_MAX_MESSAGE_SIZE = 57
OPT_RENEWAL_TIME = 58  # T1
OPT_REBINDING_TIME = 59  # T2
OPT_CLIENT_ID = 61
OPT_END = 255

_FIXED = struct.Struct("!BBBBIHHIIII16s64s128sI")


class DhcpMessage(NamedTuple):
    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: int
    yiaddr: int
    siaddr: int
    giaddr: int
    chaddr: bytes
    options: dict

    @property
    def message_type(self):
        v = self.options.get(OPT_MESSAGE_TYPE)
        return v[0] if v and len(v) == 1 else None

    def option_u32(self, code):
        """An option holding one 32-bit value (address, time), or None when absent or malformed."""
        v = self.options.get(code)
        return int.from_bytes(v[:4], "big") if v is not None and len(v) >= 4 else None


def _parse_options(data, options, field):
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 2 > n or i + 2 + data[i + 1] > n:
            raise WireError("dhcp-bad-option", f"option {code} runs past the {field}")
        length = data[i + 1]
        value = bytes(data[i + 2 : i + 2 + length])
        options[code] = options[code] + value if code in options else value
        i += 2 + length


def parse(data):
    """Parse a BOOTP/DHCP message; raises `WireError` on malformed input."""
    if len(data) < MIN_LEN:
        raise WireError("truncated", "dhcp")
    op, htype, hlen, _hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file, cookie = _FIXED.unpack_from(data)
    if op not in (OP_REQUEST, OP_REPLY):
        raise WireError("dhcp-bad-op", str(op))
    if cookie != MAGIC_COOKIE:
        raise WireError("dhcp-bad-cookie", f"{cookie:#x}")
    if hlen > 16:
        raise WireError("dhcp-bad-hlen", str(hlen))
    options = {}
    _parse_options(data[MIN_LEN:], options, "options")
    overload = options.get(OPT_OVERLOAD)
    if overload is not None and len(overload) == 1:
        if overload[0] & 1:
            _parse_options(file, options, "file field")
        if overload[0] & 2:
            _parse_options(sname, options, "sname field")
    return DhcpMessage(op, xid, secs, flags, ci, yi, si, gi, chaddr[:hlen] if htype == 1 else chaddr, options)


def build(op, xid, chaddr, options, ciaddr=0, yiaddr=0, siaddr=0, giaddr=0, flags=0, secs=0):
    """The message as bytes. `options` is an iterable of (code, bytes) written in order.

    Values longer than 255 bytes are split into several instances (RFC 3396).
    """
    out = bytearray(
        _FIXED.pack(op, 1, len(chaddr), 0, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, b"", b"", MAGIC_COOKIE)
    )
    for code, value in options:
        value = bytes(value)
        for i in range(0, max(len(value), 1), 255):
            chunk = value[i : i + 255]
            out += bytes((code, len(chunk))) + chunk
    out.append(OPT_END)
    if len(out) < BOOTP_MIN_LEN:
        out += bytes(BOOTP_MIN_LEN - len(out))
    return bytes(out)
