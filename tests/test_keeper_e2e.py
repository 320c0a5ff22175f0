"""`[ssh] persist` (issue 16: rollback at most 0.5 s): the connection fab opened is kept by a background keeper
process as fab exits, and the next fab commands work through it over a private unix socket without a new SSH
connection to the host: a deploy (its archive on stdin), a rollback, a failure's one line, `fab manage`'s exit
status. `fab disconnect` ends it; a keeper whose connection died ends, and the next fab connects directly; an
idle keeper ends after its seconds. Proved against the lab host's real sshd, counting its "Accepted publickey"
lines (one per SSH connection)."""
from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config
from fabdeploy.hosts import keeper


@pytest.fixture(scope="module")
def kept(make_host, tmp_path_factory, wheel_cache):
    host = make_host("keep")
    root = tmp_path_factory.mktemp("keep")
    proj = make_project(root / "proj")
    proj.write_config(sample_config(host, extra="persist = 60\n"))
    run = root / "run"
    run.mkdir(mode=0o700)
    ns = SimpleNamespace(host=host, proj=proj, cache=wheel_cache, env={"XDG_RUNTIME_DIR": str(run)},
                         dir=run / "fabdeploy-ssh", rel=[])
    yield ns
    for path in keeper.kept_sockets(str(ns.dir)):  # the keepers fab started for this module, ended by pid
        pid = keeper.keeper_pid(path)
        keeper.close_kept([path])
        if pid and not gone(pid, 10):
            os.kill(pid, signal.SIGKILL)


def fab(k, *args):
    res = run_fab(k.proj.root, *args, cache=k.cache, env=k.env)
    return res, res.stdout + res.stderr


def accepted(k) -> int:
    return (k.host.base / "sshd.log").read_text().count("Accepted publickey")


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def wait_kept(k, connections: int, within: float = 30) -> int:
    """Wait until a keeper serves its socket and the host has seen `connections` connections; its pid."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        socks = keeper.kept_sockets(str(k.dir))
        pid = keeper.keeper_pid(socks[0]) if socks else None
        if pid and accepted(k) >= connections:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no keeper within {within}s: {os.listdir(k.dir) if k.dir.exists() else 'no dir'}; "
                         f"{(k.dir / 'keeper.log').read_text() if (k.dir / 'keeper.log').exists() else ''}")


def page(k) -> str:
    status, _, body = k.host.http("/", host_header=k.host.address)
    assert status == 200, body
    return body.decode()


def deploy(k, label):
    k.proj.commit(label, {"pages/message.txt": label + "\n"})
    res, out = fab(k, "deploy")
    assert res.returncode == 0, out
    k.rel.append(release_of(res.stdout))


def test_the_next_fab_commands_work_through_the_kept_connection(kept):
    before = accepted(kept)
    deploy(kept, "first")  # (a direct connection; the keeper opens its own as fab exits)
    pid = wait_kept(kept, before + 2)
    assert "fabdeploy.hosts.keeper" in open(f"/proc/{pid}/cmdline").read()
    assert oct(kept.dir.stat().st_mode & 0o777) == "0o700"
    deploy(kept, "second")  # the archive on stdin, every phase, through the keeper
    assert "second" in page(kept)
    res, out = fab(kept, "rollback")
    assert res.returncode == 0 and f"rolled back to {kept.rel[0]}" in out, out
    assert "first" in page(kept)
    assert accepted(kept) == before + 2  # no SSH connection to the host since the keeper's
    assert keeper.keeper_pid(keeper.kept_sockets(str(kept.dir))[0]) == pid


def test_failures_and_exit_statuses_come_through_unchanged(kept):
    before = accepted(kept)
    res, out = fab(kept, "rollback", "--to", "20200101T000000Z-0000000")
    assert res.returncode == 1 and "Traceback" not in out
    assert "rollback failed: " in out and "20200101T000000Z-0000000" in out, out
    res, out = fab(kept, "manage", "--", "check")
    assert res.returncode == 0 and "System check identified no issues" in out, out
    res, out = fab(kept, "manage", "--", "nosuchcommand")
    assert res.returncode != 0 and "Unknown command: 'nosuchcommand'" in out, out
    assert accepted(kept) == before


def test_disconnect_ends_the_keeper_and_the_next_fab_connects_directly(kept):
    (path,) = keeper.kept_sockets(str(kept.dir))
    pid = keeper.keeper_pid(path)
    res, out = fab(kept, "disconnect")
    assert res.returncode == 0 and f"{kept.host.address}: kept SSH connection ended" in out, out
    assert gone(pid, 10) and not os.path.exists(path)
    res, out = fab(kept, "-H", kept.host.ssh_target(), "disconnect")  # (-H: the same host, named on the line)
    assert res.returncode == 0 and f"{kept.host.address}: no kept SSH connection" in out, out
    before = accepted(kept)
    res, out = fab(kept, "releases")
    assert res.returncode == 0 and kept.rel[0] in out, out
    assert wait_kept(kept, before + 2) != pid  # direct, then a new keeper


def test_a_keeper_whose_connection_died_ends_and_fab_connects_directly(kept):
    (path,) = keeper.kept_sockets(str(kept.dir))
    pid = keeper.keeper_pid(path)
    # the host's side of the kept connection goes away (as when sshd restarts or the server reboots)
    sessions = [p for p in kept.host.pids()
                if open(f"/proc/{p}/cmdline").read().startswith(("sshd: deploy", "sshd-session: deploy"))]
    assert sessions
    for p in sessions:
        os.kill(p, signal.SIGTERM)
    assert gone(pid, 20) and not os.path.exists(path)
    before = accepted(kept)
    res, out = fab(kept, "releases")
    assert res.returncode == 0 and kept.rel[0] in out, out
    assert wait_kept(kept, before + 2) != pid  # direct, then a new keeper


def test_an_idle_keeper_ends_after_its_seconds(kept):
    for path in keeper.kept_sockets(str(kept.dir)):
        pid = keeper.keeper_pid(path)
        keeper.close_kept([path])
        assert gone(pid, 10)
    short = kept.proj.root / "short.toml"
    short.write_text((kept.proj.root / "deploy.toml").read_text().replace("persist = 60", "persist = 2"))
    before = accepted(kept)
    res, out = fab(kept, "releases", "--config", str(short))
    assert res.returncode == 0, out
    pid = wait_kept(kept, before + 2)
    assert gone(pid, 20)
    assert keeper.kept_sockets(str(kept.dir)) == []
