"""Secrets never printed (issue 11.5): mask(), the Printer, the one-line errors, the audit line written by a
real sh, the --plan diffs; and every gateway hop gets the strict host-key policy (issue 11.8)."""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import paramiko
import pytest
from fabric import Connection
from invoke import Context
from invoke.exceptions import Exit

from fabdeploy.steps import lock

from fabdeploy import output

from fabdeploy.appserver.uwsgi import UWSGI
from fabdeploy.ops import plan

from fabdeploy import tasks

from fabdeploy import model

from fabdeploy.steps import code

from fabdeploy.steps import configure
from fabdeploy.config import parse_config
from fabdeploy.hosts.connect import prepare
from fabdeploy.errors import FabdeployError
from fabdeploy.steps.lock import LockOwner
from fabdeploy.remote.runner import PhaseResult
from fabdeploy.remote.script import MASK, Script, mask
from fabdeploy.remote.shell import q

DB_URL = "postgres://app:Db-pa55word@db.internal/shop"
INNOCUOUS = "zq81-innocuous-value"
INDEX = "https://ci-user:idx-t0ken-42@mirror.example/simple"
SECRETS = ["Db-pa55word", DB_URL, INNOCUOUS, "idx-t0ken-42", "ci-user:idx-t0ken-42"]


def make_cfg(deploy_to="/srv/shop", env=None, **sections):
    data = {"project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
            "paths": {"deploy_to": str(deploy_to)},
            "django": {"env": env if env is not None else {"DATABASE_URL": DB_URL, "COLOR": INNOCUOUS,
                                                           "DEBUG": "1"}},
            "pip": {"index_url": INDEX}}
    data.update(sections)
    return parse_config(data)


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_mask_hides_url_userinfo_of_any_url_but_keeps_plain_ssh_users():
    text = (f"pip --index-url {INDEX} failed; ssh://git@github.com/x.git; git+ssh://git@host/y; "
            "https://tok3n@github.com/x; ssh://git:pw@h/z")
    shown = mask(text)
    assert "idx-t0ken-42" not in shown and "ci-user" not in shown and "tok3n" not in shown and ":pw@" not in shown
    assert f"https://{MASK}@mirror.example/simple" in shown
    assert "ssh://git@github.com/x.git" in shown and "git+ssh://git@host/y" in shown


def test_mask_covers_the_ini_and_shell_quoted_forms():
    value = "it's 50%off"
    assert mask(f"env = X={value.replace('%', '%%')}\nX={q(value)}\n{value}", [value]) == \
        f"env = X={MASK}\nX={MASK}\n{MASK}"


def test_every_env_value_of_four_or_more_characters_is_masked_in_the_displayed_script():
    cfg = make_cfg()
    shown = Script([configure.config(cfg, model.Release("r1", "a" * 40, "main", "git", "t", "me", "v"),
                                  model.Facts())], tuple(cfg.secret_values())).display()
    assert "env = DATABASE_URL=" in shown and not leaked(shown)
    assert "env = DEBUG=1" in shown  # short values stay (they would mask unrelated text)


def test_the_printer_masks_every_kind_of_line(capsys):
    out = io.StringIO()
    printer = output.Printer(verbose=True, stream=out, secrets=make_cfg().secret_values())
    printer.line("h1", f"note {DB_URL}")
    printer.info(f"summary {INNOCUOUS}")
    printer.warn(f"pip said https://ci-user:idx-t0ken-42@mirror.example")
    printer.debug("h1", f"| echo {INNOCUOUS}\nexport X={q(DB_URL)}")
    printer.phase("h1", PhaseResult("django", rc=3, stderr=[f"boom {INNOCUOUS}"]))
    printer.phase("h1", PhaseResult("venv", rc=0, notes=[f"built with {INDEX}"], warnings=[DB_URL]))
    text = out.getvalue() + capsys.readouterr().err
    assert text.count(MASK) >= 7 and not leaked(text), text
    assert f"django   FAILED: boom {MASK}" in text


