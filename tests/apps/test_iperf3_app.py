"""shoal's iperf3 server driven by the real iperf3 client (Debian's 3.12), on both stacks.

Posix tests run on loopback with 1 and 2 shards (the control connection and the
streams of one test then land on different shards); the native test runs the
server on a TAP whose far side is in a namespace the test creates, with the
client there. Every run is checked from the client's ``--json`` report: what
the server says it received or sent must be what the client counted.
"""
import json
import shutil
import socket
import struct
import subprocess
import time

import pytest
from app_process import LOCAL, STARTUP_S, AppProcess, free_port

from shoal.drivers.netns import KernelPeer, stop_process, unavailable

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 (the client) is not installed")
RUN_S = 60
COOKIE = b"shoaltestcookieshoaltestcookie123456\0"


def iperf3(*argv, runner=None):
    argv = ["iperf3", *argv, "--json"]
    result = runner(argv) if runner else subprocess.run(argv, capture_output=True, text=True, timeout=RUN_S)
    return result.returncode, json.loads(result.stdout)


IN_FLIGHT = 64 << 20  # (with --bidir, iperf3's own server sends up to 37 MB more than its client counts)


def check_counts(report, streams):
    """The server's figures (the client's "receiver" side where the client sends, "sender"
    where the server does: -R, and half of a --bidir test's streams) agree with the
    client's, per stream (so the server numbered the streams as the client did). Where
    the client sends they agree exactly; where the server does, the client stops counting
    at its TEST_END, while what was on its way still arrives (so with iperf3's own server)."""
    end = report["end"]
    assert len(end["streams"]) == streams
    for stream in end["streams"]:
        sent, received = stream["sender"]["bytes"], stream["receiver"]["bytes"]
        if stream["sender"]["sender"]:  # (the client sent)
            assert 0 < received == sent, stream
        else:
            assert 0 < received <= sent <= received + IN_FLIGHT, stream


class Server(AppProcess):
    def __init__(self, *options):
        super().__init__("iperf3", free_port(), "--network-stack", "posix", *options,
                         banner=b"iperf3: tcp and udp on")  # (every shard's UDP socket bound)

    def stop_cleanly(self):
        code, out = self.stop()
        assert code == 0, out
        assert "Traceback" not in out, out
        return out


@pytest.fixture(params=[1, 2], ids=["smp1", "smp2"])
def server(request):
    srv = Server("--smp", str(request.param), "--overprovisioned")
    try:
        yield srv
    finally:
        srv.kill()


def test_upload_and_download_with_several_streams(server):
    port = str(server.port)
    code, up = iperf3("-c", LOCAL, "-p", port, "-t", "1", "-P", "3")
    assert code == 0, up.get("error")
    check_counts(up, 3)  # (per stream: the server numbered them as the client did)
    code, down = iperf3("-c", LOCAL, "-p", port, "-t", "1", "-P", "2", "-R")
    assert code == 0, down.get("error")
    check_counts(down, 2)
    out = server.stop_cleanly()
    assert "3 stream(s), received" in out and "2 stream(s), sent" in out


def test_byte_count_tests_count_every_byte(server):
    """-n: the client stops after exactly that many bytes and sends TEST_END at once,
    while the last of them may still be on their way to the server: it waits for what
    the client says it sent (a receiver short of it would show fewer bytes)."""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-n", "20M", "-l", "64K")
    assert code == 0, report.get("error")
    check_counts(report, 1)
    assert report["end"]["sum_received"]["bytes"] == 20 << 20


def test_both_ways_at_once(server):
    """--bidir: the client connects -P streams it sends on, then as many it receives on;
    the server counts the first and sends on the others (iperf3 3.12's order)."""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-t", "1", "-P", "2", "--bidir")
    assert code == 0, report.get("error")
    check_counts(report, 4)
    assert [s["sender"]["sender"] for s in report["end"]["streams"]] == [True, True, False, False]
    # -n: the client ends the test once either way has carried that much; the server
    # sends no more than that
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-n", "8M", "-l", "64K", "--bidir")
    assert code == 0, report.get("error")
    check_counts(report, 2)
    end = report["end"]
    forward, back = end["sum_sent"]["bytes"], end["sum_received_bidir_reverse"]["bytes"]
    assert max(forward, back) == 8 << 20 and end["sum_sent_bidir_reverse"]["bytes"] <= 8 << 20
    out = server.stop_cleanly()
    assert "2 stream(s) each way, received" in out and f"1 stream(s) each way, received {forward} and sent" in out


