"""uWSGI emperor end to end (`[app] manager = "emperor"`): real fab, sshd, nginx, the emperor and its vassals in
one lab host (its private /etc, /run, /var/log and /usr/local/lib/fabdeploy, where the emperor binary goes: a
versioned copy, never overwritten).

Two projects on one host share one emperor: "one" (port 80) starts under the pidfile manager and switches to
the emperor by config, "two" (port 8080) starts under it. Then a deploy and a rollback of "one" under load,
a vassal crash, stop/start, a reboot of the host (the emperor down, "one" stopped meanwhile, then the lab's
reboot, which starts the enabled units of the host's /etc: "two" comes back, "one" stays stopped), the switch
back to pidfile, and two starts of the emperor at once. The tests run in order and build on each other.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import sample_config
from e2e_site import children, deploy, fab, master, new_site, page, sh, workers
from fabdeploy.manager import emperor as emperor_manager
from test_load_e2e import Load

EMPEROR = '[app]\nmanager = "emperor"\n'
PIDFILE = "/run/fabdeploy-uwsgi-emperor.pid"
UNIT = "/etc/systemd/system/fabdeploy-uwsgi-emperor.service"
WANTS = "/etc/systemd/system/multi-user.target.wants/fabdeploy-uwsgi-emperor.service"
LIB = "/usr/local/lib/fabdeploy"
D_ONE = "/srv/one"


@pytest.fixture(scope="module")
def host(make_host):
    return make_host("emperor")


def project(host, tmp_path_factory, wheel_cache, name, port, extra=""):
    site = new_site(host, tmp_path_factory, wheel_cache, name, extra, name=name, port=port)
    site.config = lambda extra: sample_config(host, name=name, deploy_to=site.d, listen=port, keep=4, extra=extra)
    return site


@pytest.fixture(scope="module")
def one(host, tmp_path_factory, wheel_cache):
    return project(host, tmp_path_factory, wheel_cache, "one", 80)


@pytest.fixture(scope="module")
def two(host, tmp_path_factory, wheel_cache):
    return project(host, tmp_path_factory, wheel_cache, "two", 8080, EMPEROR)


def emperor(host) -> int:
    pid = int(host.path(PIDFILE).read_text())
    assert "--emperor /etc/uwsgi/vassals --emperor-tyrant" in sh(host, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    return pid


def ppid(host, pid: int) -> int:
    return int(sh(host, f"awk '/^PPid:/ {{print $2}}' /proc/{pid}/status"))


def vassals(host) -> list[str]:
    """The ini names of the emperor's running vassal masters (a child on its way out, its cmdline already
    empty, is none)."""
    lines = (sh(host, f"tr '\\0' ' ' < /proc/{k}/cmdline 2>/dev/null; true").split() for k in children(host, emperor(host)))
    return sorted(words[-1] for words in lines if words)


def vassals_soon(host, want: list[str], seconds: float = 10) -> list[str]:
    """vassals(host) once it is `want` (a vassal taken out stops after the emperor saw its ini go), or
    what it is after `seconds`."""
    deadline = time.monotonic() + seconds
    while (got := vassals(host)) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def serves(site, release: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if f"Release: {release}" in page(site):
                return
        except (AssertionError, OSError):
            pass
        assert time.monotonic() < deadline, f"{site.name} does not serve {release}"
        time.sleep(0.3)


def older_emperor_binary(host) -> Path:
    """The host's emperor binary link pointed at an older uWSGI (a stand-in that only says its version and names
    the same libpython): the next emperor deploy must copy the release's and link it."""
    fake = host.path(f"{LIB}/uwsgi-0.9.0-e2e/uwsgi")
    fake.parent.mkdir(parents=True, exist_ok=True)
    libpy = sh(host, f"grep -ao 'libpython3\\.[0-9]*' {D_ONE}/shared/config/uwsgi-venv/bin/uwsgi | head -n 1")
    fake.write_text(f"#!/bin/sh\n# {libpy}\necho 0.9.0\n")
    fake.chmod(0o755)
    tmp = host.path(f"{LIB}/uwsgi.e2e-tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to("uwsgi-0.9.0-e2e/uwsgi")
    tmp.replace(host.path(f"{LIB}/uwsgi"))
    return fake.parent


def test_a_pidfile_site_switches_to_the_emperor_by_config(one):
    host = one.host
    deploy(one)
    daemon = master(one)
    one.proj.write_config(one.config(EMPEROR))
    one.proj.commit("emperor", {"pages/message.txt": "Under the emperor\n"})
    fake = older_emperor_binary(host)
    try:
        rel, out = deploy(one)
    finally:
        shutil.rmtree(fake)
    for said in ("process manager: pidfile -> emperor", "uwsgi stopped", "uWSGI emperor binary: ",
                 f"{UNIT} written", "uWSGI emperor enabled (started at boot)", "uWSGI emperor started",
                 "vassal /etc/uwsgi/vassals/one.ini written"):
        assert said in out, (said, out)
    emp, pid = emperor(host), master(one)
    assert pid != daemon and ppid(host, pid) == emp and vassals(host) == ["one.ini"]
    # tyrant mode: the vassal runs as its file's owner, the app user (the project name); the emperor as root
    assert sh(host, "stat -c %U:%a /etc/uwsgi/vassals/one.ini") == "one:644"
    assert sh(host, f"stat -c %U /proc/{pid}") == "one" and sh(host, f"stat -c %U /proc/{emp}") == "root"
    assert "ini = /srv/one/shared/config/uwsgi.ini" in host.path("/etc/uwsgi/vassals/one.ini").read_text()
    # the emperor runs the host-wide copy, never a release's virtualenv
    exe = sh(host, f"readlink /proc/{emp}/exe")
    assert re.fullmatch(r"/usr/local/lib/fabdeploy/uwsgi-2\.[0-9.]+-[0-9a-f]{12}/uwsgi", exe), exe
    assert sh(host, f"readlink /proc/{pid}/exe") == exe and exe == sh(host, f"readlink -f {LIB}/uwsgi")
    assert sh(host, f"readlink {WANTS}") == UNIT
    assert f"Release: {rel}" in page(one) and "Under the emperor" in page(one)
    assert workers(one, pid) == [f"/srv/one/releases/{rel}"] * 2


def stale_emperor_copy(host) -> Path:
    """A copy of uWSGI left by an older version: nothing runs it, no unit names it, an hour old."""
    stale = host.path(f"{LIB}/uwsgi-2.0.0-e2estale")
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "uwsgi").write_text("#!/bin/sh\necho 2.0.0\n")
    (stale / "uwsgi").chmod(0o755)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    return stale


