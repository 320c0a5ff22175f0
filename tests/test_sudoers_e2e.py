"""The deploy user limited to the drop-in `fab sudoers` prints (real fab, real lab hosts): the lab's grant
(tests/hostlab.py SUDOERS_FILE, `deploy ALL=(ALL) NOPASSWD: ALL`, in the host's private /etc) is replaced by
that drop-in, with sudo logging to the host's private /var/log; then a first deploy, a redeploy, rollback,
stop (and --nginx), start (and --nginx), restart, reload, status and logs all succeed, the site answers, and
sudo's log has no refusal ("command not allowed", or with -n "a password is required"). The same for a
second project under supervisor on the same host, and for a balanced app host (its nftables firewall
applied and saved) and its balancer. The tests of the first host run in order and build on each other."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

import hostlab

SUDO_LOG = "/var/log/sudo-fabdeploy.log"
LOGGING = f"Defaults logfile={SUDO_LOG}, loglinelen=0\n"


@pytest.fixture(scope="module")
def lim(make_host, tmp_path_factory, wheel_cache):
    host = make_host("sudoers")
    proj = make_project(tmp_path_factory.mktemp("sudoers"))
    proj.write_config(sample_config(host))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[], installed=[])


def fab(lim, *args, proj=None):
    res = run_fab((proj or lim.proj).root, *args, cache=lim.cache)
    assert res.returncode == 0, f"fab {' '.join(args)}:\n{res.stdout}\n{res.stderr}\n{denials(lim.host)}"
    return res


def denials(host) -> list[str]:
    """sudo's log lines of refused commands (with -n, a command the rules do not list is logged as "a password
    is required": sudo would ask before checking further)."""
    log = host.path(SUDO_LOG)
    return [ln for ln in log.read_text().splitlines()
            if "command not allowed" in ln or "a password is required" in ln] if log.exists() else []


def install_drop_in(host, name: str, text: str) -> None:
    """Into the host's private /etc/sudoers.d, checked by visudo like an admin would."""
    path = host.path(f"/etc/sudoers.d/fabdeploy-{name}")
    path.write_text(text)
    path.chmod(0o440)
    res = host.exec(["visudo", "-c", "-f", f"/etc/sudoers.d/fabdeploy-{name}"], check=False)
    assert res.returncode == 0, res.stdout + res.stderr + text


def test_the_lab_grant_is_replaced_by_the_drop_in(lim):
    out = fab(lim, "sudoers").stdout
    assert "deploy ALL=(root) NOPASSWD: FABDEPLOY_SAMPLE\ndeploy ALL=(sample) NOPASSWD: ALL\n" in out
    install_drop_in(lim.host, "sample", out)
    install_drop_in(lim.host, "zz-log", LOGGING)
    lab_grant = lim.host.path(str(hostlab.SUDOERS_FILE))
    lab_grant.unlink()
    # the deploy user is limited now: anything else as root is refused (and logged)
    assert lim.host.exec(["sudo", "-n", "/usr/bin/id"], user="deploy", check=False).returncode != 0
    assert lim.host.exec(["sudo", "-n", "/usr/sbin/nginx", "-t"], user="deploy", check=False).returncode == 0
    assert [ln for ln in denials(lim.host) if "COMMAND=/usr/bin/id" in ln], denials(lim.host)
    lim.host.path(SUDO_LOG).write_text("")


def test_first_deploy_and_redeploy(lim):
    lim.releases.append(release_of(fab(lim, "deploy").stdout))
    assert lim.host.http("/", host_header=lim.host.address)[0] == 200
    assert lim.host.exec(["id", "-u", "sample"]).returncode == 0  # the app user, created by useradd
    lim.proj.commit("B", {"README.md": "second\n"})
    lim.releases.append(release_of(fab(lim, "deploy").stdout))
    assert lim.host.exec(["readlink", "/srv/sample/current"]).stdout.strip().endswith(lim.releases[-1])
    assert denials(lim.host) == []


def test_rollback_and_process_control(lim):
    fab(lim, "rollback")
    assert lim.host.exec(["readlink", "/srv/sample/current"]).stdout.strip().endswith(lim.releases[0])
    fab(lim, "stop", "--nginx")
    assert lim.host.exec("[ ! -e /etc/nginx/sites-enabled/sample ] && [ ! -e /etc/nginx/conf.d/sample.conf ]",
                         check=False).returncode == 0
    fab(lim, "start", "--nginx")
    assert lim.host.http("/", host_header=lim.host.address)[0] == 200
    for action in ("stop", "start", "restart", "reload"):
        fab(lim, action)
    assert lim.host.http("/", host_header=lim.host.address)[0] == 200
    assert denials(lim.host) == []


def test_status_and_logs(lim):
    status = fab(lim, "status").stdout
    assert lim.releases[0] in status
    logs = fab(lim, "logs", "-n", "5").stdout
    assert "  access | " in logs and "  app    | " in logs
    assert denials(lim.host) == []


def test_a_second_project_under_supervisor_with_its_own_drop_in(lim, tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("sudoers-sup"))
    proj.write_config(sample_config(lim.host, name="other", deploy_to="/srv/other",
                                    extra='[app]\nmanager = "supervisor"\n').replace(
        f'server_name = "{lim.host.address}"', 'server_name = "other.test"'))
    out = fab(lim, "sudoers", proj=proj).stdout
    assert re.search(r"/usr/bin/supervisorctl signal HUP other", out), out
    install_drop_in(lim.host, "other", out)
    fab(lim, "deploy", proj=proj)
    assert lim.host.http("/", host_header="other.test")[0] == 200
    for action in ("reload", "stop", "start", "restart"):
        fab(lim, action, proj=proj)
    fab(lim, "status", proj=proj)
    fab(lim, "logs", "-n", "5", proj=proj)
    assert lim.host.http("/", host_header="other.test")[0] == 200
    assert lim.host.http("/", host_header=lim.host.address)[0] == 200  # (the first project still serves)
    assert denials(lim.host) == []


def test_a_balanced_app_host_and_its_balancer_with_the_drop_in_firewall_included(make_host, tmp_path_factory,
                                                                                  wheel_cache):
    app, lb = make_host("sudo-app"), make_host("sudo-lb")
    proj = make_project(tmp_path_factory.mktemp("sudoers-fleet"))
    base = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    proj.write_config(base + f'[roles]\napp = ["{app.ssh_target()}"]\n'
                      f'lb = [{{host = "{lb.ssh_target()}", address = "{lb.address}"}}]\n')
    fleet = SimpleNamespace(host=app, cache=wheel_cache)
    out = fab(fleet, "sudoers", proj=proj).stdout
    assert "/usr/sbin/nft -f /srv/sample/shared/config/firewall.nft" in out, out
    for host in (app, lb):
        install_drop_in(host, "sample", out)
        install_drop_in(host, "zz-log", LOGGING)
        host.path(str(hostlab.SUDOERS_FILE)).unlink()
    fab(fleet, "deploy", proj=proj)
    assert lb.http("/", host_header=lb.address)[0] == 200
    assert "dport 8001" in app.exec("nft list table inet fabdeploy_sample").stdout  # the firewall is live
    assert app.path("/etc/nftables.d/fabdeploy_sample.nft").exists()  # and saved for the boot
    proj.commit("B", {"README.md": "second\n"})
    fab(fleet, "deploy", proj=proj)
    fab(fleet, "rollback", proj=proj)
    fab(fleet, "status", proj=proj)
    assert lb.http("/", host_header=lb.address)[0] == 200
    assert denials(app) == [] and denials(lb) == []