def test_one_line_errors_and_the_failed_hosts_lines_are_masked():
    output.add_secrets(make_cfg().secret_values())

    @tasks.one_line_errors
    def boom(c):
        raise FabdeployError(f"h1: django failed: exit status 3\n    {INNOCUOUS}")

    with pytest.raises(Exit) as info:
        boom(Context())
    assert not leaked(str(info.value.message)) and MASK in info.value.message
    with pytest.raises(Exit) as info:
        tasks._exit_if_failed([f"h1: health failed: {DB_URL}", "h2: ok"])
    assert not leaked(info.value.message) and info.value.message.count("fabdeploy:") == 2


def test_the_audit_line_written_by_sh_holds_no_secret(tmp_path):
    cfg = make_cfg(deploy_to=tmp_path / "srv")
    owner = LockOwner("deploy", "me@here", "t0", 1, "now")
    record = {"release": "r1", "result": "failed",
              "error": f"h1: django failed: could not connect to {DB_URL} ({INNOCUOUS}); index {INDEX}"}
    script = "\n".join(lock.audit(cfg, owner, record)) + "\n"
    subprocess.run(["sh", "-c", script], check=True)
    line = Path(lock.audit_file(cfg)).read_text()
    assert json.loads(line)["result"] == "failed"
    assert not leaked(line) and MASK in line


def _ini(env_lines: str) -> str:
    return f"[uwsgi]\nenv = DJANGO_SETTINGS_MODULE=fabdeploy_settings\nenv = FABDEPLOY_RELEASE=r1\n{env_lines}"


def test_plan_diff_says_changed_without_old_or_new_values():
    old = _ini("env = DATABASE_URL=postgres://app:OLD-secret-1@db/shop\nenv = GONE=old-removed-secret\n"
               "env = COLOR=same-value-here\n")
    new = _ini(f"env = DATABASE_URL={DB_URL}\nenv = COLOR=same-value-here\n")
    shown = plan._diff("uwsgi.ini", old, new, UWSGI.env_line)
    for value in ("OLD-secret-1", "old-removed-secret", "same-value-here", "Db-pa55word"):
        assert value not in shown
    assert f"-env = DATABASE_URL={MASK}\n" in shown and f"+env = DATABASE_URL={MASK} (changed)\n" in shown
    assert f"-env = GONE={MASK}\n" in shown
    assert f" env = COLOR={MASK}\n" in shown  # unchanged: a context line, no label
    unchanged_old = _ini("env = COLOR=same-value-here\n").replace("=r1", "=r0")
    shown = plan._diff("uwsgi.ini", unchanged_old, _ini("env = COLOR=same-value-here\n"), UWSGI.env_line)
    assert "-env = FABDEPLOY_RELEASE=r0\n+env = FABDEPLOY_RELEASE=r1\n" in shown  # fabdeploy's own: shown


def test_plan_diff_of_app_env_and_unchanged_files():
    cfg = make_cfg()
    new = code.env_file_text(cfg)
    old = new.replace(q(INNOCUOUS), "'an-old-value'")
    shown = plan._diff("app.env", old, new, plan.APP_ENV_LINE)
    assert f"+COLOR={MASK} (changed)" in shown and "an-old-value" not in shown and not leaked(shown)
    assert plan._diff("app.env", new, new, plan.APP_ENV_LINE) == "--- app.env: unchanged\n"
    assert not leaked(plan._diff("app.env", None, new, plan.APP_ENV_LINE))


def test_every_gateway_hop_gets_the_strict_host_key_policy(tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("10.9.9.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    cfg = make_cfg(ssh={"known_hosts": str(known)})
    far = Connection("10.9.9.3", gateway=Connection("10.9.9.2", gateway=Connection("10.9.9.1")))
    prepare(far, cfg)
    hops = [far, far.gateway, far.gateway.gateway]
    assert all(isinstance(h.client._policy, paramiko.RejectPolicy) for h in hops)
    assert all(h.client._system_host_keys.lookup("10.9.9.1") for h in hops)
    lax = Connection("10.9.9.3", gateway=Connection("10.9.9.2"))
    prepare(lax, make_cfg(ssh={"strict_host_keys": False}))
    assert isinstance(lax.gateway.client._policy, paramiko.AutoAddPolicy)