def test_a_second_project_shares_the_emperor_and_changes_nothing_of_it(one, two):
    host = one.host
    emp, pid_one = emperor(host), master(one)
    unit_mtime = host.path(UNIT).stat().st_mtime_ns
    live = sh(host, f"readlink -f {LIB}/uwsgi")
    stale = stale_emperor_copy(host)
    rel, out = deploy(two)
    # the deploy removed the old copy nothing uses; the emperor's own stays
    assert not stale.exists() and "uWSGI emperor: old copies removed: uwsgi-2.0.0-e2estale" in out, out
    assert host.path(live).is_file() and sh(host, f"readlink /proc/{emp}/exe") == live
    assert sh(host, f"readlink -f {LIB}/uwsgi") == live
    assert "vassal /etc/uwsgi/vassals/two.ini written" in out, out
    assert "process manager" not in out and "uWSGI emperor started" not in out and "emperor binary" not in out
    assert f"{UNIT} written" not in out and "enabled" not in out
    assert emperor(host) == emp and master(one) == pid_one and vassals(host) == ["one.ini", "two.ini"]
    assert host.path(UNIT).stat().st_mtime_ns == unit_mtime
    assert ppid(host, master(two)) == emp and f"Release: {rel}" in page(two)
    assert f"Release: {one.releases[-1]}" in page(one)


