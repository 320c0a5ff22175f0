"""Fixtures: real test hosts (network namespaces with sshd + nginx), the sample project in a git repo,
and a runner for the real `fab` command line."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostlab  # noqa: E402
import labindex  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "sample_project"
BIN = Path(sys.executable).parent
FAB = str(BIN / "fab")
WHEELS = REPO / ".cache" / "wheels"  # filled by scripts/setup: tests build wheelhouses offline from it
OFFLINE = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELS)}
# Host addresses 10.213.N.2: labindex.next_index() gives each process (each pytest-xdist worker) its own range,
# from FABDEPLOY_LAB_INDEX (default 20) in steps of FABDEPLOY_LAB_SPAN (default 60); a worker may hold up to
# that many hosts at once (tests/labindex.py says what a run needs).

TEAM_FABFILE = "from fabdeploy.tasks import *  # noqa: F401,F403\n"


@pytest.fixture(scope="session")
def lab(wheel_cache):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests create network namespaces and need root (run them as root)")
    if not list(WHEELS.glob("uwsgi-*.whl")):
        pytest.fail(f"no wheels in {WHEELS}: run scripts/setup first")
    os.environ.update(OFFLINE)  # Popen'd fab processes of the tests inherit it too
    # ... and this process's wheelhouse cache, for the fab runs that name none (not root's ~/.cache, which
    # two pytest-xdist workers would share: fabdeploy replaces a cache entry by rmtree + rename)
    os.environ["XDG_CACHE_HOME"] = str(wheel_cache)
    hostlab.ensure_machine_setup()
    return hostlab


@pytest.fixture(scope="session")
def wheel_cache(tmp_path_factory):
    """One wheelhouse cache per test process (the host can't reach an index; wheels are built here once).
    Under pytest-xdist each worker has its own basetemp, so two workers never build into the same one."""
    path = tmp_path_factory.mktemp("xdg-cache")
    return path


@pytest.fixture(scope="module")
def make_host(lab):
    created = []

    def make(name: str, init: str = "lab"):
        """A lab host; init="systemd": systemd is its PID 1 (tests/hostlab_systemd.py)."""
        host = lab.create_host(f"{name}-{os.getpid() % 10000}", labindex.next_index(), init=init)
        created.append(host)
        return host

    yield make
    for host in created:
        host.destroy()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=Test", "-c", "user.email=t@example.invalid",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Project:
    root: Path  # directory holding deploy.toml and the team fabfile
    src: Path   # the Django project (a git repo)

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        for rel, content in (files or {}).items():
            path = self.src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(self.src, "add", "-A")
        git(self.src, "commit", "-q", "-m", message)
        return git(self.src, "rev-parse", "HEAD")

    def write_config(self, text: str, name: str = "deploy.toml") -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path


def make_project(tmp: Path, source: Path = SAMPLE) -> Project:
    src = tmp / "src"
    shutil.copytree(source, src, ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3", "media"))
    git(src, "init", "-q", "-b", "main")
    proj = Project(tmp, src)
    proj.commit("A")
    (tmp / "fabfile.py").write_text(TEAM_FABFILE)
    return proj


def sample_config(host, *, name="sample", deploy_to="/srv/sample", extra="", keep=5, listen=80) -> str:
    return textwrap.dedent(f"""\
        [project]
        name = "{name}"
        source = "src"
        django_settings = "sampleproject.settings"
        wsgi = "sampleproject.wsgi:application"
        hosts = ["{host.ssh_target()}"]
        [paths]
        deploy_to = "{deploy_to}"
        keep_releases = {keep}
        [uwsgi]
        processes = 2
        threads = 2
        [nginx]
        server_name = "{host.address}"
        listen = {listen}
        [pip]
        wheelhouse = true
        [ssh]
        known_hosts = "{hostlab.known_hosts()}"
        identity_file = "{hostlab.client_key()}"
        """) + textwrap.dedent(extra)


def run_fab(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600,
            cache: Path | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("FABDEPLOY_CONFIG", None)
    full_env.update(OFFLINE)
    if cache is not None:
        full_env["XDG_CACHE_HOME"] = str(cache)
    full_env.update(env or {})
    return subprocess.run([FAB, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, stdin=subprocess.DEVNULL)


def release_of(output: str) -> str:
    m = re.search(r"deployed (\d{8}T\d{6}Z-[0-9a-f]+)", output)
    assert m, f"no release id in output:\n{output}"
    return m.group(1)


def reload_uwsgi_and_wait(app_host, front_host, want: int, timeout: float = 60) -> None:
    """HUP app_host's uWSGI master (it re-reads the release's files), then poll front_host (the same host, or
    its balancer) until / answers `want` (bounded in time)."""
    import time
    app_host.exec("kill -HUP $(cat /srv/sample/shared/run/uwsgi.pid)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = front_host.http("/", host_header=front_host.address)[0]
        except OSError:
            status = None
        if status == want:
            return
        assert time.monotonic() < deadline, f"the site did not answer {want} after the reload (last: {status})"
        time.sleep(0.3)
