"""supervisor end to end (`[app] manager = "supervisor"`), real fab, sshd, nginx, supervisord from Debian
inside the lab host (its private /etc/supervisor, /run and /var/log), uWSGI and gunicorn from the wheels.

uWSGI host: first deployed without a manager (a daemonized master), then switched to supervisor by the
config (the daemon is stopped first, one master only, run by supervisord), reloaded under load by a deploy,
restarted by supervisor after a crash, stopped and started, switched to the uWSGI emperor and back to
supervisor under load (each switch a brief outage by design: the old manager's master is stopped before the
new one starts; nginx answers 502 meanwhile, never a refused or broken connection, and every request after
the deploy is served by the new release), and switched back to pidfile (the program removed).
gunicorn host: deployed under supervisor and redeployed under load with new code and a new virtualenv (the
HUP reload loads both), then switched to `[app] asgi` (uvicorn's worker) and redeployed: the reload puts the
async view on the new release. The tests of each host run in order and build on each other.
"""
from __future__ import annotations

import json
import re
import time
import pytest

from conftest import sample_config
from e2e_site import D, deploy, fab, master, new_site, page, sh, uwsgi_children, workers
from test_load_e2e import Load

SUPERVISOR = '[app]\nmanager = "supervisor"\n'
EMPEROR = '[app]\nmanager = "emperor"\n'
VASSAL = "/etc/uwsgi/vassals/sample.ini"
PROGRAM = "/etc/supervisor/conf.d/sample.conf"
GUNICORN = '[app]\nserver = "gunicorn"\nmanager = "supervisor"\n[gunicorn]\nworkers = 2\nthreads = 2\n' \
           'graceful_timeout = 10\nreload_timeout = 20\n'


@pytest.fixture(scope="module")
def uw(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("sup-uwsgi"), tmp_path_factory, wheel_cache, "sup-uwsgi")


@pytest.fixture(scope="module")
def gu(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("sup-gunicorn"), tmp_path_factory, wheel_cache, "sup-gunicorn", GUNICORN)


def parent_comm(site, pid: int) -> str:
    return sh(site, f"cat /proc/$(awk '/^PPid:/ {{print $2}}' /proc/{pid}/status)/cmdline | tr '\\0' ' '")


def masters(site, comm: str) -> list[str]:
    """Every process of that name in this host (lab hosts share the machine's pids: the host's own are those in
    its network namespace) whose parent is not one too (the masters)."""
    return sh(site, f"ns=$(readlink /proc/self/ns/net); for p in $(pgrep -x {comm}); do "
                    '[ "$(readlink /proc/$p/ns/net)" = "$ns" ] || continue; '
                    f"pp=$(awk '/^PPid:/ {{print $2}}' /proc/$p/status); "
                    f"grep -qx {comm} /proc/$pp/comm 2>/dev/null || echo $p; done").split()


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


