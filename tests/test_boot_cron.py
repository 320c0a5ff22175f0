"""The pidfile manager back after a reboot (manager/boot_cron.py): builders, then their shell run for real with
/bin/sh: the cron.d file and boot script written in a private copy of /etc (a mount namespace, as root, with
test_phases's fakebin sudo logging each call), and the boot script starting a stopped uWSGI site (the real
uWSGI of the test venv, test_control's Site). tests/test_reboot_e2e.py reboots lab hosts."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fabdeploy import appserver, manager
from fabdeploy.manager import boot_cron
from fabdeploy.model import Facts
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import activate, control
from fabdeploy.steps.lock import LockOwner
from test_control import Site
from test_phases import REL_ID, err, fakebin, make_cfg, make_rel, notes, out  # noqa: F401 (a fixture)

CRON = "/etc/cron.d/fabdeploy_shop"
WANTS = "systemd/system/multi-user.target.wants/cron.service"
OWNER = LockOwner("start", "tester@here", "t0ken", 1, "2026-01-01T00:00:00Z")


def test_the_cron_entry_runs_the_boot_script_as_the_deploy_user_at_boot():
    cfg = make_cfg()
    assert boot_cron.cron_path(cfg) == CRON
    assert boot_cron.cron_path(make_cfg(project={"name": "my-app.v2"})) == "/etc/cron.d/fabdeploy_my_happ_dv2"
    assert boot_cron.cron_entry(cfg, appserver.of(cfg)).splitlines() == [
        '# Managed by fabdeploy for shop (uWSGI, app.manager = "pidfile"): starts the app server at boot. '
        "Rewritten by every deploy.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "@reboot @fabdeploy-user@ /srv/shop/bin/start-at-boot >> /srv/shop/shared/log/boot.log 2>&1"]


def test_the_boot_script_is_the_start_phase_of_fab_start_and_only_the_pidfile_manager_has_one():
    cfg = make_cfg()
    script = boot_cron.boot_script(cfg, appserver.of(cfg))
    assert script.startswith("#!/bin/sh\n# Managed by fabdeploy for shop (uWSGI)")
    assert script.endswith(Script([control.start(cfg)]).text())  # without the lock: no lock phase
    assert "fabdeploy-lock" not in script
    assert manager.of(cfg).boot_lines(cfg, appserver.of(cfg)) == boot_cron.install_lines(cfg, appserver.of(cfg))
    assert [p.name for p in control.phases(cfg, "start", OWNER, 0, "web1", None, False)][:3] == [
        "lock", "start", "boot"]
    assert boot_cron.install_lines(cfg, appserver.of(cfg))[0] in activate.restart(cfg, make_rel(), Facts()).lines
    for name in ("supervisor", "systemd"):  # their own boot brings the app server back: nothing to add
        other = make_cfg(app={"manager": name})
        assert manager.of(other).boot_lines(other, appserver.of(other)) == []
        assert "boot" not in [p.name for p in control.phases(other, "start", OWNER, 0, "web1", None, False)]
        restart = "\n".join(activate.restart(other, make_rel(), Facts()).lines)
        assert "@reboot" not in restart and "start-at-boot" in restart  # (only its removal, from a pidfile host)
    # a host switching to a manager of its own loses both files
    assert manager.of(cfg).remove_lines(cfg, appserver.of(cfg)) == [
        f"if [ -e {CRON} ]; then sudo -n /usr/bin/rm -f {CRON}; fi",
        "rm -f /srv/shop/bin/start-at-boot /srv/shop/shared/config/boot.stamp"]


class Etc:
    """Lines run as one phase in a mount namespace whose /etc is a copy of this machine's."""

    def __init__(self, tmp_path, fakebin):
        self.tmp, self.fake = tmp_path, fakebin
        self.etc = tmp_path / "etc"
        subprocess.run(["cp", "-a", "/etc", str(self.etc)], check=True)
        (self.etc / WANTS).unlink(missing_ok=True)  # (as on this machine: cron installed, not enabled)

    def run(self, lines: list[str]) -> subprocess.CompletedProcess:
        script = Script([Phase("boot", lines)])
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount --bind {q(str(self.etc))} /etc && {script.command()}"],
                              cwd=self.tmp, capture_output=True, env={**os.environ, **self.fake.env}, timeout=60)

    def cron(self) -> Path:
        return self.etc / CRON.removeprefix("/etc/")


@pytest.fixture
def etc(tmp_path, fakebin):
    return Etc(tmp_path, fakebin)


def warnings(proc) -> list[str]:
    return [ln for ln in (out(proc) + err(proc)).splitlines() if ln.startswith(f"{MARK} warn ")]


