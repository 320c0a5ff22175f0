"""Requirement files with -r/-c includes, wheels for the host's exact interpreter, and no uploaded wheels left
under deploy_to/tmp: the real `fab deploy` against one lab host (tests build on each other, in order).

The sample project gets the common nested layout: requirements.txt -> requirements/production.txt ->
base.txt, plus a constraints file pinning what .cache/wheels holds.
"""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import WHEELS, make_project, release_of, run_fab, sample_config
from test_faults_e2e import RAISING_MIGRATION  # a migration that raises



def _version(project: str) -> str:
    wheel = next(WHEELS.glob(f"{project}-*.whl"))
    return wheel.name.split("-")[1]


BASE = "Django>=5.2,<5.3  # the framework\nsqlparse\n"
NESTED = {
    "requirements.txt": "# production requirements\n-r requirements/production.txt\n",
    "requirements/production.txt": ("--requirement=base.txt\n-c ../constraints.txt\n"
                                    'gunicorn ; python_full_version < "3.11.3" and python_version >= "3.8"\n'),
    "requirements/base.txt": BASE,
    "constraints.txt": f"Django=={_version('django')}\nsqlparse=={_version('sqlparse')}\n",
}


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("reqs")
    root = tmp_path_factory.mktemp("reqs")
    proj = make_project(root)
    (proj.src / "requirements.txt").unlink()
    proj.commit("nested requirements", NESTED)
    proj.write_config(sample_config(host))
    host_py = host.exec("python3 -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])'").stdout.strip()
    return SimpleNamespace(host=host, proj=proj, root=root, cache=wheel_cache, venvs=[], host_py=host_py)


def fab(site, *args, config="deploy.toml"):
    res = run_fab(site.proj.root, "deploy", "--config", config, *args, cache=site.cache)
    return res, res.stdout + res.stderr


def venv_of(site, rel: str, deploy_to="/srv/sample") -> str:
    return site.host.path(f"{deploy_to}/releases/{rel}/.fabdeploy/venv").read_text().strip()


def site_packages(site, venv: str, deploy_to="/srv/sample"):
    return next(site.host.path(f"{deploy_to}/venvs/{venv}/lib").glob("python3*/site-packages"))


def tmp_entries(site, deploy_to="/srv/sample") -> list[str]:
    """What a deploy left under tmp/, but the last publish's exit status and pid (a few bytes that a client
    whose connection broke reads; the next publish removes them)."""
    return sorted(p.name for p in site.host.path(f"{deploy_to}/tmp").iterdir()
                  if not p.name.endswith((".publish.status", ".publish.pid")))


def wrapper(site, name: str, body: str):
    """A local 'interpreter' for pip.wheel_python: a shell script around this machine's Python."""
    path = site.root / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


RUNNER = "/usr/lib/python3/dist-packages/pip/__pip-runner__.py"  # (Debian's python3-pip, which scripts/setup installs)


def _built_without_ensurepip(site, venv: str):
    """The venv got no pip nor setuptools of its own (`-m venv --without-pip`, the host's pip run for it: its
    installed one (compiled on disk), else its wheel); its bin/pip runs that pip, for the users who inspect the
    venv."""
    packages = site_packages(site, venv)
    assert not (packages / "pip").exists() and not (packages / "setuptools").exists()
    res = site.host.exec([f"/srv/sample/venvs/{venv}/bin/pip", "list", "--disable-pip-version-check"],
                         user="deploy", check=False)
    assert res.returncode == 0 and re.search(r"(?im)^django\s+5\.2", res.stdout), res.stdout + res.stderr
    run = site.host.path(f"/srv/sample/venvs/{venv}/fabdeploy-pip").read_text()
    if Path(RUNNER).exists():
        assert run == RUNNER + "\n", run
    else:
        assert run.startswith("/usr/share/python-wheels/pip-") and run.endswith(".whl/pip\n"), run


def test_1_nested_requirements_and_constraints_deploy_from_the_wheelhouse(site):
    res, out = fab(site)
    assert res.returncode == 0, out
    assert re.search(r"venv\s+built \w+ from the wheelhouse", out), out
    rel = release_of(res.stdout)
    venv = venv_of(site, rel)
    site.venvs.append(venv)
    packages = site_packages(site, venv)
    # base.txt (two includes down) and the constraints file were honoured
    assert (packages / f"django-{_version('django')}.dist-info").is_dir() or \
        (packages / f"Django-{_version('django')}.dist-info").is_dir()
    assert list(packages.glob(f"sqlparse-{_version('sqlparse')}.dist-info"))
    # python_full_version < "3.11.3" holds on the host (3.11.2): its wheel was built and installed
    assert site.host_py == "3.11.2"
    assert (packages / "gunicorn").is_dir()
    _built_without_ensurepip(site, venv)
    assert tmp_entries(site) == []
    status, _, body = site.host.http("/", host_header=site.host.address)
    assert status == 200 and f"Release: {rel}".encode() in body


