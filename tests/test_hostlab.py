"""Self-test of the host lab (tests/hostlab.py): real namespaces, sshd, sudo, nginx."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostlab  # noqa: E402

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
    h = hostlab.create_host("selftest", 200)
    try:
        yield h
    finally:
        h.destroy()


@pytest.fixture
def host2():
    h = hostlab.create_host("selftest2", 201)
    try:
        yield h
    finally:
        h.destroy()  # idempotent: the test destroys it already


def test_ssh_login_and_passwordless_sudo(host):
    assert host.address == "10.213.200.2"
    assert host.ssh_target() == "deploy@10.213.200.2"
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
    with pytest.raises(hostlab.LabError):
        host.path("/etc/passwd")  # shared with the machine: refused


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


def test_no_default_route(host):
    out = host.exec(["ip", "route"]).stdout
    assert "10.213.200.0/24" in out  # really inside the namespace
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

    t0 = time.monotonic()
    host2.destroy()
    assert time.monotonic() - t0 < 12

    assert [p for p in pids if _alive(p)] == []
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True, check=True).stdout.split()
    assert not Path("/run/netns", netns).exists()
    assert not Path("/sys/class/net", host2.veth_root).exists()
    assert not base.exists()
    assert not any(ln.startswith(address + " ")
                   for ln in hostlab.known_hosts().read_text().splitlines())
    host2.destroy()  # second destroy is a no-op
