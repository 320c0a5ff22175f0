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

import collections
import ctypes
import fcntl
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        self._thread = threading.Thread(target=self._carry, name=f"tunlink-{self.index}", daemon=True)
        self._thread.start()
        return self

    def _carry(self) -> None:
        a, b = self.fds
        other = {a: b, b: a}
        queue: collections.deque = collections.deque()  # (due, out fd, packet): FIFO, one delay for all
        while not self._stop.is_set():
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.2
            try:
                ready, _, _ = select.select([a, b], [], [], timeout)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    packet = os.read(fd, 65536)
                except OSError:
                    return
                queue.append((time.monotonic() + self.delay, other[fd], packet))
                self.packets += 1
                if fd == a and is_syn(packet):
                    self.connections += 1
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, out, packet = queue.popleft()
                try:
                    os.write(out, packet)
                except OSError:
                    pass  # (a device going down: the packet is lost, as on a wire)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        for fd in self.fds or ():
            os.close(fd)  # (the devices go with their last descriptor)
        self.fds = None
