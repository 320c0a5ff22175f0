"""bench/tun_link.py, the benchmark's delay at the IP layer: real TUN devices and the kernel's TCP through
them. Two links at once (one carrying thread), a TCP connection to a server in each namespace crosses the delay
both ways (its connect alone is a round trip), each SYN is counted on its link, and a stopped link's devices
and route are gone. Namespaces of this test's own (fdl-tl<index>), removed at the end."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

import labindex
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from tun_link import TunLink  # noqa: E402

DELAY_MS = 30


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


@pytest.fixture
def namespaces():
    made = []
    try:
        for _ in range(2):
            i = labindex.next_index()
            ns, addr = f"fdl-tl{i}", f"10.215.{i}.2"
            sh("ip", "netns", "add", ns)
            made.append((ns, i, addr, None))
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/32", "dev", "lo")
            # an echo server in the namespace (one line back per connection; ended by pid below)
            server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO, addr],
                                      stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "listening"
            made[-1] = (ns, i, addr, server)
        yield made
    finally:
        for ns, _, _, server in made:
            if server:
                server.kill()
                server.wait()
            subprocess.run(["ip", "netns", "del", ns], check=False)


ECHO = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7007)); s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(c.recv(100)); c.close()
"""


def test_two_links_delay_tcp_both_ways_count_syns_and_leave_nothing(namespaces):
    links = [TunLink(ns, i, addr, DELAY_MS).start() for ns, i, addr, _ in namespaces]
    try:
        assert [t.name for t in threading.enumerate()].count("tunlink") == 1
        for link in links:
            for n in range(2):
                t0 = time.monotonic()
                with socket.create_connection((link.address, 7007), timeout=10) as c:
                    connected = time.monotonic() - t0
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    c.sendall(b"ping %d" % n)
                    assert c.recv(100) == b"ping %d" % n
                # (a lower bound only: the SYN and the SYN-ACK each waited the delay; noise only adds)
                assert connected >= 2 * DELAY_MS / 1000 * 0.95
            assert link.connections == 2 and link.packets >= 10
    finally:
        for link in links:
            link.stop()
    for (ns, i, addr, _), link in zip(namespaces, links):
        assert subprocess.run(["ip", "link", "show", link.names[0]], capture_output=True).returncode != 0
        assert subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "show", link.names[1]],
                              capture_output=True).returncode != 0
        assert addr not in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
