"""Publish survives losing the client (issue 11.3), on a real host: `fab deploy` killed with SIGKILL or SIGTERM
while it switches, restarts or checks health. The publish half runs detached on the host, so the host ends
live on the new release (or reverted to the previous one when the health check fails), every uWSGI worker
runs it, the audit line is written and the lock released, with nobody left to ask for it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config

FLAG = "/tmp/fabdeploy-test-publish-hook"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("publish")
    proj = make_project(tmp_path_factory.mktemp("publish"))
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, good=release_of(res.stdout))


def start_deploy(env, hook: str, seconds: int, files: dict, extra: str = "") -> subprocess.Popen:
    """A deploy whose `hook` touches FLAG and then sleeps; returns once the hook runs."""
    flag = env.host.path(FLAG)
    flag.unlink(missing_ok=True)
    env.proj.commit(f"change for {hook}", files)
    env.proj.write_config(sample_config(env.host, extra=f'[hooks]\n{hook} = ["touch {FLAG}", "sleep {seconds}"]\n'
                                        + extra), name="kill.toml")
    proc = subprocess.Popen([FAB, "deploy", "--config", "kill.toml"], cwd=env.proj.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "XDG_CACHE_HOME": str(env.cache)})
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the hook never ran"
        time.sleep(0.1)
    return proc


def attempted_release(output: str) -> str:
    m = re.search(r"upload\s+release (\d{8}T\d{6}Z-[0-9a-f]+)", output)
    assert m, output
    return m.group(1)


def wait_unlocked(env, seconds: float = 120) -> None:
    """Bounded: the detached publish finishes on its own and releases the lock."""
    lock = env.host.path("/srv/sample/.fabdeploy-lock")
    deadline = time.monotonic() + seconds
    while lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not lock.exists(), "the lock is still held: the publish half died with the client"


def current(env) -> str:
    return os.path.basename(os.readlink(env.host.path("/srv/sample/current")))


def workers_cwd(env) -> set[str]:
    pid = int(env.host.path("/srv/sample/shared/run/uwsgi.pid").read_text())
    children = env.host.exec(f"grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3").stdout.split()
    assert len(children) == 2
    return {env.host.exec(["readlink", f"/proc/{c}/cwd"]).stdout.strip() for c in children}


def last_audit(env) -> dict:
    return json.loads(env.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()[-1])


def assert_live(env, rel: str, name: str = "") -> None:
    assert current(env) == rel
    status, _, body = env.host.http("/", host_header=name or env.host.address)
    assert status == 200 and f"Release: {rel}".encode() in body, body[:300]
    assert workers_cwd(env) == {f"/srv/sample/releases/{rel}"}


@pytest.mark.parametrize("sig,hook", [(signal.SIGKILL, "before_switch"), (signal.SIGKILL, "before_restart"),
                                      (signal.SIGKILL, "after_restart"), (signal.SIGTERM, "before_restart")])
def test_killed_client_during_publish_the_host_goes_live_and_unlocks(site, sig, hook):
    proc = start_deploy(site, hook, 4, {"pages/message.txt": f"killed with {sig.name} in {hook}\n"})
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    rel = attempted_release(out)
    if sig == signal.SIGTERM:  # like Ctrl-C: held until the switch is done (the deploy completed)
        assert "interrupt held until the switch finished; the deploy completed" in out, out
        assert "Traceback" not in out and f"deployed {rel}" in out, out
    wait_unlocked(site)
    assert_live(site, rel)
    audit = last_audit(site)
    assert audit["result"] == "ok" and audit["release"] == rel and audit["action"] == "deploy", audit
    site.good = rel


def test_killed_client_before_a_failing_health_check_the_host_reverts_and_unlocks(site):
    views = (site.proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", "def index(request):\n    raise RuntimeError('500 on purpose')\n")
    assert broken != views
    proc = start_deploy(site, "after_restart", 3, {"pages/views.py": broken}, "[health]\ntimeout = 3\n")
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    bad = attempted_release(out)
    wait_unlocked(site)
    assert_live(site, site.good)
    assert site.host.path(f"/srv/sample/releases/{bad}/.fabdeploy/bad").exists()
    audit = last_audit(site)
    assert audit["result"] == "failed" and audit["release"] == bad, audit
    assert audit["error"].startswith("health failed: health check failed: GET / ") and \
        f"reverted to {site.good}" in audit["error"], audit
    assert not site.host.path(f"/srv/sample/tmp/{bad}").exists()  # its staged files are gone too
    (site.proj.src / "pages" / "views.py").write_text(views)


def test_ssh_channel_broken_during_publish_fab_waits_for_the_host_to_finish(site):
    """The client lives but its SSH session dies: its cleanup waits for the detached publish instead of
    writing a `failed` audit line and releasing the lock while that publish still runs."""
    proc = start_deploy(site, "before_restart", 5, {"pages/message.txt": "session killed in before_restart\n"})
    sessions = [p for p in site.host.pids() if p != site.host.sshd_pid and
                site.host.exec(["cat", f"/proc/{p}/cmdline"], check=False).stdout.startswith("sshd: deploy")]
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=180)
    rel = attempted_release(out)
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "the SSH channel broke during publish; the host finished it by itself (exit status 0)" in out, out
    assert f"deployed {rel}" in out, out
    assert not site.host.path("/srv/sample/.fabdeploy-lock").exists()
    assert_live(site, rel)
    lines = [json.loads(ln) for ln in site.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()]
    assert [a["result"] for a in lines if a.get("release") == rel] == ["ok"], lines[-3:]
    site.good = rel


def test_fleet_ctrl_c_twice_while_hosts_publish_leaves_both_live_and_unlocked(site, make_host):
    """A second Ctrl-C gives up waiting for the publishing hosts: their connections stay open (fab finishes
    them before it exits) and their detached halves finish anyway."""
    other = make_host("publish2")
    hosts = f'hosts = ["{site.host.ssh_target()}", "{other.ssh_target()}"]'
    flag = site.host.path(FLAG)
    flag.unlink(missing_ok=True)
    site.proj.commit("fleet change", {"pages/message.txt": "fleet, two Ctrl-C\n"})
    cfg = sample_config(site.host, extra=f'[hooks]\nbefore_restart = ["touch {FLAG}", "sleep 4"]\n')
    site.proj.write_config(cfg.replace(f'hosts = ["{site.host.ssh_target()}"]', hosts), name="fleet.toml")
    proc = subprocess.Popen([FAB, "deploy", "--config", "fleet.toml"], cwd=site.proj.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "XDG_CACHE_HOME": str(site.cache)})
    deadline = time.monotonic() + 180
    while not (flag.exists() and other.path(FLAG).exists()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the hooks never ran"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in out, out
    rel = attempted_release(out)
    for host in (site.host, other):
        env = SimpleNamespace(host=host)
        wait_unlocked(env)
        assert_live(env, rel, site.host.address)  # (the server_name of both)
        assert last_audit(env)["result"] == "ok" and last_audit(env)["release"] == rel
    site.good = rel