def test_2_changing_only_base_txt_rebuilds_the_venv(site):
    site.proj.commit("base.txt only", {"requirements/base.txt": BASE + "asgiref\n"})
    res, out = fab(site)
    assert res.returncode == 0, out
    assert re.search(r"venv\s+built \w+ from the wheelhouse", out) and "reused" not in out, out
    venv = venv_of(site, release_of(res.stdout))
    assert venv not in site.venvs
    _built_without_ensurepip(site, venv)  # the second venv too
    site.venvs.append(venv)


def test_3_another_building_interpreter_is_a_new_wheelhouse(site):
    """Same requirements, same host Python, another pip.wheel_python: not served from the old cache."""
    log = site.root / "builder.log"
    py = wrapper(site, "logging-python", f'echo "$*" >> {log}\nexec {sys.executable} "$@"')
    site.proj.write_config(sample_config(site.host, name="other", deploy_to="/srv/other", listen=8081).replace(
        "wheelhouse = true", f'wheelhouse = true\nwheel_python = "{py}"'), name="other.toml")
    res, out = fab(site, config="other.toml")
    assert res.returncode == 0, out
    assert re.search(r"-m pip wheel .*-r \S+/req/requirements\.txt", log.read_text()), log.read_text()
    rel = release_of(res.stdout)
    assert venv_of(site, rel, "/srv/other") == site.venvs[-1]  # the same virtualenv key on the host
    assert tmp_entries(site, "/srv/other") == []


def test_4_a_building_python_of_another_full_version_is_refused_before_upload(site):
    py = wrapper(site, "other-micro-python",
                 f'if [ "$1" = "-c" ]; then {sys.executable} "$@" | sed "s/^3\\.11\\.[0-9]*$/3.11.9/"; exit; fi\n'
                 f'exec {sys.executable} "$@"')
    site.proj.write_config(sample_config(site.host, name="third", deploy_to="/srv/third", listen=8082).replace(
        "wheelhouse = true", f'wheelhouse = true\nwheel_python = "{py}"'), name="third.toml")
    res, out = fab(site, config="third.toml")
    assert res.returncode != 0 and "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if "3.11.9" in ln]
    assert len(lines) == 1 and site.host_py in lines[0] and str(py) in lines[0], out
    assert not re.search(r"upload\s+release", out), out
    assert list(site.host.path("/srv/third/releases").iterdir()) == []
    assert tmp_entries(site, "/srv/third") == []


def test_5_a_deploy_failing_in_django_leaves_no_wheels_in_tmp(site):
    site.proj.commit("new requirement and a raising migration", {
        "requirements/base.txt": BASE + "asgiref\ngunicorn\n",
        "pages/migrations/0002_boom.py": RAISING_MIGRATION})
    res, out = fab(site)
    assert res.returncode != 0 and "migration exploded on purpose" in out, out
    assert re.search(r"upload\s+release .*wheels\)", out), out  # wheels were uploaded
    assert tmp_entries(site) == []
    os.remove(site.proj.src / "pages/migrations/0002_boom.py")
    site.proj.commit("no raising migration")


