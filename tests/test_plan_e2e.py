"""`fab deploy --plan` and `fab --dry deploy` are truly read-only: the host stays byte-for-byte unchanged."""
from __future__ import annotations

import hashlib
import os

import pytest

from conftest import make_project, release_of, run_fab, sample_config

SECRET = "plan-secret-93b1"


@pytest.fixture(scope="module")
def env(make_host, tmp_path_factory, wheel_cache):
    host = make_host("plan")
    proj = make_project(tmp_path_factory.mktemp("plan"))
    proj.write_config(sample_config(host, extra=f'[django]\nenv = {{ DB_PASSWORD = "{SECRET}" }}\n'))
    return host, proj, wheel_cache


def snapshot(host) -> dict:
    """Every path under the host's private trees with its type, mode, size, mtime and content hash."""
    state = {}
    for top in ("/srv", "/etc/nginx", "/var/log/nginx", "/home/deploy", "/tmp"):
        root = host.path(top)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                digest = ""
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                state[p] = (st.st_mode, st.st_size, st.st_mtime_ns, os.readlink(p) if os.path.islink(p) else digest)
    return state


def test_plan_on_a_new_host_creates_nothing(env):
    host, proj, cache = env
    before = snapshot(host)
    res = run_fab(proj.root, "deploy", "--plan", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "remote invocation 1 (setup)" in res.stdout and "remote invocation 3 (publish)" in res.stdout
    assert "uwsgi.ini (absent)" in res.stdout and "would be built" in res.stdout
    assert SECRET not in res.stdout + res.stderr
    assert snapshot(host) == before
    assert not host.path("/srv/sample").exists()


def test_plan_and_dry_after_a_deploy_change_nothing(env):
    host, proj, cache = env
    res = run_fab(proj.root, "deploy", cache=cache)
    assert res.returncode == 0, res.stdout + res.stderr
    live = release_of(res.stdout)
    proj.commit("next", {"pages/message.txt": "planned change\n"})
    pid = host.path("/srv/sample/shared/run/uwsgi.pid").read_text()
    before = snapshot(host)
    for args in (["deploy", "--plan"], ["--dry", "deploy"]):
        res = run_fab(proj.root, *args, cache=cache)
        assert res.returncode == 0, res.stdout + res.stderr
        out = res.stdout
        assert f"current release: /srv/sample/releases/{live}" in out
        assert "virtualenv" in out and "reused" in out
        assert f"-chdir = /srv/sample/releases/{live}" in out  # a real diff against the host's uwsgi.ini
        assert "nginx site /etc/nginx/sites-available/sample: unchanged" in out
        assert "manage.py" in out and "migrate --noinput" in out
        assert SECRET not in out + res.stderr and "DB_PASSWORD=********" in out
    assert snapshot(host) == before  # byte for byte, modes and mtimes included
    assert host.path("/srv/sample/shared/run/uwsgi.pid").read_text() == pid
    status, _, body = host.http("/", host_header=host.address)
    assert f"Release: {live}".encode() in body
