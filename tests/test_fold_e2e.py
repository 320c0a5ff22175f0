"""Setup and prepare in one invocation, on a real host (steps/fold.py): a code-only redeploy opens two SSH
channels instead of three; a cache that lies falls back to the separate prepare and still deploys; a failure
in the django phase of the folded run cleans up as before (release removed, lock released, failed audit)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("fold")
    work = tmp_path_factory.mktemp("fold")
    proj = make_project(work)
    proj.write_config(sample_config(host))
    env = SimpleNamespace(host=host, proj=proj, cache=wheel_cache, work=work, n=0)
    res, channels = deploy(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert channels == 3  # a first deploy: nothing remembered, setup, prepare, publish
    return env


def deploy(env, *args):
    """`fab deploy`, and the SSH channels it opened (FABDEPLOY_TRACE: one line per channel)."""
    env.n += 1
    trace = env.work / f"trace-{env.n}"
    res = run_fab(env.proj.root, "deploy", *args, cache=env.cache, env={"FABDEPLOY_TRACE": str(trace)})
    return res, len(trace.read_text().splitlines()) if trace.exists() else 0


def serves(env, release: str) -> bool:
    status, _, body = env.host.http("/", host_header=env.host.address)
    return status == 200 and f"Release: {release}".encode() in body


def cached_entry(env) -> tuple:
    """The host's facts cache file (local/facts_cache.py, under the run's XDG_CACHE_HOME) and its document."""
    files = list((env.cache / "fabdeploy" / "facts").glob(f"*@{env.host.address}_22.json"))
    assert len(files) == 1, files
    return files[0], json.loads(files[0].read_text())


def audit(env) -> list[dict]:
    return [json.loads(ln) for ln in env.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()]


def test_a_code_only_redeploy_runs_setup_and_prepare_in_one_invocation(site):
    path, doc = cached_entry(site)
    entry = doc["/srv/sample"]
    assert entry["facts"]["python_version"] and entry["facts"]["venvs"] and entry["fingerprint"]
    assert "secret" not in path.read_text()  # facts and a hash: no key, no fingerprint of a key
    site.proj.commit("B", {"pages/message.txt": "code only\n"})
    res, channels = deploy(site, "--verbose")
    assert res.returncode == 0, res.stdout + res.stderr
    assert channels == 2, res.stdout  # setup+prepare, publish
    assert "----- setup and prepare run as one invocation" in res.stdout and "remote invocation prepare" in res.stdout
    for phase in ("setup", "upload", "code", "venv", "django", "config", "switch", "restart", "health"):
        assert f" {phase} " in res.stdout, phase
    assert serves(site, release_of(res.stdout))


def test_a_likely_no_op_keeps_the_setup_only_path(site):
    res, channels = deploy(site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert channels == 1 and "already live" in res.stdout


@pytest.mark.parametrize("lie, named", [("nginx_pid", "nginx_pid"), ("python_version", "python_version venv")])
def test_a_cache_that_lies_falls_back_to_the_separate_prepare(site, lie, named):
    path, doc = cached_entry(site)
    facts = doc["/srv/sample"]["facts"]
    if lie == "nginx_pid":
        facts["nginx_pid"] = "/run/elsewhere.pid"
    else:  # a python version the host does not have, and "its" venv remembered as built
        from fabdeploy.config import load_config
        from fabdeploy.local.source import read_source
        from fabdeploy.local.wheelhouse import venv_hash
        cfg = load_config(str(site.proj.root / "deploy.toml"))
        facts["python_version"] = "3.99.0"
        facts["venvs"].append(venv_hash(cfg, read_source(cfg).requirements, "3.99.0"))
    path.write_text(json.dumps(doc))
    site.proj.commit(f"lie {lie}", {"pages/message.txt": f"after a lie about {lie}\n"})
    res, channels = deploy(site)
    assert res.returncode == 0, res.stdout + res.stderr
    assert channels == 3, res.stdout  # setup (the gate failed), prepare, publish
    assert f"the host is not as at its last deploy ({named}): prepare runs on its own" in res.stdout, res.stdout
    assert serves(site, release_of(res.stdout))
    assert cached_entry(site)[1]["/srv/sample"]["facts"][lie] != facts[lie]  # the real facts remembered again


def test_a_django_failure_in_the_folded_run_cleans_up_as_before(site):
    live = os.path.basename(os.readlink(site.host.path("/srv/sample/current")))
    before = sorted(p.name for p in site.host.path("/srv/sample/releases").iterdir())
    views = (site.proj.src / "pages" / "views.py").read_text()
    site.proj.commit("broken", {"pages/views.py": "import no_such_module_fabdeploy  # broken on purpose\n" + views})
    res, channels = deploy(site)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out, out
    assert f"{site.host.address}: django failed" in out and "no_such_module_fabdeploy" in out
    assert channels == 2, out  # setup+prepare (failed in django), the cleanup
    assert sorted(p.name for p in site.host.path("/srv/sample/releases").iterdir()) == before
    assert not site.host.path("/srv/sample/.fabdeploy-lock").exists()
    assert audit(site)[-1]["result"] == "failed"
    assert os.path.basename(os.readlink(site.host.path("/srv/sample/current"))) == live and serves(site, live)
    site.proj.commit("fixed", {"pages/views.py": views})
    res, channels = deploy(site)  # the cache still holds: the next redeploy folds again
    assert res.returncode == 0 and channels == 2, res.stdout + res.stderr
    assert serves(site, release_of(res.stdout))
