"""systemd end to end (`[app] manager = "systemd"`) on a lab host whose PID 1 is systemd (tests/hostlab_systemd:
its own pid, mount, uts and cgroup namespaces; never this machine's systemd), real fab, nginx, uWSGI.

The unit is written, verified by systemd-analyze, enabled and started (Type=notify: uWSGI tells systemd it
is ready); a deploy under load reloads the same main process with no failed request; `fab logs` reads the
journal; stop and start go through systemctl; after a reboot of the host systemd brings the site back on
the current release. The tests run in order and build on each other.
"""
from __future__ import annotations

import re
import time
import pytest

from e2e_site import D, deploy, fab, master, new_site, page, sh, workers
from test_load_e2e import Load

SYSTEMD = '[app]\nmanager = "systemd"\n'


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    return new_site(make_host("systemd", init="systemd"), tmp_path_factory, wheel_cache, "systemd", SYSTEMD)


def main_pid(site) -> int:
    return int(site.host.systemctl("show", "-p", "MainPID", "--value", "sample.service").stdout.strip())


def test_first_deploy_writes_verifies_enables_and_starts_the_unit(site):
    rel, out = deploy(site)
    assert "sample.service enabled (started at boot)" in out, out
    assert re.search(rf"uwsgi started \(master \d+, 2 workers on {rel}\)", out), out
    unit = site.host.path("/etc/systemd/system/sample.service").read_text()
    assert "Type=notify" in unit and "User=sample" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert site.host.path("/etc/systemd/system/multi-user.target.wants/sample.service").is_symlink()
    res = site.host.exec("systemd-analyze verify /etc/systemd/system/sample.service", check=False)
    assert res.returncode == 0 and "sample.service" not in res.stderr, res.stderr
    assert site.host.systemctl("is-active", "sample.service").stdout.strip() == "active"
    assert main_pid(site) == master(site)
    assert sh(site, f"stat -c %U /proc/{master(site)}") == "sample"  # (the app user)
    ini = site.host.path(f"{D}/shared/config/uwsgi.ini").read_text()
    assert "daemonize" not in ini and "logto" not in ini  # to the journal
    assert f"Release: {rel}" in page(site)


def test_a_deploy_reloads_the_same_main_process_under_load(site):
    pid = master(site)
    with Load(site.host.address) as load:
        time.sleep(1)
        site.proj.commit("second", {"pages/message.txt": "Second under systemd\n"})
        rel, out = deploy(site)
        time.sleep(1)
    assert re.search(rf"uwsgi reloaded \(master {pid}, 2 workers on {rel}\)", out), out
    assert "written" not in out  # the unit did not change
    failed = [s for s in load.samples if s.status is None or not 200 <= s.status < 300]
    assert len(load.samples) > 30 and failed == [], failed[:5]
    assert main_pid(site) == pid and workers(site, pid) == [f"{D}/releases/{rel}"] * 2


def test_logs_read_the_journal_and_status_names_systemd(site):
    res = fab(site, "logs", "-n", "50", "--which", "app")
    assert res.returncode == 0, res.stdout + res.stderr
    app = [ln for ln in res.stdout.splitlines() if re.match(r"^\S+\s+app\s+\| ", ln)]
    assert any("uWSGI" in ln or "uwsgi" in ln for ln in app), res.stdout
    res = fab(site, "status")
    assert res.returncode == 0 and re.search(r"^  manager   systemd \(active\)$", res.stdout, re.M), res.stdout


def test_stop_and_start_go_through_systemctl(site):
    res = fab(site, "stop")
    assert res.returncode == 0 and "uwsgi stopped" in res.stdout, res.stdout + res.stderr
    assert site.host.systemctl("is-active", "sample.service", check=False).stdout.strip() == "inactive"
    res = fab(site, "start")
    assert res.returncode == 0, res.stdout + res.stderr
    assert site.host.systemctl("is-active", "sample.service").stdout.strip() == "active"
    assert f"Release: {site.releases[-1]}" in page(site)


def test_the_site_comes_back_after_a_reboot(site):
    old = master(site)
    site.host.reboot()
    deadline = time.monotonic() + 60
    while True:
        try:
            if f"Release: {site.releases[-1]}" in page(site):
                break
        except (AssertionError, OSError):
            pass
        assert time.monotonic() < deadline, site.host.systemctl("status", "sample.service", check=False).stdout
        time.sleep(0.5)
    assert master(site) != old and main_pid(site) == master(site)
    assert workers(site, master(site)) == [f"{D}/releases/{site.releases[-1]}"] * 2
