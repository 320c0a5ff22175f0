"""A network link with a fixed latency each way at the IP layer, between this machine and a lab host's
network namespace: two TUN devices (one here, one in the namespace) and a thread that carries every IP
packet from one to the other after `delay_ms`.

bench/latency_proxy.py delays the bytes a TCP relay forwards, so the client's own TCP connection is to a
local relay: its handshake and its ACKs come back at once, and what a real link costs a client that writes
small packets without TCP_NODELAY (Nagle's algorithm waits for the ACK of the previous write) never shows.
Here the client's TCP talks to the host's kernel over the delayed link, as it would over a real network:
    link = TunLink("fdl-bench170", 170, "10.213.170.2", delay_ms=25).start()
    ...  # (this machine reaches 10.213.170.2, the host's own address, over the link now)
    link.stop()
The devices are not persistent: they go when the link's file descriptors are closed (stop, or this process's
end). Needs root and /dev/net/tun (the kernel's netem qdisc would do the same; this machine's kernel has none).
"""
from __future__ import annotations

import ctypes
import fcntl
import heapq
import itertools
import os
import select
import struct
import subprocess
import threading
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def _open_tun(name: str, netns: str | None) -> int:
    """A new TUN device `name` (in `netns` when given) and its file descriptor."""
    box: list = []

    def opener():  # (setns changes the calling thread's namespace only: a thread of its own)
        try:
            if netns:
                libc = ctypes.CDLL(None, use_errno=True)
                ns = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                try:
                    if libc.setns(ns, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns {netns}")
                finally:
                    os.close(ns)
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            box.append(fd)
        except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread)
            box.append(exc)

    t = threading.Thread(target=opener)
    t.start()
    t.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def is_syn(packet: bytes) -> bool:
    """An IPv4 TCP packet that opens a connection (SYN set, ACK not)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
        return False
    ihl = (packet[0] & 0x0F) * 4
    return len(packet) > ihl + 13 and packet[ihl + 13] & 0x12 == 0x02


def tun_usable() -> bool:
    """Whether this process can make a TUN device (root, /dev/net/tun there)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


class _Carrier:
    """The one thread that carries every link's packets (one select over all the devices, one heap of what is
    due): ten links are one thread, not ten contending for the interpreter beside the measured commands."""

    def __init__(self):
        self.lock = threading.Lock()
        self.routes: dict[int, tuple[int, "TunLink", bool]] = {}  # fd -> (the other end's fd, link, from here)
        self.closing: list[tuple["TunLink", threading.Event]] = []
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None

    def add(self, link: "TunLink") -> None:
        a, b = link.fds
        with self.lock:
            self.routes[a] = (b, link, True)
            self.routes[b] = (a, link, False)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="tunlink", daemon=True)
                self.thread.start()
        os.write(self.wake_w, b"x")

    def remove(self, link: "TunLink") -> None:
        """Stop carrying the link's packets and close its devices (in the carrying thread, between selects)."""
        done = threading.Event()
        with self.lock:
            self.closing.append((link, done))
        os.write(self.wake_w, b"x")
        done.wait(5)

    def _run(self) -> None:
        due: list = []  # (time, seq, out fd, link, packet)
        seq = itertools.count()
        while True:
            with self.lock:
                for link, done in self.closing:
                    for fd in link.fds:
                        self.routes.pop(fd, None)
                        os.close(fd)  # (the devices go with their last descriptor)
                    due = [d for d in due if d[3] is not link]  # (its fd numbers may be reused)
                    heapq.heapify(due)
                    done.set()
                self.closing.clear()
                routes = dict(self.routes)
            timeout = max(0.0, due[0][0] - time.monotonic()) if due else None
            ready, _, _ = select.select([self.wake_r, *routes], [], [], timeout)
            for fd in ready:
                if fd == self.wake_r:
                    os.read(self.wake_r, 512)
                    continue
                out, link, outward = routes[fd]
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    continue
                heapq.heappush(due, (time.monotonic() + link.delay, next(seq), out, link, packet))
                link.packets += 1
                if outward and is_syn(packet):
                    link.connections += 1
            now = time.monotonic()
            while due and due[0][0] <= now:
                _, _, out, _, packet = heapq.heappop(due)
                try:
                    os.write(out, packet)
                except OSError:
                    pass  # (a device going down: the packet is lost, as on a wire)


_CARRIER = _Carrier()


class TunLink:
    def __init__(self, netns: str, index: int, address: str, delay_ms: float):
        self.netns, self.index, self.delay = netns, index, delay_ms / 1000.0
        self.address = address  # the lab host's own address: routed over the link while it is up
        self.local = f"10.214.{index}.1"  # this side's end of the link (the source of what goes over it)
        self.peer = f"10.214.{index}.2"  # the namespace's end
        self.names = (f"fdt{index}a", f"fdt{index}b")
        self.fds: tuple[int, int] | None = None
        self.packets = 0
        self.connections = 0  # TCP connections opened from this side (SYNs without ACK: the relay's count)

    def start(self) -> "TunLink":
        here, there = self.names
        a = _open_tun(here, None)
        b = _open_tun(there, self.netns)
        self.fds = (a, b)
        ip = ["ip"]
        ipns = ["ip", "netns", "exec", self.netns, "ip"]
        for cmd in (ip + ["addr", "add", self.local, "peer", self.peer, "dev", here],
                    ip + ["link", "set", here, "up"],
                    ip + ["route", "add", f"{self.address}/32", "dev", here, "src", self.local],
                    ipns + ["addr", "add", self.peer, "peer", self.local, "dev", there],
                    ipns + ["link", "set", there, "up"]):
            subprocess.run(cmd, check=True)
        _CARRIER.add(self)
        return self

    def stop(self) -> None:
        if self.fds:
            _CARRIER.remove(self)
        self.fds = None
