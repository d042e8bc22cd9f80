"""The pcap writer wrapper: files that tcpdump reads, frames in both directions."""
import io
import shutil
import subprocess

import pytest

from shoal.drivers.pcap import PcapWriter, read_pcap
from shoal.drivers.virtual import VirtualWire

ARP_REQUEST = bytes.fromhex(
    "ffffffffffff020000000001080600010800060400010200000000010a000001000000000000" "0a000002"
)


def test_records_both_directions_with_timestamps():
    wire = VirtualWire()
    sink = io.BytesIO()
    times = iter([1.5, 2.25])
    cap = PcapWriter(wire.a, sink, clock=lambda: next(times))
    assert cap.tx_burst([ARP_REQUEST]) == 1
    wire.b.tx_burst([ARP_REQUEST[:20] + b"reply" + bytes(20)])
    (rx,) = cap.rx_burst(4)
    cap.close()
    assert read_pcap(sink.getvalue()) == [(1.5, ARP_REQUEST), (2.25, rx)]


def test_frames_not_taken_are_not_recorded():
    wire = VirtualWire(capacity=1)
    sink = io.BytesIO()
    cap = PcapWriter(wire.a, sink)
    assert cap.tx_burst([ARP_REQUEST, ARP_REQUEST]) == 1
    cap.flush()
    assert len(read_pcap(sink.getvalue())) == 1


def test_read_pcap_rejects_truncated_files(tmp_path):
    path = tmp_path / "t.pcap"
    cap = PcapWriter(VirtualWire().a, path)
    cap.tx_burst([ARP_REQUEST])
    cap.close()
    data = path.read_bytes()
    assert len(read_pcap(path)) == 1
    with pytest.raises(ValueError):
        read_pcap(data[:-3])
    with pytest.raises(ValueError):
        read_pcap(data[:10])


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_reads_the_capture(tmp_path):
    path = tmp_path / "arp.pcap"
    cap = PcapWriter(VirtualWire().a, path)
    cap.tx_burst([ARP_REQUEST])
    cap.close()
    out = subprocess.run(["tcpdump", "-n", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ARP, Request who-has 10.0.0.2 tell 10.0.0.1" in out.stdout
