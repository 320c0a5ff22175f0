"""Sites that come back after a reboot (issue 13), on lab hosts rebooted with `host.reboot()` (every process
killed with SIGKILL, /run and /tmp emptied, the nft ruleset flushed, then what the host's own /etc enables
is started: tests/hostlab_boot.py; a systemd host boots its systemd again). Real fab, nginx, uWSGI, gunicorn.

A balanced fleet (one app host, one balancer), its app host rebooted three times:
1. uWSGI without a manager, cron not enabled on the app host: the deploy warns; after the reboot the nft table
   of the app port is back (nftables.service loads /etc/nftables.d through /etc/nftables.conf) but nothing
   starts uWSGI: the balancer fails (what the kill leaves, and the proof that only the boot starts it below);
2. cron enabled (`fab start` no longer warns): after the reboot cron's @reboot line starts uWSGI on the
   current release, and the balancer serves it through the firewall (still closed to anyone else);
3. switched to supervisor by the config (the @reboot line goes): supervisord, started by its enabled unit,
   starts uWSGI (autostart).
A second project on the same app host, gunicorn under the pidfile manager (the default; its own nginx site on
port 8080), deployed before the second reboot: its own @reboot line starts gunicorn on its current release.
A systemd host (systemd is its PID 1) with gunicorn under systemd: the enabled unit brings it back.
The tests of each fixture run in order and build on each other.
"""
from __future__ import annotations

import http.client
import re
import socket
import time
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

D = "/srv/sample"
CRON = "/etc/cron.d/fabdeploy_sample"
CRON_LINK = "/etc/systemd/system/multi-user.target.wants/cron.service"
D_GU = "/srv/gsample"
CRON_GU = "/etc/cron.d/fabdeploy_gsample"
GUNICORN_PIDFILE = '[app]\nserver = "gunicorn"\n[gunicorn]\nworkers = 2\n'
GUNICORN_SYSTEMD = '[app]\nserver = "gunicorn"\nmanager = "systemd"\n[gunicorn]\nworkers = 2\n'


def fleet_config(app, lb, extra: str = "") -> str:
    base = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    return base + f'[roles]\napp = ["{app.ssh_target()}"]\nlb = ["{lb.ssh_target()}"]\n' + extra


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("rbapp"), make_host("rblb")
    proj = make_project(tmp_path_factory.mktemp("reboot-fleet"))
    proj.write_config(fleet_config(app, lb))
    proj.write_config(fleet_config(app, lb, '[app]\nmanager = "supervisor"\n'), name="supervisor.toml")
    return SimpleNamespace(app=app, lb=lb, proj=proj, cache=wheel_cache, release="")


@pytest.fixture(scope="module")
def gu(fleet, tmp_path_factory):
    """A second project on the fleet's app host: gunicorn, pidfile manager, nginx on port 8080 of that host."""
    proj = make_project(tmp_path_factory.mktemp("reboot-gunicorn"))
    proj.write_config(sample_config(fleet.app, name="gsample", deploy_to=D_GU, listen=8080, extra=GUNICORN_PIDFILE))
    return SimpleNamespace(host=fleet.app, proj=proj, cache=fleet.cache, release="")


@pytest.fixture(scope="module")
def sd(make_host, tmp_path_factory, wheel_cache):
    host = make_host("rbsystemd", init="systemd")
    proj = make_project(tmp_path_factory.mktemp("reboot-systemd"))
    proj.write_config(sample_config(host, extra=GUNICORN_SYSTEMD))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, release="")


