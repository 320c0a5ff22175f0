"""`fab provision` end to end (real fab, real lab hosts, tests in order): a Debian host with no deploy user and
no deploy_to, provisioned as root through a real `apt-get install` against a private dpkg database and a
local repository of file-less packages (pkglab.py: never the machine's own database): --plan changes
nothing, the first run changes what is missing, a second run changes nothing, then the sample project
deploys as the created deploy user; an unsupported system is one line and nothing changed."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import hostlab
import pkglab
from conftest import make_project, run_fab, sample_config

D = "/srv/sample"
MISSING = "cron"  # the pidfile manager's package: the host believes it is not installed


@pytest.fixture(scope="module")
def pv(make_host, tmp_path_factory, wheel_cache):
    host = make_host("prov")
    tmp = tmp_path_factory.mktemp("prov")
    key = tmp / "newkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "provisioned", "-f", str(key)], check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    repo = pkglab.private_apt(host)
    pkglab.assert_private(host)
    pkglab.forget(host, MISSING)
    pkglab.fake_deb(repo, MISSING, pkglab.machine_version(MISSING) + "+lab1")
    pkglab.allow_root(host)
    # a fresh server: no deploy user (the host's own /etc), an empty home
    forget_user(host, hostlab.USER)
    host.exec("find /home/deploy -mindepth 1 -delete")
    proj = make_project(tmp)
    text = sample_config(host, extra=f'[provision]\nauthorized_keys = ["{pub}"]\n')
    proj.write_config(text.replace("wheelhouse = true\n",
                                   'wheelhouse = true\nindex_url = "https://mirror.example/simple"\n'))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, key=key, pub=pub)


def forget_user(host, user: str) -> None:
    """The user and its group gone from the host's own /etc (userdel would look at the machine's processes)."""
    etc = host.path("/etc")
    for name in ("passwd", "shadow", "group", "gshadow"):
        f = etc / name
        lines = [ln for ln in f.read_text().splitlines() if not ln.startswith(f"{user}:")]
        if name in ("group", "gshadow"):
            lines = [re.sub(rf"(?<=[:,]){user}(,|$)", "", ln).rstrip(",") if ln.count(":") >= 3 else ln
                     for ln in lines]
        f.write_text("\n".join(lines) + "\n")
    assert host.exec(["id", user], check=False).returncode != 0


def fab(pv, *args):
    return run_fab(pv.proj.root, *args, cache=pv.cache)


def as_root(pv, *args):
    return fab(pv, "-H", f"root@{pv.host.address}", *args)


def state(pv) -> dict:
    h = pv.host
    return {"dpkg": pkglab.status_digest(h),
            "user": h.exec(["getent", "passwd", hostlab.USER], check=False).stdout,
            "deploy_to": h.exec(["ls", "-la", D], check=False).stdout,
            "pip": h.exec(["cat", "/etc/pip.conf"], check=False).stdout,
            "home": h.exec(["ls", "-la", "/home/deploy"], check=False).stdout}


def changed(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if re.search(r": (changed|would change): ", ln)]


def test_plan_prints_what_would_change_and_changes_nothing(pv):
    before = state(pv)
    res = as_root(pv, "provision", "--plan", "--verbose")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "| # step packages" in out  # --verbose: the script
    assert f"packages: would change: installed {MISSING}" in out
    assert "deploy-user: would change: user deploy created" in out
    assert "layout: would change" in out and "pip-index: would change" in out
    assert "sudoers: would change: /etc/sudoers.d/fabdeploy-sample installed" in out
    assert "nginx: would change: nginx enabled and started" in out  # a new lab host runs no nginx
    assert state(pv) == before
    assert not pkglab.installed_version(pv.host, MISSING).startswith("installed")


def test_first_run_installs_and_creates_what_is_missing(pv):
    res = as_root(pv, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"packages: changed: installed {MISSING}" in out  # python3-venv, nginx... were there: not named
    assert pkglab.installed_version(pv.host, MISSING).startswith("installed ")
    assert "deploy-user: changed: user deploy created" in out
    assert "authorized-keys: changed: 1 key(s) added" in out
    assert "sudoers: changed: /etc/sudoers.d/fabdeploy-sample installed (visudo -c clean)" in out
    assert "manager: changed: cron enabled and started (the pidfile manager's @reboot line)" in out
    assert pv.host.exec("kill -0 $(cat /run/crond.pid)", check=False).returncode == 0
    assert "nginx: changed: nginx enabled and started" in out
    assert pv.host.exec("kill -0 $(cat /run/nginx.pid)", check=False).returncode == 0
    h = pv.host
    assert pv.pub in h.exec(["cat", "/home/deploy/.ssh/authorized_keys"]).stdout
    assert h.exec(["stat", "-c", "%U:%a", "/home/deploy/.ssh/authorized_keys"]).stdout.strip() == "deploy:600"
    assert h.exec(["stat", "-c", "%U:%G:%a", D]).stdout.strip() == "deploy:deploy:711"
    assert h.exec(["stat", "-c", "%U:%G:%a", f"{D}/shared/run"]).stdout.strip() == "sample:www-data:2750"
    assert "index-url = https://mirror.example/simple" in h.exec(["cat", "/etc/pip.conf"]).stdout
    # the provisioned key logs in as the deploy user
    ssh = subprocess.run(["ssh", "-i", str(pv.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                          "-o", f"UserKnownHostsFile={hostlab.known_hosts()}", "-o", "StrictHostKeyChecking=no",
                          f"deploy@{h.address}", "id -un"], capture_output=True, text=True, timeout=30)
    assert ssh.stdout.strip() == "deploy", ssh.stderr
    assert re.search(r"^\S+\s+Debian GNU/Linux 12 \(bookworm\)\s+\d+\s+ok$", out, re.M), out


def test_second_run_changes_nothing(pv):
    res = as_root(pv, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    assert changed(res.stdout) == [], res.stdout
    assert re.search(r"^\S+\s+Debian GNU/Linux 12 \(bookworm\)\s+0\s+ok$", res.stdout, re.M), res.stdout


def test_the_created_deploy_user_deploys_the_sample_project(pv):
    res = fab(pv, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert pv.host.http("/")[0] == 200
    # python3-venv brought Debian's pip wheel (python3-pip-whl): the venv was built without ensurepip, by the
    # host's installed pip when it has one (python3-pip: this machine's, which the lab hosts share), else that wheel
    assert pv.host.exec(["dpkg-query", "-W", "-f", "${Status}", "python3-pip-whl"]).stdout == "install ok installed"
    run = next(pv.host.path(f"{D}/venvs").glob("*/fabdeploy-pip")).read_text()
    runner = "/usr/lib/python3/dist-packages/pip/__pip-runner__.py"
    if Path(runner).exists():  # (/usr: shared with the lab hosts)
        assert run == runner + "\n", run
    else:
        assert run.startswith("/usr/share/python-wheels/pip-") and run.strip().endswith(".whl/pip"), run
    # and provision after a deploy still finds everything right
    res = as_root(pv, "provision")
    assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr


def test_an_unsupported_system_is_one_line_and_nothing_changes(make_host, tmp_path):
    """Two hosts in one run (in parallel): the Gentoo one fails with one line naming it and is left as it was;
    the Debian one is provisioned all the same; the table has a row for each."""
    host, good = make_host("provx"), make_host("provy")
    pkglab.write_os_release(host, 'NAME="Gentoo"\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\n')
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "-H", f"{host.ssh_target()},{good.ssh_target()}", "provision")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fabdeploy: {host.address}: unsupported system Gentoo Linux"), res.stderr
    assert "Traceback" not in res.stderr
    assert host.exec(["test", "-e", D], check=False).returncode != 0
    assert good.exec(["stat", "-c", "%U:%a", D]).stdout.strip() == "deploy:711"
    assert re.search(rf"^{re.escape(good.address)}\s+Debian GNU/Linux 12 \(bookworm\)\s+\d+\s+ok$", res.stdout, re.M)
    assert re.search(rf"^{re.escape(host.address)}\s+0\s+FAILED\s+.*unsupported system Gentoo", res.stdout, re.M), res.stdout

ROCKY = ('NAME="Rocky Linux"\nVERSION="9.3 (Blue Onyx)"\nID="rocky"\nID_LIKE="rhel centos fedora"\n'
         'VERSION_ID="9.3"\nPRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n')


def test_a_rocky_host_goes_through_real_dnf(make_host, tmp_path):
    """os-release says Rocky 9: provision (as the deploy user, through sudo) plans python3.11 and cronie and
    installs them with a real `dnf install` from a local repository; what the suite installed first (sudo,
    nginx) is ok; a second run changes nothing."""
    host = make_host("provr")
    pkglab.write_os_release(host, ROCKY)
    repo = pkglab.private_dnf(host)
    pkglab.fake_rpms(repo, {"sudo": "1.9.5p2", "nginx": "1.20.1", "python3.11": "3.11.5", "cronie": "1.5.7"})
    host.exec("dnf install -y sudo nginx")
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "packages: changed: installed python3.11 cronie" in res.stdout, res.stdout
    assert re.search(r"Rocky Linux 9\.3 \(Blue Onyx\)\s+\d+\s+ok$", res.stdout, re.M), res.stdout
    for name in ("python3.11", "cronie", "nginx"):
        assert host.exec(["rpm", "-q", name], check=False).returncode == 0, name
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr
    assert "packages: ok" in res.stdout


def test_a_user_without_sudo_is_one_line_and_nothing_changes(make_host, tmp_path):
    host = make_host("provs")
    for f in host.path("/etc/sudoers.d").iterdir():  # the host's own /etc: deploy loses its sudo there only
        f.unlink()
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "provision")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "provision needs root or passwordless sudo (connected as deploy" in err[0], res.stderr
    assert host.exec(["test", "-e", D], check=False).returncode != 0


def test_under_systemd_nginx_is_enabled_and_started_with_systemctl(make_host, tmp_path):
    """A host whose PID 1 is systemd (its /var an overlay of its own): nginx disabled and stopped there first;
    provision (as the deploy user, sudo) enables and starts it with systemctl; the next run changes nothing."""
    host = make_host("provd", init="systemd")
    host.systemctl("disable", "--now", "nginx")
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host))
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nginx: changed: nginx enabled and started" in res.stdout, res.stdout
    assert host.systemctl("is-enabled", "nginx").stdout.strip() == "enabled"
    assert host.systemctl("is-active", "nginx").stdout.strip() == "active"
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr
