"""fab stop/start/restart/reload, the builders: the phases of each action, and their shell run for real with
/bin/sh in temp dirs: the real uWSGI of the test venv for the app server, a fake sudo/nginx (test_phases's
fakebin) with /etc/nginx moved under a temp dir for the nginx site. No SSH here (tests/test_control_e2e.py)."""
from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy.front import nginx_toggle
from fabdeploy.hosts.layout import Layout
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import control, lock
from fabdeploy.steps.lock import LockOwner
from test_phases import GOOD_APP, REL_ID, UWSGI, err, fakebin, make_cfg, notes, out, sh  # noqa: F401

VENV = "0123456789abcdef"


class Site:
    """A deployed release in a temp deploy_to: `current`, its virtualenv (the test venv's real uwsgi) and its
    uWSGI ini installed; nothing running."""

    def __init__(self, tmp_path, reload_timeout=30):
        self.tmp = tmp_path
        self.cfg = make_cfg(tmp_path / "app", uwsgi={"reload_timeout": reload_timeout, "processes": 2})
        self.lay = lay = Layout(self.cfg.paths.deploy_to)
        self.p = UwsgiServer().paths(lay)
        self.R = Path(lay.release(REL_ID))
        (self.R / ".fabdeploy").mkdir(parents=True)
        (self.R / "app.py").write_text(GOOD_APP)
        (self.R / ".fabdeploy" / "venv").write_text(VENV + "\n")
        venv = Path(lay.venv(VENV))
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "uwsgi").symlink_to(UWSGI)
        (venv / ".fabdeploy-complete").touch()
        os.symlink(self.R, lay.current)
        for d in (lay.run, lay.log, lay.config):
            Path(d).mkdir(parents=True, exist_ok=True)
        Path(self.p.config).write_text(textwrap.dedent(f"""\
            [uwsgi]
            master = true
            processes = 2
            need-app = true
            vacuum = true
            socket = {self.p.socket}
            pidfile = {self.p.pidfile}
            daemonize = {self.p.log}
            chdir = {self.R}
            module = app:application
            """))

    def run(self, *phases: Phase, env=None):
        return sh(Script(list(phases)), self.tmp, env=env, timeout=180)

    def master(self) -> int | None:
        try:
            pid = int(Path(self.p.pidfile).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def workers(self, pid: int) -> list[int]:
        kids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if f"PPid:\t{pid}\n" in status.read_text():
                    kids.append(int(status.parent.name))
            except OSError:
                pass
        return sorted(kids)

    def kill(self):
        pid = self.master()
        if pid:
            for p in [pid, *self.workers(pid)]:
                try:
                    os.kill(p, 9)
                except OSError:
                    pass


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.kill()


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# --- the phases of each action ----------------------------------------------------------------------------

OWNER = LockOwner("stop", "tester@here", "t0ken", 1, "2026-01-01T00:00:00Z")


@pytest.mark.parametrize("action, with_nginx, names", [
    ("stop", False, ["lock", "stop", "finish"]),
    ("stop", True, ["lock", "nginx", "stop", "finish"]),
    ("start", False, ["lock", "start", "boot", "health", "finish"]),  # boot: the pidfile manager's @reboot line
    ("start", True, ["lock", "start", "boot", "nginx", "health", "finish"]),
    ("restart", False, ["lock", "stop", "start", "boot", "health", "finish"]),
    ("reload", False, ["lock", "reload", "health", "finish"]),
])
def test_each_action_is_one_invocation_under_the_lock(action, with_nginx, names):
    cfg = make_cfg()
    phases = control.phases(cfg, action, OWNER, 0, "web1", None, with_nginx)
    assert [p.name for p in phases] == names
    assert "mkdir /srv/shop/.fabdeploy-lock" in "\n".join(phases[0].lines)
    assert lock.release(cfg, OWNER)[0] in phases[-1].lines


def test_the_health_phase_runs_the_deploys_health_check():
    from fabdeploy.steps.health import check_command
    cfg = make_cfg()
    text = "\n".join(control.health(cfg, "web1", None).lines)
    assert check_command(cfg, "web1", None) in text


# --- the app server, for real -------------------------------------------------------------------------------

def test_start_starts_the_live_release_then_leaves_a_running_one_alone(site):
    proc = site.run(control.start(site.cfg))
    assert proc.returncode == 0, err(proc)
    pid = site.master()
    assert notes(out(proc)) == [f"uwsgi started (master {pid}, 2 workers on {REL_ID})"]
    workers = site.workers(pid)
    assert len(workers) == 2 and all(os.readlink(f"/proc/{w}/cwd") == str(site.R) for w in workers)
    again = site.run(control.start(site.cfg))
    assert again.returncode == 0, err(again)
    assert notes(out(again)) == [f"uwsgi already running (master {pid})"]
    assert site.workers(pid) == workers  # not reloaded


def test_stop_waits_until_master_and_workers_are_gone_and_is_idempotent(site):
    assert site.run(control.start(site.cfg)).returncode == 0
    pid = site.master()
    workers = site.workers(pid)
    proc = site.run(control.stop(site.cfg))
    assert proc.returncode == 0, err(proc)
    assert notes(out(proc)) == [f"uwsgi stopped (master {pid} and 2 workers gone)"]
    assert not any(alive(p) for p in [pid, *workers])  # gone when the phase returns, not later
    assert not Path(site.p.pidfile).exists() and not Path(site.p.socket).exists()
    again = site.run(control.stop(site.cfg))
    assert again.returncode == 0, err(again)
    assert notes(out(again)) == ["uwsgi already stopped"]


def test_stop_kills_a_master_that_ignores_the_stop_after_the_timeout(tmp_path):
    s = Site(tmp_path, reload_timeout=1)
    fake = tmp_path / "uwsgi"  # a "master" named uwsgi that ignores SIGINT (comm: the script's name)
    # (no children at all: a shell loop's `sleep`, between its fork and its exec, is named uwsgi too, and was
    # once counted as a worker under load)
    fake.write_text(f"#!{sys.executable}\nimport os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                    f"open({str(s.p.pidfile)!r}, 'w').write(f'{{os.getpid()}}\\n')\nwhile True:\n    time.sleep(1)\n")
    fake.chmod(0o755)
    os.system(f"setsid {q(str(fake))} </dev/null >/dev/null 2>&1 &")
    for _ in range(50):
        if s.master():
            break
        time.sleep(0.1)
    pid = s.master()
    assert pid
    proc = s.run(control.stop(s.cfg))
    assert proc.returncode == 0, err(proc)
    assert notes(out(proc)) == [f"uwsgi stopped (master {pid} and 0 workers gone, killed after 1s)"]
    assert not alive(pid)


def test_reload_refuses_a_stopped_server_and_reloads_a_running_one(site):
    refused = site.run(control.reload(site.cfg))
    assert refused.returncode == 1
    assert "uWSGI is not running: fab start starts it" in err(refused)
    assert site.master() is None  # a reload never starts what someone stopped
    assert site.run(control.start(site.cfg)).returncode == 0
    pid = site.master()
    before = site.workers(pid)
    proc = site.run(control.reload(site.cfg))
    assert proc.returncode == 0, err(proc)
    assert notes(out(proc)) == [f"uwsgi reloaded (master {pid}, 2 workers on {REL_ID})"]
    after = site.workers(pid)
    assert len(after) == 2 and not set(after) & set(before)  # new workers, on the release


def test_restart_gives_a_new_master(site):
    assert site.run(control.start(site.cfg)).returncode == 0
    old = site.master()
    phases = control.phases(site.cfg, "restart", OWNER, 0, "web1", None, False)
    proc = site.run(*[p for p in phases if p.name in ("stop", "start")])
    assert proc.returncode == 0, err(proc)
    new = site.master()
    assert new and new != old and not alive(old)
    assert notes(out(proc)) == [f"uwsgi stopped (master {old} and 2 workers gone)",
                                f"uwsgi started (master {new}, 2 workers on {REL_ID})"]


def test_start_fails_clearly_without_a_live_release(tmp_path):
    cfg = make_cfg(tmp_path / "app")
    Path(cfg.paths.deploy_to).mkdir()
    proc = sh(Script([control.start(cfg)]), tmp_path)
    assert proc.returncode == 1
    assert "nothing is deployed here (no current release)" in err(proc)


def test_stop_runs_under_the_lock_and_writes_an_audit_line(site):
    owner = LockOwner.new("stop", "tester@here")
    phases = control.phases(site.cfg, "stop", owner, 0, "web1", None, False)
    proc = sh(Script(phases, on_failure=control.on_failure(site.cfg, owner)), site.tmp)
    assert proc.returncode == 0, err(proc)
    assert not Path(lock.lock_dir(site.cfg)).exists()
    line = json.loads(Path(lock.audit_file(site.cfg)).read_text().splitlines()[-1])
    assert (line["action"], line["result"], line["release"]) == ("stop", "ok", REL_ID)


def test_a_failed_action_writes_a_failed_audit_line_and_unlocks(site):
    owner = LockOwner.new("reload", "tester@here")
    phases = control.phases(site.cfg, "reload", owner, 0, "web1", None, False)
    proc = sh(Script(phases, on_failure=control.on_failure(site.cfg, owner)), site.tmp)
    assert proc.returncode == 1  # nothing running: the reload phase fails
    assert not Path(lock.lock_dir(site.cfg)).exists()
    line = json.loads(Path(lock.audit_file(site.cfg)).read_text().splitlines()[-1])
    assert (line["action"], line["result"], line["error"]) == ("reload", "failed", "reload failed")


def test_a_held_lock_refuses_the_action_and_changes_nothing(site):
    Path(lock.lock_dir(site.cfg)).mkdir()
    owner = LockOwner.new("stop", "tester@here")
    phases = control.phases(site.cfg, "stop", owner, 0, "web1", None, False)
    proc = sh(Script(phases, on_failure=control.on_failure(site.cfg, owner)), site.tmp)
    assert proc.returncode == lock.LOCKED
    assert "deploy lock held by" in err(proc)
    assert Path(lock.lock_dir(site.cfg)).is_dir()  # not ours: left alone
    assert not Path(lock.audit_file(site.cfg)).exists()


# --- the nginx site, for real (fake sudo and nginx) ---------------------------------------------------------

class NginxSite:
    def __init__(self, tmp_path, fake, layout):
        self.tmp, self.fake = tmp_path, fake
        self.etc = tmp_path / "etc" / "nginx"
        for d in ("sites-available", "sites-enabled", "conf.d"):
            (self.etc / d).mkdir(parents=True)
        self.cfg = make_cfg(tmp_path / "app", nginx={"layout": layout})
        self.available = self.etc / "sites-available" / "shop"
        self.enabled = self.etc / "sites-enabled" / "shop"
        self.conf = self.etc / "conf.d" / "shop.conf"
        self.parked = self.etc / "conf.d" / "shop.conf.disabled"
        site = "# Managed by fabdeploy for shop; rewritten on every deploy.\nserver {}\n"
        if layout == "sites":
            self.available.write_text(site)
            self.enabled.symlink_to(self.available)
        else:
            self.conf.write_text(site)

    def run(self, lines):
        fixed = [ln.replace("/etc/nginx/", f"{self.etc}/").replace("/run/nginx.pid", f"{self.tmp}/nginx.pid")
                 for ln in lines]
        return sh(Script([Phase("nginx", fixed)]), self.tmp, env=self.fake.env)


@pytest.mark.parametrize("layout", ["sites", "conf.d"])
def test_the_site_goes_out_of_nginx_and_comes_back(tmp_path, fakebin, layout):
    ng = NginxSite(tmp_path, fakebin, layout)
    proc = ng.run(nginx_toggle.take_out_lines(ng.cfg))
    assert proc.returncode == 0, err(proc)
    if layout == "sites":
        assert not ng.enabled.exists() and not ng.enabled.is_symlink() and ng.available.exists()
        assert notes(out(proc)) == [f"nginx site taken out ({ng.enabled} removed)"]
    else:
        assert not ng.conf.exists() and ng.parked.exists()
        assert notes(out(proc)) == [f"nginx site taken out ({ng.conf} -> {ng.parked})"]
    assert "-n /usr/sbin/nginx -t" in fakebin.log()
    again = ng.run(nginx_toggle.take_out_lines(ng.cfg))
    assert again.returncode == 0 and notes(out(again)) == ["nginx site already out"]
    back = ng.run(nginx_toggle.put_back_lines(ng.cfg))
    assert back.returncode == 0, err(back)
    if layout == "sites":
        assert os.readlink(ng.enabled) == str(ng.available)
    else:
        assert ng.conf.exists() and not ng.parked.exists()
    assert notes(out(back))[0].startswith("nginx site put back")
    assert notes(out(back))[-1] == "nginx started"  # (no nginx running here: it is started)
    still = ng.run(nginx_toggle.put_back_lines(ng.cfg))
    assert still.returncode == 0 and notes(out(still))[0] == "nginx site already in"


def test_a_config_nginx_rejects_without_the_site_is_undone(tmp_path, fakebin):
    ng = NginxSite(tmp_path, fakebin, "sites")
    fakebin.nginx_fails()
    proc = ng.run(nginx_toggle.take_out_lines(ng.cfg))
    assert proc.returncode == 1
    assert "nginx -t rejected the config without the site; left as it was" in err(proc)
    assert os.readlink(ng.enabled) == str(ng.available)


def test_a_site_fabdeploy_did_not_write_is_left_alone(tmp_path, fakebin):
    ng = NginxSite(tmp_path, fakebin, "conf.d")
    ng.conf.write_text("server { listen 80; }\n")
    proc = ng.run(nginx_toggle.take_out_lines(ng.cfg))
    assert proc.returncode == 1 and "was not written by fabdeploy: left alone" in err(proc)
    assert ng.conf.exists() and fakebin.log() == ""


def test_health_is_skipped_while_the_site_is_out(tmp_path, fakebin):
    ng = NginxSite(tmp_path, fakebin, "sites")
    ng.enabled.unlink()
    proc = ng.run(control.health(ng.cfg, "web1", None).lines)
    assert proc.returncode == 0, err(proc)
    assert notes(out(proc)) == ["health check skipped: the nginx site is out (fab start --nginx puts it back)"]


def test_a_failing_health_check_fails_the_host(tmp_path, fakebin):
    ng = NginxSite(tmp_path, fakebin, "sites")
    ng.cfg = make_cfg(tmp_path / "app", nginx={"layout": "sites", "listen": "127.0.0.1:9"},
                      health={"timeout": 1})  # the discard port: nothing answers HTTP there
    proc = ng.run(control.health(ng.cfg, "web1", None).lines)
    assert proc.returncode == 1
    assert "health check failed: GET / (Host: web1): " in err(proc)


def test_the_summary_table_has_a_row_per_host_and_names_failures():
    from fabdeploy.ops.control import ControlOutcome, summary_table
    table = summary_table([ControlOutcome("web1", "stop", True, "uwsgi already stopped", "", 0.25),
                           ControlOutcome("web2", "stop", False, "", "web2: lock failed: deploy lock held by x\nmore",
                                          1.0)])
    assert table.splitlines() == [
        "HOST  ACTION  DURATION  RESULT  DETAIL",
        "web1  stop    0.2s      ok      uwsgi already stopped",
        "web2  stop    1.0s      FAILED  web2: lock failed: deploy lock held by x",
    ]


SLOW_RELOAD_UWSGI = """#!/bin/sh
# A uWSGI stand-in whose graceful reload (HUP) lets its old workers finish for 1 s before it replaces them.
if [ "$1" = --ini ]; then setsid "$0" --master </dev/null >/dev/null 2>&1 & exit 0; fi
if [ "$1" = --reload ]; then kill -HUP "$(cat "$2")"; exit 0; fi
echo $$ > {pidfile}
cd {release}
spawn() {{ w=; for i in 1 2; do sleep 300 & w="$w $!"; done; }}
trap 'sleep 1; kill $w; spawn' HUP
spawn
while :; do wait; done
"""


def test_a_reload_onto_the_same_release_waits_for_the_new_workers(tmp_path):
    """The workers running before the reload already run the release: they must not count as ready."""
    s = Site(tmp_path)
    Path(s.p.config).write_text("[uwsgi]\nmaster = true\nprocesses = 2\n")  # (no unix socket to wait for)
    fake = Path(s.lay.venv(VENV), "bin", "uwsgi")
    fake.unlink()
    fake.write_text(SLOW_RELOAD_UWSGI.format(pidfile=q(s.p.pidfile), release=q(str(s.R))))
    fake.chmod(0o755)
    try:
        assert s.run(control.start(s.cfg)).returncode == 0
        pid = s.master()
        before = s.workers(pid)
        assert len(before) == 2
        proc = s.run(control.reload(s.cfg))
        assert proc.returncode == 0, err(proc)
        after = s.workers(pid)
        assert len(after) == 2 and not set(after) & set(before), (before, after)
    finally:
        try:
            os.killpg(int(Path(s.p.pidfile).read_text()), 9)
        except (OSError, ValueError):
            pass
