"""Self-test of the host lab (tests/hostlab.py): real namespaces, sshd, sudo, nginx."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostlab  # noqa: E402
import labindex  # noqa: E402

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="the host lab needs root on Linux")


def ssh(host: hostlab.TestHost, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Plain ssh(1) with exactly the options the brief specifies."""
    argv = ["ssh", "-F", "/dev/null",
            "-i", str(hostlab.client_key(host.root)),
            "-o", f"UserKnownHostsFile={hostlab.known_hosts(host.root)}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            host.ssh_target(), command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def host():
    h = hostlab.create_host(f"selftest-{os.getpid() % 10000}", labindex.next_index())
    try:
        yield h
    finally:
        h.destroy()


@pytest.fixture
def peers():
    a = b = None
    try:
        a = hostlab.create_host(f"selftest3-{os.getpid() % 10000}", labindex.next_index())
        b = hostlab.create_host(f"selftest4-{os.getpid() % 10000}", labindex.next_index())
        yield a, b
    finally:
        for h in (b, a):
            if h is not None:
                h.destroy()


@pytest.fixture
def host2():
    h = hostlab.create_host(f"selftest2-{os.getpid() % 10000}", labindex.next_index())
    try:
        yield h
    finally:
        h.destroy()  # idempotent: the test destroys it already


def test_ssh_login_and_passwordless_sudo(host):
    assert host.index in labindex.worker_range() and host.address == f"10.213.{host.index}.2"
    assert host.ssh_target() == f"deploy@10.213.{host.index}.2"
    res = ssh(host, "id -un; sudo -n id -u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["deploy", "0"]
    # the host key was checked strictly against our known_hosts
    line = [ln for ln in hostlab.known_hosts().read_text().splitlines()
            if ln.startswith(host.address + " ")]
    assert len(line) == 1 and line[0].split()[1] == "ssh-ed25519"


def test_srv_is_private_to_host(host):
    name = f"hostlab-selftest-{uuid.uuid4().hex}.txt"
    token = uuid.uuid4().hex
    res = ssh(host, f"echo {token} | sudo -n tee /srv/{name} >/dev/null && "
                    f"echo {token} > /home/deploy/{name} && echo {token} > /tmp/{name}")
    assert res.returncode == 0, res.stderr
    backing = host.path(f"/srv/{name}")
    assert backing == host.base / "fs" / "srv" / name
    assert backing.read_text().strip() == token
    assert not Path("/srv", name).exists()
    # deploy's home and /tmp are private as well, and deploy owns its file
    home_file = host.path(f"/home/deploy/{name}")
    assert home_file.read_text().strip() == token
    assert home_file.stat().st_uid == hostlab.pwd.getpwnam("deploy").pw_uid
    assert not Path("/home/deploy", name).exists()
    assert host.path(f"/tmp/{name}").read_text().strip() == token
    assert not Path("/tmp", name).exists()
    # exec() sees the same private filesystem
    assert host.exec(["cat", f"/srv/{name}"]).stdout.strip() == token
    # /etc is the host's own copy: a user added there is not the machine's
    user = "fdl" + token[:8]
    assert host.exec(["useradd", "--system", "--no-create-home", user]).returncode == 0
    assert f"\n{user}:" in "\n" + host.path("/etc/passwd").read_text()
    assert f"\n{user}:" not in "\n" + Path("/etc/passwd").read_text()
    with pytest.raises(hostlab.LabError):
        host.path("/usr/bin/env")  # shared with the machine: refused


def test_nginx_started_over_ssh_serves_http(host):
    res = ssh(host, "sudo -n nginx", timeout=30)
    assert res.returncode == 0, res.stderr
    pidfile = host.path("/run/nginx.pid")
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    master = int(pidfile.read_text())
    assert master in host.pids()
    assert Path(f"/proc/{master}/exe").resolve() == Path("/usr/sbin/nginx")
    # the master is inside the host's mount namespace, not the machine's
    assert os.readlink(f"/proc/{master}/ns/mnt") == os.readlink(f"/proc/{host.sshd_pid}/ns/mnt")
    assert os.readlink(f"/proc/{master}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    status, headers, body = host.http("/")
    assert status < 500, (status, body[:200])
    assert headers.get("server", "").startswith("nginx")
    status404, _, _ = host.http(f"/no-such-{uuid.uuid4().hex}")
    assert status404 == 404
    # its logs went to the host's private /var/log/nginx
    assert host.path("/var/log/nginx/access.log").stat().st_size > 0


def test_a_wrapped_lab_index_skips_a_live_host(host):
    """tests/labindex.py: the next index after a wrap is never one a live host still holds."""
    with pytest.raises(labindex.LabIndexError, match=f"^every lab index {host.index}..{host.index} is in use"):
        labindex.Allocator(range(host.index, host.index + 1)).next()


def test_no_default_route(host):
    out = host.exec(["ip", "route"]).stdout
    assert f"10.213.{host.index}.0/24" in out  # really inside the namespace
    assert not [ln for ln in out.splitlines() if ln.startswith("default")], out
    out6 = host.exec(["ip", "-6", "route"]).stdout
    assert not [ln for ln in out6.splitlines() if ln.startswith("default")], out6
    # an SSH session sees the same routing table (sshd lives in the netns)
    res = ssh(host, "ip route")
    assert res.returncode == 0, res.stderr
    assert res.stdout == out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, merely not yet reaped


def test_destroy_kills_everything(host2):
    res = ssh(host2, "nohup sleep 600 >/dev/null 2>&1 & sudo -n nginx; echo started")
    assert res.returncode == 0, res.stderr
    assert "started" in res.stdout
    # ssh returned; give the background job a moment to be visible
    deadline = time.monotonic() + 5
    while len(host2.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = host2.pids()
    assert host2.sshd_pid in pids
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids if _alive(p)}
    assert {"sshd", "sleep", "nginx"} <= names, names
    base, netns, address = host2.base, host2.netns, host2.address
    assert labindex.in_use(host2.index)  # the allocator skips it while the host lives (tests/labindex.py)

    t0 = time.monotonic()
    host2.destroy()
    assert time.monotonic() - t0 < 12

    assert [p for p in pids if _alive(p)] == []
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True, check=True).stdout.split()
    assert not Path("/run/netns", netns).exists()
    assert not Path("/sys/class/net", host2.veth_root).exists()
    assert not labindex.in_use(host2.index)
    assert not base.exists()
    assert not any(ln.startswith(address + " ")
                   for ln in hostlab.known_hosts().read_text().splitlines())
    host2.destroy()  # second destroy is a no-op


def _global_forwarding() -> tuple[str, str]:
    return tuple(Path(f"/proc/sys/net/ipv4/{k}").read_text().strip()
                 for k in ("ip_forward", "conf/all/forwarding"))


_GLOBAL_FORWARDING = _global_forwarding() if sys.platform == "linux" else None


# Listens on argv[1]:argv[2] for one connection (waits at most 20 s), answers
# b"pong <peer address> <data>", and writes argv[3] once listening.
_LISTENER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(20)
open(sys.argv[3], "w").close()
conn, peer = srv.accept()
conn.settimeout(5)
data = conn.recv(1024)
conn.sendall(b"pong " + peer[0].encode() + b" " + data)
conn.close()
"""

_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(sys.argv[3].encode())
    s.settimeout(5)
    print(s.recv(1024).decode())
"""


def test_hosts_reach_each_other_but_nothing_else(peers):
    a, b = peers
    port = 9531
    token = uuid.uuid4().hex
    ready = f"/tmp/listener-{token}.ready"
    # the listener, in the background inside B; only net+mount namespaces are
    # private, so the pid echoed by the shell is valid here too
    res = b.exec(f"nohup python3 -c {shlex.quote(_LISTENER)} {b.address} {port} {ready} "
                 f">/tmp/listener-{token}.log 2>&1 </dev/null & echo $!")
    pid = int(res.stdout.strip())
    try:
        deadline = time.monotonic() + 10
        while not b.path(ready).exists():
            assert _alive(pid), b.path(f"/tmp/listener-{token}.log").read_text()
            assert time.monotonic() < deadline, "listener not ready within 10 s"
            time.sleep(0.05)
        # A reaches B at its ordinary address, without NAT
        res = a.exec(["python3", "-c", _CLIENT, b.address, str(port), token], timeout=20)
        assert res.stdout.strip() == f"pong {a.address} {token}"
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)  # exited by itself after the one connection
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    # the route A uses: the lab prefix via its own gateway, no default route
    routes = a.exec(["ip", "route"]).stdout
    assert f"10.213.0.0/16 via {a.gateway}" in routes, routes
    assert not [ln for ln in routes.splitlines() if ln.startswith("default")], routes
    assert f"via {a.gateway}" in a.exec(["ip", "route", "get", b.address]).stdout
    # outside the lab: no route at all in A (route lookup only, no traffic)
    res = a.exec(["ip", "route", "get", "192.0.2.1"], check=False)
    assert res.returncode != 0 and "unreachable" in res.stderr.lower(), (res.stdout, res.stderr)
    # and the root namespace refuses to forward anything from A beyond lab hosts,
    # even if A routed it there (10.213.0.2 never exists: indexes are 1..250)
    for dst in ("192.0.2.1", "8.8.8.8", "10.213.0.2"):
        res = subprocess.run(["ip", "route", "get", dst, "from", a.address, "iif", a.veth_root],
                             capture_output=True, text=True)
        assert res.returncode != 0 and "unreachable" in res.stderr.lower(), (dst, res.stdout)
    res = subprocess.run(["ip", "route", "get", b.address, "from", a.address, "iif", a.veth_root],
                         capture_output=True, text=True, check=True)
    assert f"dev {b.veth_root}" in res.stdout
    # forwarding is enabled on the lab veths only
    for h in (a, b):
        assert Path(f"/proc/sys/net/ipv4/conf/{h.veth_root}/forwarding").read_text().strip() == "1"
    # ... and the machine-wide switches are untouched
    assert _global_forwarding() == _GLOBAL_FORWARDING


def test_destroy_removes_forwarding_rules(peers):
    a, _ = peers
    veth = a.veth_root
    assert veth in subprocess.run(["ip", "rule"], capture_output=True, text=True, check=True).stdout
    a.destroy()
    assert veth not in subprocess.run(["ip", "rule"], capture_output=True, text=True,
                                      check=True).stdout