def test_fab_logs_shows_the_emperors_lines_about_each_projects_vassal(one, two):
    for site, other in ((one, two), (two, one)):
        res = fab(site, "logs", "-n", "20")
        assert res.returncode == 0, res.stdout + res.stderr
        mine = [ln for ln in res.stdout.splitlines() if re.match(r"^\S+\s+emperor\s+\| ", ln)]
        assert any(f"vassal {site.name}.ini" in ln for ln in mine), res.stdout
        assert all(f"{site.name}.ini" in ln and f"{other.name}.ini" not in ln for ln in mine), mine
        assert re.search(r"^\S+\s+app\s+\| ", res.stdout, re.M), res.stdout  # (beside the app's own log)
    res = fab(one, "logs", "-n", "3", "--which", "manager")
    labels = set(re.findall(r"^\S+\s+(\w+)\s+\|", res.stdout, re.M))
    assert res.returncode == 0 and labels == {"emperor"}, res.stdout + res.stderr


def test_a_deploy_and_a_rollback_under_load_reload_the_vassal_gracefully(one, two):
    host = one.host
    emp, pid, pid_two = emperor(host), master(one), master(two)
    before = one.releases[-1]
    with Load(host.address) as load:
        time.sleep(1)
        one.proj.commit("third", {"pages/message.txt": "Third under the emperor\n"})
        rel, out = deploy(one)
        assert re.search(rf"uwsgi reloaded \(master {pid}, 2 workers on {rel}\)", out), out
        assert workers(one, pid) == [f"/srv/one/releases/{rel}"] * 2
        assert "written" not in out and "emperor started" not in out  # nothing of the emperor changed
        time.sleep(1)
        res = fab(one, "rollback")
        assert res.returncode == 0 and f"rolled back to {before}" in res.stdout, res.stdout + res.stderr
        assert workers(one, pid) == [f"/srv/one/releases/{before}"] * 2
        time.sleep(1)
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 30 and failed == [], failed[:5]
    assert {s.release for s in load.samples} == {before, rel}
    assert master(one) == pid and emperor(host) == emp and master(two) == pid_two
    one.releases.append(before)


