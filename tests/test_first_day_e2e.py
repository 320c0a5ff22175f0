"""First-day defects end to end (real fab, one real host): pruning keeps the way back, a view that raises
leaves its traceback in the app log, and the restart line counts every configured worker.

Tests run in order on one host and build on each other.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config


@pytest.fixture(scope="module")
def day(make_host, tmp_path_factory, wheel_cache):
    host = make_host("day1")
    proj = make_project(tmp_path_factory.mktemp("day1"))
    proj.write_config(sample_config(host, keep=3).replace("processes = 2", "processes = 3"))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, rel=[])


def fab(day, *args):
    res = run_fab(day.proj.root, *args, cache=day.cache)
    return res, res.stdout + res.stderr


def deploy(day, label):
    day.proj.commit(label, {"pages/message.txt": label + "\n"})
    res, out = fab(day, "deploy")
    assert res.returncode == 0, out
    day.rel.append(release_of(res.stdout))
    return day.rel[-1], out


def rollback(day):
    res, out = fab(day, "rollback")
    assert res.returncode == 0, out
    return out


def live(day) -> str:
    return day.host.path("/srv/sample/current").resolve().name


def test_restart_reports_every_configured_worker(day):
    rel, out = deploy(day, "one")
    assert re.search(rf"restart\s+uwsgi started early \(master \d+, 3 workers on {rel}\)", out), out


def test_prune_keeps_the_release_a_rollback_goes_back_to(day):
    """keep_releases = 3: deploy, deploy+rollback twice, deploy: the first release (the only good one
    before current) is kept, so a rollback still works."""
    first = day.rel[0]
    deploy(day, "two")
    rollback(day)  # back to one; two is bad
    assert live(day) == first
    deploy(day, "three")
    rollback(day)  # back to one; three is bad
    assert live(day) == first
    four, out = deploy(day, "four")
    assert re.search(r"cleanup\s+3 releases on disk \(keep_releases = 3\), removed 1", out), out
    on_disk = sorted(p.name for p in day.host.path("/srv/sample/releases").iterdir())
    assert first in on_disk and four in on_disk and day.rel[1] not in on_disk  # two (bad, oldest) went first
    out = rollback(day)
    assert live(day) == first, out
    status, _, body = day.host.http("/", host_header=day.host.address)
    assert status == 200 and b"one" in body


def test_a_view_that_raises_leaves_its_traceback_in_fab_logs(day):
    status, _, _ = day.host.http("/boom/", host_header=day.host.address)
    assert status == 500
    res, out = fab(day, "logs", "-n", "60", "--which", "app")
    assert res.returncode == 0, out
    assert "Internal Server Error: /boom/" in out
    assert "Traceback (most recent call last)" in out
    assert "BoomError: fabdeploy-sample-boom: this view always fails" in out


def test_rollback_never_picks_a_release_that_never_went_live(day):
    """A deploy killed after its config phase leaves a complete release (venv, saved ini) that never went
    live: a later rollback skips it."""
    good = live(day)
    day.proj.write_config(sample_config(day.host, keep=3).replace("processes = 2", "processes = 3")
                          + '[hooks]\nbefore_switch = ["kill -9 0"]\n', name="killed.toml")
    day.proj.commit("never live", {"pages/message.txt": "never live\n"})
    res = run_fab(day.proj.root, "deploy", "--config", "killed.toml", cache=day.cache)
    assert res.returncode != 0
    never = release_of_any(res.stdout + res.stderr)
    assert live(day) == good
    assert day.host.path(f"/srv/sample/releases/{never}/.fabdeploy/uwsgi.ini").exists()  # complete...
    assert day.host.path(f"/srv/sample/releases/{never}/.fabdeploy/pending").exists()  # ...but never live
    res, out = fab(day, "releases")
    assert re.search(rf"{never}.*never live", out), out
    deploy(day, "after")
    rollback(day)
    assert live(day) == good


def test_a_site_fabdeploy_did_not_write_is_never_overwritten(day):
    """project.name = "default" would replace the distribution's default nginx site."""
    default = day.host.path("/etc/nginx/sites-available/default")
    assert default.exists()
    before = default.read_text()
    day.proj.write_config(sample_config(day.host, name="default", deploy_to="/srv/default", listen=8082),
                          name="default.toml")
    res = run_fab(day.proj.root, "deploy", "--config", "default.toml", cache=day.cache)
    assert res.returncode == 1
    assert "/etc/nginx/sites-available/default exists and was not written by fabdeploy" in res.stderr, res.stderr
    assert default.read_text() == before
    assert not day.host.path("/srv/default/current").exists()


def release_of_any(output: str) -> str:
    m = re.search(r"release (\d{8}T\d{6}Z-[0-9a-f]+)", output)
    assert m, output
    return m.group(1)
