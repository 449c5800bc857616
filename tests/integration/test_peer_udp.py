"""`relay udp-listen` / `relay udp-dial`: one message is one datagram.

* 10,000 datagrams of 1 to 1,400 bytes (lengths and contents random, each
  numbered) from a client socket to udp-listen, through the relay and
  udp-dial to a UDP echo server and back; every one comes back to the
  client's address byte for byte (a window of them in flight, checked by
  number), and both peers' counters say 10,000 each way, nothing dropped.
  A datagram from a second address is not answered and is counted foreign.
* A reader that stops is dropped and counted, not buffered: with udp-dial
  stopped (SIGSTOP) the relay stops reading udp-listen's WebSocket, which
  fills; udp-listen then drops what it receives and counts it, and its
  memory stays flat while 300 MB are thrown at it.
"""

import os
import random
import signal
import socket
import threading
import time

import peertest
from peertest import DevRelay, Peer, create_session
from relaytest import TestError

MIB = 1 << 20


class Echo:
    """A UDP echo server on 127.0.0.1 in a thread."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.running = True
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while self.running:
            try:
                d, a = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            self.count += 1
            self.sock.sendto(d, a)

    def close(self):
        self.running = False
        self.t.join(timeout=5)
        self.sock.close()


def start_pair(relay, echo, extra=(), env=None):
    s = create_session(relay)
    sid = s["SWSRS_SESSION"]
    dial = Peer("udp-dial", relay, sid, s["SWSRS_RESPONDER_TOKEN"],
                args=["--target", "127.0.0.1:%d" % echo.port] + list(extra), env=env)
    listen = Peer("udp-listen", relay, sid, s["SWSRS_INITIATOR_TOKEN"],
                  args=["--listen", "127.0.0.1:0"] + list(extra), env=env)
    port = listen.listen_port()
    dial.wait_line("joined the session")
    listen.wait_line("joined the session")
    return dial, listen, port


def test_ten_thousand_datagrams_each_checked(tmp_path):
    echo = Echo()
    with DevRelay(tmp_path) as relay:
        dial, listen, port = start_pair(relay, echo)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(10)
        rng = random.Random(9)
        total, window = 10000, 32
        sent, back, nbytes = {}, 0, 0
        try:
            nxt = 0
            t0 = time.monotonic()
            while back < total:
                while nxt < total and len(sent) < window:
                    n = rng.randint(1, 1400)
                    body = nxt.to_bytes(4, "big") + os.urandom(max(0, n - 4))
                    body = body[:n]  # 1..3 bytes: a prefix of the number
                    sent[nxt] = body
                    nbytes += n
                    c.sendto(body, ("127.0.0.1", port))
                    nxt += 1
                d, addr = c.recvfrom(65536)
                assert addr == ("127.0.0.1", port)
                # Short datagrams carry only part of their number: match them
                # by content among those in flight.
                if len(d) >= 4:
                    k = int.from_bytes(d[:4], "big")
                    assert sent.get(k) == d, "datagram %d changed" % k
                else:
                    k = next(i for i, b in sent.items() if b == d)
                del sent[k]
                back += 1
            took = time.monotonic() - t0
            print("10,000 datagrams (%d bytes) round trip in %.1fs" % (nbytes, took))
            # Someone else writing to the listener is not the first sender.
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.sendto(b"intruder", ("127.0.0.1", port))
            other.settimeout(0.5)
            try:
                other.recvfrom(100)
                raise AssertionError("a second sender got an answer")
            except socket.timeout:
                pass
            other.close()
            time.sleep(0.3)
            assert listen.stop() == 0
            assert dial.wait() == 0  # the peer left: 1000
            for p in (listen, dial):
                cnt = p.counters()
                assert cnt["datagrams_up"] == total, cnt
                assert cnt["datagrams_down"] == total, cnt
                assert cnt["bytes_up"] == nbytes and cnt["bytes_down"] == nbytes, cnt
                assert cnt["dropped_up"] == 0 and cnt["dropped_down"] == 0, cnt
            assert listen.counters()["dropped_foreign"] == 1
            assert echo.count == total
        finally:
            c.close()
            peertest.cleanup(dial, listen)
            echo.close()


def test_stopped_reader_is_dropped_and_counted(tmp_path):
    echo = Echo()
    with DevRelay(tmp_path) as relay:
        # AddressSanitizer keeps freed memory aside (256 MiB by default),
        # which would read as growth: keep its quarantine small here.
        asan = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:quarantine_size_mb=4:"
                                "thread_local_quarantine_size_kb=64"}
        dial, listen, port = start_pair(relay, echo, extra=["--buffer", "64KiB"], env=asan)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            c.sendto(b"hello", ("127.0.0.1", port))  # become the reply address
            time.sleep(0.3)
            os.kill(dial.pid, signal.SIGSTOP)
            payload = os.urandom(1400)
            rss0 = None
            sent = 0
            t_end = time.monotonic() + 60
            for round_ in range(14):
                for _ in range(15000):  # about 21 MB a round
                    try:
                        c.sendto(payload, ("127.0.0.1", port))
                        sent += 1
                    except BlockingIOError:
                        pass
                time.sleep(0.05)
                if round_ == 4:
                    rss0 = peertest.rss(listen.pid)  # after warm-up: every queue full
                assert time.monotonic() < t_end
            grown = peertest.rss(listen.pid) - rss0
            assert grown < 16 * MIB, "udp-listen grew by %d bytes while its peer was stopped" % grown
            os.kill(dial.pid, signal.SIGCONT)
            time.sleep(0.5)
            assert listen.stop() == 0
            dial.wait()
            cnt = listen.counters()
            print("sent %d, relayed %d, dropped %d" % (sent, cnt["datagrams_up"], cnt["dropped_up"]))
            assert cnt["dropped_up"] > 0, cnt
            # The kernel may drop some before udp-listen reads them; the
            # rest were either relayed or counted.
            assert cnt["datagrams_up"] + cnt["dropped_up"] <= sent + 1, cnt
            assert cnt["datagrams_up"] < sent // 2, cnt
        finally:
            try:
                os.kill(dial.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            c.close()
            peertest.cleanup(dial, listen)
            echo.close()
