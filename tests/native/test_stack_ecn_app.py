"""``--tcp-ecn`` end to end: the echo demo on the native stack, launched as a user would,
and a Linux client in the namespace that asks for ECN (``net.ipv4.tcp_ecn=1``).

The kernel's own view of its socket (``TCP_INFO``'s ``tcpi_options``, what ``ss -ti``
prints as ``ecn`` and ``ecnseen``; the iproute2 6.1 of Debian 12 leaves them out on this
kernel, so the client reads the field itself) says whether ECN was negotiated
(``TCPI_OPT_ECN``: RFC 3168 6.1.1, our SYN-ACK carried ECE) and whether shoal's data
arrived ECN-capable (``TCPI_OPT_ECN_SEEN``: ECT(0) on new data, section 6.1.2).
"""
import pytest

from shoal.drivers.netns import KernelPeer, stop_process, unavailable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]

ECHO_CLIENT = """
import socket, sys
host = sys.argv[1]
s = socket.create_connection((host, 10000), timeout=30)
data = bytes(i % 251 for i in range(200_000))
s.sendall(data)
got = bytearray()
while len(got) < len(data):
    chunk = s.recv(1 << 16)
    assert chunk, len(got)
    got += chunk
assert got == data
options = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[5]  # struct tcp_info.tcpi_options
print(options)
s.close()
"""
TCPI_OPT_ECN, TCPI_OPT_ECN_SEEN = 8, 16  # linux/tcp.h


@pytest.mark.parametrize("ecn", ["on", "off"])
def test_tcp_ecn_option_negotiates_ecn_with_a_linux_client(ecn):
    with KernelPeer(open_device=False) as peer:
        peer.run(["sysctl", "-qw", "net.ipv4.tcp_ecn=1"])
        app = peer.start_shoal(["-m", "shoal.apps.echo", "--port", "10000", "--smp", "1", "--network-stack",
                                "native", "--host-ipv4-addr", peer.shoal_ip, "--tcp-ecn", ecn])
        try:
            seen = []
            for line in app.stdout:  # the banner, possibly after log lines
                seen.append(line)
                if "echo: tcp on" in line or len(seen) > 200:
                    break
            assert "echo: tcp on 0.0.0.0:10000 with 1 shard(s), native stack" in seen[-1], "".join(seen)
            client = peer.run(["python3", "-c", ECHO_CLIENT, peer.shoal_ip], check=False, timeout=120)
            assert client.returncode == 0, client.stdout + client.stderr
            options = int(client.stdout)
            assert options & (TCPI_OPT_ECN | TCPI_OPT_ECN_SEEN) == (TCPI_OPT_ECN | TCPI_OPT_ECN_SEEN
                                                                    if ecn == "on" else 0), options
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- app output ---\n{stop_process(app)[-4000:]}") from None
        finally:
            stop_process(app)
