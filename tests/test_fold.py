"""Setup and prepare in one invocation (steps/fold.py): the gate and the folded script run for real with
/bin/sh, and the local facts cache (local/facts_cache.py). The end-to-end proof is test_fold_e2e.py."""
from __future__ import annotations

import json

from fabdeploy.config import load_config
from fabdeploy.local import facts_cache
from fabdeploy.model import Facts
from fabdeploy.ops.deploy import fold_key
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.steps import fold, secret_key
from test_phases import err, out, sh

ASSUMED = Facts(python_version="3.11.2", nginx_layout="sites", nginx_pid="/run/nginx.pid", venvs=["abc"])


def host_setup(tmp_path, *, python="3.11.2", unchanged=False, key="k1") -> Phase:
    """A stand-in for the setup phase: the variables the real one sets, optionally the "already live" exit."""
    return Phase("setup", [f"python_version={python}", "nginx_layout=sites", "nginx_pid=/run/nginx.pid",
                           f"secret_key_fp={key}", *(["exit 0"] if unchanged else []), "echo setup-ran"])


def build(tmp_path, setup: Phase, key_fp: str = "") -> Script:
    venv = tmp_path / "venvs" / "abc"
    flag = str(tmp_path / "r1.fold")
    prepare = Script([Phase("code", [f"cat > {tmp_path}/archive"]), Phase("venv", ["echo venv-ran"])])
    return fold.folded(Script([setup]), prepare, fold.gate(ASSUMED, str(venv), flag, key_fp), flag)


def complete_venv(tmp_path) -> None:
    (tmp_path / "venvs" / "abc").mkdir(parents=True)
    (tmp_path / "venvs" / "abc" / ".fabdeploy-complete").touch()


def fact_of(proc) -> str:
    return next(ln.split("=", 1)[1] for ln in out(proc).splitlines() if ln.startswith(f"{MARK} fact {fold.FACT}="))


def test_the_gate_passes_and_prepare_reads_the_archive_setup_never_does(tmp_path):
    complete_venv(tmp_path)
    setup = host_setup(tmp_path)
    setup.lines.insert(0, "head -c 3 > /dev/null || true")  # a setup line that reads stdin gets nothing
    proc = sh(build(tmp_path, setup), tmp_path, stdin=b"ARCHIVE")
    assert proc.returncode == 0, err(proc)
    assert (tmp_path / "archive").read_bytes() == b"ARCHIVE"
    assert "venv-ran" in out(proc) and fact_of(proc) == ""
    assert not (tmp_path / "r1.fold").exists()  # the flag is removed


def test_a_gate_that_fails_ends_the_script_cleanly_before_prepare(tmp_path):
    complete_venv(tmp_path)
    proc = sh(build(tmp_path, host_setup(tmp_path, python="3.12.1")), tmp_path, stdin=b"ARCHIVE" * 100000)
    assert proc.returncode == 0, err(proc)
    assert fact_of(proc) == "python_version"
    assert f"{MARK} begin code" not in out(proc) and not (tmp_path / "archive").exists()


def test_a_missing_venv_and_another_secret_key_are_named(tmp_path):
    proc = sh(build(tmp_path, host_setup(tmp_path, key="k2"), key_fp="k1"), tmp_path, stdin=b"A")
    assert proc.returncode == 0, err(proc)
    assert fact_of(proc) == "venv secret_key"
    assert f"{MARK} begin code" not in out(proc)


def test_a_host_without_a_secret_key_is_not_folded(tmp_path):
    complete_venv(tmp_path)
    proc = sh(build(tmp_path, host_setup(tmp_path, key="")), tmp_path, stdin=b"A")
    assert fact_of(proc) == "secret_key" and f"{MARK} begin code" not in out(proc)