@pytest.mark.parametrize("option, total", [(["-n", "20M"], 20 << 20), (["-n", "1000001"], 1000001),
                                           (["-k", "100"], 100 << 16)])
def test_a_download_of_a_set_size_sends_exactly_that(server, option, total):
    """-R with -n or -k: the streams send the test's octets in shares (the client ends the
    test when it has received them all), exactly as many as iperf3's own server sends."""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-R", "-P", "3", "-l", "64K", *option)
    assert code == 0, report.get("error")
    check_counts(report, 3)
    assert report["end"]["sum_sent"]["bytes"] == total
    if option[0] == "-n":
        assert report["end"]["sum_received"]["bytes"] == total
    assert f"3 stream(s), sent {total} octets" in server.stop_cleanly()


@pytest.mark.parametrize("options, why", [(["-R", "-t", "0"], "a download needs a set time")])
def test_what_the_server_does_not_do_is_refused_with_iperf3s_error(server, options, why):
    _code, report = iperf3("-c", LOCAL, "-p", str(server.port), *options)
    assert report["error"] == "an option you are trying to set is not implemented yet"
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-n", "1M")  # and it goes on serving
    assert code == 0, report.get("error")
    assert f"refused: {why}" in server.stop_cleanly()


@pytest.mark.parametrize("options", [["-t", "1", "-b", "10M", "-P", "2"], ["-n", "700000", "-b", "10M"],
                                     ["-t", "1", "-b", "10M", "--udp-counters-64bit"]])
def test_udp_uploads_are_counted_as_iperf3s_server_counts_them(server, options):
    """-u: each stream is a UDP flow that opens with iperf3's connect datagram (answered
    once the test has room for it); the server reports octets, datagrams, losses and
    jitter per stream, which the client shows as its receiver's."""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-u", "-l", "1400", *options)
    assert code == 0, report.get("error")
    end = report["end"]
    assert len(end["streams"]) == report["start"]["test_start"]["num_streams"]
    sent, got = end["sum_sent"], end["sum_received"]  # (the server's figures: the receiver's)
    assert 0 < got["packets"] - got["lost_packets"] == got["bytes"] // 1400
    assert got["packets"] <= sent["packets"] and got["bytes"] <= sent["bytes"] and got["jitter_ms"] >= 0
    out = server.stop_cleanly()
    assert f"UDP stream(s), received {got['bytes']} octets" in out


@pytest.mark.parametrize("options, streams", [(["-R", "-P", "2"], 2), (["--bidir"], 2)])
def test_udp_from_the_server_at_the_rate_asked(server, options, streams):
    """-u -R, -u --bidir: the server's UDP streams send numbered, timed datagrams at the
    client's -b (per stream, paced as iperf3's server paces), which the client counts."""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-u", "-l", "1400", "-b", "4M", "-t", "1", *options)
    assert code == 0, report.get("error")
    end = report["end"]
    assert len(end["streams"]) == streams
    for stream in end["streams"]:
        udp = stream["udp"]
        if not udp["sender"]:  # (a stream the server sent on: the client's receiver figures)
            assert 0 < udp["packets"] - udp["lost_packets"] == udp["bytes"] // 1400
            assert 2e6 < udp["bits_per_second"] < 8e6  # (4 Mbit/s, not the 1 Mbit/s default nor unpaced)
    assert "UDP stream(s)" in server.stop_cleanly()


def test_a_udp_stream_counts_losses_reordering_and_jitter_as_iperf3():
    """Datagrams 1, 2, 5, 3, 6 arrive: 4 is lost (3 came late, out of order, and is not);
    the jitter follows RFC 3550's estimator over the transit times' differences; after
    the omitted seconds only what comes later counts."""
    from shoal.apps.iperf3 import UDP_HEADER, _UdpStream
    stream = _UdpStream(None, ("10.0.0.1", 5000), UDP_HEADER, 100, 0)
    stream.running = True
    arrivals = ((1, 0.0, 10.0), (2, 0.1, 10.1), (5, 0.4, 10.5), (3, 0.2, 10.62), (6, 0.5, 10.6))
    for number, sent, arrived in arrivals:
        stream.datagram(UDP_HEADER.pack(int(sent), round(sent % 1 * 1e6), number) + bytes(88), arrived)
    jitter, transit = 0.0, None
    for _number, sent, arrived in arrivals:
        if transit is not None:
            jitter += (abs(arrived - sent - transit) - jitter) / 16
        transit = arrived - sent
    assert stream.figures() == {"bytes": 500, "jitter": pytest.approx(jitter), "errors": 1, "packets": 6}
    assert stream.out_of_order == 1
    stream.mark_omitted()
    stream.datagram(UDP_HEADER.pack(0, 700000, 8) + bytes(88), 10.8)
    stream.datagram(b"short", 10.9)  # (no header: not counted)
    assert {k: v for k, v in stream.figures().items() if k != "jitter"} == {"bytes": 100, "errors": 1, "packets": 2}


