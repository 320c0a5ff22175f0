"""uvicorn under supervisor end to end (`[app] server = "uvicorn"`, `[app] manager = "supervisor"`): real fab,
sshd, nginx and supervisord in one lab host. supervisord runs the server through fabdeploy's runner script
(shared/config/uvicorn-run.sh: the live config's command line, its pid in the pidfile); a redeploy under light
load is uvicorn's graceful reload sent through supervisorctl (the same master, new workers on the new release,
no failed request); fab stop and fab start go through supervisorctl. The tests run in order and build on each
other."""
from __future__ import annotations

import re
import time

import pytest

from e2e_site import D, deploy, fab, master, new_site, page, sh
from test_load_e2e import Load
from test_supervisor_e2e import ctl, masters, parent_comm

UVICORN = ('[app]\nserver = "uvicorn"\nmanager = "supervisor"\nasgi = "sampleproject.asgi:application"\n'
           "[uvicorn]\nworkers = 2\ngraceful_timeout = 5\nreload_timeout = 30\n")


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("asgi-sup"), tmp_path_factory, wheel_cache, "asgi-sup", UVICORN)


def uvicorn_workers(site, pid: int) -> list[str]:
    """The cwd of each child of the master named uvicorn (its workers)."""
    kids = sh(site, f"for c in $(grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3); do "
                    "grep -qsx uvicorn /proc/$c/comm && echo $c; done; true").split()
    return [sh(site, f"readlink /proc/{k}/cwd") for k in kids]


def test_supervisord_runs_uvicorn_through_the_runner_script(site):
    rel, out = deploy(site)
    assert re.search(rf"uvicorn started \(master \d+, 2 workers on {rel}\)", out), out
    pid = master(site, "uvicorn")
    assert "supervisord" in parent_comm(site, pid) and masters(site, "uvicorn") == [str(pid)]
    conf = site.host.path("/etc/supervisor/conf.d/sample.conf").read_text()
    assert f"command=/bin/sh {D}/shared/config/uvicorn-run.sh" in conf and "user=sample" in conf
    # (supervisord says RUNNING once the program has stayed up startsecs=1; the deploy reports the master as
    # soon as it answers, which can be inside that second)
    deadline, status = time.monotonic() + 10, ""
    while time.monotonic() < deadline and not re.match(r"sample\s+(RUNNING|FATAL|BACKOFF|EXITED)", status):
        status = ctl(site, "status", "sample")
        time.sleep(0.2)
    assert re.match(rf"sample\s+RUNNING\s+pid {pid},", status), status
    assert uvicorn_workers(site, pid) == [f"{D}/releases/{rel}"] * 2
    assert sh(site, f"stat -c '%a %U %G' {D}/shared/run/uvicorn.sock") == "660 sample www-data"
    assert f"Release: {rel}" in page(site)


def test_a_redeploy_under_load_is_a_graceful_reload_through_supervisor(site):
    pid = master(site, "uvicorn")
    with Load(site.host.address) as load:
        time.sleep(1)
        site.proj.commit("second", {"pages/message.txt": "Second under supervisor\n"})
        rel, out = deploy(site)
        time.sleep(1)
    assert re.search(rf"uvicorn reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 30 and failed == [], failed[:5]
    assert {s.release for s in load.samples if s.start > load.samples[-1].start - 0.5} == {rel}
    assert master(site, "uvicorn") == pid and uvicorn_workers(site, pid) == [f"{D}/releases/{rel}"] * 2
    assert "Second under supervisor" in page(site)


def test_stop_and_start_go_through_supervisorctl(site):
    res = fab(site, "stop")
    assert res.returncode == 0 and re.search(r"uvicorn stopped \(master \d+", res.stdout), res.stdout + res.stderr
    assert masters(site, "uvicorn") == [] and re.match(r"sample\s+STOPPED", ctl(site, "status", "sample"))
    assert site.host.http("/", host_header=site.host.address)[0] == 502
    res = fab(site, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(rf"uvicorn started \(master \d+, 2 workers on {site.releases[-1]}\)", res.stdout), res.stdout
    pid = master(site, "uvicorn")
    assert "supervisord" in parent_comm(site, pid) and masters(site, "uvicorn") == [str(pid)]
    assert f"Release: {site.releases[-1]}" in page(site)
