"""Unit tests of `fab provision`'s pure parts: the system from os-release, the package plan per family, the
steps' shell (run by a real sh on files under tmp_path), the config keys."""
from __future__ import annotations

import subprocess

import pytest

from fabdeploy.config import parse_config
from fabdeploy.errors import ConfigError
from fabdeploy.provision import layout, packages, steps, system, users
from fabdeploy.provision.run import summary, Outcome

BASE = {"project": {"name": "mysite", "django_settings": "m.settings", "wsgi": "m.wsgi:application"},
        "paths": {"deploy_to": "/srv/mysite"}}


def cfg(**sections):
    raw = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


def osr(text: str) -> system.System:
    return system.detect(system.parse_os_release(text))


@pytest.mark.parametrize("text,family", [
    ('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "apt"),
    ('ID=debian\nVERSION_ID="13"', "apt"),
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"', "apt"),
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"', "apt"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"', "dnf"),
    ('ID="almalinux"\nID_LIKE="rhel centos fedora"\nVERSION_ID="8.9"', "dnf"),
    ('ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"', "dnf"),
    ('ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"', "dnf"),  # CentOS Stream 9
    ('ID=fedora\nVERSION_ID=40', "dnf"),
    ('ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="7"', "yum"),
])
def test_supported_systems_and_their_package_tool(text, family):
    assert osr(text).family == family


@pytest.mark.parametrize("text,named", [
    ('ID=debian\nVERSION_ID="11"\nPRETTY_NAME="Debian GNU/Linux 11 (bullseye)"', "Debian GNU/Linux 11 (bullseye)"),
    ('ID=ubuntu\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"', "Ubuntu 20.04.6 LTS"),
    ('ID=rocky\nID_LIKE="rhel"\nVERSION_ID="10.0"\nPRETTY_NAME="Rocky Linux 10.0"', "Rocky Linux 10.0"),
    ('ID=alpine\nVERSION_ID=3.19.1\nPRETTY_NAME="Alpine Linux v3.19"', "Alpine Linux v3.19"),
])
def test_an_unsupported_system_is_one_line_naming_it(text, named):
    with pytest.raises(system.UnsupportedSystem) as exc:
        system.detect(system.parse_os_release(text), "web1")
    msg = str(exc.value)
    assert msg.startswith("web1: unsupported system " + named) and "\n" not in msg and "nothing was changed" in msg


DEB = osr('ID=debian\nVERSION_ID="12"')
ROCKY9 = osr('ID=rocky\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"')
FEDORA = osr('ID=fedora\nVERSION_ID=40')
C7 = osr('ID=centos\nID_LIKE="rhel fedora"\nVERSION_ID="7"')


def test_package_plan_per_family():
    c = cfg()
    assert packages.plan(c, DEB) == ["python3", "python3-venv", "build-essential", "python3-dev", "nginx", "cron"]
    assert packages.plan(c, ROCKY9) == ["python3.11", "gcc", "python3.11-devel", "nginx", "cronie"]
    assert packages.plan(c, FEDORA) == ["python3", "gcc", "python3-devel", "nginx", "cronie"]
    assert packages.plan(c, C7) == ["python3", "gcc", "python3-devel", "nginx", "cronie"]


def test_wheelhouse_drops_the_compiler_and_the_manager_picks_its_package():
    c = cfg(pip={"wheelhouse": True}, app={"manager": "supervisor"})
    assert packages.plan(c, DEB) == ["python3", "python3-venv", "nginx", "supervisor"]
    assert packages.plan(cfg(pip={"wheelhouse": True}, app={"manager": "systemd"}), ROCKY9) == ["python3.11", "nginx"]


def test_a_versioned_project_python_is_installed_by_name():
    c = cfg(project={"python": "python3.12"}, pip={"wheelhouse": True})
    assert packages.plan(c, DEB)[:2] == ["python3.12", "python3.12-venv"]
    assert packages.plan(c, FEDORA)[0] == "python3.12"


def test_nftables_only_on_app_hosts_behind_balancers():
    fleet = cfg(roles={"app": ["a1"], "lb": ["lb1"]}, pip={"wheelhouse": True})
    assert "nftables" in packages.plan(fleet, DEB, "app")
    assert "nftables" not in packages.plan(fleet, DEB, "lb")
    off = cfg(roles={"app": ["a1"], "lb": ["lb1"]}, balancer={"firewall": "off"})
    assert "nftables" not in packages.plan(off, DEB, "app")
    assert "nftables" not in packages.plan(cfg(), DEB, "app")


def run_steps(tmp_path, st: list[steps.Step], plan=False):
    text = "\n".join(["set -e", *[ln for s in st for ln in steps.step_lines(s, plan)]])
    return subprocess.run(["sh", "-c", text], capture_output=True, text=True, cwd=tmp_path)


def test_a_step_reports_changed_then_ok_and_plan_changes_nothing(tmp_path):
    f = tmp_path / "f"
    st = steps.Step("touch", [f"[ -f {f} ]"], [f"touch {f}"], what="created f")
    res = run_steps(tmp_path, [st], plan=True)
    assert steps.parse(res.stdout) == [("touch", "would change: created f")] and not f.exists()
    res = run_steps(tmp_path, [st])
    assert steps.parse(res.stdout) == [("touch", "changed: created f")] and f.exists()
    assert steps.parse(run_steps(tmp_path, [st]).stdout) == [("touch", "ok")]


def test_a_failing_step_stops_with_one_line_naming_it(tmp_path):
    bad = steps.Step("broken", ["false"], ["echo starting", "echo 'no such package' >&2", "exit 3"], what="x")
    after = steps.Step("after", ["false"], ["true"])
    res = run_steps(tmp_path, [bad, after])
    assert res.returncode != 0 and steps.parse(res.stdout) == []
    assert "step broken failed (x): no such package" in res.stderr


def test_a_not_yet_step_is_skipped(tmp_path):
    res = run_steps(tmp_path, [steps.not_yet("sudoers", "later")])
    assert steps.parse(res.stdout) == [("sudoers", "skipped (not yet: later)")]


def test_layout_table_matches_the_deploys_owners():
    rows = {p: (o, g, m) for p, o, g, m in layout.table(cfg())}
    assert rows["/srv/mysite"] == ('"$d"', '"$dg"', "711")
    assert rows["/srv/mysite/shared/run"] == ('"$a"', '"$ng"', "2750")
    assert rows["/srv/mysite/shared/db"] == ('"$a"', '"$ag"', "700")
    assert rows["/srv/mysite/releases"] == ('"$d"', '"$ag"', "2750")


def test_pip_index_is_written_and_kept_with_other_settings(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    monkeypatch.setattr(layout, "PIP_CONF", str(conf))
    st = layout.pip_step(cfg(pip={"index_url": "https://m.example/simple"}))
    assert steps.parse(run_steps(tmp_path, st).stdout) == [("pip-index", "changed: " + str(conf) + ": index-url set")]
    assert conf.read_text() == "[global]\nindex-url = https://m.example/simple\n"
    conf.write_text("[global]\ntimeout = 60\nindex-url = https://old.example/simple\n")
    run_steps(tmp_path, st)
    assert conf.read_text() == "[global]\ntimeout = 60\nindex-url = https://m.example/simple\n"
    assert steps.parse(run_steps(tmp_path, st).stdout) == [("pip-index", "ok")]
    assert layout.pip_step(cfg()) == []


def test_public_keys_from_the_config_or_beside_the_identity_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE me@laptop"
    assert users.public_keys(cfg(provision={"authorized_keys": [key]})) == [key]
    (tmp_path / "id").write_text("private")
    (tmp_path / "id.pub").write_text(key + "\n")
    assert users.public_keys(cfg(ssh={"identity_file": str(tmp_path / "id")})) == [key]
    with pytest.raises(ConfigError, match="provision.authorized_keys is empty"):
        users.public_keys(cfg())


def test_bad_provision_keys_are_one_line():
    with pytest.raises(ConfigError, match="provision.authorized_keys"):
        cfg(provision={"authorized_keys": ["not a key"]})
    with pytest.raises(ConfigError, match="provision.deploy_user"):
        cfg(provision={"deploy_user": "Bad User"})


def test_summary_counts_changes_per_host():
    ok = Outcome("web1", "Debian GNU/Linux 12 (bookworm)", [("packages", "ok"), ("layout", "changed: x"),
                                                            ("sudoers", "skipped (not yet: y)")])
    bad = Outcome("web2", error="web2: unsupported system Alpine\nmore")
    lines = summary([ok, bad], plan=False).splitlines()
    assert lines[0].split() == ["HOST", "SYSTEM", "CHANGED", "RESULT", "ERROR"]
    assert lines[1].split()[-2:] == ["1", "ok"] and "FAILED" in lines[2]
