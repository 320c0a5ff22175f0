"""[secrets] (issue 17), without hosts: the forms deploy.toml accepts, their resolution on the deploying machine
(real files, real commands, a real git repository) and every failure mode, and where the values go (the env
file, masking, the "already live" fingerprint, the generated settings, the fleet's SECRET_KEY)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tomllib

import pytest

from fabdeploy.config import parse_config
from fabdeploy.errors import ConfigError
from fabdeploy.local.render import render
from fabdeploy.local.secrets import SecretError, apply, resolve
from fabdeploy.ops import secrets as ops_secrets
from fabdeploy.remote.runner import RunResult
from fabdeploy.steps import code, live_check, secret_key

from conftest import REPO, git

MINIMAL = {
    "project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
    "paths": {"deploy_to": "/srv/shop"},
}
VALUE = "s3cr3t-Value-881"


def cfg_with(tmp_path, secrets: dict, django_env: dict | None = None):
    raw = copy.deepcopy(MINIMAL)
    raw["secrets"] = secrets
    if django_env is not None:
        raw["django"] = {"env": django_env}
    return parse_config(raw, tmp_path / "deploy.toml")


def bad(tmp_path, secrets: dict, django_env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        cfg_with(tmp_path, secrets, django_env)
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---- the forms ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, says", [
    ("plain", 'secrets.DB must be a table like { env = "VAR" }'),
    ({}, "secrets.DB needs exactly one source of env, file, command (got none)"),
    ({"env": "A", "file": "x"}, "secrets.DB needs exactly one source of env, file, command (got env, file)"),
    ({"env": "A", "fil": "x"}, "secrets.DB has an unknown key 'fil'"),
    ({"env": "A", "key": "B"}, "secrets.DB: key does not go with env (it goes with file)"),
    ({"command": ["x"], "format": "raw"}, "secrets.DB: format does not go with command (it goes with file)"),
    ({"env": "A", "shell": True}, "secrets.DB: shell does not go with env (it goes with command)"),
    ({"env": "not a name"}, "secrets.DB.env must be the name of an environment variable"),
    ({"env": "A", "required": "no"}, "secrets.DB.required must be true or false"),
    ({"file": ""}, "secrets.DB.file must be a path"),
    ({"file": "x", "format": "json"}, 'secrets.DB.format must be "dotenv"'),
    ({"file": "x", "format": "raw", "key": "K"}, 'secrets.DB.key needs format = "dotenv"'),
    ({"file": "x", "key": "1K"}, "secrets.DB.key must be a variable name"),
    ({"command": "pass show db"}, "secrets.DB.command is a string: make it a list of words"),
    ({"command": []}, "secrets.DB.command must be a non-empty list of words"),
    ({"command": ["pass", ""]}, "secrets.DB.command must be a non-empty list of words"),
    ({"command": ["pass"], "shell": True}, "secrets.DB.command must be one string with shell = true"),
    ({"command": "x", "shell": "yes"}, "secrets.DB.shell must be true or false"),
])
def test_a_bad_form_is_one_line_naming_the_secret(tmp_path, spec, says):
    assert says in bad(tmp_path, {"DB": spec})


def test_names_that_fabdeploy_sets_or_that_django_env_has_are_refused(tmp_path):
    assert "secrets has an invalid variable name '1DB'" in bad(tmp_path, {"1DB": {"env": "A"}})
    for name in ("DJANGO_SETTINGS_MODULE", "FABDEPLOY_X", "PYTHONPATH", "DJANGO_SECRET_KEY"):
        assert f"secrets.{name}: fabdeploy sets {name} itself" in bad(tmp_path, {name: {"env": "A"}})
    assert "secrets.API: API is also in django.env; keep one of them" in bad(
        tmp_path, {"API": {"env": "A"}}, {"API": "literal"})
    cfg = cfg_with(tmp_path, {"SECRET_KEY": {"env": "K"}, "DB": {"command": "x | y", "shell": True}})
    assert list(cfg.data["secrets"]) == ["SECRET_KEY", "DB"]


def test_the_reference_documents_every_form():
    raw = tomllib.loads((REPO / "templates" / "deploy.example.toml").read_text())
    specs = list(raw["secrets"].values())
    assert any("env" in s for s in specs)
    assert any("file" in s and "format" not in s and "key" not in s for s in specs)
    assert any("file" in s and "key" in s for s in specs)
    assert any(s.get("format") == "raw" for s in specs)
    assert any(isinstance(s.get("command"), list) for s in specs)
    assert any(s.get("shell") is True for s in specs)
    assert any(s.get("required") is False for s in specs)
    assert "SECRET_KEY" in raw["secrets"]
    parse_config(raw)  # forms only: nothing is resolved when the config is read


# ---- resolution ----------------------------------------------------------------------------------------------

def resolved(tmp_path, secrets, environ=None, strict=True):
    return resolve(cfg_with(tmp_path, secrets), environ or {}, strict)


def failure(tmp_path, secrets, environ=None) -> str:
    with pytest.raises(SecretError) as exc:
        resolved(tmp_path, secrets, environ)
    text = str(exc.value)
    assert "\n" not in text and VALUE not in text
    return text


def test_env_source(tmp_path):
    assert resolved(tmp_path, {"DB": {"env": "DB_PW"}}, {"DB_PW": VALUE}).values == {"DB": VALUE}
    assert failure(tmp_path, {"DB": {"env": "DB_PW"}}) == \
        "secrets.DB (env DB_PW): the variable DB_PW is not set (required; set required = false to allow it)"
    assert "the variable DB_PW is empty" in failure(tmp_path, {"DB": {"env": "DB_PW"}}, {"DB_PW": ""})
    out = resolved(tmp_path, {"DB": {"env": "DB_PW", "required": False}})
    assert out.values == {} and out.absent == ["DB"]


def test_dotenv_file_source(tmp_path):
    (tmp_path / ".secrets").mkdir()
    (tmp_path / ".secrets" / "prod.env").write_text(
        "# production\n\nexport DB='" + VALUE + "'\nSMTP_PASSWORD=\"a \\\"q\\\" b\"\nPLAIN = v1 # comment\n"
        "HASHED=ab#cd\n")
    out = resolved(tmp_path, {"DB": {"file": ".secrets/prod.env"},
                              "MAIL": {"file": ".secrets/prod.env", "key": "SMTP_PASSWORD"},
                              "PLAIN": {"file": ".secrets/prod.env"}, "HASHED": {"file": ".secrets/prod.env"}})
    assert out.values == {"DB": VALUE, "MAIL": 'a "q" b', "PLAIN": "v1", "HASHED": "ab#cd"}
    assert out.warnings == []  # not in a git repository
    said = failure(tmp_path, {"NOPE": {"file": ".secrets/prod.env"}})
    assert said.startswith("secrets.NOPE (file .secrets/prod.env): ") and "has no line NOPE=..." in said
    assert resolved(tmp_path, {"NOPE": {"file": ".secrets/prod.env", "required": False}}).absent == ["NOPE"]
    (tmp_path / ".secrets" / "bad.env").write_text(f"OK=1\n{VALUE} without equals\n")
    assert failure(tmp_path, {"OK": {"file": ".secrets/bad.env"}}).endswith("bad.env line 2 is not KEY=value")
    (tmp_path / ".secrets" / "quote.env").write_text(f"OK='{VALUE}\n")
    assert failure(tmp_path, {"OK": {"file": ".secrets/quote.env"}}).endswith("line 1: unbalanced quotes")


def test_raw_file_source_and_missing_file(tmp_path):
    (tmp_path / "token").write_text(VALUE + "\n\n")
    assert resolved(tmp_path, {"T": {"file": "token", "format": "raw"}}).values == {"T": VALUE}
    (tmp_path / "two").write_text(VALUE + "\nsecond line\n")
    assert failure(tmp_path, {"T": {"file": "two", "format": "raw"}}).endswith(
        "the value has several lines; a secret must be one line")
    (tmp_path / "empty").write_text("\n")
    assert "is empty (required" in failure(tmp_path, {"T": {"file": "empty", "format": "raw"}})
    said = failure(tmp_path, {"T": {"file": "missing.env"}})
    assert said.startswith("secrets.T (file missing.env): ") and "missing.env does not exist" in said
    assert resolved(tmp_path, {"T": {"file": "missing.env", "required": False}}).absent == ["T"]
    (tmp_path / "locked").write_text("T=x\n")
    (tmp_path / "locked").chmod(0)
    if os.geteuid() != 0:  # root reads anything
        assert "cannot read" in failure(tmp_path, {"T": {"file": "locked"}})


def test_a_secret_file_tracked_by_git_is_warned_about_once(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "prod.env").write_text(f"A={VALUE}\nB={VALUE}x\n")
    (tmp_path / "ignored.env").write_text(f"C={VALUE}\n")
    git(tmp_path, "add", "prod.env")
    out = resolved(tmp_path, {"A": {"file": "prod.env"}, "B": {"file": "prod.env"}, "C": {"file": "ignored.env"}})
    assert out.warnings == ["secrets.A: prod.env is tracked by git: everyone with the repository has it "
                            "(git rm --cached it and list it in .gitignore)"]


def test_command_source(tmp_path):
    script = tmp_path / "get-secret"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = shop/db ] || {{ echo \"no entry $1\" >&2; exit 3; }}\necho {VALUE}\n")
    script.chmod(0o755)
    assert resolved(tmp_path, {"DB": {"command": [str(script), "shop/db"]}}).values == {"DB": VALUE}
    assert resolved(tmp_path, {"DB": {"command": "./get-secret shop/db | tr a-z A-Z", "shell": True}}).values == \
        {"DB": VALUE.upper()}  # sh -c, in deploy.toml's directory
    said = failure(tmp_path, {"DB": {"command": [str(script), "other"]}})
    assert said == f"secrets.DB (command {script} other): the command failed (exit status 3): no entry other"
    assert failure(tmp_path, {"DB": {"command": ["true"]}}).endswith(
        "the command printed nothing (required; set required = false to allow it)")
    assert resolved(tmp_path, {"DB": {"command": ["true"], "required": False}}).absent == ["DB"]
    # a failing command fails even when the secret is optional (a broken secret manager is no absent value)
    assert "exit status 1" in failure(tmp_path, {"DB": {"command": ["false"], "required": False}})
    assert failure(tmp_path, {"DB": {"command": ["no-such-tool-xyz", "a"]}}) == \
        "secrets.DB (command no-such-tool-xyz a): command 'no-such-tool-xyz' not found"
    assert "several lines" in failure(tmp_path, {"DB": {"command": 'printf "%s\\nx" "$V"', "shell": True}},
                                      {"V": VALUE, "PATH": os.environ["PATH"]})


def test_not_strict_turns_each_failure_into_a_warning(tmp_path):
    out = resolved(tmp_path, {"A": {"env": "A"}, "B": {"env": "B"}}, {"B": VALUE}, strict=False)
    assert out.values == {"B": VALUE}
    assert out.warnings == ["secrets.A (env A): the variable A is not set (required; set required = false to "
                            "allow it) (not masked in this output)"]


# ---- where the values go -------------------------------------------------------------------------------------

def test_values_go_to_the_env_file_and_the_masking_but_the_key_to_shared_secret_key(tmp_path):
    cfg = cfg_with(tmp_path, {"DB": {"env": "DB"}, "SECRET_KEY": {"env": "K"}, "ABC": {"env": "ABC"}},
                   {"DEBUG_LEVEL": "1"})
    apply(cfg, {"DB": VALUE, "K": "k" * 50, "ABC": "xy"})
    assert code.env_file_text(cfg) == f"ABC=xy\nDB={VALUE}\nDEBUG_LEVEL=1\n"
    values = cfg.secret_values()
    assert VALUE in values and "k" * 50 in values and "xy" not in values  # (under 4 characters: not masked)


def test_a_changed_secret_value_changes_the_already_live_fingerprint(tmp_path):
    cfg = cfg_with(tmp_path, {"DB": {"env": "DB"}})
    plain = cfg_with(tmp_path, {})
    fps = []
    for value in (VALUE, VALUE, VALUE + "2"):
        apply(cfg, {"DB": value})
        fps.append(live_check.fingerprint(cfg, "abc", b"django\n"))
    assert fps[0] == fps[1] != fps[2]
    assert live_check.fingerprint(plain, "abc", b"django\n") not in fps


def test_the_configured_secret_key_goes_to_every_host_whose_key_is_another(tmp_path):
    key = "fleet-key-" + "z" * 40
    key_file = tmp_path / "secret_key"
    key_file.write_text(key + "\n")
    lines = secret_key.fingerprint_lines(str(tmp_path / "x"))[0].replace(str(tmp_path / "x/shared/secret_key"),
                                                                        str(key_file))
    on_host = subprocess.run(["sh", "-c", lines + '; echo "$secret_key_fp"'], capture_output=True, text=True)
    assert on_host.stdout.strip() == secret_key.key_fingerprint(key)  # the same formula as the hosts'
    fp = secret_key.key_fingerprint(key)
    plan = secret_key.decide({"a": fp, "b": "0" * 16, "c": ""}, configured=key)
    assert plan.targets == ["b", "c"] and not plan.generate
    assert secret_key.decide({"a": fp}, configured=key).targets == []


def test_literal_django_env_values_that_look_secret_are_warned_about(tmp_path):
    cfg = cfg_with(tmp_path, {}, {"DATABASE_URL": "postgres://u:pw@db/x", "CACHE_URL": "redis://cache:6379/0",
                                  "STRIPE_API_KEY": "k", "DB_PASSWORD": "p", "GITHUB_TOKEN": "t",
                                  "DEBUG_LEVEL": "1", "AWS_SECRET_ACCESS_KEY": "s"})
    names = [w.split(" ", 1)[0] for w in cfg.warnings]
    assert names == ["django.env.AWS_SECRET_ACCESS_KEY", "django.env.DATABASE_URL", "django.env.DB_PASSWORD",
                     "django.env.GITHUB_TOKEN", "django.env.STRIPE_API_KEY"]
    url = next(w for w in cfg.warnings if "DATABASE_URL" in w)
    assert "(a URL with a password): move it to [secrets]" in url and "pw" not in url.replace("password", "")


def test_the_generated_settings_load_the_env_file_before_the_project_settings(tmp_path):
    """The real settings template, imported by a real Python: the project's settings see app.env's values,
    and a name an earlier load set that is gone from the file is removed (a reloaded uWSGI master)."""
    shared = tmp_path / "shared"
    (shared / "config").mkdir(parents=True)
    (shared / "secret_key").write_text("k" * 50)
    cfg = cfg_with(tmp_path, {"DB": {"env": "DB"}})
    apply(cfg, {"DB": "it's $a 'quoted' \"value\" #1"})
    (shared / "config" / "app.env").write_text(code.env_file_text(cfg))
    (tmp_path / "proj.py").write_text("import os\nSEEN = os.environ.get('DB')\nOLD = os.environ.get('OLD')\n")
    (tmp_path / "prod.py").write_text(render(
        "settings.py.j2", release_id="R1", django_settings="proj", shared=str(shared), allowed_hosts=["x"],
        static_url="/static/", media_url="/media/"))
    prog = "import json, os, prod; print(json.dumps([prod.SEEN, prod.OLD, os.environ.get('OLD')]))"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OLD": "gone", "FABDEPLOY_ENV_NAMES": "OLD DB"}
    res = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == ["it's $a 'quoted' \"value\" #1", None, None]


# ---- fab secrets: the comparison by keyed hash -----------------------------------------------------------------

def test_fab_secrets_compares_by_a_keyed_hash_computed_on_the_host(tmp_path):
    """The host half of `fab secrets`, run by a real sh and Python on a real env file: what comes back are keyed
    hashes (never a value), and the comparison names each name's state."""
    cfg = cfg_with(tmp_path, {"DB": {"env": "DB"}, "NEW": {"env": "NEW"}, "SECRET_KEY": {"env": "K"}},
                   {"LEVEL": "1"})
    apply(cfg, {"DB": VALUE, "NEW": "new-value", "K": "k" * 50})
    deploy_to = tmp_path / "srv"
    (deploy_to / "shared" / "config").mkdir(parents=True)
    (deploy_to / "shared" / "secret_key").write_text("k" * 50 + "\n")
    env_file = deploy_to / "shared" / "config" / "app.env"
    env_file.write_text(f"DB='{VALUE}x'\nLEVEL=1\nSTALE='old-token-value'\n")
    cfg.data["paths"]["deploy_to"] = str(deploy_to)
    env_file.chmod(0o640)
    nonce = "ab" * 16
    res = subprocess.run(["sh", "-c", ops_secrets.read_script(cfg, nonce).text()], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert VALUE not in res.stdout and "old-token-value" not in res.stdout and "k" * 50 not in res.stdout
    answer = RunResult(0, {}, res.stdout, res.stderr).json()
    assert ops_secrets.compare(cfg, answer, nonce) == [
        ("DB", "differs"), ("LEVEL", "matches"), ("NEW", "missing"), ("SECRET_KEY", "matches"),
        ("STALE", "not configured")]
    assert ops_secrets.compare(cfg, answer, "cd" * 16)[0] == ("DB", "differs")  # another key: nothing matches
    assert env_file.read_text().endswith("STALE='old-token-value'\n")  # (reading changes nothing)
    res = subprocess.run(["sh", "-c", ops_secrets.read_script(cfg, nonce, prune=True).text()], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert ops_secrets.compare(cfg, RunResult(0, {}, res.stdout, res.stderr).json(), nonce)[-1] == ("STALE", "pruned")
    assert env_file.read_text() == f"DB='{VALUE}x'\nLEVEL=1\n"
    assert env_file.stat().st_mode & 0o777 == 0o640


def test_the_prune_invocation_is_a_locked_reload_with_the_pruning_after_the_lock(tmp_path):
    from fabdeploy.hosts.target import Target
    from fabdeploy.steps.lock import LockOwner
    cfg = cfg_with(tmp_path, {"DB": {"env": "DB"}})
    apply(cfg, {"DB": VALUE})
    script = ops_secrets.prune_script(cfg, "ab" * 16, LockOwner.new("secrets-prune", "me"), 0,
                                      Target.named(cfg, "web1"))
    assert script.names == ["lock", "secrets", "reload", "health", "finish"]
    assert VALUE in script.secrets and '"keep": ["DB"]' in script.text()


def test_the_report_prefixes_hosts_sums_up_a_fleet_and_fails_out_of_step_hosts(capsys):
    from fabdeploy.output import Printer
    outcomes = [ops_secrets.SecretsOutcome("web1", True, [("DB", "matches"), ("OLD", "pruned")], reloaded="ok"),
                ops_secrets.SecretsOutcome("web2", True, [("DB", "differs"), ("OLD", "not configured")]),
                ops_secrets.SecretsOutcome("web3", False, error="web3: cannot connect")]
    errors = ops_secrets.report(outcomes, Printer(width=4))
    out = capsys.readouterr().out
    assert "web1  DB                       matches\n" in out and "web2  OLD                      not configured\n" in out
    assert errors == ["web2: secrets out of step: DB differs, OLD not configured (fab deploy writes the configured "
                      "values; fab secrets --prune removes names no longer configured)", "web3: cannot connect"]
    table = out[out.index("HOST"):].splitlines()
    assert table[0].split() == ["HOST", "MATCH", "DIFFER", "MISSING", "STALE", "RESULT"]
    assert table[1].split() == ["web1", "1", "0", "0", "0", "in", "step"]
    assert table[2].split() == ["web2", "0", "1", "0", "1", "out", "of", "step"]
    assert table[3].split()[:2] == ["web3", "FAILED:"]
