"""supervisor end to end (`[app] manager = "supervisor"`), real fab, sshd, nginx, supervisord from Debian
inside the lab host (its private /etc/supervisor, /run and /var/log), uWSGI and gunicorn from the wheels.

uWSGI host: first deployed without a manager (a daemonized master), then switched to supervisor by the
config (the daemon is stopped first, one master only, run by supervisord), reloaded under load by a deploy,
restarted by supervisor after a crash, stopped and started, and switched back (the program removed).
gunicorn host: deployed under supervisor and redeployed under load with new code and a new virtualenv (the
HUP reload loads both). The tests of each host run in order and build on each other.
"""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config
from test_load_e2e import Load

D = "/srv/sample"
SUPERVISOR = '[app]\nmanager = "supervisor"\n'
GUNICORN = '[app]\nserver = "gunicorn"\nmanager = "supervisor"\n[gunicorn]\nworkers = 2\nthreads = 2\n' \
           'graceful_timeout = 10\nreload_timeout = 20\n'


@pytest.fixture(scope="module")
def uw(make_host, tmp_path_factory, wheel_cache):
    host = make_host("sup-uwsgi")
    proj = make_project(tmp_path_factory.mktemp("sup-uwsgi"))
    proj.write_config(sample_config(host, keep=4))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[])


@pytest.fixture(scope="module")
def gu(make_host, tmp_path_factory, wheel_cache):
    host = make_host("sup-gunicorn")
    proj = make_project(tmp_path_factory.mktemp("sup-gunicorn"))
    proj.write_config(sample_config(host, keep=4, extra=GUNICORN))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[])


def fab(site, *args):
    return run_fab(site.proj.root, *args, cache=site.cache)


