"""The uWSGI emperor on a lab host whose PID 1 is systemd (tests/hostlab_systemd): there the emperor is
systemd's service (started with systemctl, never behind its back), a redeploy changes nothing of it, and a
reboot brings it and the site back. Then the project switches to systemd's own unit and back to the emperor,
each under load (a brief outage by design: the old manager's master is stopped before the new one starts;
tests/test_supervisor_e2e.assert_switch_guarantee says what the load sees). tests/test_emperor_e2e.py covers
the rest on a plain lab host. The tests run in order and build on each other.
"""
from __future__ import annotations

import re
import time
import pytest

from conftest import run_fab
from e2e_site import deploy, master, new_site, uwsgi_children
import test_supervisor_e2e as supervisor_e2e

EMPEROR = '[app]\nmanager = "emperor"\n'
SYSTEMD = '[app]\nmanager = "systemd"\n'
VASSAL = "/etc/uwsgi/vassals/sample.ini"
APP_UNIT = "/etc/systemd/system/sample.service"
UNIT = "fabdeploy-uwsgi-emperor.service"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("emp-systemd", init="systemd"), tmp_path_factory, wheel_cache, "emp-systemd", EMPEROR)


def main_pid(site) -> int:
    return int(site.host.systemctl("show", "-p", "MainPID", "--value", UNIT).stdout.strip())


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


def switch_under_load(site, extra: str, message: str) -> tuple[str, str]:
    rel, out, _ = supervisor_e2e.switch_under_load(site, extra, message, deploy)
    return rel, out


def test_emperor_to_systemd_under_load_one_master_run_by_its_unit(site):
    emp, old = main_pid(site), master(site)
    rel, out = switch_under_load(site, SYSTEMD, "Under systemd")
    assert "process manager: emperor -> systemd" in out and "uwsgi stopped" in out, out
    assert "sample.service enabled (started at boot)" in out, out
    assert not site.host.path(VASSAL).exists()
    pid = master(site)
    app_main = int(site.host.systemctl("show", "-p", "MainPID", "--value", "sample.service").stdout.strip())
    assert pid != old and app_main == pid and ppid(site, pid) == 1
    # the emperor stays for other projects (its unit active) and runs no master any more
    assert main_pid(site) == emp and uwsgi_children(site, emp) == []
    serves(site, rel)


def test_systemd_back_to_the_emperor_under_load_removes_the_unit(site):
    emp, old = main_pid(site), master(site)
    rel, out = switch_under_load(site, EMPEROR, "Back under the emperor")
    assert "process manager: systemd -> emperor" in out and "uwsgi stopped" in out, out
    assert f"vassal {VASSAL} written" in out, out
    assert not site.host.path(APP_UNIT).exists()
    assert not site.host.path("/etc/systemd/system/multi-user.target.wants/sample.service").exists()
    assert site.host.systemctl("is-active", "sample.service", check=False).stdout.strip() == "inactive"
    pid = master(site)
    assert pid != old and main_pid(site) == emp and uwsgi_children(site, emp) == [pid]
    serves(site, rel)