def test_a_stream_the_client_resets_while_the_server_sends_ends_quietly():
    """The client closes the streams it receives on unread when its test ends, which
    resets them: the sending task ends without an exception (left unretrieved, asyncio
    would log it with its traceback when the task is collected)."""
    import asyncio

    from shoal.apps.iperf3 import _Stream

    class ResetConnection:
        writes = 0

        async def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise ConnectionResetError("connection reset by peer")

    async def main():
        stream = _Stream(ResetConnection())
        stream.running = True
        await stream.send(bytes(1000))
        return stream

    stream = asyncio.run(main())
    assert stream.conn.writes == 3 and stream.octets == 3000


def test_a_second_client_is_told_the_server_is_busy(server):
    first = subprocess.Popen(["iperf3", "-c", LOCAL, "-p", str(server.port), "-t", "3", "--forceflush"],
                             stdout=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:  # its streams are connected: its test is running
            if "connected to" in line:
                break
        _code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-t", "1")
        assert report["error"] == "the server is busy running a test. try again later"
        assert first.wait(RUN_S) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


@pytest.mark.parametrize("ports, order", [([40000, 40016, 40020], [0, 1, 2]), ([40016, 40000], [1, 0]),
                                         ([60990, 32800, 60996, 32790], [0, 2, 3, 1]), ([5], [0])])
def test_streams_are_numbered_in_the_order_of_the_clients_ports(ports, order):
    from shoal.apps.iperf3 import connect_order
    assert connect_order(ports) == order


def test_parameters_the_server_runs_and_those_it_refuses():
    from shoal.apps.iperf3 import IERECVPARAMS, IEUNIMP, Parameters, Refused, parse_params
    assert parse_params({"tcp": True}) == Parameters(1, False, False, 131072, 0, None)
    assert parse_params({"tcp": True, "parallel": 4, "reverse": True, "len": 8192, "omit": 2, "time": 5}) == \
        Parameters(4, True, False, 8192, 2, None)
    assert parse_params({"tcp": True, "reverse": True, "num": 1000, "time": 0}) == \
        Parameters(1, True, False, 131072, 0, 1000)
    assert parse_params({"tcp": True, "reverse": True, "blockcount": 3, "len": 100, "time": 0}).octets == 300
    assert parse_params({"tcp": True, "num": 1000, "time": 0}).octets is None  # (an upload: the client counts)
    assert parse_params({"tcp": True, "bidirectional": True, "parallel": 2, "time": 1}) == \
        Parameters(2, False, True, 131072, 0, None)
    assert parse_params({"udp": True, "len": 1400, "udp_counters_64bit": 1, "bandwidth": 10 ** 6}) == \
        Parameters(1, False, False, 1400, 0, None, True, True, 10 ** 6)
    assert parse_params({"udp": True, "reverse": True}).rate == 0  # (-b 0: the client leaves it out)
    for params, i_errno in (({"sctp": True}, IEUNIMP),
                            ({"tcp": True, "authtoken": "x"}, IEUNIMP),
                            ({"tcp": True, "reverse": True, "time": 0}, IEUNIMP),
                            ({"tcp": True, "bidirectional": True, "time": 0}, IEUNIMP),
                            ({"tcp": True, "parallel": 129}, IERECVPARAMS), ({"tcp": True, "len": 0}, IERECVPARAMS),
                            ({"tcp": True, "time": "10"}, IERECVPARAMS), ({"tcp": True, "omit": -1}, IERECVPARAMS)):
        with pytest.raises(Refused) as refused:
            parse_params(params)
        assert refused.value.i_errno == i_errno, params


def control(port):
    """A hand-driven control connection: the cookie sent, PARAM_EXCHANGE read."""
    sock = socket.create_connection((LOCAL, port), timeout=RUN_S)
    sock.sendall(COOKIE)
    assert sock.recv(1) == struct.pack("!b", 9)
    return sock


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("message", [struct.pack("!I", 5) + b"notjs", struct.pack("!I", 1 << 30),
                                     struct.pack("!I", 2) + b"[]",
                                     struct.pack("!I", 30) + b'{"tcp": true, "parallel": 0}  '.ljust(30)])
def test_bad_parameters_get_server_error_and_the_server_goes_on(server, message):
    with control(server.port) as sock:
        sock.sendall(message)
        state, i_errno, _errno = struct.unpack("!bii", recv_exactly(sock, 9))
        assert (state, i_errno) == (-2, 114)  # SERVER_ERROR, IERECVPARAMS
        assert sock.recv(1) == b""
    code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-n", "1M")
    assert code == 0, report.get("error")


def test_a_client_that_leaves_while_its_streams_connect_frees_the_server(server):
    with control(server.port) as sock:
        params = json.dumps({"tcp": True, "parallel": 2, "time": 1}).encode()
        sock.sendall(struct.pack("!I", len(params)) + params)
        assert sock.recv(1) == struct.pack("!b", 10)  # CREATE_STREAMS
        with socket.create_connection((LOCAL, server.port), timeout=RUN_S) as stream:
            stream.sendall(COOKIE)  # one of the two streams, then the client goes
    deadline = time.monotonic() + STARTUP_S
    while True:  # (the server notices at once; the bound is for a loaded machine)
        code, report = iperf3("-c", LOCAL, "-p", str(server.port), "-n", "1M")
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0, report.get("error")


@pytest.mark.parametrize("connect, reply", [(b"9876", b"6789"),  # 0x36373839 and its answer, little-endian
                                            (b"6789", b"9876"),  # (big-endian)
                                            (b"\x15\xcd\x5b\x07", b"\xb1\x68\xde\x3a"),  # older clients'
                                            (b"\x07\x5b\xcd\x15", b"\x3a\xde\x68\xb1")],  # 123456789
                         ids=["le", "be", "older-le", "older-be"])
def test_a_udp_streams_connect_datagram_gets_the_answer_of_its_kind(connect, reply):
    """An iperf3 client sends a 32-bit value in its own byte order as a UDP stream's first
    datagram and compares the answer with the value of the same pair: older clients use
    123456789 and 987654321, current ones "6789" and "9876"."""
    srv = Server("--smp", "1")
    try:
        with control(srv.port) as sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            params = json.dumps({"udp": True, "parallel": 1, "time": 1, "len": 1400, "bandwidth": 10 ** 6})
            sock.sendall(struct.pack("!I", len(params)) + params.encode())
            assert sock.recv(1) == struct.pack("!b", 10)  # CREATE_STREAMS
            udp.settimeout(1.0)
            udp.connect((LOCAL, srv.port))
            answer = None
            for _ in range(RUN_S):  # (the client sends it again while no answer comes)
                udp.send(connect)
                try:
                    answer = udp.recv(16)
                    break
                except socket.timeout:
                    continue
            assert answer == reply
        srv.stop_cleanly()
    finally:
        srv.kill()


@pytest.mark.root
@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.parametrize("smp", [1, 2])
def test_native_stack_with_the_kernel_as_client(smp):
    with KernelPeer(open_device=False, subnet=f"10.213.{40 + smp}") as peer:
        app = peer.start_shoal(["-m", "shoal.apps.iperf3", "--smp", str(smp), "--network-stack", "native",
                                "--host-ipv4-addr", peer.shoal_ip, "--netmask-ipv4-addr", "255.255.255.0"])
        try:
            def in_namespace(argv):
                return peer.run(argv, check=False, timeout=RUN_S)

            deadline = time.monotonic() + STARTUP_S
            while True:  # until the stack answers ARP and the server accepts
                code, report = iperf3("-c", peer.shoal_ip, "-n", "1M", runner=in_namespace)
                if code == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert code == 0, report.get("error")
            for extra, streams in (([], smp), (["-R"], smp), (["--bidir"], 2 * smp)):
                code, report = iperf3("-c", peer.shoal_ip, "-t", "1", "-P", str(smp), *extra, runner=in_namespace)
                assert code == 0, report.get("error")
                check_counts(report, streams)
            code, report = iperf3("-c", peer.shoal_ip, "-R", "-n", "3000001", "-P", str(smp), runner=in_namespace)
            assert code == 0, report.get("error")
            assert report["end"]["sum_sent"]["bytes"] == report["end"]["sum_received"]["bytes"] == 3000001
            for extra in ([], ["-R"]):
                code, report = iperf3("-c", peer.shoal_ip, "-u", "-l", "1400", "-b", "10M", "-t", "1", "-P", str(smp),
                                      *extra, runner=in_namespace)
                assert code == 0, report.get("error")
                got = report["end"]["sum_received"]
                assert 0 < got["packets"] - got["lost_packets"] == got["bytes"] // 1400
        finally:
            out = stop_process(app)
        assert "native stack" in out and "Traceback" not in out, out