def test_fab_logs_shows_the_programs_output_file_beside_the_app_log(uw):
    out_file = uw.host.path(f"{D}/shared/log/uwsgi.log.out").read_text()
    last = [ln for ln in out_file.splitlines() if ln.strip()][-1]
    res = fab(uw, "logs", "-n", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^\S+\s+supervisor\s+\| " + re.escape(last) + "$", res.stdout, re.M), (last, res.stdout)
    labels = set(re.findall(r"^\S+\s+(\w+)\s+\|", res.stdout, re.M))
    assert {"app", "supervisor", "access"} <= labels, res.stdout
    res = fab(uw, "logs", "-n", "5", "--which", "manager")
    assert set(re.findall(r"^\S+\s+(\w+)\s+\|", res.stdout, re.M)) == {"supervisor"}, res.stdout


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


def switch_under_load(site, extra: str, message: str, deploy_site=None) -> tuple[str, str, list]:
    """Deploy a manager switch by config under load (with this module's deploy, or the caller's
    deploy_site); (release, output, samples after the deploy returned)."""
    site.proj.write_config(sample_config(site.host, keep=4, extra=extra))
    site.proj.commit(message, {"pages/message.txt": message + "\n"})
    before = site.releases[-1]
    with Load(site.host.address) as load:
        time.sleep(1)
        rel, out = (deploy_site or deploy)(site)
        done = time.monotonic()
        time.sleep(1)
    assert_switch_guarantee(load.samples, before, rel, done)
    return rel, out, load.samples


def assert_switch_guarantee(samples: list, before: str, rel: str, done: float) -> None:
    """What a process-manager switch guarantees under load (README, process managers): nginx answers
    throughout (a 502 while no master runs: the old manager's is stopped before the new one starts), never a
    refused or broken connection; every 200 names the old or the new release; once the deploy has returned,
    every request is served by the new release."""
    broken = [s for s in samples if s.status is None]
    assert len(samples) > 30 and broken == [], broken[:5]
    assert {s.status for s in samples} <= {200, 502}, {s.status for s in samples}
    assert {s.release for s in samples if s.status == 200} <= {before, rel}
    after = [s for s in samples if s.start > done]
    assert after and all(s.status == 200 and s.release == rel for s in after), after[:5]


def test_supervisor_to_emperor_under_load_one_master_run_by_the_emperor(uw):
    old = master(uw)
    rel, out, _ = switch_under_load(uw, EMPEROR, "Under the emperor")
    assert "process manager: supervisor -> emperor" in out and "uwsgi stopped" in out, out
    assert f"vassal {VASSAL} written" in out and "uWSGI emperor started" in out, out
    assert not uw.host.path(PROGRAM).exists() and "no such process" in ctl(uw, "status", "sample")
    pid = master(uw)
    assert pid != old and "--emperor /etc/uwsgi/vassals" in parent_comm(uw, pid)
    [emp] = masters(uw, "uwsgi")  # the emperor is the only uwsgi without a uwsgi parent
    assert uwsgi_children(uw, int(emp)) == [pid]  # and it runs one master: this project's
    assert f"Release: {rel}" in page(uw) and workers(uw, pid) == [f"{D}/releases/{rel}"] * 2


def test_emperor_back_to_supervisor_under_load_takes_the_vassal_out(uw):
    old = master(uw)
    [emp] = masters(uw, "uwsgi")
    rel, out, _ = switch_under_load(uw, SUPERVISOR, "Back under supervisor")
    assert "process manager: emperor -> supervisor" in out and "uwsgi stopped" in out, out
    assert not uw.host.path(VASSAL).exists() and uw.host.path(PROGRAM).exists()
    pid = master(uw)
    assert pid != old and "supervisord" in parent_comm(uw, pid)
    assert re.match(r"sample\s+(STARTING|RUNNING)", ctl(uw, "status", "sample")), ctl(uw, "status")
    # the emperor stays (other projects may use it) and runs nothing; one master, supervisord's
    assert uwsgi_children(uw, int(emp)) == [] and sorted(masters(uw, "uwsgi")) == sorted([emp, str(pid)])
    assert f"Release: {rel}" in page(uw) and workers(uw, pid) == [f"{D}/releases/{rel}"] * 2


def test_back_to_pidfile_removes_the_program(uw):
    uw.proj.write_config(sample_config(uw.host, keep=4))
    rel, out = deploy(uw)
    assert "process manager: supervisor -> pidfile" in out, out
    assert not uw.host.path("/etc/supervisor/conf.d/sample.conf").exists()
    assert "no such process" in ctl(uw, "status", "sample")
    pid = master(uw)
    others = [p for p in masters(uw, "uwsgi") if "--emperor" not in sh(uw, f"tr '\\0' ' ' < /proc/{p}/cmdline")]
    assert "supervisord" not in parent_comm(uw, pid) and others == [str(pid)]
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


def test_gunicorn_asgi_under_supervisor_a_deploy_reloads_the_async_view_onto_the_new_release(gu):
    """`[app] asgi`: gunicorn runs uvicorn's worker (a new worker class: a restart by supervisor); the next
    deploy is a reload of the same master and the async view answers from the new release."""
    asgi = GUNICORN.replace('manager = "supervisor"\n', 'manager = "supervisor"\nasgi = "sampleproject.asgi:application"\n')
    gu.proj.write_config(sample_config(gu.host, keep=4, extra=asgi))
    rel, out = deploy(gu)
    pid = master(gu, "gunicorn")
    assert "supervisord" in parent_comm(gu, pid)
    assert "worker_class = 'uvicorn_worker.UvicornWorker'" in gu.host.path(f"{D}/shared/config/gunicorn.conf.py").read_text()
    view = async_view(gu)
    assert view["release"] == rel and view["async"] is True
    gu.proj.commit("third", {"pages/message.txt": "Third, ASGI under supervisor\n"})
    rel, out = deploy(gu)
    assert re.search(rf"gunicorn reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    assert master(gu, "gunicorn") == pid and workers(gu, pid) == [f"{D}/releases/{rel}"] * 2
    assert async_view(gu)["release"] == rel and "Third, ASGI under supervisor" in page(gu)


def async_view(site) -> dict:
    status, _, body = site.host.http("/async/", host_header=site.host.address)
    assert status == 200, body[:500]
    return json.loads(body)