def test_6_a_health_reverted_deploy_leaves_no_wheels_in_tmp(site):
    views = (site.proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", "def index(request):\n    raise RuntimeError('500 on purpose')\n")
    assert broken != views
    site.proj.commit("new requirement and a broken page", {
        "requirements/base.txt": BASE + "asgiref\ngunicorn\nuwsgi\n", "pages/views.py": broken})
    site.proj.write_config(sample_config(site.host, extra="[health]\ntimeout = 3\n"), name="health.toml")
    res, out = fab(site, config="health.toml")
    assert res.returncode != 0 and "reverted to" in out, out
    assert re.search(r"upload\s+release .*wheels\)", out), out
    assert tmp_entries(site) == []
    site.proj.commit("page fixed", {"pages/views.py": views})


def test_7_host_side_pip_follows_the_includes(site):
    """pip.wheelhouse = false: the host's own pip (here offline, from a local wheel mirror in its pip.conf)
    installs the nested requirements from the release directory."""
    mirror = site.host.path("/srv/wheel-mirror")
    mirror.mkdir(exist_ok=True)
    for wheel in WHEELS.glob("*.whl"):
        (mirror / wheel.name).write_bytes(wheel.read_bytes())
    conf = site.host.path("/home/deploy/.config/pip/pip.conf")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("[global]\nno-index = true\nfind-links = /srv/wheel-mirror\n")
    site.proj.write_config(sample_config(site.host).replace("wheelhouse = true", "wheelhouse = false"),
                           name="hostpip.toml")
    res, out = fab(site, config="hostpip.toml")
    assert res.returncode == 0, out
    assert re.search(r"venv\s+built \w+\s", out) and "from the wheelhouse" not in out, out
    packages = site_packages(site, venv_of(site, release_of(res.stdout)))
    assert (packages / "gunicorn").is_dir() and list(packages.glob("sqlparse-*.dist-info"))


def test_8_a_failed_install_names_the_missing_requirement_and_its_marker(site):
    site.proj.commit("a requirement nobody has", {
        "requirements/base.txt": BASE + 'fabdeploy-absent-pkg==1.0 ; python_full_version >= "3.0"\n'})
    res, out = fab(site, config="hostpip.toml")
    assert res.returncode != 0 and "Traceback" not in out, out
    assert re.search(r"pip found no distribution of fabdeploy-absent-pkg .*requirements/base\.txt requires it "
                     r"with the marker 'python_full_version >= \"3\.0\"'", out), out
    assert tmp_entries(site) == []


def test_9_a_wheel_the_builder_left_out_is_named_with_its_marker(site):
    """A marker that differs between the building machine and the host (here platform_release: a builder
    whose kernel reports another release, made with a sitecustomize) leaves a wheel out of the wheelhouse;
    the host's pip fails and the error names the requirement, its file and the marker."""
    site.host.path("/home/deploy/.config/pip/pip.conf").unlink()  # (test 7's mirror would have gunicorn)
    custom = site.root / "other-kernel"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text("import platform\nplatform.release = lambda: '0.0-builder'\n")
    py = wrapper(site, "other-kernel-python", f'PYTHONPATH={custom} exec {sys.executable} "$@"')
    site.proj.commit("gunicorn only where the kernel is not the builder's", {
        "requirements/base.txt": BASE,
        "requirements/production.txt": ("--requirement=base.txt\n-c ../constraints.txt\n"
                                        'gunicorn ; platform_release != "0.0-builder"\n')})
    site.proj.write_config(sample_config(site.host).replace(
        "wheelhouse = true", f'wheelhouse = true\nwheel_python = "{py}"'), name="kernel.toml")
    live = os.readlink(site.host.path("/srv/sample/current"))
    res, out = fab(site, config="kernel.toml")
    assert res.returncode != 0 and "Traceback" not in out, out
    assert re.search(r"upload\s+release .*wheels\)", out), out
    assert ("pip found no distribution of gunicorn in the uploaded wheelhouse: requirements/production.txt "
            "requires it with the marker 'platform_release != \"0.0-builder\"', which excluded it when the "
            "wheelhouse was built") in out, out
    assert os.readlink(site.host.path("/srv/sample/current")) == live
    assert tmp_entries(site) == []


def test_10_without_a_pip_wheel_the_venv_falls_back_to_ensurepip(site):
    """A host where no pip wheel is found (hidden here by an empty directory mounted over Debian's wheel dir,
    inside the host only): the venv is built with `-m venv` as before; Debian's ensurepip reads that same
    directory, so it fails, in one line that names the packages. The wheels back: the same commit deploys."""
    site.proj.commit("a new venv", {"requirements/base.txt": BASE + "asgiref\nidna\n",
                                    "requirements/production.txt": NESTED["requirements/production.txt"]})
    site.host.path("/srv/no-wheels").mkdir(exist_ok=True)
    # (no pip wheel, and no installed pip: an empty directory over each, in the lab host's own mounts)
    hidden = ["/usr/share/python-wheels"] + ([str(Path(RUNNER).parent)] if Path(RUNNER).exists() else [])
    for d in hidden:
        site.host.exec(f"mount -n --bind /srv/no-wheels {d}")
    try:
        live = os.readlink(site.host.path("/srv/sample/current"))
        res, out = fab(site)
    finally:
        for d in hidden:
            site.host.exec(f"umount -n {d}")
    assert res.returncode != 0 and "Traceback" not in out, out
    assert re.search(r"no pip found for python3 and its ensurepip failed: cannot build the virtualenv "
                     r"\(on Debian: apt-get install python3-venv python3-pip-whl\) \S", out), out
    assert os.readlink(site.host.path("/srv/sample/current")) == live and tmp_entries(site) == []
    res, out = fab(site)
    assert res.returncode == 0 and re.search(r"venv\s+built \w+ from the wheelhouse", out), out
    _built_without_ensurepip(site, venv_of(site, release_of(res.stdout)))