def fab(site, *args):
    res = run_fab(site.proj.root, *args, cache=site.cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def release(host, header: str, port: int = 80) -> str | None:
    """The release the page at http://host:port/ names, None when it does not answer 200."""
    try:
        if port == 80:
            status, _, body = host.http("/", host_header=header, timeout=5)
        else:
            conn = http.client.HTTPConnection(host.address, port, timeout=5)
            try:
                conn.request("GET", "/", headers={"Host": header})
                resp = conn.getresponse()
                status, body = resp.status, resp.read()
            finally:
                conn.close()
    except OSError:
        return None
    m = re.search(rb"Release: ([0-9]{8}T[0-9]{6}Z-[0-9a-f]+)", body) if status == 200 else None
    return m.group(1).decode() if m else None


def served_again(host, header: str, rel: str, why, port: int = 80) -> None:
    """Wait (up to a minute) until the page names rel; else fail showing why(): what the boot did."""
    deadline = time.monotonic() + 60
    while release(host, header, port) != rel:
        assert time.monotonic() < deadline, why()
        time.sleep(0.3)


def master(host, name="uwsgi", d=D) -> int:
    return int(host.path(f"{d}/shared/run/{name}.pid").read_text())


def workers_cwd(host, pid: int) -> list[str]:
    kids = host.exec(f"grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3").stdout.split()
    return [host.exec(f"readlink /proc/{k}/cwd").stdout.strip() for k in kids]


def alive(host, pid: int) -> bool:
    return host.exec(f"[ -d /proc/{pid} ] && ! grep -qs '^State:.Z' /proc/{pid}/status", check=False).returncode == 0


def parent_cmdline(host, pid: int) -> str:
    return host.exec(f"cat /proc/$(awk '/^PPid:/ {{print $2}}' /proc/{pid}/status)/cmdline | tr '\\0' ' '").stdout


def nft_table(host) -> str:
    return host.exec("nft list table inet fabdeploy_sample", check=False).stdout


def port_open_to_me(app) -> bool:
    """Whether this machine (not a balancer) can connect to the app port (the firewall resets it)."""
    try:
        socket.create_connection((app.address, 8001), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


def test_1_without_cron_the_table_comes_back_and_uwsgi_does_not(fleet):
    app, lb = fleet.app, fleet.lb
    assert not app.path(CRON_LINK).exists()  # cron installed, not enabled (scripts/setup)
    out = fab(fleet, "deploy")
    fleet.release = release_of(out)
    assert ("no cron daemon is enabled on this host (apt-get install cron): uwsgi will not start after a "
            f"reboot (the pidfile manager starts it from {CRON})") in out, out
    assert f"pidfile: {CRON} written" in out and "nftables.service enabled (loads /etc/nftables.conf at boot)" in out
    assert f"nftables table inet fabdeploy_sample saved in /etc/nftables.d/fabdeploy_sample.nft" in out
    assert app.path(CRON).read_text().splitlines()[-1] == (
        f"@reboot deploy {D}/bin/start-at-boot >> {D}/shared/log/boot.log 2>&1")
    assert app.path("/etc/nftables.conf").read_text().endswith('include "/etc/nftables.d/*.nft"\n')
    assert release(lb, lb.address) == fleet.release and not port_open_to_me(app)
    old = master(app)

    report = app.reboot(check=False)
    assert report.failed == [f"{CRON}: @reboot lines, but no cron daemon is enabled in the host (cron.service or "
                             "cronie.service): a real boot would not run them"], report.text()
    assert any(s.startswith("nftables.service (oneshot") for s in report.started), report.text()
    table = nft_table(app)
    assert f"ip saddr {lb.address} accept" in table and "reject with tcp reset" in table, report.text()
    assert not alive(app, old) and not port_open_to_me(app)
    status, _, _ = lb.http("/", host_header=lb.address)
    assert status == 502  # nothing started uWSGI: the kill left the site down


def test_1b_a_gunicorn_project_on_the_same_host_writes_its_own_at_reboot_line(fleet, gu):
    out = fab(gu, "deploy")
    gu.release = release_of(out)
    assert f"pidfile: {CRON_GU} written" in out, out
    lines = gu.host.path(CRON_GU).read_text().splitlines()
    assert re.fullmatch(rf"@reboot \S+ {D_GU}/bin/start-at-boot >> {D_GU}/shared/log/boot.log 2>&1", lines[-1]), lines
    assert "gunicorn" in gu.host.path(f"{D_GU}/bin/start-at-boot").read_text()
    assert release(gu.host, gu.host.address, 8080) == gu.release
    assert fleet.lb.http("/", host_header=fleet.lb.address)[0] == 502  # the first one stays as test 1 left it
    # what a real reboot leaves: the pidfile (not on a tmpfs) names a pid that another process has by now
    # (here pid 1, root's: gunicorn, checking it with kill -0, would say "Already running on PID 1")
    pid = master(gu.host, "gunicorn", D_GU)
    gu.host.exec(f"kill -9 {pid}; echo 1 > {D_GU}/shared/run/gunicorn.pid")


def test_2_with_cron_enabled_the_at_reboot_line_starts_the_current_release(fleet):
    app, lb = fleet.app, fleet.lb
    app.exec(f"ln -s /lib/systemd/system/cron.service {CRON_LINK}")  # systemctl enable cron
    out = fab(fleet, "start")
    assert "no cron daemon" not in out and "written" not in out, out  # nothing rewritten
    assert release(lb, lb.address) == fleet.release
    old = master(app)

    report = app.reboot()
    assert any(s.startswith(f"@reboot {CRON} as deploy") for s in report.started), report.text()
    served_again(lb, lb.address, fleet.release,
                 lambda: report.text() + "\n" + app.exec(f"cat {D}/shared/log/boot.log", check=False).stdout)
    new = master(app)
    assert new != old and not alive(app, old)
    # (the page can answer a moment before the boot script's readiness wait has seen every worker)
    note = f"@@fabdeploy note uwsgi started (master {new}, 2 workers on {fleet.release})"
    deadline = time.monotonic() + 30
    while note not in app.path(f"{D}/shared/log/boot.log").read_text():
        assert time.monotonic() < deadline, app.path(f"{D}/shared/log/boot.log").read_text()
        time.sleep(0.2)
    assert app.exec(f"stat -c %U /proc/{new}").stdout.strip() == "sample"  # (the @reboot line runs as deploy; the master as the app user)
    table = nft_table(app)  # the balancer got in through the table loaded at boot; this machine does not
    assert f"ip saddr {lb.address} accept" in table and not port_open_to_me(app)


def test_2b_the_same_boot_started_gunicorn_on_its_current_release(gu):
    """(the reboot of test 2) gunicorn, daemonized by the pidfile manager, came back by its own @reboot line."""
    host = gu.host
    log = lambda: host.exec(f"tail -n 20 {D_GU}/shared/log/boot.log {D_GU}/shared/log/gunicorn.log",  # noqa: E731
                            check=False).stdout
    served_again(host, host.address, gu.release, log, port=8080)
    pid = master(host, "gunicorn", D_GU)
    assert host.exec(f"cat /proc/{pid}/comm").stdout.strip() == "gunicorn"
    assert workers_cwd(host, pid) == [f"{D_GU}/releases/{gu.release}"] * 2
    res = run_fab(gu.proj.root, "status", cache=gu.cache)
    assert res.returncode == 0, res.stdout + res.stderr


def test_3_switched_to_supervisor_supervisord_brings_it_back(fleet):
    app, lb = fleet.app, fleet.lb
    fleet.proj.commit("supervisor", {"pages/message.txt": "under supervisor\n"})
    out = fab(fleet, "deploy", "--config", "supervisor.toml")
    fleet.release = release_of(out)
    assert "process manager: pidfile -> supervisor" in out, out
    assert not app.path(CRON).exists() and not app.path(f"{D}/bin/start-at-boot").exists()
    old = master(app)

    report = app.reboot()
    assert any(s.startswith("supervisor.service") for s in report.started), report.text()
    # (the one @reboot line left is the gunicorn project's, still under the pidfile manager)
    assert "cron.service (emulated: its @reboot jobs only, 1 found)" in report.started, report.text()
    assert any(s.startswith(f"@reboot {CRON_GU} ") for s in report.started), report.text()
    served_again(lb, lb.address, fleet.release, report.text)
    new = master(app)
    assert new != old and "supervisord" in parent_cmdline(app, new)
    assert f"ip saddr {lb.address} accept" in nft_table(app) and not port_open_to_me(app)


def test_gunicorn_under_systemd_comes_back_by_its_enabled_unit(sd):
    out = fab(sd, "deploy")
    sd.release = release_of(out)
    assert "sample.service enabled (started at boot)" in out and "cron" not in out, out
    assert release(sd.host, sd.host.address) == sd.release
    old = master(sd.host, "gunicorn")

    sd.host.reboot()
    served_again(sd.host, sd.host.address, sd.release,
                 lambda: sd.host.systemctl("status", "sample.service", check=False).stdout)
    new = master(sd.host, "gunicorn")
    main = int(sd.host.systemctl("show", "-p", "MainPID", "--value", "sample.service").stdout.strip())
    assert new != old and main == new
    kids = sd.host.exec(f"grep -l '^PPid:[[:space:]]*{new}$' /proc/[0-9]*/status | cut -d/ -f3").stdout.split()
    assert [sd.host.exec(f"readlink /proc/{k}/cwd").stdout.strip() for k in kids] == [
        f"{D}/releases/{sd.release}"] * 2