def deploy(site):
    res = fab(site, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    site.releases.append(release_of(res.stdout))
    return site.releases[-1], res.stdout + res.stderr


def sh(site, command: str) -> str:
    return site.host.exec(command).stdout.strip()


def master(site, name="uwsgi") -> int:
    return int(site.host.path(f"{D}/shared/run/{name}.pid").read_text())


def parent_comm(site, pid: int) -> str:
    return sh(site, f"cat /proc/$(awk '/^PPid:/ {{print $2}}' /proc/{pid}/status)/cmdline | tr '\\0' ' '")


def workers(site, pid: int) -> list[str]:
    kids = sh(site, f"grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3").split()
    return [sh(site, f"readlink /proc/{k}/cwd") for k in kids]


def masters(site, comm: str) -> list[str]:
    """Every process of that name in this host (lab hosts share the machine's pids: the host's own are those in
    its network namespace) whose parent is not one too (the masters)."""
    return sh(site, f"ns=$(readlink /proc/self/ns/net); for p in $(pgrep -x {comm}); do "
                    '[ "$(readlink /proc/$p/ns/net)" = "$ns" ] || continue; '
                    f"pp=$(awk '/^PPid:/ {{print $2}}' /proc/$p/status); "
                    f"grep -qx {comm} /proc/$pp/comm 2>/dev/null || echo $p; done").split()


def page(site) -> str:
    status, _, body = site.host.http("/", host_header=site.host.address)
    assert status == 200, body[:500]
    return body.decode()


def ctl(site, *args: str) -> str:
    return site.host.exec(["supervisorctl", *args], check=False).stdout.strip()


def test_a_daemonized_site_switches_to_supervisor_by_config(uw):
    rel, _ = deploy(uw)
    daemon = master(uw)
    assert "supervisord" not in parent_comm(uw, daemon)
    uw.proj.write_config(sample_config(uw.host, keep=4, extra=SUPERVISOR))
    uw.proj.commit("under supervisor", {"pages/message.txt": "Under supervisor\n"})
    rel, out = deploy(uw)
    assert "process manager: pidfile -> supervisor" in out and "uwsgi stopped" in out, out
    assert "supervisord started" in out, out
    pid = master(uw)
    assert pid != daemon and "supervisord" in parent_comm(uw, pid)
    assert masters(uw, "uwsgi") == [str(pid)]  # one master: nobody fights over the socket
    conf = uw.host.path("/etc/supervisor/conf.d/sample.conf").read_text()
    assert "[program:sample]" in conf and "user=sample" in conf  # (the app user)
    assert f"command='{D}/shared/config/uwsgi-venv/bin/uwsgi' --ini '{D}/shared/config/uwsgi.ini'" in conf \
        or f"command={D}/shared/config/uwsgi-venv/bin/uwsgi --ini {D}/shared/config/uwsgi.ini" in conf, conf
    ini = uw.host.path(f"{D}/shared/config/uwsgi.ini").read_text()
    assert "daemonize" not in ini and f"logto = {D}/shared/log/uwsgi.log" in ini
    # (STARTING for its first second: startsecs = 1, so a master that dies at once ends FATAL, not looping)
    assert re.match(r"sample\s+(STARTING|RUNNING\s+pid " + str(pid) + ")", ctl(uw, "status", "sample")), \
        ctl(uw, "status")
    assert f"Release: {rel}" in page(uw) and "Under supervisor" in page(uw)
    assert workers(uw, pid) == [f"{D}/releases/{rel}"] * 2


def test_a_deploy_under_supervisor_reloads_the_same_master_under_load(uw):
    pid = master(uw)
    with Load(uw.host.address) as load:
        time.sleep(1)
        uw.proj.commit("third", {"pages/message.txt": "Third under supervisor\n"})
        rel, out = deploy(uw)
        time.sleep(1)
    assert re.search(rf"uwsgi reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    assert "written" not in out  # the program did not change: supervisor was not told anything
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 30 and failed == [], failed[:5]
    assert master(uw) == pid and workers(uw, pid) == [f"{D}/releases/{rel}"] * 2


def test_supervisor_restarts_a_crashed_master(uw):
    pid = master(uw)
    uw.host.exec(f"kill -9 {pid}")
    deadline = time.monotonic() + 30
    while True:
        new = uw.host.path(f"{D}/shared/run/uwsgi.pid")
        try:
            now = int(new.read_text())
        except (FileNotFoundError, ValueError):
            now = pid
        if now != pid and sh(uw, f"cat /proc/{now}/comm 2>/dev/null") == "uwsgi":
            try:
                if f"Release: {uw.releases[-1]}" in page(uw):
                    break
            except (AssertionError, OSError):
                pass
        assert time.monotonic() < deadline, ctl(uw, "status")
        time.sleep(0.3)
    assert "supervisord" in parent_comm(uw, now)


def test_stop_and_start_go_through_supervisorctl(uw):
    res = fab(uw, "stop")
    assert res.returncode == 0 and "uwsgi stopped" in res.stdout, res.stdout + res.stderr
    assert re.match(r"sample\s+STOPPED", ctl(uw, "status", "sample")), ctl(uw, "status")
    time.sleep(2)  # supervisor must not start it again
    assert masters(uw, "uwsgi") == []
    res = fab(uw, "stop")
    assert res.returncode == 0 and "already stopped" in res.stdout, res.stdout + res.stderr
    res = fab(uw, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.match(r"sample\s+(STARTING|RUNNING)", ctl(uw, "status", "sample"))
    assert f"Release: {uw.releases[-1]}" in page(uw)
    res = fab(uw, "reload")
    assert res.returncode == 0 and "uwsgi reloaded" in res.stdout, res.stdout + res.stderr
    res = fab(uw, "status")
    assert res.returncode == 0 and re.search(r"^  manager   supervisor \(RUNNING\)$", res.stdout, re.M), res.stdout


def test_back_to_pidfile_removes_the_program(uw):
    uw.proj.write_config(sample_config(uw.host, keep=4))
    rel, out = deploy(uw)
    assert "process manager: supervisor -> pidfile" in out, out
    assert not uw.host.path("/etc/supervisor/conf.d/sample.conf").exists()
    assert "no such process" in ctl(uw, "status", "sample")
    pid = master(uw)
    assert "supervisord" not in parent_comm(uw, pid) and masters(uw, "uwsgi") == [str(pid)]
    assert f"Release: {rel}" in page(uw)


def test_gunicorn_under_supervisor_reloads_new_code_and_virtualenv_under_load(gu):
    rel, out = deploy(gu)
    assert re.search(rf"gunicorn started \(master \d+, 2 workers on {rel}\)", out), out
    pid = master(gu, "gunicorn")
    assert "supervisord" in parent_comm(gu, pid)
    conf = gu.host.path(f"{D}/shared/config/gunicorn.conf.py").read_text()
    assert "daemon = False" in conf and "preload_app = False" in conf
    old_venv = sh(gu, f"readlink {D}/shared/config/gunicorn-venv")
    with Load(gu.host.address) as load:
        time.sleep(1)
        # a package only the new virtualenv has, imported by the app: a worker on the old one cannot load it
        req = (gu.proj.src / "requirements.txt").read_text()
        wsgi = (gu.proj.src / "sampleproject" / "wsgi.py").read_text()
        gu.proj.commit("second", {"pages/message.txt": "Second under supervisor\n",
                                  "requirements.txt": req + "h11\n", "sampleproject/wsgi.py": "import h11\n" + wsgi})
        rel, out = deploy(gu)
        time.sleep(1)
    assert re.search(rf"gunicorn reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 30 and failed == [], failed[:5]
    assert master(gu, "gunicorn") == pid and workers(gu, pid) == [f"{D}/releases/{rel}"] * 2
    new_venv = sh(gu, f"readlink {D}/shared/config/gunicorn-venv")
    assert new_venv != old_venv and not list(gu.host.path(f"{old_venv}/lib").glob("python3*/site-packages/h11"))
    assert "Second under supervisor" in page(gu)
