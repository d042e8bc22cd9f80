"""The native stack over a TAP with virtio-net headers: bulk data crosses as TCP super-frames.

The kernel in a test-made namespace uploads to a shoal server in this process, which
then sends the same amount back; the bytes must arrive intact (sha256) both ways
whether the TAP exchanges GSO super-frames with the kernel (``vnet_hdr=True``, the
default: coalesced on the way out, 64 KB frames with partial checksums on the way in;
the other segments leave with checksums the kernel finishes) or plain frames, and the
device's counters must show which of the two happened.
"""
import asyncio
import hashlib
import ipaddress
import random

import pytest

from shoal.drivers.netns import KernelPeer, unavailable
from shoal.drivers.tap import TapDevice
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import running

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

SIZE = 4 << 20
DATA = random.Random(11).randbytes(SIZE)
UPLOAD_SHA = hashlib.sha256(random.Random(12).randbytes(SIZE)).hexdigest()

CLIENT = """
import hashlib, random, socket, sys
s = socket.create_connection((sys.argv[1], 9100), timeout=60)
s.sendall(random.Random(12).randbytes(int(sys.argv[2])))
s.shutdown(socket.SHUT_WR)
h, n = hashlib.sha256(), 0
while True:
    chunk = s.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest())
"""


async def serve_download(vnet_hdr):
    with KernelPeer(open_device=False, subnet="10.213.46") as peer:
        device = TapDevice(peer.ifname, vnet_hdr=vnet_hdr, up=False)
        peer.adopt()
        config = NativeConfig(peer.ifname, False, int(ipaddress.IPv4Address(peer.shoal_ip)),
                              int(ipaddress.IPv4Address("255.255.255.0")), None)
        async with running(device, config, rng=random.Random(7)) as stack:
            server = stack.listen(("", 9100))
            client = await asyncio.create_subprocess_exec(
                *peer.command(["python3", "-c", CLIENT, peer.shoal_ip, str(SIZE)]), stdout=asyncio.subprocess.PIPE)
            conn, _ = await asyncio.wait_for(server.accept(), 60)
            h, n = hashlib.sha256(), 0
            while data := await asyncio.wait_for(conn.read(), 60):
                h.update(data)
                n += len(data)
            assert (n, h.hexdigest()) == (SIZE, UPLOAD_SHA)
            view = memoryview(DATA)
            for i in range(0, SIZE, 1 << 18):
                await conn.write(view[i:i + (1 << 18)])
            await conn.close()
            out, _ = await asyncio.wait_for(client.communicate(), 120)
            server.close()
            return out.decode().split(), dict(device.stats), dict(stack.tcp.stats)


@pytest.mark.parametrize("vnet_hdr", [True, False], ids=["vnet", "plain"])
def test_download_through_the_tap_arrives_intact(vnet_hdr):
    got, stats, tcp = asyncio.run(asyncio.wait_for(serve_download(vnet_hdr), 180))
    assert got == [str(SIZE), hashlib.sha256(DATA).hexdigest()]
    segments = SIZE // 1460
    assert not any(k.startswith("tx_error") for k in stats), stats
    # the kernel acknowledges each frame (super-frame) it takes, and one poll reads several
    # of those ACKs: the TCP layer merged them (`TcpLayer.receive_segment`)
    assert tcp.get("acks-merged", 0) > 0, tcp
    if vnet_hdr:
        # TCP builds segments of many MSS (TSO) that the kernel cuts: far fewer writes than
        # MSS-sized segments; the kernel's upload arrives (at least partly) in frames of
        # several segments
        assert stats.get("tx_tso_frames", 0) > 0 and tcp["tso-segments-sent"] == stats["tx_tso_frames"], stats
        assert stats["tx_frames"] < segments // 4, stats
        assert stats.get("rx_super_frames", 0) > 0 and stats["rx_checksum_partial"] > 0, stats
        # the ACKs of the upload, the handshake and the FIN left their checksums to the
        # kernel (`Packet.checksum_partial`), which took them: the bytes arrived
        assert stats.get("tx_checksum_partial", 0) > 0, stats
    else:
        assert stats["tx_frames"] > segments, stats
        assert "tso-segments-sent" not in tcp, tcp
        assert "tx_super_frames" not in stats and "rx_super_frames" not in stats, stats
        assert "tx_tso_frames" not in stats and "tx_checksum_partial" not in stats, stats
        assert stats["rx_frames"] > segments, stats
