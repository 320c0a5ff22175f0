"""A balancer's finish (final upstream site, nginx reload, check through the balancer, prune, audit, unlock)
survives losing the client like an app host's publish (issue 11.3), on real hosts: one app host, one
balancer, fab killed with SIGKILL while the balancer checks the site through itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config

LOCK = "/srv/sample/.fabdeploy-lock"


@pytest.fixture(scope="module")
def fleet(make_host, tmp_path_factory, wheel_cache):
    app, lb = make_host("finapp"), make_host("finlb")
    proj = make_project(tmp_path_factory.mktemp("lbfinish"))
    cfg = sample_config(lb).replace(f'hosts = ["{lb.ssh_target()}"]\n', "")
    proj.write_config(cfg + f'[roles]\napp = ["{app.ssh_target()}"]\nlb = ["{lb.ssh_target()}"]\n')
    res = run_fab(proj.root, "deploy", cache=wheel_cache)
    assert res.returncode == 0, res.stdout + res.stderr
    return app, lb, proj, wheel_cache


def test_fab_killed_while_the_balancer_checks_the_site_the_balancer_finishes(fleet):
    app, lb, proj, cache = fleet
    views = (proj.src / "pages" / "views.py").read_text()
    slow = views.replace("def index(request):\n", "def index(request):\n    import time; time.sleep(3)\n")
    assert slow != views
    proj.commit("a slow front page", {"pages/views.py": slow})
    proc = subprocess.Popen([FAB, "deploy"], cwd=proj.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    seen = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
            words = line.split()
            if words[:2] == [lb.address, "restart"]:  # nginx reloaded: the check through the balancer runs
                break
    finally:
        proc.kill()
    out = "".join(seen) + proc.communicate(timeout=30)[0]
    rel = next(w for ln in out.splitlines() for w in ln.split() if w.startswith("20") and "Z-" in w)
    for host in (lb, app):
        end = time.monotonic() + 120
        while host.path(LOCK).exists() and time.monotonic() < end:
            time.sleep(0.2)
        assert not host.path(LOCK).exists(), f"{host.address}: the lock is still held:\n{out}"
        last = json.loads(host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()[-1])
        assert last["result"] == "ok" and last["release"] == rel, last
    assert os.path.basename(os.readlink(lb.path("/srv/sample/shared/static/current"))) == rel
    status, _, body = lb.http("/", host_header=lb.address, timeout=30)
    assert status == 200 and f"Release: {rel}".encode() in body
    (proj.src / "pages" / "views.py").write_text(views)
