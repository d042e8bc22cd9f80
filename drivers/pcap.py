"""Capture every frame a device moves into a pcap file (libpcap format, LINKTYPE_ETHERNET).

Wrap any device in `PcapWriter` and open the file in Wireshark or
``tcpdump -r``: received frames are written as they come out of the inner device,
transmitted frames once the inner device has taken them. A test that fails can
thus hand over the exact conversation. `read_pcap` reads such a file back.

Format: the classic libpcap file (https://wiki.wireshark.org/Development/LibpcapFileFormat):
a 24-byte global header, then per frame a 16-byte record header (seconds,
microseconds, captured length, original length) and the captured bytes.
"""
import struct
import time

from shoal.drivers.base import DeviceWrapper, wire_bytes

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter(DeviceWrapper):
    """Wraps `inner` and appends each frame it receives or transmits to `sink`.

    ``sink`` is a path (opened, and closed by `close`) or a binary file object
    (left open). ``clock`` gives the wall-clock timestamps (seconds, float).
    """

    def __init__(self, inner, sink, clock=time.time, snaplen=65535):
        super().__init__(inner)
        if isinstance(sink, (str, bytes)) or hasattr(sink, "__fspath__"):
            self._file = open(sink, "wb")
            self._owned = True
        else:
            self._file = sink
            self._owned = False
        self._clock = clock
        self.snaplen = snaplen
        self._file.write(_GLOBAL.pack(PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def _write(self, frame):
        data = wire_bytes(frame)
        now = self._clock()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        captured = memoryview(data)[: self.snaplen]
        self._file.write(_RECORD.pack(sec, usec, len(captured), len(data)))
        self._file.write(captured)

    def rx_burst(self, max_frames):
        frames = self.inner.rx_burst(max_frames)
        for frame in frames:
            self._write(frame)
        return frames

    def tx_burst(self, frames):
        sent = self.inner.tx_burst(frames)
        for i in range(sent):
            self._write(frames[i])
        return sent

    def flush(self):
        self._file.flush()

    def close(self):
        if self._file is not None:
            if self._owned:
                self._file.close()
            else:
                self._file.flush()
            self._file = None
        self.inner.close()


def read_pcap(source):
    """Records of a pcap file (path or bytes-like) as a list of (timestamp, frame bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(source, "rb") as f:
            data = f.read()
    if len(data) < _GLOBAL.size:
        raise ValueError("not a pcap file: shorter than its global header")
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = _GLOBAL.unpack_from(data)
    if magic != PCAP_MAGIC or linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"not a little-endian Ethernet pcap (magic {magic:#x}, linktype {linktype})")
    records, off = [], _GLOBAL.size
    while off < len(data):
        if off + _RECORD.size > len(data):
            raise ValueError(f"truncated record header at offset {off}")
        sec, usec, caplen, _origlen = _RECORD.unpack_from(data, off)
        off += _RECORD.size
        if off + caplen > len(data):
            raise ValueError(f"truncated record at offset {off}")
        records.append((sec + usec / 1_000_000, data[off:off + caplen]))
        off += caplen
    return records