def test_a_release_failing_its_health_check_is_reverted_by_a_second_reload(one):
    """The revert reloads the vassal again seconds after the deploy's reload (a newer mtime each time)."""
    pid, good = master(one), one.releases[-1]
    views = (one.proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", "def index(request):\n    raise RuntimeError('500 on purpose')\n")
    assert broken != views
    one.proj.commit("broken", {"pages/views.py": broken})
    one.proj.write_config(one.config(EMPEROR + "[health]\ntimeout = 3\n"))
    try:
        res = fab(one, "deploy")
    finally:
        one.proj.commit("fixed", {"pages/views.py": views})
        one.proj.write_config(one.config(EMPEROR))
    out = res.stdout + res.stderr
    assert res.returncode == 1 and re.search(rf"health check failed: GET / \(Host: [^)]+\) -> 500; reverted to {good}",
                                             out), out
    assert master(one) == pid and workers(one, pid) == [f"/srv/one/releases/{good}"] * 2
    assert f"Release: {good}" in page(one)


def test_the_emperor_brings_a_crashed_vassal_back(one, two):
    host = one.host
    pid, pid_two = master(one), master(two)
    host.exec(f"kill -9 {pid}")
    deadline = time.monotonic() + 30
    while True:
        try:
            now = master(one)
        except (FileNotFoundError, ValueError):
            now = pid
        if now != pid and sh(host, f"cat /proc/{now}/comm 2>/dev/null") == "uwsgi":
            break
        assert time.monotonic() < deadline, "the emperor did not start the vassal again"
        time.sleep(0.3)
    serves(one, one.releases[-1])
    assert ppid(host, now) == emperor(host) and master(two) == pid_two


def test_stop_takes_the_vassal_out_for_good_and_start_puts_it_back(one, two):
    host = one.host
    pid_two = master(two)
    res = fab(one, "stop")
    assert res.returncode == 0 and "uwsgi stopped" in res.stdout, res.stdout + res.stderr
    assert not host.path("/etc/uwsgi/vassals/one.ini").exists()
    time.sleep(2.5)  # the emperor scans every second: it must not start it again
    assert vassals(host) == ["two.ini"] and master(two) == pid_two
    res = fab(one, "stop")
    assert res.returncode == 0 and "already stopped" in res.stdout, res.stdout + res.stderr
    res = fab(one, "status")
    assert re.search(r"^  manager   emperor \(STOPPED\)$", res.stdout, re.M), res.stdout
    res = fab(one, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert vassals(host) == ["one.ini", "two.ini"]
    assert f"Release: {one.releases[-1]}" in page(one)
    res = fab(one, "reload")
    assert res.returncode == 0 and "uwsgi reloaded" in res.stdout, res.stdout + res.stderr
    res = fab(one, "status")
    assert res.returncode == 0 and re.search(r"^  manager   emperor \(RUNNING\)$", res.stdout, re.M), res.stdout


def test_a_reboot_starts_the_enabled_unit_and_what_was_stopped_stays_stopped(one, two):
    host = one.host
    # the unit is valid for systemd (checked in the host: its ExecStart binary is in its /usr/local/lib/fabdeploy)
    res = host.exec(["systemd-analyze", "verify", UNIT], check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    emp = emperor(host)
    # the emperor goes down with its vassals (their pids name nothing any more: pidfiles gone; here their
    # zombies would stay, this machine's PID 1 does not reap orphans) and "one" is stopped meanwhile: a stop
    # that finds nothing running must still keep the emperor from starting it again
    host.exec(f"kill -9 {emp} {' '.join(map(str, children(host, emp)))}; sleep 0.5; "
              f"rm -f {PIDFILE} {one.d}/shared/run/uwsgi.pid {two.d}/shared/run/uwsgi.pid")
    res = fab(one, "stop")
    assert res.returncode == 0 and "already stopped" in res.stdout, res.stdout + res.stderr
    assert not host.path("/etc/uwsgi/vassals/one.ini").exists()
    # the lab's reboot: everything killed, /run cleared, then what the host's own /etc enables is started
    report = host.reboot()
    assert any(s.startswith("fabdeploy-uwsgi-emperor.service (simple") for s in report.started), report.text()
    serves(two, two.releases[-1])
    time.sleep(1.5)  # (the emperor has scanned its directory again)
    assert emperor(host) == report.pids["fabdeploy-uwsgi-emperor.service"] and vassals(host) == ["two.ini"]
    res = fab(one, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    serves(one, one.releases[-1])
    assert vassals(host) == ["one.ini", "two.ini"]


def test_back_to_pidfile_takes_the_vassal_out_and_leaves_the_emperor_to_the_other_project(one, two):
    host = one.host
    emp, pid_two = emperor(host), master(two)
    one.proj.write_config(one.config(""))
    rel, out = deploy(one)
    assert "process manager: emperor -> pidfile" in out, out
    assert not host.path("/etc/uwsgi/vassals/one.ini").exists()
    pid = master(one)
    assert ppid(host, pid) != emp and f"Release: {rel}" in page(one)
    # (the emperor stops the vassal taken out by itself, after the deploy: it may still be on its way out)
    assert emperor(host) == emp and vassals_soon(host, ["two.ini"]) == ["two.ini"] and master(two) == pid_two


def emperors(host) -> list[str]:
    """The emperor processes of this host (lab hosts share the machine's pids: its own are in its netns)."""
    return sh(host, "ns=$(readlink /proc/self/ns/net); for p in $(pgrep -f -- '--emperor /etc/uwsgi/vassal[s]'); do "
                    '[ "$(readlink /proc/$p/ns/net)" = "$ns" ] && echo $p; done; true').split()


def test_two_deploys_finding_the_emperor_down_start_one(two):
    host = two.host
    emp = emperor(host)
    host.exec(f"kill -9 {emp} {' '.join(map(str, children(host, emp)))}; sleep 0.5; "
              f"rm -f {PIDFILE} {two.d}/shared/run/uwsgi.pid")
    # what a deploy runs to get the emperor up, run twice at once (two projects deploying)
    host.path("/tmp/emperor-up.sh").write_text("\n".join(["set -eu", "unit=", *emperor_manager.running_lines(), ""]))
    res = host.exec("sh /tmp/emperor-up.sh & sh /tmp/emperor-up.sh & wait", user="deploy")
    assert res.stdout.count("uWSGI emperor started") == 1, res.stdout + res.stderr
    assert len(emperors(host)) == 1
    serves(two, two.releases[-1])
    assert vassals(host) == ["two.ini"]