def test_install_writes_both_files_once_and_warns_while_no_cron_daemon_is_enabled(tmp_path, etc):
    cfg = make_cfg(tmp_path / "app")
    Path(tmp_path / "app/shared/config").mkdir(parents=True)
    app = appserver.of(cfg)
    lines = boot_cron.install_lines(cfg, app)
    proc = etc.run(lines)
    assert proc.returncode == 0, err(proc)
    script = Path(boot_cron.script_path(cfg))
    assert script.read_text() == boot_cron.boot_script(cfg, app) and oct(script.stat().st_mode & 0o777) == "0o755"
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert etc.cron().read_text() == boot_cron.cron_entry(cfg, app).replace("@fabdeploy-user@", me)
    assert oct(etc.cron().stat().st_mode & 0o777) == "0o644"
    assert notes(out(proc)) == [f"pidfile: {CRON} written (starts uwsgi at boot: {script})"]
    assert warnings(proc) == [f"{MARK} warn no cron daemon is enabled on this host (apt-get install cron): uwsgi "
                              f"will not start after a reboot (the pidfile manager starts it from {CRON})"]
    assert not (etc.etc / "cron.d/.fabdeploy_shop.tmp").exists()
    # cron enabled (its unit's link, as `systemctl enable cron` makes it): no warning; nothing rewritten
    (etc.etc / WANTS).symlink_to("/lib/systemd/system/cron.service")
    before = (etc.cron().stat().st_mtime_ns, script.stat().st_mtime_ns)
    log = etc.fake.log()
    again = etc.run(lines)
    assert again.returncode == 0, err(again)
    assert notes(out(again)) == [] and warnings(again) == []
    assert (etc.cron().stat().st_mtime_ns, script.stat().st_mtime_ns) == before
    assert etc.fake.log() == log  # no sudo at all
    stamp = Path(boot_cron.stamp_path(cfg))
    assert stamp.read_text() == f"{boot_cron.digest(cfg, app)} {me}\n"
    # the files changed by hand after the stamp: compared again, and the cron file put back
    etc.cron().write_text(etc.cron().read_text().replace("@reboot", "#@reboot"))
    fixed = etc.run(lines)
    assert fixed.returncode == 0, err(fixed)
    assert notes(out(fixed)) == [f"pidfile: {CRON} written (starts uwsgi at boot: {script})"]
    assert etc.cron().read_text() == boot_cron.cron_entry(cfg, app).replace("@fabdeploy-user@", me)
    # a stamp for another digest or deploy user: compared again (the files already say it: nothing written)
    stamp.write_text(f"{boot_cron.digest(cfg, app)} someone-else\n")
    log = etc.fake.log()
    again = etc.run(lines)
    assert again.returncode == 0 and notes(out(again)) == [] and etc.fake.log() == log, err(again)
    assert stamp.read_text() == f"{boot_cron.digest(cfg, app)} {me}\n"
    # switching to a manager of its own: both gone
    gone = etc.run(manager.of(cfg).remove_lines(cfg, app))
    assert gone.returncode == 0, err(gone)
    assert not etc.cron().exists() and not script.exists()


def test_a_cron_file_fabdeploy_did_not_write_is_refused(tmp_path, etc):
    cfg = make_cfg(tmp_path / "app")
    Path(tmp_path / "app/shared/config").mkdir(parents=True)
    etc.cron().write_text("@reboot root /usr/local/bin/something-else\n")
    proc = etc.run(boot_cron.install_lines(cfg, appserver.of(cfg)))
    assert proc.returncode == 1
    assert [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error")] == [
        f"{MARK} error {CRON} exists and was not written by fabdeploy: rename the project (project.name) or remove "
        "that file"]
    assert etc.cron().read_text() == "@reboot root /usr/local/bin/something-else\n"


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.kill()


def test_the_boot_script_starts_the_live_release_unless_another_manager_runs_the_site(site, etc):
    cfg, app = site.cfg, appserver.of(site.cfg)
    assert etc.run(boot_cron.install_lines(cfg, app)).returncode == 0
    script = boot_cron.script_path(cfg)
    Path(site.lay.config, "manager").write_text("supervisor\n")  # the host switched: the script starts nothing
    proc = subprocess.run(["sh", script], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "another process manager runs this site now" in proc.stdout
    assert site.master() is None
    Path(site.lay.config, "manager").write_text("pidfile\n")
    # as cron runs it: PATH=/usr/bin:/bin, from another directory
    proc = subprocess.run(["sh", script], capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh"})
    assert proc.returncode == 0, proc.stderr
    pid = site.master()
    assert f"{MARK} note uwsgi started (master {pid}, 2 workers on {REL_ID})" in proc.stdout
    assert all(os.readlink(f"/proc/{w}/cwd") == str(site.R) for w in site.workers(pid))
    again = subprocess.run(["sh", script], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert f"{MARK} note uwsgi already running (master {pid})" in again.stdout


def test_a_killed_master_nobody_reaped_is_not_running(tmp_path):
    """After a power cut the pidfile names a dead master; where its zombie lingers (a parent that does not reap
    it: the lab's hosts share this machine's PID 1), it is not running: the boot script must start one."""
    from fabdeploy.remote.shell import ALIVE_FN
    zombie = subprocess.Popen(["sleep", "30"])
    try:
        zombie.kill()
        while "State:\tZ" not in Path(f"/proc/{zombie.pid}/status").read_text():
            pass
        (tmp_path / "z.pid").write_text(f"{zombie.pid}\n")
        proc = subprocess.run(["sh", "-c", ALIVE_FN + f"\nalive {q(str(tmp_path / 'z.pid'))} sleep || echo none"],
                              capture_output=True, text=True)
        assert proc.stdout == "none\n"
    finally:
        zombie.wait()