def test_the_already_live_exit_ends_the_script_there(tmp_path):
    complete_venv(tmp_path)
    proc = sh(build(tmp_path, host_setup(tmp_path, unchanged=True)), tmp_path, stdin=b"A")
    assert proc.returncode == 0, err(proc)
    assert "setup-ran" not in out(proc) and f"{MARK} fact {fold.FACT}" not in out(proc)
    assert f"{MARK} begin code" not in out(proc)


def test_a_failing_setup_stops_with_its_status(tmp_path):
    proc = sh(build(tmp_path, Phase("setup", ["exit 3"])), tmp_path, stdin=b"A")
    assert proc.returncode == 3 and f"{MARK} begin code" not in out(proc)


def test_the_folded_script_keeps_both_scripts_secrets(tmp_path):
    s = fold.folded(Script([Phase("setup", ["echo s3cret"])], ("s3cret",)),
                    Script([Phase("code", ["echo t0ken"])], ("t0ken", "s3cret")), [], "/x")
    assert s.secrets == ("s3cret", "t0ken") and "s3cret" not in s.display() and "t0ken" not in s.display()


def test_the_cache_remembers_facts_and_fingerprint_per_target_and_deploy_to(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    facts = Facts(python_version="3.11.2", python_platform="cpython linux", current="/srv/a/releases/1",
                  venvs=["v1"], user="deploy", unchanged="")
    facts_cache.save("deploy@h:22", "/srv/a", facts, "fp1", venv="v2")
    facts_cache.save("deploy@h:22", "/srv/b", Facts(python_version="3.12.0"), "fp2")
    got, fp = facts_cache.load("deploy@h:22", "/srv/a")
    assert fp == "fp1" and got.venvs == ["v1", "v2"] and got.python_version == "3.11.2" and got.current == ""
    assert facts_cache.load("deploy@h:22", "/srv/b")[0].python_version == "3.12.0"
    assert facts_cache.load("deploy@h:2222", "/srv/a") is None and facts_cache.load("deploy@h:22", "/srv/c") is None
    path = tmp_path / "fabdeploy" / "facts" / "deploy@h_22.json"
    assert set(json.loads(path.read_text())["/srv/a"]["facts"]) == set(facts_cache.KEPT)


def test_a_corrupt_or_foreign_cache_is_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = facts_cache.path_of("u@h:22")
    path.parent.mkdir(parents=True)
    for text in ("{not json", "[]", '{"/srv/a": 3}', '{"/srv/a": {"facts": {"venvs": "abc"}}}',
                 json.dumps({"/srv/a": {"facts": {**{k: "" for k in facts_cache.KEPT}, "venvs": [1]}}})):
        path.write_text(text)
        assert facts_cache.load("u@h:22", "/srv/a") is None, text
    facts_cache.save("u@h:22", "/srv/a", Facts(), "fp")  # a corrupt file is replaced
    assert facts_cache.load("u@h:22", "/srv/a")[1] == "fp"


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    facts_cache.save("u@h:22", "/srv/a", Facts(), "fp")
    assert facts_cache.load("u@h:22", "/srv/a") is None


def test_when_a_deploy_may_fold(tmp_path):
    (tmp_path / "a.toml").write_text('[project]\nname = "p"\nsource = "."\ndjango_settings = "s"\n'
                                     'wsgi = "w:application"\nhosts = ["h"]\n[paths]\ndeploy_to = "/srv/p"\n')
    cfg = load_config(str(tmp_path / "a.toml"))
    assert fold_key(cfg, 3, None) == "" and fold_key(cfg, 1, None) == ""
    assert fold_key(cfg, 2, "h") is None  # --adopt-secret-key: keys may move
    cfg.secret_env = {"SECRET_KEY": "configured-key"}  # (as [secrets] resolves it)
    assert fold_key(cfg, 2, None) == secret_key.key_fingerprint("configured-key")
    cfg.data["database"].update(engine="postgresql", host="url")  # the app hosts share a database
    assert fold_key(cfg, 2, None) is None and fold_key(cfg, 1, None) == secret_key.key_fingerprint("configured-key")
