"""The uWSGI emperor on a lab host whose PID 1 is systemd (tests/hostlab_systemd): there the emperor is
systemd's service (started with systemctl, never behind its back), a redeploy changes nothing of it, and a
reboot brings it and the site back. tests/test_emperor_e2e.py covers the rest on a plain lab host. The tests
run in order and build on each other.
"""
from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

D = "/srv/sample"
EMPEROR = '[app]\nmanager = "emperor"\n'
UNIT = "fabdeploy-uwsgi-emperor.service"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("emp-systemd", init="systemd")
    proj = make_project(tmp_path_factory.mktemp("emp-systemd"))
    proj.write_config(sample_config(host, keep=4, extra=EMPEROR))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[])


def deploy(site):
    res = run_fab(site.proj.root, "deploy", cache=site.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    site.releases.append(release_of(res.stdout))
    return site.releases[-1], res.stdout + res.stderr


def main_pid(site) -> int:
    return int(site.host.systemctl("show", "-p", "MainPID", "--value", UNIT).stdout.strip())


def master(site) -> int:
    return int(site.host.path(f"{D}/shared/run/uwsgi.pid").read_text())


def ppid(site, pid: int) -> int:
    return int(site.host.exec(f"awk '/^PPid:/ {{print $2}}' /proc/{pid}/status").stdout)


def serves(site, release: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, body = site.host.http("/", host_header=site.host.address)
            if status == 200 and f"Release: {release}".encode() in body:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, site.host.systemctl("status", UNIT, check=False).stdout
        time.sleep(0.5)


def test_the_emperor_is_systemds_service(site):
    rel, out = deploy(site)
    assert "uWSGI emperor started" in out and "uWSGI emperor enabled (started at boot)" in out, out
    assert re.search(rf"uwsgi started \(master \d+, 2 workers on {rel}\)", out), out
    assert site.host.systemctl("is-active", UNIT).stdout.strip() == "active"
    assert site.host.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    emp = main_pid(site)
    assert int(site.host.path("/run/fabdeploy-uwsgi-emperor.pid").read_text()) == emp
    assert ppid(site, master(site)) == emp
    serves(site, rel)


def test_a_redeploy_changes_nothing_of_the_emperor(site):
    emp, pid = main_pid(site), master(site)
    site.proj.commit("second", {"pages/message.txt": "Second under the emperor\n"})
    rel, out = deploy(site)
    assert re.search(rf"uwsgi reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    assert "emperor started" not in out and "written" not in out and "enabled" not in out, out
    assert main_pid(site) == emp and master(site) == pid
    serves(site, rel)


def test_fab_logs_reads_the_emperors_lines_about_the_vassal_from_its_journal(site):
    res = run_fab(site.proj.root, "logs", "-n", "5", "--which", "manager")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if re.match(r"^\S+\s+emperor\s+\| ", ln)]
    assert lines and all("sample.ini" in ln for ln in lines), res.stdout + res.stderr
    assert any("vassal sample.ini" in ln for ln in lines), res.stdout
    assert not site.host.path("/var/log/fabdeploy-uwsgi-emperor.log").exists()  # (systemd's: the journal)


def test_a_reboot_brings_the_emperor_and_the_site_back(site):
    emp = main_pid(site)
    site.host.reboot()
    serves(site, site.releases[-1])
    assert main_pid(site) != emp and ppid(site, master(site)) == main_pid(site)
