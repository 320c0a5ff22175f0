"""Bad input through the real `fab` command: one clear line naming the key or host, no traceback, no change
on the host. Also strict host-key checking and the task list."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import hostlab
from conftest import FAB, REPO, make_project, run_fab, sample_config


@pytest.fixture(scope="module")
def env(make_host, tmp_path_factory):
    host = make_host("errs")
    proj = make_project(tmp_path_factory.mktemp("errproj"))
    return host, proj


def sshd_connections(host) -> int:
    return (host.base / "sshd.log").read_text().count("Accepted publickey")


def assert_one_line_error(res, *needles):
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr + res.stdout
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


BAD_CONFIGS = [
    # (what is changed, replacement, words the error must contain)
    ("processes = 2", "procesess = 2", ["uwsgi.procesess", "'processes'"]),
    ("processes = 2", 'processes = "four"', ["uwsgi.processes", "integer"]),
    ('deploy_to = "/srv/sample"', 'deploy_to = "srv/sample"', ["paths.deploy_to", "absolute"]),
    ('name = "sample"\n', "", ["missing required key project.name"]),
    ("[nginx]", "[ngnix]", ["[ngnix]", "'nginx'"]),
    ('server_name = "', 'server_name = "x; rm -rf / #', ["nginx.server_name"]),
    ("keep_releases = 5", "keep_releases = 0", ["paths.keep_releases"]),
    ("[pip]", "[pip\n", ["invalid TOML"]),
]


@pytest.mark.parametrize("old,new,needles", BAD_CONFIGS, ids=[b[1].strip()[:24] for b in BAD_CONFIGS])
def test_invalid_config_is_one_line_before_any_ssh(env, old, new, needles):
    host, proj = env
    good = sample_config(host)
    assert old in good
    proj.write_config(good.replace(old, new, 1))
    before = sshd_connections(host)
    res = run_fab(proj.root, "deploy")
    assert_one_line_error(res, *needles)
    assert sshd_connections(host) == before  # stopped before any SSH connection
    assert not host.path("/srv/sample").exists()  # lost nothing, changed nothing


def test_missing_config_file_names_the_fix(env, tmp_path):
    (tmp_path / "fabfile.py").write_text("from fabdeploy.tasks import *\n")
    res = run_fab(tmp_path, "deploy")
    assert_one_line_error(res, "deploy.toml", "deploy.example.toml")
    res = run_fab(tmp_path, "deploy", env={"FABDEPLOY_CONFIG": str(tmp_path / "staging.toml")})
    assert_one_line_error(res, "staging.toml", "FABDEPLOY_CONFIG")


def test_config_option_and_env_var_select_the_file(env):
    host, proj = env
    proj.write_config(sample_config(host).replace("processes = 2", "processes = -1"), name="other.toml")
    res = run_fab(proj.root, "deploy", "--config", "other.toml")
    assert_one_line_error(res, "other.toml", "uwsgi.processes")
    res = run_fab(proj.root, "deploy", env={"FABDEPLOY_CONFIG": str(proj.root / "other.toml")})
    assert_one_line_error(res, "uwsgi.processes")


def test_unknown_host_key_is_refused(env, tmp_path):
    host, proj = env
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proj.write_config(sample_config(host).replace(str(hostlab.known_hosts()), str(empty)))
    res = run_fab(proj.root, "deploy", env={"HOME": str(tmp_path)})
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert re.search(rf"{re.escape(host.address)}: unknown SSH host key", res.stderr), res.stderr
    assert not host.path("/srv/sample").exists()


def test_changed_host_key_is_refused(env, tmp_path):
    host, proj = env
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kind, key = (tmp_path / "k.pub").read_text().split()[:2]
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{host.address} {kind} {key}\n")  # a different key recorded for this address
    proj.write_config(sample_config(host).replace(str(hostlab.known_hosts()), str(bad)))
    res = run_fab(proj.root, "deploy", env={"HOME": str(tmp_path)})
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "host key has CHANGED" in res.stderr, res.stderr
    assert not host.path("/srv/sample").exists()


def test_unreachable_host_is_one_line(env, tmp_path):
    host, proj = env
    proj.write_config(sample_config(host).replace(f'"{host.ssh_target()}"', '"deploy@127.0.0.1:1"'))
    res = run_fab(proj.root, "deploy")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "127.0.0.1:1: cannot connect" in res.stderr, res.stderr


def test_task_list_from_the_repo_fabfile_and_a_team_fabfile(env):
    host, proj = env
    res = run_fab(REPO, "--list")
    assert res.returncode == 0 and re.search(r"^\s+deploy\s+Deploy the project", res.stdout, re.M), res.stdout
    res = run_fab(proj.root, "--list")
    assert res.returncode == 0 and "deploy" in res.stdout
    res = run_fab(proj.root, "--help", "deploy")
    assert "--config" in res.stdout and "--verbose" in res.stdout
    # the `fabdeploy` command: the same tasks without any fabfile
    res = subprocess.run([str(Path(FAB).parent / "fabdeploy"), "--list"], cwd=proj.root, capture_output=True,
                         text=True)
    assert res.returncode == 0 and re.search(r"^\s+rollback\s+Switch back", res.stdout, re.M), res.stdout


def test_installed_package_has_no_top_level_fabfile(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                         env={**os.environ, "PIP_NO_INDEX": "1"})
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("fabdeploy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fabdeploy/__init__.py" in names and "fabdeploy/templates/nginx-site.conf.j2" in names
    assert not [n for n in names if n.split("/")[0] == "fabfile"]
