"""`fab -H a,b <task>` with a team fabfile and NO fabric.yaml: each fabdeploy task is one run over both hosts
(one release id, one summary table, one report), a team's own task still runs once per host, and a Fabric
config naming another executor is refused in one line before any host is touched.

Fabric alone calls a task once per -H host, one after another: the first failing host ends the run, so the
unlock and rollback tests below leave the first host failing and check that the second was still done.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, FAB, OFFLINE, TEAM_FABFILE, make_project, run_fab, sample_config

USER_TASK = '''
from fabric import task


@task
def where(c):
    """A team task: print the host it runs on."""
    print(f"user task on {c.host}")
'''
LOCK = "/srv/sample/.fabdeploy-lock"


@pytest.fixture(scope="module")
def pair(make_host, tmp_path_factory, wheel_cache):
    a, b = make_host("dash-a"), make_host("dash-b")
    proj = make_project(tmp_path_factory.mktemp("dash"))
    (proj.root / "fabfile.py").write_text(TEAM_FABFILE + USER_TASK)
    cfg = sample_config(a).replace(f'hosts = ["{a.ssh_target()}"]', f'hosts = ["{a.ssh_target()}", "{b.ssh_target()}"]')
    cfg = cfg.replace(f'server_name = "{a.address}"', f'server_name = "{a.address} {b.address}"')
    proj.write_config(cfg)
    # No Fabric config file anywhere selects an executor: fab runs in proj.root, away from this repo's fabric.yaml.
    for path in (proj.root / "fabric.yaml", proj.root / "fabric.yml", Path.home() / ".fabric.yaml",
                 Path("/etc/fabric.yaml")):
        assert not path.exists(), path
    return a, b, proj, wheel_cache, {}


def fab(pair, *args):
    a, b, proj, cache, _ = pair
    return run_fab(proj.root, "-H", f"{a.ssh_target()},{b.ssh_target()}", *args, cache=cache)


def current(host) -> str:
    return host.path("/srv/sample/current").resolve().name


def deploy_both(pair) -> str:
    a, b, *_ = pair
    res = fab(pair, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    ids = re.findall(r"^\S+: deployed (\S+) in", res.stdout, re.M)
    assert len(ids) == 2 and len(set(ids)) == 1, res.stdout  # one run: one release id for both hosts
    assert res.stdout.count("HOST ") == 1, res.stdout  # one summary table
    table = res.stdout[res.stdout.index("HOST "):].splitlines()
    assert sorted(line.split()[0] for line in table[1:]) == sorted([a.address, b.address])
    assert current(a) == current(b) == ids[0]
    return ids[0]


def test_deploy_is_one_run_with_one_release_id(pair):
    a, b, proj, cache, seen = pair
    seen["first"] = deploy_both(pair)
    proj.commit("second", {"pages/message.txt": "second over -H a,b\n"})
    seen["second"] = deploy_both(pair)
    assert seen["second"] != seen["first"]


def test_releases_and_status_are_one_report_each(pair):
    a, b, proj, cache, seen = pair
    res = fab(pair, "releases", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    reports = json.loads(res.stdout)  # per-host calls would print two JSON documents
    assert sorted(r["host"] for r in reports) == sorted([a.address, b.address])
    for r in reports:
        assert [x["id"] for x in r["releases"]][:2] in ([seen["second"], seen["first"]],
                                                        [seen["first"], seen["second"]])
    res = fab(pair, "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    reports = json.loads(res.stdout)
    assert sorted(r["host"] for r in reports) == sorted([a.address, b.address])
    assert {r["current"] for r in reports} == {seen["second"]}


def test_team_task_runs_once_per_host_beside_a_fabdeploy_task(pair):
    a, b, *_ = pair
    res = fab(pair, "where", "status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == [f"user task on {a.address}", f"user task on {b.address}"], res.stdout
    reports = json.loads("\n".join(lines[2:]))
    assert sorted(r["host"] for r in reports) == sorted([a.address, b.address])


def test_rollback_moves_both(pair):
    a, b, proj, cache, seen = pair
    res = fab(pair, "rollback")
    assert res.returncode == 0, res.stdout + res.stderr
    for h in (a, b):
        assert len(re.findall(rf"^{re.escape(h.address)}: rolled back to {seen['first']} ", res.stdout, re.M)) == 1
        assert current(h) == seen["first"]


def test_logs_follow_streams_both_hosts_in_one_call(pair):
    """`logs -f` never returns by itself: called once per host, it would follow the first host only."""
    a, b, proj, *_ = pair
    env = {k: v for k, v in os.environ.items() if k != "FABDEPLOY_CONFIG"} | OFFLINE
    proc = subprocess.Popen([FAB, "-H", f"{a.ssh_target()},{b.ssh_target()}", "logs", "-f", "--which", "app"],
                            cwd=proj.root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, out = set(), []

    def read():
        for line in proc.stdout:
            out.append(line)
            m = re.match(r"^(\S+)\s+app\s+\|", line)
            if m:
                seen.add(m.group(1))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60  # a liveness bound, not a timing assertion
        while seen != {a.address, b.address} and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert seen == {a.address, b.address}, "".join(out)


def make_lock(host, age: str) -> None:
    host.exec(f"mkdir {LOCK} && echo 'ghost@test (pid 1, deploy)' > {LOCK}/info && touch -d '{age}' {LOCK}",
              user="deploy")


def test_unlock_works_on_both_hosts_in_one_call(pair):
    a, b, *_ = pair
    make_lock(a, "now")          # young: refused without --force
    make_lock(b, "2 days ago")   # older than lock.ttl: removed
    res = fab(pair, "unlock")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "younger than lock.ttl" in res.stderr and a.address in res.stderr, res.stderr
    assert not b.path(LOCK).exists()  # the first host failing did not stop the second
    assert re.search(rf"^{re.escape(b.address)}: removed the lock held by ghost@test", res.stdout, re.M), res.stdout
    assert a.path(LOCK).exists()


def test_rollback_works_on_both_hosts_in_one_call(pair):
    a, b, proj, cache, seen = pair
    assert a.path(LOCK).exists()  # left by the unlock test: a's rollback is refused, b's goes on
    res = fab(pair, "rollback", "--to", seen["second"])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "deploy lock held by ghost@test" in res.stderr and a.address in res.stderr, res.stderr
    assert current(a) == seen["first"] and current(b) == seen["second"]
    res = fab(pair, "unlock", "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    assert not a.path(LOCK).exists()


def sshd_logins(host) -> int:
    return (host.base / "sshd.log").read_text().count("Accepted publickey")


def test_another_executor_is_refused_before_any_host_is_touched(pair, tmp_path):
    a, b, proj, cache, _ = pair
    shutil.copy(proj.root / "fabfile.py", tmp_path / "fabfile.py")
    (tmp_path / "deploy.toml").write_text((proj.root / "deploy.toml").read_text()
                                          .replace('source = "src"', f'source = "{proj.src}"'))
    (tmp_path / "fabric.yaml").write_text("tasks:\n  executor_class: fabric.executor.Executor\n")
    before = sshd_logins(a), sshd_logins(b)
    res = run_fab(tmp_path, "-H", f"{a.ssh_target()},{b.ssh_target()}", "deploy", cache=cache)
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "fabric.executor.Executor" in err and "fabdeploy.executor.FleetExecutor" in err, err
    assert (sshd_logins(a), sshd_logins(b)) == before


def test_the_invoke_command_lists_the_tasks(tmp_path):
    (tmp_path / "tasks.py").write_text(TEAM_FABFILE)
    res = subprocess.run([str(BIN / "invoke"), "--list"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert {"deploy", "rollback", "releases", "status", "logs", "unlock", "stop", "start", "restart",
            "reload"} <= set(re.findall(r"^  (\w+)", res.stdout, re.M))


def test_every_fabdeploy_task_is_a_fleet_task():
    """Each task in `from fabdeploy.tasks import *` is called once for all -H hosts by FleetExecutor."""
    from fabdeploy import executor
    from fabdeploy import tasks
    assert sorted(tasks.__all__) == ["db", "deploy", "disconnect", "doctor", "logs", "manage", "provision", "releases",
                                     "reload", "restart", "rollback", "secrets", "start", "status", "stop", "sudoers",
                                     "unlock"]
    for name in tasks.__all__:
        assert executor.is_fleet_task(getattr(tasks, name)), name
