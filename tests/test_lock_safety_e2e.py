"""A deploy refused by another run's lock changes nothing on the host (real fab, one real host).

Before, the refused run's cleanup deleted the staged uWSGI ini of the run holding the lock: the holder then
moved `current`, failed, never reloaded, and a rerun said "already live" while the old code served.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config


@pytest.fixture(scope="module")
def locked(make_host, tmp_path_factory, wheel_cache):
    host = make_host("lock")
    proj = make_project(tmp_path_factory.mktemp("lock"))
    proj.write_config(sample_config(host))
    for phase in ("django", "switch"):
        proj.write_config(sample_config(host, extra=f'[hooks]\nbefore_{phase} = ["sleep 6"]\n'),
                          name=f"slow-{phase}.toml")
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache)


def start(locked, config: str, until: str):
    """A deploy with a slow hook, returned once its output shows `until` (the hook is then running)."""
    proc = subprocess.Popen([FAB, "deploy", "--config", config], cwd=locked.proj.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "XDG_CACHE_HOME": str(locked.cache)})
    lines = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(until, line):
            return proc, lines
    proc.kill()
    raise AssertionError(f"the slow deploy never printed {until!r}:\n" + "".join(lines))


def worker_releases(host) -> set[str]:
    # (as root: the pidfile and the workers' cwd are the app user's, not the SSH user's)
    res = host.exec("for c in $(pgrep -P \"$(cat /srv/sample/shared/run/uwsgi.pid)\"); do "
                   "basename \"$(readlink /proc/$c/cwd)\"; done")
    return set(res.stdout.split())


@pytest.mark.parametrize("config, until", [
    ("slow-django.toml", r"^\S+\s+venv\s"),             # the holder is in the django phase
    ("slow-switch.toml", r"^\S+\s+config\s"),           # the holder is about to switch
])
def test_a_refused_deploy_leaves_the_holder_intact(locked, config, until):
    locked.proj.commit(config, {"pages/message.txt": f"{config}\n"})
    holder, lines = start(locked, config, until)
    try:
        res = run_fab(locked.proj.root, "deploy", cache=locked.cache)
        assert res.returncode == 1 and "deploy lock held by" in res.stderr, res.stdout + res.stderr
        rest, _ = holder.communicate(timeout=180)
    finally:
        if holder.poll() is None:
            holder.kill()
    out = "".join(lines) + rest
    assert holder.returncode == 0, out
    rel = release_of(out)
    assert os.readlink(locked.host.path("/srv/sample/current")).endswith(rel)
    assert worker_releases(locked.host) == {rel}
    status, _, body = locked.host.http("/", host_header=locked.host.address)
    assert status == 200 and f"Release: {rel}".encode() in body and config.encode() in body
    # and the next deploy of the same revision and config knows it is live
    again = run_fab(locked.proj.root, "deploy", "--config", config, cache=locked.cache)
    assert again.returncode == 0 and "already live" in again.stdout, again.stdout + again.stderr
