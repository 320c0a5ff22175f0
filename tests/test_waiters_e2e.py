"""Waiters do not outlive their run (issue 11.4), on real hosts: a run waiting for another one's deploy lock
leaves no remote loop behind when it is interrupted (Ctrl-C on fab) or gives up, so nothing takes the lock
later and dies holding it; a lock wait longer than lock.ttl is capped (one warning line), and the
invocation that waits never times out before its remote loop does."""
from __future__ import annotations

import base64
import gzip
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, run_fab, sample_config
from fabdeploy.remote.shell import UNPACK_EVAL, pack

LOCK = "/srv/sample/.fabdeploy-lock"


@pytest.fixture(scope="module")
def lab(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("waitapp"), make_host("waitlb")
    proj = make_project(tmp_path_factory.mktemp("waiters"))
    single = sample_config(app, extra="[lock]\nttl = 10\n")
    proj.write_config(single, name="app.toml")
    proj.write_config(sample_config(app), name="long.toml")  # lock.ttl = 3600: a wait of 60 s is not cut
    fleet = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    fleet += f'[roles]\napp = ["{app.ssh_target()}"]\nlb = ["{lb.ssh_target()}"]\n'
    proj.write_config(fleet, name="fleet.toml")
    return SimpleNamespace(app=app, lb=lb, proj=proj, cache=wheel_cache)


def hold_lock(host) -> None:
    """Another run's lock (as a live run leaves it), taken by the test."""
    host.exec("mkdir -p /srv/sample && chown deploy:deploy /srv/sample")
    host.exec(f"rm -rf {LOCK} && mkdir {LOCK} && echo 'someone else (test)' > {LOCK}/info && "
              f"echo test-token > {LOCK}/token", user="deploy")


def drop_lock(host) -> None:
    host.exec(["rm", "-rf", LOCK], user="deploy")


def unpacked(cmdline: str) -> str:
    """A process's command line, with a packed script (remote/shell.py packed_command: `sh -c UNPACK_EVAL
    <packed>`, a script over PACK_OVER bytes) unpacked."""
    args = cmdline.split("\0")
    if UNPACK_EVAL in args and args.index(UNPACK_EVAL) + 1 < len(args):
        packed = args[args.index(UNPACK_EVAL) + 1]
        try:
            return cmdline + gzip.decompress(base64.b64decode(packed)).decode(errors="replace")
        except (ValueError, OSError, EOFError):
            return cmdline
    return cmdline


def test_a_packed_scripts_text_is_seen_in_its_command_line():
    script = "echo '@@fabdeploy begin lock'; mkdir /srv/sample/.fabdeploy-lock\n" * 2000  # (over PACK_OVER)
    cmdline = "\0".join(["sh", "-c", UNPACK_EVAL, pack(script)]) + "\0"
    assert "@@fabdeploy" not in cmdline and "@@fabdeploy" in unpacked(cmdline)


def waiting_loops(host) -> list[int]:
    """Processes of a fabdeploy script that waits for the lock (the loop's shell and its `sleep 1`)."""
    found = []
    for pid in host.pids():
        cmd = unpacked(host.exec(["cat", f"/proc/{pid}/cmdline"], check=False).stdout)
        if "@@fabdeploy" in cmd and ".fabdeploy-lock" in cmd:
            found.append(pid)
    return found


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def fab_popen(env, *args) -> subprocess.Popen:
    return subprocess.Popen([FAB, *args], cwd=env.proj.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL, env={**os.environ, "XDG_CACHE_HOME": str(env.cache)})


def assert_nothing_waits_and_nobody_takes_the_lock(host) -> None:
    wait_for(lambda: not waiting_loops(host), 15, f"a remote loop still waits for the lock on {host.address}")
    assert host.path(LOCK + "/token").read_text().strip() == "test-token"
    drop_lock(host)
    time.sleep(3)  # a loop left behind polls every second: it would have taken the lock by now
    assert not host.path(LOCK).exists(), host.path(LOCK + "/info").read_text()


def interrupt_while_waiting(env, host, *args) -> str:
    proc = fab_popen(env, *args)
    try:
        wait_for(lambda: waiting_loops(host), 120, "fab never started waiting for the lock")
    except AssertionError:
        proc.kill()
        raise
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
    return out


def test_rollback_wait_longer_than_lock_ttl_is_capped_and_ends(lab):
    hold_lock(lab.app)
    res = run_fab(lab.proj.root, "rollback", "--wait", "100000", "--config", "app.toml", cache=lab.cache,
                  timeout=150)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out
    assert "a lock wait of 100000s is longer than lock.ttl = 10s: waiting 10s at most" in res.stderr, out
    assert "deploy lock" in out and "someone else (test)" in out, out
    assert_nothing_waits_and_nobody_takes_the_lock(lab.app)


def test_ctrl_c_while_an_app_host_waits_for_the_lock(lab):
    hold_lock(lab.app)
    interrupt_while_waiting(lab, lab.app, "deploy", "--wait", "60", "--config", "app.toml")
    assert_nothing_waits_and_nobody_takes_the_lock(lab.app)


def test_ctrl_c_while_a_balancer_waits_for_its_lock(lab):
    hold_lock(lab.lb)
    interrupt_while_waiting(lab, lab.lb, "deploy", "--wait", "60", "--config", "fleet.toml")
    assert_nothing_waits_and_nobody_takes_the_lock(lab.lb)
    wait_for(lambda: not lab.app.path(LOCK).exists(), 30, "the app host's lock was not released")


@pytest.mark.parametrize("task", ["rollback", "deploy"])
def test_fab_killed_while_waiting_for_the_lock_leaves_no_remote_loop(lab, task):
    """SIGKILL: nothing on our side can stop the remote loop; its next line per second fails and ends it."""
    hold_lock(lab.app)
    proc = fab_popen(lab, task, "--wait", "60", "--config", "long.toml")
    try:
        wait_for(lambda: waiting_loops(lab.app), 120, "fab never started waiting for the lock")
    finally:
        proc.kill()
    proc.communicate(timeout=30)
    assert_nothing_waits_and_nobody_takes_the_lock(lab.app)
