"""Getting started end to end: `fabdeploy init` writes deploy.toml for the sample project, for a fresh
`django-admin startproject` site and for a project with a settings package; filled in, each deploys to a lab
host. A settings package named as project.django_settings is refused in one line."""
from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

import hostlab
from conftest import BIN, OFFLINE, git
from test_starter import sample_copy, split_settings


@pytest.fixture(scope="module")
def host(make_host):
    return make_host("init")


def fabdeploy(cwd: Path, *args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE}
    env.pop("FABDEPLOY_CONFIG", None)
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([str(BIN / "fabdeploy"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env, stdin=subprocess.DEVNULL)


def fill_in(path: Path, host, server_name: str) -> None:
    """What the user does after init: the TODO lines, plus the lab's offline wheelhouse and SSH files."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("hosts = []"):
            line = f'hosts = ["{host.ssh_target()}"]'
        elif line.startswith('server_name = "_"'):
            line = f'server_name = "{server_name}"'
        elif line.startswith("wheelhouse = false"):
            line = "wheelhouse = true"
        lines.append(line)
    lines += ["", "[ssh]", f'known_hosts = "{hostlab.known_hosts()}"', f'identity_file = "{hostlab.client_key()}"']
    path.write_text("\n".join(lines) + "\n")


def committed(project: Path) -> Path:
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "A")
    return project


def test_init_then_deploy_the_sample_project(host, tmp_path, wheel_cache):
    committed(sample_copy(tmp_path, "shopsite"))
    res = fabdeploy(tmp_path, "init", "--source", "shopsite")
    assert res.returncode == 0, res.stderr
    assert "settings sampleproject.settings, wsgi sampleproject.wsgi:application" in res.stdout
    fill_in(tmp_path / "deploy.toml", host, "shop.test")
    res = fabdeploy(tmp_path, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    status, _, body = host.http("/", host_header="shop.test")
    assert status == 200 and b"Hello from fabdeploy sample" in body
    assert host.path("/srv/shopsite/current").is_symlink()
    res = fabdeploy(tmp_path, "manage", "--", "showmigrations", "pages")
    assert res.returncode == 0 and "[X] 0001_initial" in res.stdout, res.stdout + res.stderr


def test_init_then_deploy_a_startproject_site(host, tmp_path, wheel_cache):
    subprocess.run([str(BIN / "django-admin"), "startproject", "mysite"], cwd=tmp_path, check=True)
    project = tmp_path / "mysite"
    res = fabdeploy(project, "init")  # in the project itself: source = "."
    assert res.returncode == 0, res.stderr
    text = (project / "deploy.toml").read_text()
    assert 'django_settings = "mysite.settings"' in text and 'wsgi = "mysite.wsgi:application"' in text
    assert 'requirements = ""' in text and 'packages = ["Django>=' in text
    fill_in(project / "deploy.toml", host, "mysite.test")
    res = fabdeploy(project, "deploy", cache=wheel_cache)  # a plain directory (no git): deploy.toml stays here
    assert res.returncode == 0, res.stdout + res.stderr
    status, _, body = host.http("/admin/login/", host_header="mysite.test")
    assert status == 200 and b"/static/admin/css/base.css" in body
    assert host.http("/static/admin/css/base.css", host_header="mysite.test")[0] == 200


def test_settings_package_is_refused_in_one_line_then_init_picks_its_module(host, tmp_path, wheel_cache):
    project = sample_copy(tmp_path, "pkgsite")
    split_settings(project)
    committed(project)
    config = tmp_path / "by-hand.toml"
    config.write_text(textwrap.dedent("""\
        [project]
        name = "pkgsite"
        source = "pkgsite"
        django_settings = "sampleproject.settings"
        wsgi = "sampleproject.wsgi:application"
        hosts = ["HOST"]
        [paths]
        deploy_to = "/srv/pkgsite"
        [nginx]
        server_name = "_"
        [pip]
        wheelhouse = false
        """).replace("HOST", host.ssh_target()))
    fill_in(config, host, "pkg.test")
    res = fabdeploy(tmp_path, "deploy", "--config", str(config), cache=wheel_cache)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        f"fabdeploy: {host.address}: django failed: project.django_settings sampleproject.settings is a package "
        "(base, dev, production): point it at one module, e.g. sampleproject.settings.production")
    assert "Traceback" not in res.stderr and "ROOT_URLCONF" not in res.stderr
    assert not host.path("/srv/pkgsite/current").exists()
    # init reads the same package and picks that module; the deploy then works
    res = fabdeploy(tmp_path, "init", "--source", "pkgsite")
    assert res.returncode == 0, res.stderr
    assert 'django_settings = "sampleproject.settings.production"' in (tmp_path / "deploy.toml").read_text()
    fill_in(tmp_path / "deploy.toml", host, "pkg.test")
    res = fabdeploy(tmp_path, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    status, _, body = host.http("/", host_header="pkg.test")
    assert status == 200 and b"Hello from fabdeploy sample" in body


def test_a_settings_package_importing_its_module_deploys(host, tmp_path, wheel_cache):
    project = sample_copy(tmp_path, "pkgsite2")
    split_settings(project, init="from .production import *  # noqa\n")
    committed(project)
    res = fabdeploy(tmp_path, "init", "--source", "pkgsite2")
    assert res.returncode == 0, res.stderr
    assert 'django_settings = "sampleproject.settings"' in (tmp_path / "deploy.toml").read_text()
    fill_in(tmp_path / "deploy.toml", host, "pkg2.test")
    res = fabdeploy(tmp_path, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert host.http("/", host_header="pkg2.test")[0] == 200
