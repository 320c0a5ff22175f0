"""Script building and the deploy phases: exact lines, and the shell logic run for real with /bin/sh in temp dirs.

Nothing here uses SSH. Where a phase needs root-only tools (sudo, nginx), a fake on PATH stands in and the
absolute /etc/nginx paths are moved under a temp dir, so every run is harmless.
"""
from __future__ import annotations

import copy
import getpass
import io
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

from fabdeploy.appserver.uwsgi import UWSGI as UwsgiServer
from fabdeploy import hooks


from fabdeploy.front import nginx

from fabdeploy.remote import markers, shell

from fabdeploy.steps import activate

from fabdeploy.steps import cleanup

from fabdeploy.steps import code

from fabdeploy.steps import configure

from fabdeploy.steps import django_app

from fabdeploy.steps import live_check

from fabdeploy.steps import setup

from fabdeploy.steps import static

from fabdeploy.steps import venv
from fabdeploy.database import backup
from fabdeploy.ops.starter import GENERIC_NAMES, PRODUCTION_NAMES
from fabdeploy.config import parse_config
from fabdeploy.hosts.layout import RELEASE_ID, Layout, nginx_site_paths
from fabdeploy.hosts.layout import RELEASE_GLOB_ERE, SETTINGS_MODULE
from fabdeploy.model import Facts, Release
from fabdeploy.remote.markers import MARK, fact
from fabdeploy.remote.runner import RunResult
from fabdeploy.remote.script import MASK, Phase, Script, mask
from fabdeploy.remote.shell import q, write_file
from fabdeploy.local.source import bundle

SAMPLE = Path(__file__).resolve().parent / "sample_project"
REL_ID = "20260101T000000Z-abcdef0"
VENV = "0123456789abcdef"

HOSTILE = ["x; rm -rf /", "$(touch PWNED)", "`touch PWNED`", "a'b", 'a"b', "a\\b", "${HOME}", "$HOME",
           "it's; $(touch PWNED) `touch PWNED` 'x'", "line1\nline2", "*", "-n", ""]


def make_cfg(deploy_to="/srv/shop", **sections):
    data = {
        "project": {"name": "shop", "django_settings": "shop.settings", "wsgi": "shop.wsgi:application"},
        "paths": {"deploy_to": str(deploy_to)},
        # these scripts run here as the current user: the app user of their own (tests/test_app_user.py: others)
        "app": {"user": getpass.getuser()},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(copy.deepcopy(values))
    return parse_config(data)


def make_rel(rel_id=REL_ID, venv_hash=VENV, has_wheels=False) -> Release:
    return Release(rel_id, "a" * 40, "main", "git", "2026-01-01T00:00:00Z", "tester", venv_hash, has_wheels)


def sh(script: Script | str, cwd, stdin: bytes | None = None, env: dict | None = None, timeout=120):
    """Run a Script through its own command() (so the outer quoting is exercised too), or plain text."""
    command = script.command() if isinstance(script, Script) else script
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(command, shell=True, cwd=cwd, input=stdin, capture_output=True, env=full_env,
                          timeout=timeout)


def out(proc) -> str:
    """stdout without the leading process-group line (tested on its own below)."""
    return "".join(ln for ln in proc.stdout.decode().splitlines(keepends=True)
                   if not ln.startswith(f"{MARK} pgid "))


def err(proc) -> str:
    return proc.stderr.decode()


def written(lines: list[str], path: str) -> str:
    """The content a write_file(path, ...) or new_file(path, ...) inside `lines` writes."""
    marker = f"cat > {q(path + '.fabdeploy-tmp')}) <<'"
    for line in lines:
        if line.startswith("printf '%s' ") and line.endswith(f" > {q(path)}"):
            return shlex.split(line[len("printf '%s' "):-len(f" > {q(path)}")])[0]
        if marker in line:
            head, _, rest = line.partition("\n")
            delim = head.rsplit("<<'", 1)[1].rstrip("'")
            assert rest.endswith(delim)
            return rest[:-len(delim)]
    raise AssertionError(f"no write_file for {path}")


def notes(stdout: str) -> list[str]:
    return [line[len(f"{MARK} note "):] for line in stdout.splitlines() if line.startswith(f"{MARK} note ")]


@pytest.fixture
def fakebin(tmp_path):
    """A PATH dir with `sudo` (logs, drops -n, runs the command) and `nginx` (fails -t when told to)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    log = tmp_path / "sudo.log"
    fail = tmp_path / "nginx-must-fail"
    (bindir / "sudo").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {q(str(log))}
        [ "$1" = "-n" ] && shift
        # (root commands name full paths, remote/root.py: /usr/sbin/nginx is this fake one)
        b={q(str(bindir))}/"${{1##*/}}"; if [ -x "$b" ]; then shift; exec "$b" "$@"; fi
        exec "$@"
        """))
    (bindir / "nginx").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "nginx $*" >> {q(str(log))}
        if [ "$1" = "-t" ]; then
          if [ -f {q(str(fail))} ]; then echo 'nginx: [emerg] unexpected "}}" in site' >&2; exit 1; fi
          echo 'nginx: configuration file test is successful' >&2
        fi
        exit 0
        """))
    for f in bindir.iterdir():
        f.chmod(0o755)

    class Fake:
        env = {"PATH": f"{bindir}:{os.environ['PATH']}"}

        @staticmethod
        def log() -> str:
            return log.read_text() if log.exists() else ""

        @staticmethod
        def nginx_fails(yes=True):
            if yes:
                fail.touch()
            elif fail.exists():
                fail.unlink()
    return Fake


# === Script ===================================================================================================

def test_text_wraps_every_phase_in_markers_and_a_set_e_subshell():
    script = Script([Phase("one", ["echo 1"]), Phase("two", ["echo 2a", "echo 2b"])])
    lines = script.text().splitlines()
    # the failed keep_going phases so far, then the process group (for stopping an interrupted run)
    assert lines[:4] == ["set -u", "umask 022", "fabdeploy_failed=", markers.pgid()]
    for name, body in (("one", ["echo 1"]), ("two", ["echo 2a", "echo 2b"])):
        i = lines.index(f"echo '{MARK} begin {name}'; echo '{MARK} begin {name}' >&2")
        assert lines[i + 1:i + 3] == ["(", "set -e"]
        assert lines[i + 3:i + 3 + len(body)] == body
        j = i + 3 + len(body)
        assert lines[j:j + 4] == [")", "rc=$?", f'echo "{MARK} end {name} $rc"; echo "{MARK} end {name} $rc" >&2',
                                  '[ "$rc" -eq 0 ] || exit "$rc"']
    assert script.text().endswith("\n")
    assert script.names == ["one", "two"]


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_the_pgid_line_is_the_fifth_field_of_proc_stat(shell):
    """(read without a process) what `cut -d' ' -f5 /proc/$$/stat` says, as a process group leader and not"""
    inner = markers.pgid() + "; cut -d' ' -f5 /proc/$$/stat"
    out = subprocess.run(["setsid", shell, "-c", inner + "; " + shell + " -c " + shlex.quote(inner)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:3] == [MARK, "pgid", out[3]] and out[3].isdigit()
    assert out[4:7] == [MARK, "pgid", out[7]] and out[7] == out[3]


def test_keep_going_phase_records_its_failure_instead_of_exiting():
    lines = Script([Phase("r", ["false"], keep_going=True), Phase("h", ["true"])]).text().splitlines()
    i = lines.index(f'echo "{MARK} end r $rc"; echo "{MARK} end r $rc" >&2')
    assert lines[i - 1] == "rc=$?"
    assert lines[i + 1] == '[ "$rc" -eq 0 ] || fabdeploy_failed="$fabdeploy_failed r"'
    j = lines.index(f'echo "{MARK} end h $rc"; echo "{MARK} end h $rc" >&2')
    assert lines[j + 1] == '[ "$rc" -eq 0 ] || exit "$rc"'
    assert Phase("x", []).keep_going is False


def test_command_is_sh_c_with_the_text_single_quoted():
    script = Script([Phase("p", ["echo 'it''s'", "x=$(id -u)"])])
    assert script.command() == "sh -c " + q(script.text())
    assert script.command().startswith("sh -c '")


def test_script_reports_its_process_group_first(tmp_path):
    script = Script([Phase("a", ["echo A"])])
    proc = sh(script, tmp_path)
    first = proc.stdout.decode().splitlines()[0]
    assert re.fullmatch(rf"{MARK} pgid [0-9]+", first), first
    # sh was started by us, so its group is ours: the number is a real, live process group id
    assert int(first.split()[-1]) == os.getpgid(0)


def test_failing_phase_stops_the_script_with_its_status(tmp_path):
    script = Script([Phase("a", ["echo A"]), Phase("b", ["echo B1", "sh -c 'exit 3'", "echo B2"]),
                     Phase("c", ["echo C"])])
    proc = sh(script, tmp_path)
    assert proc.returncode == 3
    assert out(proc).splitlines() == [f"{MARK} begin a", "A", f"{MARK} end a 0", f"{MARK} begin b", "B1",
                                      f"{MARK} end b 3"]
    assert err(proc).splitlines() == [f"{MARK} begin a", f"{MARK} end a 0", f"{MARK} begin b", f"{MARK} end b 3"]


def test_unset_variable_fails_the_phase(tmp_path):
    proc = sh(Script([Phase("p", ["echo $nosuchvariable", "echo after"])]), tmp_path)
    assert proc.returncode != 0 and "after" not in out(proc)


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_q_keeps_hostile_values_inert(tmp_path, value):
    proc = sh(Script([Phase("p", [f"printf '%s' {q(value)} > out.txt", f"v={q(value)}", 'printf "%s" "$v" > v.txt'])]),
              tmp_path)
    assert proc.returncode == 0, err(proc)
    assert (tmp_path / "out.txt").read_text() == value
    assert (tmp_path / "v.txt").read_text() == value
    assert not (tmp_path / "PWNED").exists()


NASTY_CONTENT = ("first line\n$(touch PWNED)\n`touch PWNED`\n${HOME} $HOME \\ \\\\ 'single' \"double\"\n"
                 "FABDEPLOY_EOF\n  FABDEPLOY_EOF\nEOF\n\n\ttabbed  \ntrailing spaces   \n"
                 "unicode: h\u00e9llo \u2713\nlast\n")


def test_write_file_is_byte_exact_and_inert(tmp_path):
    target = tmp_path / "dir" / "file.txt"
    (tmp_path / "dir").mkdir()
    lines = write_file(str(target), NASTY_CONTENT)
    # the content holds the default delimiter, so another one was chosen
    assert "<<'FABDEPLOY_EOF'\n" not in lines[1]
    proc = sh(Script([Phase("w", lines)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert target.read_bytes() == NASTY_CONTENT.encode()
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "dir" / "PWNED").exists()
    assert sorted(os.listdir(tmp_path / "dir")) == ["file.txt"]  # no temp file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_file_uses_the_plain_delimiter_when_possible_and_sets_mode(tmp_path):
    target = tmp_path / "secret.env"
    target.write_text("old\n")
    lines = write_file(str(target), "A='1'\n", mode="0600")
    assert lines[1].endswith("<<'FABDEPLOY_EOF'\nA='1'\nFABDEPLOY_EOF")
    assert sh(Script([Phase("w", lines)]), tmp_path).returncode == 0
    assert target.read_text() == "A='1'\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", ["0600", "0640", "0644", "0444", "0755", "0700", "2750"])
def test_write_file_gives_the_new_file_its_mode_and_runs_rm_and_chmod_only_when_needed(mode, tmp_path):
    """The temp file is created with the mode (its umask) unless the mode has execute or special bits (chmod);
    a leftover temp file, or a symlink planted under its name, is removed first (never written through)."""
    target, tmp = tmp_path / "f", tmp_path / "f.fabdeploy-tmp"
    lines = write_file(str(target), "x\n", mode=mode)
    assert any(ln.startswith("chmod ") for ln in lines) == bool(int(mode, 8) & 0o7111)
    elsewhere = tmp_path / "elsewhere"
    tmp.symlink_to(elsewhere)
    assert sh(Script([Phase("w", lines)]), tmp_path).returncode == 0
    assert target.read_text() == "x\n" and not elsewhere.exists() and not tmp.exists()
    assert stat.S_IMODE(target.stat().st_mode) == int(mode, 8)


def test_write_file_terminates_the_last_line(tmp_path):
    target = tmp_path / "f"
    assert sh(Script([Phase("w", write_file(str(target), "no newline"))]), tmp_path).returncode == 0
    assert target.read_bytes() == b"no newline\n"


def test_write_file_to_a_path_with_spaces_and_quotes(tmp_path):
    target = tmp_path / "we ird's $(x)"
    assert sh(Script([Phase("w", write_file(str(target), "ok\n"))]), tmp_path).returncode == 0
    assert target.read_text() == "ok\n"


def test_display_masks_secret_values_and_their_quoted_form():
    secrets = ("s3cr3t-token", "pa ss'word")
    script = Script([Phase("p", [f"echo {q('s3cr3t-token')}", f"X={q('pa ss' + chr(39) + 'word')}",
                                 "echo plain s3cr3t-token inline"])], secrets)
    shown = script.display()
    assert "s3cr3t-token" not in shown and "pa ss" not in shown and "word" not in shown
    assert f"echo {MASK}" in shown and f"X={MASK}" in shown and f"echo plain {MASK} inline" in shown
    assert "s3cr3t-token" in script.text()  # only the display is masked


def test_mask_replaces_longer_secrets_first_and_ignores_empty_ones():
    assert mask("abcdef and abc", ["abc", "abcdef", ""]) == f"{MASK} and {MASK}"
    assert mask("nothing here", []) == "nothing here"


def facts_of(stdout: str) -> dict:
    """The facts the runner reads from a script's stdout (scripts here run in a plain sh)."""
    return RunResult(0, {}, stdout, "").facts


def test_run_result_facts_reads_marker_lines_only():
    stdout = (f"noise\n{MARK} fact python_version=3.11.2\n{MARK} fact venvs=aa bb \n"
              f"{MARK} fact url=http://x/?a=b\n{MARK} note not a fact\n  {MARK} fact indented=no\n"
              f"{MARK} fact empty=\n")
    assert facts_of(stdout) == {"python_version": "3.11.2", "venvs": "aa bb ", "url": "http://x/?a=b",
                                   "empty": ""}


def test_fact_lines_round_trip_through_sh(tmp_path):
    proc = sh(Script([Phase("p", ["v='a b'", fact("thing", "$v"), fact("user", "$(echo me)")])]), tmp_path)
    assert facts_of(out(proc)) == {"thing": "a b", "user": "me"}


# === Release / Facts ==========================================================================================

def test_release_metadata_is_sorted_json():
    meta = json.loads(make_rel().metadata())
    assert meta == {"id": REL_ID, "revision": "a" * 40, "branch": "main", "source": "git",
                    "deployed_at": "2026-01-01T00:00:00Z", "deployed_by": "tester", "venv": VENV,
                    "fingerprint": ""}


def test_fingerprint_changes_with_what_a_deploy_produces():
    cfg = make_cfg()
    base = live_check.fingerprint(cfg, "a" * 40, b"Django\n")
    assert base == live_check.fingerprint(cfg, "a" * 40, b"Django\n")  # stable
    assert base != live_check.fingerprint(cfg, "b" * 40, b"Django\n")  # another revision
    assert base != live_check.fingerprint(cfg, "a" * 40, b"Django\nsqlparse\n")  # other requirements
    assert base != live_check.fingerprint(make_cfg(uwsgi={"processes": 9}), "a" * 40, b"Django\n")  # uwsgi.ini
    assert base != live_check.fingerprint(make_cfg(nginx={"listen": 8080}), "a" * 40, b"Django\n")  # nginx site
    assert base != live_check.fingerprint(make_cfg(django={"env": {"A": "1"}}), "a" * 40, b"Django\n")


def live_release_with_fingerprint(tmp_path, fp: str):
    """A deploy_to whose current release records fingerprint `fp` (no app server pid yet)."""
    cfg = make_cfg(tmp_path / "app")
    lay = Layout(cfg.paths.deploy_to)
    rel = Path(lay.release(REL_ID))
    (rel / ".fabdeploy").mkdir(parents=True)
    (rel / ".fabdeploy" / "release.json").write_text(json.dumps({"fingerprint": fp}, indent=2))
    os.symlink(rel, lay.current)
    Path(lay.run).mkdir(parents=True)
    return cfg, lay


def test_unchanged_exit_matches_only_the_live_fingerprint(tmp_path):
    cfg, lay = live_release_with_fingerprint(tmp_path, "f" * 20)
    Path(UwsgiServer().paths(lay).pidfile).write_text(str(os.getpid()))  # "uwsgi" must be the live process' name: it is not
    script = Script([Phase("setup", [*live_check.unchanged_exit(cfg, "f" * 20, ["echo AFTER"]), "echo BUILT"])])
    assert "BUILT" in out(sh(script, tmp_path))  # app server not alive: deploy anyway


def test_facts_parse_with_defaults():
    f = Facts.parse({"python_version": "3.11.2", "venvs": "aa bb ", "nginx_user": "", "current": "/srv/x"})
    assert f == Facts(python_version="3.11.2", nginx_layout="sites", nginx_user="www-data",
                      nginx_pid="/run/nginx.pid", current="/srv/x", venvs=["aa", "bb"], user="")
    assert Facts.parse({}).venvs == []


# === setup ====================================================================================================

def test_setup_uses_sudo_for_deploy_to_only_when_it_is_missing():
    lines = setup.setup(make_cfg("/srv/shop")).lines
    i = lines.index("if [ ! -d /srv/shop ]; then")
    block = lines[i:lines.index("fi", i) + 1]
    assert ('  { sudo -n /usr/bin/mkdir -p /srv/shop && sudo -n /usr/bin/chown "$(id -un):" /srv/shop; } 2>/dev/null'
            in block[1])
    mkdirs = [ln for ln in lines if "mkdir" in ln and ln not in block]
    assert mkdirs and not any("sudo" in ln for ln in mkdirs)


def test_setup_creates_the_whole_layout_without_sudo():
    lines = setup.setup(make_cfg("/srv/shop", paths={"shared_dirs": ["media", "uploads/private"]})).lines
    mkdir = next(ln for ln in lines if ln.startswith("mkdir -p "))
    assert set(mkdir.split()[2:]) == {"/srv/shop/releases", "/srv/shop/venvs", "/srv/shop/tmp", "/srv/shop/shared",
                                      "/srv/shop/shared/log", "/srv/shop/shared/run", "/srv/shop/shared/config",
                                      "/srv/shop/shared/static", "/srv/shop/shared/media", "/srv/shop/shared/db",
                                      "/srv/shop/shared/uploads/private"}


@pytest.mark.parametrize("layout,line", [("sites", "nginx_layout=sites"), ("conf.d", "nginx_layout=conf.d")])
def test_setup_fixed_nginx_layout(layout, line):
    assert line in setup.setup(make_cfg(nginx={"layout": layout})).lines


def test_setup_reports_every_fact():
    text = "\n".join(setup.setup(make_cfg()).lines)
    for key in ("python_version", "nginx_layout", "nginx_user", "nginx_pid", "current", "venvs", "user"):
        assert f'echo "{MARK} fact {key}=' in text


def _id(flag: str) -> str:
    return subprocess.run(["id", flag], capture_output=True, text=True, check=True).stdout.strip()


def _deploy_to_block(cfg) -> list[str]:
    lines = setup.setup(cfg).lines
    return lines[:next(i for i, ln in enumerate(lines) if ln.startswith("[ -w ")) + 1]


def test_setup_deploy_to_block_runs_sudo_only_when_missing(tmp_path, fakebin):
    deploy_to = tmp_path / "srv" / "shop"
    block = _deploy_to_block(make_cfg(deploy_to))
    proc = sh(Script([Phase("setup", block)]), tmp_path, env=fakebin.env)
    assert proc.returncode == 0, err(proc)
    assert deploy_to.is_dir()
    assert fakebin.log().splitlines() == [f"-n /usr/bin/mkdir -p {deploy_to}",
                                          f"-n /usr/bin/chown {_id('-un')}: {deploy_to}"]
    (tmp_path / "sudo.log").unlink()
    proc = sh(Script([Phase("setup", block)]), tmp_path, env=fakebin.env)
    assert proc.returncode == 0 and fakebin.log() == ""


def test_setup_deploy_to_block_fails_clearly_without_sudo(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sudo").write_text("#!/bin/sh\nexit 1\n")
    (bindir / "sudo").chmod(0o755)
    deploy_to = tmp_path / "missing"
    proc = sh(Script([Phase("setup", _deploy_to_block(make_cfg(deploy_to)))]), tmp_path,
              env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert proc.returncode == 1
    assert f"{deploy_to} does not exist and cannot be created with sudo (mkdir, chown)" in err(proc)
    assert not deploy_to.exists()


def test_setup_runs_and_reports_facts(tmp_path, fakebin):
    deploy_to = tmp_path / "app"
    cfg = make_cfg(deploy_to, project={"python": sys.executable}, nginx={"layout": "conf.d", "user": "www-data"})
    lay = Layout(str(deploy_to))
    (deploy_to / "venvs" / "complete1").mkdir(parents=True)
    (deploy_to / "venvs" / "complete1" / ".fabdeploy-complete").touch()
    (deploy_to / "venvs" / "halfbuilt").mkdir()
    (deploy_to / "releases" / REL_ID).mkdir(parents=True)
    os.symlink(lay.release(REL_ID), lay.current)
    proc = sh(Script([setup.setup(cfg)]), tmp_path, env=fakebin.env)
    assert proc.returncode == 0, err(proc)
    facts = Facts.parse(facts_of(out(proc)))
    assert facts.python_version == "%d.%d.%d" % sys.version_info[:3]
    assert facts.nginx_layout == "conf.d" and facts.nginx_user == "www-data"
    assert facts.current == lay.release(REL_ID)
    assert facts.venvs == ["complete1"]
    assert facts.user == _id("-un")
    for d in ("releases", "venvs", "tmp", "shared/log", "shared/run", "shared/config", "shared/static",
              "shared/media", "shared/db"):
        assert (deploy_to / d).is_dir(), d
    run = (deploy_to / "shared" / "run").stat()
    assert stat.S_IMODE(run.st_mode) == 0o2750
    assert run.st_gid == int(subprocess.run(["id", "-g", "www-data"], capture_output=True, text=True).stdout)
    assert "chgrp" in fakebin.log()
    (tmp_path / "sudo.log").unlink()
    proc = sh(Script([setup.setup(cfg)]), tmp_path, env=fakebin.env)
    assert proc.returncode == 0 and fakebin.log() == ""  # nothing left that needs sudo


# === code =====================================================================================================

SECRET_ENV = {"DB_PASSWORD": "hunter2-pw", "API_TOKEN": "tok'en; $HOME `x`", "DEBUG_LEVEL": "3",
              "GREETING": "hello; rm -rf / `touch PWNED` 'q' \"dq\" \\"}


def test_code_phase_writes_release_json_and_settings():
    cfg = make_cfg("/srv/shop", nginx={"server_name": "example.com www.example.com"})
    rel = make_rel()
    lines = code.code(cfg, rel).lines
    R = f"/srv/shop/releases/{REL_ID}"
    assert json.loads(written(lines, f"{R}/.fabdeploy/release.json")) == json.loads(rel.metadata())
    assert written(lines, f"{R}/.fabdeploy/venv") == VENV + "\n"
    settings = written(lines, f"{R}/{SETTINGS_MODULE}.py")
    assert "from shop.settings import *" in settings
    assert "\nDEBUG = False\n" in settings
    assert "ALLOWED_HOSTS = ['example.com', 'www.example.com']" in settings
    assert "_SHARED = _Path('/srv/shop/shared')" in settings
    assert f"STATIC_ROOT = str(_SHARED / \"static\" / {REL_ID!r})" in settings
    assert 'MEDIA_ROOT = str(_SHARED / "media")' in settings
    assert 'SECRET_KEY = (_SHARED / "secret_key").read_text().strip()' in settings
    assert f"FABDEPLOY_RELEASE = '{REL_ID}'" in settings


def test_code_phase_unpacks_stdin_into_a_new_release_only():
    lines = code.code(make_cfg("/srv/shop"), make_rel()).lines
    R, T = f"/srv/shop/releases/{REL_ID}", f"/srv/shop/tmp/{REL_ID}"
    assert lines[0].startswith(f"[ ! -e {R} ] || ")
    assert f"tar -xzf - -C {T}" in lines
    assert f"mv {T}/release {R}" in lines
    assert lines.index(f"tar -xzf - -C {T}") < lines.index(f"mv {T}/release {R}")


def test_code_phase_env_file_is_quoted_and_private():
    cfg = make_cfg(django={"env": SECRET_ENV})
    lines = code.code(cfg, make_rel()).lines
    env_file = written(lines, "/srv/shop/shared/config/app.env")
    assert env_file.splitlines() == [f"{k}={q(v)}" for k, v in sorted(SECRET_ENV.items())]
    # (created 0600 under its umask: nothing else ever reads it)
    assert any(ln.startswith("(umask 177; cat > /srv/shop/shared/config/app.env.fabdeploy-tmp) <<") for ln in lines)


def test_code_phase_links_shared_dirs():
    lines = code.code(make_cfg(paths={"shared_dirs": ["media", "uploads/private"]}), make_rel()).lines
    R = f"/srv/shop/releases/{REL_ID}"
    for d in ("media", "uploads/private"):
        i = lines.index(f"ln -s /srv/shop/shared/{d} {R}/{d}")
        assert lines[i - 3:i] == [f"mkdir -p /srv/shop/shared/{d}", f"rm -rf {R}/{d}",
                                  f'mkdir -p "$(dirname {R}/{d})"']


def test_secret_key_is_generated_on_the_host_and_never_in_a_script():
    cfg = make_cfg(django={"env": {"DB_PASSWORD": "hunter2-pw"}})
    text = Script([code.code(cfg, make_rel())]).text()
    line = next(ln for ln in text.splitlines() if "secret_key" in ln and "/dev/urandom" in ln)
    assert line.startswith(f"if [ ! -s /srv/shop/shared/secret_key ]; then (umask 077; {code.NEW_KEY_SH} > ")
    # 0600, or 0640 with the app user's group when the app runs as a user of its own
    for f in ("/srv/shop/shared/secret_key", "/srv/shop/shared/config/app.env"):
        assert (f'if [ -f {f} ]; then if [ {shell.ME_WORD} = ') in text and f"then chmod 600 {f}; else" in text
        assert f'|| sudo -n /usr/bin/chgrp "$appg" {f}; [ "${{m#*:}}" = 640 ] || chmod 640 {f}; fi; fi' in text
    assert "SECRET_KEY = '" not in text and 'SECRET_KEY = "' not in text


def test_no_secret_appears_in_any_displayed_script():
    env = {"DB_PASSWORD": "hunter2-pw", "API_TOKEN": "tok'en; $HOME", "AWS_SECRET_ACCESS_KEY": "AKIA/xyz+1"}
    cfg = make_cfg(django={"env": env})
    rel, facts = make_rel(), Facts()
    built = [setup.setup(cfg), code.code(cfg, rel), venv.venv(cfg, rel), django_app.django(cfg, rel),
             configure.config(cfg, rel, facts), activate.switch(cfg, rel), activate.restart(cfg, rel, facts),
             cleanup.cleanup(cfg, rel), cleanup.abandon(cfg, rel)]
    script = Script(built, tuple(cfg.secret_values()))
    assert "hunter2-pw" in script.text()  # it has to get to app.env and the uWSGI ini
    shown = script.display()
    for value in env.values():
        assert value not in shown and q(value) not in shown
    assert "tok'" not in shown and "AKIA" not in shown


def test_percent_secret_is_masked_in_the_uwsgi_ini():
    cfg = make_cfg(django={"env": {"DB_PASSWORD": "p%ss-word-42"}})
    shown = Script([configure.config(cfg, make_rel(), Facts())], tuple(cfg.secret_values())).display()
    assert "ss-word-42" not in shown


# --- the settings module, imported for real ------------------------------------------------------------------

FAKE_SETTINGS = """\
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "dev-key-not-for-production"
DEBUG = True
ALLOWED_HOSTS = []
INSTALLED_APPS = ["django.contrib.staticfiles"]
STATIC_URL = "/dev-static/"
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"},
    "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "pg": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop"},
}
CUSTOM = "kept"
"""


def _render_settings(tmp_path, **cfg_sections) -> tuple[Path, Path]:
    deploy_to = tmp_path / "srv"
    cfg = make_cfg(deploy_to, project={"django_settings": "fakeproj.settings"}, **cfg_sections)
    lay = Layout(str(deploy_to))
    content = written(code.code(cfg, make_rel()).lines, f"{lay.release(REL_ID)}/{SETTINGS_MODULE}.py")
    release = tmp_path / "release"
    (release / "fakeproj").mkdir(parents=True)
    (release / "fakeproj" / "__init__.py").write_text("")
    (release / "fakeproj" / "settings.py").write_text(FAKE_SETTINGS)
    (release / f"{SETTINGS_MODULE}.py").write_text(content)
    (deploy_to / "shared").mkdir(parents=True)
    (deploy_to / "shared" / "secret_key").write_text("the-real-production-key\n")
    return release, deploy_to / "shared"


def test_settings_module_compiles(tmp_path):
    release, _ = _render_settings(tmp_path)
    source = (release / f"{SETTINGS_MODULE}.py").read_text()
    compile(source, f"{SETTINGS_MODULE}.py", "exec")


def test_settings_module_overrides_the_project_settings(tmp_path):
    release, shared = _render_settings(tmp_path, nginx={"server_name": "example.com _"},
                                       django={"media_url": "/uploads/"})
    probe = textwrap.dedent(f"""\
        import json, sys
        sys.path.insert(0, {str(release)!r})
        import {SETTINGS_MODULE} as s
        print(json.dumps({{"DEBUG": s.DEBUG, "SECRET_KEY": s.SECRET_KEY, "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
            "STATIC_ROOT": s.STATIC_ROOT, "MEDIA_ROOT": s.MEDIA_ROOT, "STATIC_URL": s.STATIC_URL,
            "MEDIA_URL": s.MEDIA_URL, "CUSTOM": s.CUSTOM, "RELEASE": s.FABDEPLOY_RELEASE,
            "DB": {{k: str(v["NAME"]) for k, v in s.DATABASES.items()}}}}))
        """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["DEBUG"] is False
    assert got["SECRET_KEY"] == "the-real-production-key"
    assert got["ALLOWED_HOSTS"] == ["example.com"]
    # each release collects into its own static root; the switch points static/current at it
    assert got["STATIC_ROOT"] == f"{shared}/static/{REL_ID}" and got["MEDIA_ROOT"] == f"{shared}/media"
    assert got["STATIC_URL"] == "/static/" and got["MEDIA_URL"] == "/uploads/"
    assert got["CUSTOM"] == "kept" and got["RELEASE"] == REL_ID
    assert got["DB"] == {"default": f"{shared}/db/default.sqlite3", "memory": ":memory:", "pg": "shop"}


LOG_PROBE = """\
import logging, sys
sys.path.insert(0, {release!r})
import os
os.environ["DJANGO_SETTINGS_MODULE"] = {module!r}
import django
django.setup()
try:
    raise ValueError("probe-failure-7c1")
except ValueError:
    logging.getLogger("django.request").error("Internal Server Error: /boom/", exc_info=True)
"""


@pytest.mark.parametrize("project_logging, overlay_logs", [
    ("", True),
    # a LOGGING that says nothing about django.request: the overlay adds its handler, keeping theirs
    ('LOGGING = {"version": 1, "handlers": {"h": {"class": "logging.NullHandler"}}, '
     '"loggers": {"myapp": {"handlers": ["h"]}}}', True),
    # a LOGGING that configures django (here: to nowhere) is the project's choice
    ('LOGGING = {"version": 1, "handlers": {"h": {"class": "logging.NullHandler"}}, '
     '"loggers": {"django": {"handlers": ["h"], "propagate": False}}}', False),
])
def test_settings_module_logs_view_errors_with_their_traceback(tmp_path, project_logging, overlay_logs):
    release, _ = _render_settings(tmp_path)
    base = release / "fakeproj" / "settings.py"
    base.write_text(base.read_text() + "\n" + project_logging + "\n")
    proc = subprocess.run([sys.executable, "-c", LOG_PROBE.format(release=str(release), module=SETTINGS_MODULE)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if overlay_logs:
        assert "ERROR django.request: Internal Server Error: /boom/" in proc.stderr
        assert "Traceback (most recent call last)" in proc.stderr and "probe-failure-7c1" in proc.stderr
    else:
        assert proc.stderr == ""


# --- the code phase, run for real ----------------------------------------------------------------------------

def _sample_bundle() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(SAMPLE.rglob("*")):
            rel = path.relative_to(SAMPLE).as_posix()
            if "__pycache__" in rel or rel.endswith(".pyc") or rel.startswith(("media", "db.sqlite3")):
                continue
            tar.add(path, arcname=rel, recursive=False)
    return bundle(buf.getvalue(), [])


def _sample_cfg(deploy_to, **sections):
    base = {"project": {"name": "sample", "django_settings": "sampleproject.settings",
                        "wsgi": "sampleproject.wsgi:application", "python": sys.executable},
            "nginx": {"server_name": "sample.test"}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return make_cfg(deploy_to, **base)


def _setup_dirs(deploy_to) -> Layout:
    """The directories the setup phase creates."""
    lay = Layout(str(deploy_to))
    for d in (lay.releases, lay.tmp, lay.config, lay.venvs, lay.run, lay.log, f"{lay.shared}/db",
              f"{lay.shared}/static"):
        Path(d).mkdir(parents=True, exist_ok=True)
    return lay


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The sample project after a real run of the code phase (archive on stdin) into a temp deploy_to."""
    root = tmp_path_factory.mktemp("code")
    deploy_to = root / "app"
    env = {"GREETING": SECRET_ENV["GREETING"], "DB_PASSWORD": "hunter2-pw"}
    cfg = _sample_cfg(deploy_to, django={"env": env}, paths={"shared_dirs": ["media", "uploads/private"]})
    lay = _setup_dirs(deploy_to)
    rel = make_rel()
    proc = sh(Script([code.code(cfg, rel)]), root, stdin=_sample_bundle())
    return {"root": root, "cfg": cfg, "lay": lay, "rel": rel, "proc": proc, "env": env}


def test_code_phase_run_unpacks_the_release(deployed):
    proc, lay = deployed["proc"], deployed["lay"]
    assert proc.returncode == 0, err(proc)
    R = Path(lay.release(REL_ID))
    assert (R / "manage.py").is_file() and (R / "sampleproject" / "settings.py").is_file()
    assert json.loads((R / ".fabdeploy" / "release.json").read_text())["id"] == REL_ID
    assert (R / ".fabdeploy" / "venv").read_text() == VENV + "\n"
    assert "DEBUG = False" in (R / f"{SETTINGS_MODULE}.py").read_text()
    assert not (Path(lay.staging(REL_ID)) / "release").exists()
    assert notes(out(proc)) == ["secret key generated"]
    key = Path(lay.secret_key)
    assert re.fullmatch(r"[A-Za-z0-9_-]{67}\n", key.read_text()) and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().strip() not in out(proc) + err(proc)


def test_new_key_is_like_token_urlsafe_50():
    keys = {subprocess.run(["sh", "-c", code.NEW_KEY_SH], capture_output=True, text=True).stdout for _ in range(3)}
    assert len(keys) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]{67}\n", k) for k in keys)
    assert {len(secrets.token_urlsafe(50))} == {67}


def test_code_phase_run_links_shared_dirs(deployed):
    lay = deployed["lay"]
    R = Path(lay.release(REL_ID))
    for d in ("media", "uploads/private"):
        assert (R / d).is_symlink() and os.readlink(R / d) == f"{lay.shared}/{d}"
        assert Path(lay.shared, d).is_dir()


def test_code_phase_run_makes_a_private_secret_key(deployed):
    key = Path(deployed["lay"].secret_key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_text().strip()) >= 50
    assert key.read_text().strip() not in deployed["proc"].stdout.decode()


def test_code_phase_run_env_file_sources_to_the_exact_values(deployed):
    env_file = Path(deployed["lay"].env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    proc = sh(f"set -a; . {q(str(env_file))}; set +a; printf '%s\\n' \"$GREETING\" \"$DB_PASSWORD\"",
              deployed["root"])
    assert out(proc).splitlines() == [deployed["env"]["GREETING"], "hunter2-pw"]
    assert not (deployed["root"] / "PWNED").exists()


def test_code_phase_refuses_an_existing_release_and_keeps_the_secret_key(deployed):
    key_before = Path(deployed["lay"].secret_key).read_text()
    proc = sh(Script([code.code(deployed["cfg"], deployed["rel"])]), deployed["root"], stdin=_sample_bundle())
    assert proc.returncode == 1
    assert f"release {REL_ID} already exists on the host" in err(proc)
    other = make_rel("20260102T000000Z-abcdef1")
    proc = sh(Script([code.code(deployed["cfg"], other)]), deployed["root"], stdin=_sample_bundle())
    assert proc.returncode == 0, err(proc)
    assert Path(deployed["lay"].secret_key).read_text() == key_before
    assert notes(out(proc)) == []


def test_code_phase_rejects_an_archive_without_release(tmp_path):
    deploy_to = tmp_path / "app"
    (deploy_to / "releases").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("other/file")
        tar.addfile(info, io.BytesIO(b""))
    proc = sh(Script([code.code(_sample_cfg(deploy_to), make_rel())]), tmp_path, stdin=buf.getvalue())
    assert proc.returncode == 1 and "the uploaded archive is incomplete" in err(proc)


def test_code_phase_requires_manage_py(tmp_path):
    deploy_to = tmp_path / "app"
    (deploy_to / "releases").mkdir(parents=True)
    proc = sh(Script([code.code(_sample_cfg(deploy_to, project={"manage": "src/manage.py"}), make_rel())]),
              tmp_path, stdin=_sample_bundle())
    assert proc.returncode == 1 and "src/manage.py not found in the release (project.manage)" in err(proc)


# --- the django phase, run for real against the code phase's release -----------------------------------------

def test_django_phase_lines():
    cfg = make_cfg(app={"user": "shopapp"})
    lines = django_app.django(cfg, make_rel()).lines
    assert lines[:4] == [f"cd /srv/shop/releases/{REL_ID}", "umask 027",
                         f"export DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} FABDEPLOY_RELEASE={REL_ID}",
                         "set -a; . /srv/shop/shared/config/app.env; set +a"]
    assert lines[4] == f"DJANGO_PY={q(django_app.PROGRAM_PY)}"  # the program, once
    one, redeploy, collect, deploy, app = _boots(lines)
    python = f"/srv/shop/venvs/{VENV}/bin/python"
    # the SSH user is the app user: one boot for everything, in order
    assert one[0] == f'{python} -c "$DJANGO_PY"'
    assert list(one[1]) == ["import", "production", "generic", "migrate", "static", "check"]
    assert one[1]["import"] == "shop.wsgi:application"
    assert one[1]["migrate"] == {"lock": "fabdeploy-migrate-shop", "wait": django_app.MIGRATE_LOCK_WAIT,
                                 "backup": f"/srv/shop/shared/backups/{REL_ID}", "exts": backup.EXTS,
                                 "record": True, "skip_empty": True}
    # two users: the app user (it owns the database) imports and migrates, with the env file and the
    # production settings; the deploy user (it owns the static root) collects and checks
    assert app[0] == (f"${{ASAPP-}} sh -c {q(django_app.APP_ENV_SH)} django /srv/shop/shared/config/app.env env "
                      f"DJANGO_SETTINGS_MODULE=fabdeploy_settings FABDEPLOY_RELEASE={REL_ID} {python} -c \"$DJANGO_PY\"")
    assert list(app[1]) == ["import", "production", "generic", "migrate"]
    assert deploy[0] == one[0] and deploy[1] == {"static": True, "check": True}
    # a redeploy (the seeded static root holds the live one's hash): one boot as the app user, which also
    # tells whether the static inputs changed and runs check --deploy; the deploy user collects only then
    assert redeploy[0] == app[0] and list(redeploy[1]) == ["import", "production", "generic", "migrate", "probe",
                                                           "check"]
    assert collect[0] == one[0] and collect[1] == {"static": True}
    seeded = next(i for i, ln in enumerate(lines) if ln.strip().startswith("if [ -f /srv/shop/shared/static/"))
    assert lines[seeded].strip() == f"if [ -f /srv/shop/shared/static/{REL_ID}/.fabdeploy-static-hash ]; then"
    changed = next(i for i, ln in enumerate(lines) if ln.strip() == "changed=$fd_changed")
    assert seeded < changed < next(i for i, ln in enumerate(lines) if ln.strip() == 'if [ -n "$changed" ]; then')
    # ... side by side: the deploy user's boot starts in the background first, the app user's boot waits for
    # it before it stops on a failure, and its output is shown after the app user's
    # (a first deploy: the inner else)
    two = lines[lines.index(next(ln for ln in lines if ln.startswith("  else"))):]
    bg = next(i for i, ln in enumerate(two) if "django-static.out" in ln and ln.rstrip().endswith("&"))
    assert two[bg + 1].strip() == "bg=$!"
    app_fail = next(ln for ln in two if "django.out" in ln and "exit 1" in ln)
    assert 'wait "$bg"; exit 1' in app_fail
    waits = [i for i, ln in enumerate(two) if ln.strip() == 'wait "$bg"']
    shown = next(i for i, ln in enumerate(two) if ln.strip().startswith("awk ") and "django-static.out" in ln)
    assert len(waits) == 1 and bg < waits[0] < shown


def _boots(lines: list[str]) -> list[tuple[str, dict]]:
    """Each run of the django program in the phase: (the words before its JSON argument, the parameters)."""
    out = []
    for ln in lines:
        m = re.match(r'\s*(?:\{ |rc=0; )(.*?-c "\$DJANGO_PY") (\'\{.*?\}\') 2>', ln)
        if m:
            out.append((m.group(1), json.loads(shlex.split(m.group(2))[0])))
    return out


def test_django_phase_flags():
    cfg = make_cfg(django={"migrate": False, "collectstatic": False, "check_deploy": False})
    lines = django_app.django(cfg, make_rel()).lines
    # the WSGI import check alone (never optional), as the deploy user
    [(words, params)] = _boots(lines)
    assert words == f'/srv/shop/venvs/{VENV}/bin/python -c "$DJANGO_PY"'
    assert params == {"import": "shop.wsgi:application", "production": list(PRODUCTION_NAMES),
                      "generic": list(GENERIC_NAMES)}


def test_django_phase_runs_migrate_collectstatic_and_check(deployed):
    lay, cfg, rel = deployed["lay"], deployed["cfg"], deployed["rel"]
    assert deployed["proc"].returncode == 0
    _fake_venv_python(lay, rel)
    proc = sh(Script([django_app.django(cfg, rel)]), deployed["root"])
    assert proc.returncode == 0, err(proc) + out(proc)
    first = notes(out(proc))
    assert first[0].endswith(" migrations applied") and int(first[0].split()[0]) > 0
    assert "static files copied" in first[1]
    assert any(line.startswith(f"{MARK} warn ") for line in out(proc).splitlines())  # check --deploy warnings
    assert Path(lay.shared, "db", "default.sqlite3").is_file()
    assert not Path(lay.release(rel.id), "db.sqlite3").exists()
    # collected into this release's own static root, not into shared/static itself
    assert Path(lay.static, rel.id, "pages", "site.css").read_text() == (SAMPLE / "pages/static/pages/site.css").read_text()
    assert not Path(lay.static, "pages").exists()
    again = sh(Script([django_app.django(cfg, rel)]), deployed["root"])
    assert again.returncode == 0 and notes(out(again))[0] == "0 migrations applied"


def _fake_venv_python(lay: Layout, rel: Release) -> None:
    """The release's virtualenv python: this interpreter (which has Django)."""
    bin_dir = Path(lay.venv(rel.venv_hash)) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\nexec {q(sys.executable)} \"$@\"\n")
    (bin_dir / "python").chmod(0o755)


def _fresh_release(tmp_path, rel=None, bundle_bytes=None, **sections):
    """A temp deploy_to after a real code phase of the sample project; returns (cfg, lay, rel)."""
    deploy_to = tmp_path / "app"
    lay = _setup_dirs(deploy_to)
    cfg = _sample_cfg(deploy_to, **sections)
    rel = rel or make_rel()
    proc = sh(Script([code.code(cfg, rel)]), tmp_path, stdin=bundle_bytes or _sample_bundle())
    assert proc.returncode == 0, err(proc)
    _fake_venv_python(lay, rel)
    return cfg, lay, rel


@pytest.mark.parametrize("breakage", ["wsgi", "urls"])
def test_django_phase_stops_before_migrate_when_the_app_does_not_import(tmp_path, breakage):
    wsgi = "sampleproject.nosuchmodule:application" if breakage == "wsgi" else "sampleproject.wsgi:application"
    cfg, lay, rel = _fresh_release(tmp_path, project={"wsgi": wsgi})
    if breakage == "urls":  # the URLconf (imported by the first request) is broken
        with open(Path(lay.release(rel.id), "pages", "urls.py"), "a") as f:
            f.write("\nraise ImportError('broken-urlconf-marker')\n")
    proc = sh(Script([django_app.django(cfg, rel)]), tmp_path)
    assert proc.returncode == 1
    assert f"the WSGI application {wsgi} does not import with the production settings" in err(proc)
    assert ("nosuchmodule" if breakage == "wsgi" else "broken-urlconf-marker") in err(proc)  # the cause, shown
    assert notes(out(proc)) == []  # no migrate, no collectstatic
    assert not Path(lay.shared, "db", "default.sqlite3").exists()
    assert os.listdir(Path(lay.static, rel.id)) == []


# === per-release static roots =================================================================================

OLD_ID = "20251231T000000Z-0000001"


def test_code_phase_seeds_the_static_root_with_hard_links_from_the_live_one(tmp_path):
    deploy_to = tmp_path / "app"
    lay = _setup_dirs(deploy_to)
    live = Path(lay.static, OLD_ID)
    (live / "pages").mkdir(parents=True)
    (live / "pages" / "site.css").write_text("live css\n")
    (live / "admin.css").write_text("admin\n")
    os.symlink(OLD_ID, Path(lay.static, "current"))  # relative, as static_switch makes it
    (Path(lay.static, REL_ID)).mkdir()
    (Path(lay.static, REL_ID, "leftover-from-an-abandoned-try")).write_text("x")
    proc = sh(Script([code.code(_sample_cfg(deploy_to), make_rel())]), tmp_path, stdin=_sample_bundle())
    assert proc.returncode == 0, err(proc)
    new = Path(lay.static, REL_ID)
    assert sorted(p.relative_to(new).as_posix() for p in new.rglob("*")) == ["admin.css", "pages", "pages/site.css"]
    for f in ("admin.css", "pages/site.css"):
        assert (new / f).stat().st_ino == (live / f).stat().st_ino  # hard links, not copies
    assert os.readlink(Path(lay.static, "current")) == OLD_ID  # the live site is switched only in switch


def test_code_phase_without_a_live_static_root_starts_empty(deployed):
    lay = deployed["lay"]
    assert Path(lay.static, REL_ID).is_dir()
    assert not os.path.lexists(Path(lay.static, "current"))


def test_collectstatic_never_modifies_the_live_static_files(tmp_path):
    """Release A collects and goes live; release B changes a file: A's root keeps its bytes and inode."""
    flags = {"migrate": False, "check_deploy": False}
    cfg, lay, a = _fresh_release(tmp_path, rel=make_rel(OLD_ID), django=flags)
    proc = sh(Script([django_app.django(cfg, a), Phase("live", static.static_switch(cfg, q(a.id)))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    live_css = Path(lay.static, a.id, "pages", "site.css")
    original, inode = live_css.read_text(), live_css.stat().st_ino
    admin_css = next(Path(lay.static, a.id, "admin").rglob("*.css")).relative_to(lay.static + "/" + a.id)
    b = make_rel(REL_ID)
    assert sh(Script([code.code(cfg, b)]), tmp_path, stdin=_sample_bundle()).returncode == 0
    source = Path(lay.release(b.id), "pages", "static", "pages", "site.css")
    source.write_text("/* changed in release B */\n")
    future = source.stat().st_mtime + 60  # collectstatic compares whole seconds
    os.utime(source, (future, future))
    proc = sh(Script([django_app.django(cfg, b)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert live_css.read_text() == original and live_css.stat().st_ino == inode
    assert Path(lay.static, b.id, "pages", "site.css").read_text() == "/* changed in release B */\n"
    # unchanged files stay shared between the two roots
    assert Path(lay.static, b.id, admin_css).stat().st_ino == Path(lay.static, a.id, admin_css).stat().st_ino


# === venv =====================================================================================================

def _pip_line(cfg, rel) -> str:
    line = next(ln for ln in venv.venv(cfg, rel).lines if "out=$(venv_pip " in ln).strip()
    return line.removeprefix("if ! out=$(").removesuffix(" 2>&1); then")  # (output captured for errors)


def test_venv_from_the_wheelhouse_uses_no_index_and_find_links():
    cfg = make_cfg(pip={"index_url": "https://mirror.example/simple"})
    line = _pip_line(cfg, make_rel(has_wheels=True))
    assert line == ("venv_pip install --disable-pip-version-check --no-input -q "
                    f"--no-index --find-links /srv/shop/tmp/{REL_ID}/wheels -r requirements.txt uwsgi")


def test_venv_with_index_url():
    line = _pip_line(make_cfg(pip={"index_url": "https://mirror.example/simple"}), make_rel())
    assert "--index-url https://mirror.example/simple -r requirements.txt uwsgi" in line
    assert "--no-index" not in line and "--find-links" not in line


def test_venv_default_index_and_custom_package():
    line = _pip_line(make_cfg(uwsgi={"package": "uwsgi==2.0.28"}, project={"requirements": "req/prod.txt"}),
                     make_rel())
    assert line.endswith("-q -r req/prod.txt uwsgi==2.0.28")
    assert "--index-url" not in line and "--no-index" not in line


def test_venv_extra_packages_and_no_requirements_file():
    line = _pip_line(make_cfg(project={"requirements": ""}, pip={"packages": ["Django>=5.2,<5.3", "whitenoise"]}),
                     make_rel())
    assert line.endswith("-q 'Django>=5.2,<5.3' whitenoise uwsgi")
    assert " -r " not in line


def test_venv_is_reused_when_complete_and_built_beside_otherwise():
    lines = venv.venv(make_cfg(), make_rel()).lines
    V = f"/srv/shop/venvs/{VENV}"
    assert lines[0] == f"if [ -f {V}/.fabdeploy-complete ]; then"
    assert lines[1] == f'  echo "{MARK} note reused {VENV}"'
    assert lines[2] == "else"
    assert lines[3:5] == [f"  cd /srv/shop/releases/{REL_ID}", f"  rm -rf {V}"]
    built = ["  " + ln for ln in venv.build_lines("python3", V)]
    assert lines[5:5 + len(built)] == built
    touch = lines.index(f"  touch {V}/.fabdeploy-complete")  # only after pip succeeded:
    assert lines[5 + len(built)].startswith("  if ! out=$(venv_pip install ")
    assert lines[touch - 2:touch] == ["    exit 1", "  fi"]
    assert lines[-2:] == ["fi", f"rm -rf /srv/shop/tmp/{REL_ID}/wheels"]  # the uploaded wheels, once used


def test_venv_reuse_branch_runs_without_pip(tmp_path):
    deploy_to = tmp_path / "app"
    V = deploy_to / "venvs" / VENV
    V.mkdir(parents=True)
    (V / ".fabdeploy-complete").touch()
    proc = sh(Script([venv.venv(make_cfg(deploy_to, project={"python": "/nonexistent/python"}), make_rel())]),
              tmp_path)
    assert proc.returncode == 0 and notes(out(proc)) == [f"reused {VENV}"]


def test_venv_build_lines_run_the_hosts_pip_else_ensurepip():
    V = "/srv/shop/venvs/abc"
    lines = venv.build_lines("python3", V)
    assert lines[0] == f"piprun=$(python3 -c {q(venv.PIP_RUN_PY)} 2>/dev/null) || piprun="
    assert lines[1:4] == ['if [ -n "$piprun" ]; then', f"  python3 -m venv --without-pip {V}",
                          f'  venv_pip() {{ {V}/bin/python "$piprun" "$@"; }}']
    assert lines[4] == f"  printf '%s\\n' \"$piprun\" > {V}/fabdeploy-pip"
    assert lines[5] == f"  printf '%s\\n' {' '.join(q(ln) for ln in venv.PIP_WRAPPER)} > {V}/bin/pip"
    assert lines[6:8] == [f"  chmod 0755 {V}/bin/pip", "else"]
    assert lines[8].startswith(f"  out=$(python3 -m venv {V} 2>&1) || {{ echo ")
    assert lines[9:] == [f'  venv_pip() {{ {V}/bin/python -m pip "$@"; }}', "fi"]


def _pip_run(tmp_path, runner: bool) -> subprocess.CompletedProcess:
    """PIP_RUN_PY with a `pip` package of tmp_path's first on the path (with __pip-runner__.py or not) and
    ensurepip's _bundled wheels of tmp_path's."""
    bundled = tmp_path / "ensurepip" / "_bundled"
    bundled.mkdir(parents=True)
    (tmp_path / "ensurepip" / "__init__.py").write_text("")
    for name in ("pip-99.9.1-py3-none-any.whl", "pip-100.0.0-py3-none-any.whl", "setuptools-200.0-py3-none-any.whl",
                 "pip-latest.whl"):
        (bundled / name).write_bytes(b"")
    (tmp_path / "pip").mkdir()
    (tmp_path / "pip" / "__init__.py").write_text("")
    if runner:
        (tmp_path / "pip" / "__pip-runner__.py").write_text("")
    return subprocess.run([sys.executable, "-c", venv.PIP_RUN_PY], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})


def test_pip_lookup_picks_the_installed_pip_with_a_runner(tmp_path):
    proc = _pip_run(tmp_path, runner=True)
    assert proc.stdout == f"{tmp_path}/pip/__pip-runner__.py\n", proc.stderr


def test_pip_lookup_else_picks_the_newest_wheel_of_the_interpreters_own(tmp_path):
    """An installed pip without __pip-runner__.py (older than 22.3) is passed over for the wheels."""
    proc = _pip_run(tmp_path, runner=False)
    assert proc.stdout == f"{tmp_path}/ensurepip/_bundled/pip-100.0.0-py3-none-any.whl/pip\n", proc.stderr


def _build(tmp_path, python: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    V = tmp_path / "venvs" / "v1"
    script = "set -e\n" + "\n".join(venv.build_lines(python, str(V))) + '\nvenv_pip --version\n'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env), V


def test_venv_built_without_pip_gets_a_bin_pip_of_the_hosts_pip(tmp_path):
    """With this machine's interpreter: its installed pip (Debian's python3-pip: compiled on disk) runs for the
    venv, else its wheel; and with the installed pip hidden (a `pip` without the runner first on the path), the
    wheel. Either way the venv has no pip of its own, and its bin/pip runs the same pip."""
    python = sys._base_executable  # this machine's interpreter (Debian: python3-pip, python3-pip-whl)
    hidden = tmp_path / "hide"
    (hidden / "pip").mkdir(parents=True)
    (hidden / "pip" / "__init__.py").write_text("")
    for env in (None, {**os.environ, "PYTHONPATH": str(hidden)}):
        want = subprocess.run([python, "-c", venv.PIP_RUN_PY], capture_output=True, text=True, env=env).stdout.strip()
        assert want.endswith(("/__pip-runner__.py", ".whl/pip") if env is None else ".whl/pip"), want
        where = tmp_path / ("plain" if env is None else "hidden")
        where.mkdir()
        proc, V = _build(where, python, env)
        shown = want.removesuffix("/__pip-runner__.py").removesuffix("/pip")
        assert proc.returncode == 0 and proc.stdout.startswith("pip ") and shown in proc.stdout, (proc, want)
        assert not list((V / "lib").glob("python3*/site-packages/pip"))  # no pip (nor setuptools) in the venv
        assert (V / "fabdeploy-pip").read_text() == want + "\n"
        proc = subprocess.run([V / "bin" / "pip", "--version"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and shown in proc.stdout and str(V) not in proc.stdout, proc.stderr


def test_venv_without_a_pip_wheel_is_built_with_ensurepip(tmp_path):
    fake = tmp_path / "python"  # an interpreter whose lookup finds no wheel: records how the venv was made
    fake.write_text('#!/bin/sh\n[ "$1" = -c ] && exit 0\necho "$@" >> ' + str(tmp_path / "calls") + "\n"
                    'mkdir -p "$3/bin"; printf \'#!/bin/sh\\necho "pip of the venv: $*"\\n\' > "$3/bin/python"\n'
                    'chmod +x "$3/bin/python"\n')
    fake.chmod(0o755)
    proc, V = _build(tmp_path, str(fake))
    assert proc.returncode == 0 and proc.stdout == "pip of the venv: -m pip --version\n", proc.stderr
    assert (tmp_path / "calls").read_text() == f"-m venv {V}\n" and not (V / "bin" / "pip").exists()


def test_venv_without_a_pip_wheel_whose_ensurepip_fails_says_so_in_one_line(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text('#!/bin/sh\n[ "$1" = -c ] && exit 0\necho "Error: ensurepip is not available" >&2\nexit 1\n')
    fake.chmod(0o755)
    proc, V = _build(tmp_path, str(fake))
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert proc.stderr == (f"{MARK} error no pip found for {fake} and its ensurepip failed: cannot build the "
                           "virtualenv (on Debian: apt-get install python3-venv python3-pip-whl) "
                           "Error: ensurepip is not available\n")


# === uWSGI ini ================================================================================================

def ini_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        pairs.append((key.strip(), value.strip()))
    return pairs


def test_uwsgi_ini_has_the_production_settings():
    cfg = make_cfg(uwsgi={"processes": 3, "threads": 5, "max_requests": 1000, "harakiri": 45,
                          "buffer_size": 8192})
    text = UwsgiServer().render_config(cfg, make_rel())
    assert text.splitlines()[1] == "[uwsgi]"
    pairs = ini_pairs(text)
    d = dict(pairs)
    R = f"/srv/shop/releases/{REL_ID}"
    assert d["socket"] == "/srv/shop/shared/run/uwsgi.sock"
    assert d["chmod-socket"] == "660"
    assert d["home"] == f"/srv/shop/venvs/{VENV}"
    assert d["chdir"] == R and d["pythonpath"] == R
    assert d["module"] == "shop.wsgi:application"
    assert d["pidfile"] == "/srv/shop/shared/run/uwsgi.pid"
    assert d["daemonize"] == "/srv/shop/shared/log/uwsgi.log"
    assert d["master"] == "true" and d["vacuum"] == "true" and d["need-app"] == "true"
    assert (d["processes"], d["threads"], d["max-requests"], d["harakiri"], d["buffer-size"]) == \
        ("3", "5", "1000", "45", "8192")
    envs = [v for k, v in pairs if k == "env"]
    assert envs[:2] == [f"DJANGO_SETTINGS_MODULE={SETTINGS_MODULE}", f"FABDEPLOY_RELEASE={REL_ID}"]


def test_uwsgi_ini_env_values_double_percent():
    cfg = make_cfg(django={"env": {"RATE": "50%", "FMT": "%d-%n %%"}})
    envs = [v for k, v in ini_pairs(UwsgiServer().render_config(cfg, make_rel())) if k == "env"]
    assert "RATE=50%%" in envs and "FMT=%%d-%%n %%%%" in envs


def test_uwsgi_ini_extra_options_are_appended_and_escaped():
    cfg = make_cfg(uwsgi={"options": {"lazy-apps": "true", "cheaper": 2, "logformat": "%(method) %(uri)"}})
    pairs = ini_pairs(UwsgiServer().render_config(cfg, make_rel()))
    assert pairs[-3:] == [("lazy-apps", "true"), ("cheaper", "2"), ("logformat", "%%(method) %%(uri)")]


# uWSGI is a test dependency (pyproject [test]): installed next to the test interpreter.
UWSGI = str(Path(sys.executable).parent / "uwsgi")


UWSGI_ENV_CASES = [
    pytest.param("abc", id="plain"),
    pytest.param("50%off %d %n 100%%", id="percent"),
    pytest.param("it's \"q\" \\ $HOME ${HOME} `x`", id="quotes-and-dollar"),
    pytest.param("a ; b # c", id="comment-chars"),
    pytest.param("  leading", id="leading-space"),
    pytest.param("x$(HOME)y", id="env-placeholder"),  # rejected by the config: passes as a ConfigError
    pytest.param("x%(chdir)y", id="option-placeholder"),
    pytest.param("a@(exec://touch PWNED)b", id="at-include"),
    pytest.param("pw-ends-with-spaces  ", id="trailing-space"),
]


@pytest.mark.parametrize("value", UWSGI_ENV_CASES)
def test_uwsgi_sees_exactly_the_configured_env_value(tmp_path, value):
    """Each value either is refused by the config or reaches the uWSGI process byte for byte."""
    from fabdeploy.errors import ConfigError
    try:
        cfg = make_cfg(tmp_path / "app", django={"env": {"PROBE": value}})
    except ConfigError:
        return
    Path(Layout(cfg.paths.deploy_to).release(REL_ID)).mkdir(parents=True)
    rendered = UwsgiServer().render_config(cfg, make_rel())
    keep = [ln for ln in rendered.splitlines() if ln.startswith(("[uwsgi]", "chdir ", "env = "))]
    dump = tmp_path / "env.out"
    ini = tmp_path / "probe.ini"
    # (printenv: a '%s' here would itself be a uWSGI magic variable)
    ini.write_text("\n".join(keep) + f"\nexec-asap = printenv PROBE > {dump}\n")
    # no socket: uWSGI runs exec-asap, then exits ("the -s/--socket option is missing")
    subprocess.run([UWSGI, "--ini", str(ini)], cwd=tmp_path, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    assert not (tmp_path / "PWNED").exists()
    assert dump.read_text() == value + "\n"


# === nginx site ===============================================================================================

def test_nginx_site_has_the_server_block():
    cfg = make_cfg(nginx={"server_name": "example.com www.example.com", "listen": "[::]:8080",
                          "client_max_body_size": "20M"})
    text = nginx.nginx_site(cfg)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "listen [::]:8080;" in lines
    assert "server_name example.com www.example.com;" in lines
    assert "client_max_body_size 20M;" in lines
    i = lines.index("location /static/ {")
    assert lines[i + 1:i + 4] == ["alias /srv/shop/shared/static/current/;", "expires 30d;", "}"]
    j = lines.index("location /media/ {")
    assert lines[j + 1:j + 3] == ["alias /srv/shop/shared/media/;", "}"]
    k = lines.index("location / {")
    assert lines[k + 1:k + 4] == ["uwsgi_pass unix:/srv/shop/shared/run/uwsgi.sock;", "include uwsgi_params;", "}"]
    assert text.count("{") == text.count("}")


def test_nginx_site_custom_urls_and_no_expires():
    cfg = make_cfg(django={"static_url": "/assets/", "media_url": "/files/"}, nginx={"static_expires": "off"})
    lines = [ln.strip() for ln in nginx.nginx_site(cfg).splitlines()]
    i = lines.index("location /assets/ {")
    assert lines[i + 1:i + 3] == ["alias /srv/shop/shared/static/current/;", "}"]
    assert "location /files/ {" in lines
    assert not any(ln.startswith("expires") for ln in lines)


@pytest.mark.parametrize("nginx_cfg", [
    {},
    {"server_name": "example.com www.example.com", "listen": "[::]:8080", "static_expires": "max"},
    {"server_name": "~^api[0-9]*\\.example\\.com$ *.example.org", "listen": "127.0.0.1:8000",
     "static_expires": "off", "client_max_body_size": "1g"},
])
def test_nginx_accepts_the_rendered_site(tmp_path, nginx_cfg):
    cfg = make_cfg("/srv/shop", nginx=nginx_cfg)
    site = nginx.nginx_site(cfg).replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "uwsgi_params").write_text("")
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{ include site.conf; }}\n")
    proc = subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-p", f"{tmp_path}/",
                           "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# === config phase =============================================================================================

def test_config_phase_lines_sites_layout():
    cfg = make_cfg()
    lines = configure.config(cfg, make_rel(), Facts(nginx_layout="sites")).lines
    T = f"/srv/shop/tmp/{REL_ID}"
    assert written(lines, f"/srv/shop/releases/{REL_ID}/.fabdeploy/uwsgi.ini") == UwsgiServer().render_config(cfg, make_rel())
    # the site is staged at one fixed path root installs it from (a sudoers drop-in lists that line), under
    # the deploy lock; the previous site is kept per release
    staged = "/srv/shop/shared/config/nginx-site.conf"
    assert [ln for ln in lines if "shared/config" in ln and "nginx-site.conf" not in ln] == []
    assert written(lines, staged) == nginx.nginx_site(cfg)
    assert f"    sudo -n /usr/bin/install -m 0644 {staged} /etc/nginx/sites-available/shop" in lines
    assert "    sudo -n /usr/bin/ln -sfn /etc/nginx/sites-available/shop /etc/nginx/sites-enabled/shop" in lines
    assert "    if ! out=$(sudo -n /usr/sbin/nginx -t 2>&1); then" in lines
    restore = lines[lines.index("    if ! out=$(sudo -n /usr/sbin/nginx -t 2>&1); then") + 1]
    assert restore.startswith(f"      if [ -f {T}/site.prev ]; then cp {T}/site.prev {staged} && "
                              f"sudo -n /usr/bin/install -m 0644 {staged} /etc/nginx/sites-available/shop; ")
    assert restore.endswith("else sudo -n /usr/bin/rm -f /etc/nginx/sites-available/shop; "
                            "sudo -n /usr/bin/rm -f /etc/nginx/sites-enabled/shop; fi")


def test_config_phase_lines_conf_d_layout():
    lines = configure.config(make_cfg(), make_rel(), Facts(nginx_layout="conf.d")).lines
    assert not any("sites-enabled" in ln for ln in lines)
    assert any(ln.endswith("install -m 0644 /srv/shop/shared/config/nginx-site.conf /etc/nginx/conf.d/shop.conf")
               for ln in lines)
    assert nginx_site_paths("conf.d", "shop") == ("/etc/nginx/conf.d/shop.conf", None)


class NginxLab:
    """The config phase with /etc/nginx moved under a temp dir, fake sudo/nginx on PATH."""

    def __init__(self, tmp_path, fakebin, layout="sites"):
        self.tmp, self.fake, self.layout = tmp_path, fakebin, layout
        self.etc = tmp_path / "etc" / "nginx"
        for d in ("sites-available", "sites-enabled", "conf.d"):
            (self.etc / d).mkdir(parents=True)
        self.cfg = make_cfg(tmp_path / "app")
        self.lay = Layout(self.cfg.paths.deploy_to)
        Path(self.lay.config).mkdir(parents=True)
        self.staging = Path(self.lay.staging(REL_ID))
        self.staging.mkdir(parents=True)
        Path(self.lay.release(REL_ID), ".fabdeploy").mkdir(parents=True)  # the code phase made it
        site, enabled = nginx_site_paths(layout, "shop")
        self.site = Path(site.replace("/etc/nginx/", f"{self.etc}/"))
        self.enabled = Path(enabled.replace("/etc/nginx/", f"{self.etc}/")) if enabled else None

    def run(self, cfg=None):
        phase = configure.config(cfg or self.cfg, make_rel(), Facts(nginx_layout=self.layout))
        phase = Phase(phase.name, [ln.replace("/etc/nginx/", f"{self.etc}/") for ln in phase.lines])
        return sh(Script([phase]), self.tmp, env=self.fake.env)

    def abandon(self):
        phase = cleanup.abandon(self.cfg, make_rel(), facts=Facts(nginx_layout=self.layout))
        phase = Phase(phase.name, [ln.replace("/etc/nginx/", f"{self.etc}/") for ln in phase.lines])
        return sh(Script([phase]), self.tmp, env=self.fake.env)


def test_config_phase_installs_a_new_site(tmp_path, fakebin):
    lab = NginxLab(tmp_path, fakebin)
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert lab.site.read_text() == nginx.nginx_site(lab.cfg)
    assert stat.S_IMODE(lab.site.stat().st_mode) == 0o644
    assert os.readlink(lab.enabled) == str(lab.site)
    assert (lab.staging / "nginx-changed").exists()
    # the release keeps the exact uWSGI config it runs with (rollback restores it)
    saved = Path(lab.lay.release(REL_ID), ".fabdeploy", "uwsgi.ini")
    assert saved.read_text() == UwsgiServer().render_config(lab.cfg, make_rel())
    assert stat.S_IMODE(saved.stat().st_mode) == 0o640  # (its group: the app user's, under the setgid releases/)
    assert not Path(UwsgiServer().paths(lab.lay).config).exists()  # the live ini changes only in switch
    assert "nginx -t" in fakebin.log()
    assert notes(out(proc)) == [f"nginx site installed at {lab.site}"]


def test_config_phase_leaves_an_unchanged_site_alone(tmp_path, fakebin):
    lab = NginxLab(tmp_path, fakebin)
    assert lab.run().returncode == 0
    (lab.staging / "nginx-changed").unlink()
    (tmp_path / "sudo.log").unlink()
    staged = Path(nginx.staged_site(lab.cfg))
    before = staged.stat().st_mtime_ns
    proc = lab.run()
    assert proc.returncode == 0
    assert notes(out(proc)) == ["nginx site unchanged"]
    assert not (lab.staging / "nginx-changed").exists()
    assert fakebin.log() == ""  # neither install nor nginx -t
    assert staged.stat().st_mtime_ns == before  # (the stamp said so: not even written and compared)
    # the site edited by hand after the stamp: compared again and put back
    lab.site.write_text(lab.site.read_text() + "# edited\n")
    proc = lab.run()
    assert proc.returncode == 0 and notes(out(proc)) == [f"nginx site installed at {lab.site}"]
    assert lab.site.read_text() == nginx.nginx_site(lab.cfg)


def test_config_phase_restores_the_previous_site_when_nginx_t_fails(tmp_path, fakebin):
    lab = NginxLab(tmp_path, fakebin)
    lab.site.write_text("# Managed by fabdeploy for shop: the old, working site\n")
    os.symlink(lab.site, lab.enabled)
    fakebin.nginx_fails()
    proc = lab.run(make_cfg(tmp_path / "app", nginx={"server_name": "new.example.com"}))
    assert proc.returncode == 1
    assert lab.site.read_text() == "# Managed by fabdeploy for shop: the old, working site\n"
    assert os.readlink(lab.enabled) == str(lab.site)
    assert "nginx: [emerg]" in err(proc)
    assert "nginx -t rejected the new site; the previous nginx config was restored" in err(proc)
    assert not (lab.staging / "nginx-changed").exists()


def test_config_phase_never_overwrites_a_site_fabdeploy_did_not_write(tmp_path, fakebin):
    """project.name = "default" must not replace the distribution's default site."""
    lab = NginxLab(tmp_path, fakebin)
    lab.site.write_text("server { listen 80 default_server; }\n")
    proc = lab.run()
    assert proc.returncode == 1
    assert f"{lab.site} exists and was not written by fabdeploy" in err(proc)
    assert lab.site.read_text() == "server { listen 80 default_server; }\n"
    assert fakebin.log() == ""  # not installed, no nginx -t


def test_a_site_from_a_user_template_gets_the_managed_line(tmp_path, fakebin):
    tpl = tmp_path / "site.j2"
    tpl.write_text("server { listen {{ listen }}; }\n")
    lab = NginxLab(tmp_path, fakebin)
    cfg = make_cfg(tmp_path / "app", nginx={"template": str(tpl)})
    assert lab.run(cfg).returncode == 0
    assert lab.site.read_text().splitlines() == ["# Managed by fabdeploy for shop; rewritten on every deploy.",
                                                 "server { listen 80; }"]
    assert lab.run(cfg).returncode == 0  # and the next deploy may rewrite it
    assert notes(out(lab.run(cfg))) == ["nginx site unchanged"]


@pytest.mark.parametrize("had_site, had_link", [(False, False), (True, True), (True, False)])
def test_abandon_puts_back_the_site_a_failed_deploy_installed(tmp_path, fakebin, had_site, had_link):
    """The config phase installs a changed site (nginx is not reloaded with it); an abandoned deploy puts it
    back, so the next reload by anyone does not make it live."""
    lab = NginxLab(tmp_path, fakebin)
    old = "# Managed by fabdeploy for shop: the old site\n"
    if had_site:
        lab.site.write_text(old)
        if had_link:
            os.symlink(lab.site, lab.enabled)
    assert lab.run().returncode == 0 and (lab.staging / "nginx-changed").exists()
    proc = lab.abandon()
    assert proc.returncode == 0, err(proc)
    if had_site:
        assert lab.site.read_text() == old
        assert os.path.lexists(lab.enabled) is had_link
    else:
        assert not lab.site.exists() and not os.path.lexists(lab.enabled)


def test_config_phase_removes_a_first_site_that_nginx_rejects(tmp_path, fakebin):
    lab = NginxLab(tmp_path, fakebin)
    fakebin.nginx_fails()
    proc = lab.run()
    assert proc.returncode == 1
    assert not lab.site.exists() and not os.path.lexists(lab.enabled)


@pytest.mark.parametrize("fails", [False, True])
def test_config_phase_conf_d(tmp_path, fakebin, fails):
    lab = NginxLab(tmp_path, fakebin, layout="conf.d")
    fakebin.nginx_fails(fails)
    proc = lab.run()
    assert lab.site == lab.etc / "conf.d" / "shop.conf"
    assert (proc.returncode == 1) is fails
    assert lab.site.exists() is not fails
    assert os.listdir(lab.etc / "sites-enabled") == []


def test_config_phase_restore_keeps_a_disabled_site_disabled(tmp_path, fakebin):
    lab = NginxLab(tmp_path, fakebin)
    lab.site.write_text("# old site, disabled by the admin\n")
    fakebin.nginx_fails()
    assert lab.run().returncode == 1
    assert lab.site.read_text() == "# old site, disabled by the admin\n"
    assert not os.path.lexists(lab.enabled)


# === switch ===================================================================================================

def test_switch_lines():
    S = "/srv/shop/shared/static"
    # the release's own ini goes live before `current` moves (no current without its config)
    assert activate.switch(make_cfg(), make_rel()).lines[:6] == [
        f"cp -p /srv/shop/releases/{REL_ID}/.fabdeploy/uwsgi.ini /srv/shop/shared/config/uwsgi.ini.fabdeploy-tmp",
        "mv -f /srv/shop/shared/config/uwsgi.ini.fabdeploy-tmp /srv/shop/shared/config/uwsgi.ini",
        f"ln -sfn /srv/shop/releases/{REL_ID} /srv/shop/current.fabdeploy-tmp",
        "mv -Tf /srv/shop/current.fabdeploy-tmp /srv/shop/current",
        f"if [ -d {S}/{REL_ID} ]; then ln -sfn {REL_ID} {S}/current.fabdeploy-tmp && "
        f"mv -Tf {S}/current.fabdeploy-tmp {S}/current; fi",
        f"rm -f /srv/shop/releases/{REL_ID}/.fabdeploy/pending",  # it went live
    ]
    # the same activation as a health revert and a rollback
    assert activate.switch(make_cfg(), make_rel()).lines[:5] == activate.activate(
        make_cfg(), f"/srv/shop/releases/{REL_ID}", REL_ID)
    assert static.static_switch(make_cfg(), '"$T"') == [
        f'if [ -d {S}/"$T" ]; then ln -sfn "$T" {S}/current.fabdeploy-tmp && mv -Tf {S}/current.fabdeploy-tmp '
        f'{S}/current; fi']


@pytest.mark.parametrize("previous", [None, "20251231T000000Z-0000001"])
def test_switch_runs_atomically(tmp_path, previous):
    deploy_to = tmp_path / "app"
    lay = Layout(str(deploy_to))
    Path(lay.release(REL_ID), ".fabdeploy").mkdir(parents=True)
    Path(lay.config).mkdir(parents=True)
    Path(lay.release(REL_ID), ".fabdeploy", "uwsgi.ini").write_text("new ini\n")
    Path(lay.static, REL_ID).mkdir(parents=True)
    if previous:
        Path(lay.release(previous)).mkdir()
        os.symlink(lay.release(previous), lay.current)
        Path(UwsgiServer().paths(lay).config).write_text("old ini\n")
        Path(lay.static, previous).mkdir()
        os.symlink(previous, Path(lay.static, "current"))
    proc = sh(Script([activate.switch(make_cfg(deploy_to), make_rel())]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert os.path.islink(lay.current) and os.readlink(lay.current) == lay.release(REL_ID)
    assert not os.path.lexists(lay.current + ".fabdeploy-tmp")
    # nginx serves shared/static/current/: a relative link to the release's own static root
    assert os.readlink(Path(lay.static, "current")) == REL_ID
    assert Path(lay.static, "current").resolve() == Path(lay.static, REL_ID).resolve()
    assert sorted(os.listdir(lay.static)) == sorted(["current", REL_ID] + ([previous] if previous else []))
    assert Path(UwsgiServer().paths(lay).config).read_text() == "new ini\n"
    assert not os.path.exists(UwsgiServer().paths(lay).config + ".fabdeploy-tmp")
    assert notes(out(proc)) == [f"current -> {REL_ID}"]
    if previous:
        assert Path(lay.release(previous)).is_dir()  # the old release itself is untouched


def test_static_switch_leaves_the_link_alone_without_a_static_root(tmp_path):
    """A release without its own static root (deployed before per-release roots): nothing to point at."""
    cfg = make_cfg(tmp_path / "app")
    lay = Layout(cfg.paths.deploy_to)
    Path(lay.static, OLD_ID).mkdir(parents=True)
    os.symlink(OLD_ID, Path(lay.static, "current"))
    proc = sh(Script([Phase("s", ["T=" + REL_ID, *static.static_switch(cfg, '"$T"')])]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert os.readlink(Path(lay.static, "current")) == OLD_ID
    assert sorted(os.listdir(lay.static)) == sorted(["current", OLD_ID])


# === restart ==================================================================================================

def test_restart_lines():
    cfg = make_cfg(uwsgi={"reload_timeout": 7})
    lines = activate.restart(cfg, make_rel(), Facts(nginx_pid="/run/nginx.pid"))
    text = "\n".join(lines.lines)
    uwsgi = f"/srv/shop/venvs/{VENV}/bin/uwsgi"
    # (uWSGI without a process manager starts the release's master beside the live one: appserver/beside.py)
    assert f"{uwsgi} --ini /srv/shop/shared/config/uwsgi.ini.\"$s\" --hook-master-start" in text
    assert "      while [ $i -lt 70 ]; do" in lines.lines
    assert f'[ "$(${{ASAPP-}} readlink "/proc/$c/cwd" 2>/dev/null)" = /srv/shop/releases/{REL_ID} ]' in text
    assert "npid=$(alive /run/nginx.pid nginx || true)" in lines.lines
    i = lines.lines.index(f"elif [ -f /srv/shop/tmp/{REL_ID}/nginx-changed ]; then")
    branch = lines.lines[i + 1:lines.lines.index("else", i)]
    assert "  sudo -n /usr/sbin/nginx -s reload" in branch  # nginx reloads only when the config phase changed the site
    assert branch[-1] == f'  echo "{MARK} note nginx reloaded"'
    assert sum("nginx -s reload" in ln for ln in lines.lines) == 1
    assert lines.sudo is True
    # a failing restart does not stop the script: the health phase after it decides (and reverts)
    assert lines.keep_going is True
    # a master that stays gone for 50 polls (~5 s) ends the wait early
    assert "      i=$late; ready=; gone=0; n=0" in lines.lines
    assert '        if [ -z "$pid" ]; then gone=$((gone + 1)); [ "$gone" -lt 50 ] || break; fi' in lines.lines


# --- uWSGI restart, run for real with the real uWSGI ----------------------------------------------------------

GOOD_APP = """\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


class UwsgiLab:
    """A release with a tiny WSGI app and a uWSGI ini in a temp deploy_to; the real uWSGI of the test venv."""

    def __init__(self, tmp_path, app_source=GOOD_APP, module="app:application", reload_timeout=60):
        self.tmp = tmp_path
        self.cfg = make_cfg(tmp_path / "app", uwsgi={"reload_timeout": reload_timeout, "processes": 2})
        self.lay = lay = Layout(self.cfg.paths.deploy_to)
        self.R = Path(lay.release(REL_ID))
        self.R.mkdir(parents=True)
        (self.R / "app.py").write_text(app_source)
        for d in (lay.run, lay.log, lay.config):
            Path(d).mkdir(parents=True, exist_ok=True)
        Path(UwsgiServer().paths(lay).config).write_text(textwrap.dedent(f"""\
            [uwsgi]
            master = true
            processes = 2
            need-app = true
            vacuum = true
            socket = {UwsgiServer().paths(lay).socket}
            pidfile = {UwsgiServer().paths(lay).pidfile}
            daemonize = {UwsgiServer().paths(lay).log}
            chdir = {self.R}
            module = {module}
            """))
        self.venv = str(Path(UWSGI).parent.parent)

    def restart(self, release_word=None):
        lines = UwsgiServer().reload_lines(self.cfg, release_word or q(str(self.R)), q(self.venv), REL_ID)
        return sh(Script([Phase("restart", lines)]), self.tmp, timeout=180)

    def stop(self):
        """Stop the master this lab started (by its pid) and wait until it and its workers are gone."""
        try:
            pid = int(Path(UwsgiServer().paths(self.lay).pidfile).read_text().strip())
        except (OSError, ValueError):
            return
        try:
            if "uwsgi" not in Path(f"/proc/{pid}/comm").read_text():
                return
            os.kill(pid, 2)  # SIGINT: uWSGI's master shuts down (SIGTERM would reload)
        except (OSError, ProcessLookupError):
            return
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                return
            subprocess.run(["sleep", "0.1"])
        os.kill(pid, 9)


def test_restart_starts_uwsgi_and_waits_for_workers_in_the_release(tmp_path):
    lab = UwsgiLab(tmp_path)
    try:
        proc = lab.restart()
        assert proc.returncode == 0, err(proc) + out(proc)
        pid = int(Path(UwsgiServer().paths(lab.lay).pidfile).read_text())
        assert notes(out(proc)) == [f"uwsgi started (master {pid}, 2 workers on {REL_ID})"]
        assert Path(UwsgiServer().paths(lab.lay).socket).is_socket()
        again = lab.restart()  # a live master: graceful reload, same master
        assert again.returncode == 0, err(again)
        assert notes(out(again)) == [f"uwsgi reloaded (master {pid}, 2 workers on {REL_ID})"]
    finally:
        lab.stop()


FAKE_UWSGI = """#!/bin/sh
# A uWSGI stand-in whose master starts its workers one at a time (0.4 s apart), as a loaded host can.
if [ "$1" = --ini ]; then setsid "$0" --master </dev/null >/dev/null 2>&1 & exit 0; fi
echo $$ > {pidfile}
cd {release}
for i in $(seq {workers}); do sleep 0.4; sleep 60 & done
wait
"""


@pytest.mark.parametrize("ini_lines, want", [
    ("processes = 4", 4),
    ("processes = 4\ncheaper = 2", 2),
    ("processes = 4\ncheaper = 1\ncheaper-initial = 3", 3),
])
def test_restart_reports_ready_only_when_every_worker_is_up(tmp_path, ini_lines, want):
    cfg = make_cfg(tmp_path / "app", uwsgi={"reload_timeout": 20})
    lay = Layout(cfg.paths.deploy_to)
    release = Path(lay.release(REL_ID))
    release.mkdir(parents=True)
    for d in (lay.run, lay.config):
        Path(d).mkdir(parents=True, exist_ok=True)
    Path(UwsgiServer().paths(lay).config).write_text(f"[uwsgi]\nmaster = true\n{ini_lines}\n")  # (no unix socket to wait for)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "uwsgi"
    fake.write_text(FAKE_UWSGI.format(pidfile=q(UwsgiServer().paths(lay).pidfile), release=q(str(release)), workers=want))
    fake.chmod(0o755)
    lines = UwsgiServer().reload_lines(cfg, q(str(release)), q(str(venv)), REL_ID)
    try:
        proc = sh(Script([Phase("restart", lines)]), tmp_path, timeout=60)
        assert proc.returncode == 0, err(proc)
        pid = int(Path(UwsgiServer().paths(lay).pidfile).read_text())
        assert notes(out(proc)) == [f"uwsgi started (master {pid}, {want} workers on {REL_ID})"]
    finally:
        try:
            os.killpg(int(Path(UwsgiServer().paths(lay).pidfile).read_text()), 9)  # the stand-in's own group (setsid)
        except (OSError, ValueError):
            pass


def test_restart_gives_up_early_when_the_master_stays_gone(tmp_path):
    """need-app and an app that does not load: the master exits; no waiting out reload_timeout (60 s)."""
    import time
    lab = UwsgiLab(tmp_path, module="nosuchmodule_for_fabdeploy:application", reload_timeout=60)
    try:
        start = time.monotonic()
        proc = lab.restart()
        elapsed = time.monotonic() - start
        assert proc.returncode == 1
        assert 2.5 < elapsed < 20, elapsed
        assert f"uWSGI did not come up serving {REL_ID} within 60s; last lines of {UwsgiServer().paths(lab.lay).log}:" in err(proc)
        assert "nosuchmodule_for_fabdeploy" in err(proc) or "no app loaded" in err(proc)  # the log tail
    finally:
        lab.stop()


def test_restart_keeps_waiting_while_the_master_lives(tmp_path):
    """A live master whose workers never serve the release: the whole reload_timeout, not ~3 s."""
    import time
    lab = UwsgiLab(tmp_path, reload_timeout=5)
    try:
        start = time.monotonic()
        proc = lab.restart(release_word=q(str(tmp_path / "some-other-release")))
        elapsed = time.monotonic() - start
        assert proc.returncode == 1
        assert elapsed >= 5, elapsed
        assert f"uWSGI did not come up serving {REL_ID} within 5s" in err(proc)
    finally:
        lab.stop()


@pytest.mark.parametrize("shell_name", ["dash", "bash"])
def test_alive_function_needs_a_live_process_with_the_right_name(tmp_path, shell_name):
    """(read with `read`, no process: remote/shell.py ALIVE_FN) a live pid of that name, not a zombie, not a
    file of anything else; a file without its newline is read too"""
    sleeper = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["sleep", "0"])
    try:
        deadline = time.monotonic() + 10
        while not open(f"/proc/{zombie.pid}/stat").read().split(") ")[-1].startswith("Z"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (tmp_path / "good.pid").write_text(f"{sleeper.pid}\n")
        (tmp_path / "bare.pid").write_text(f"{sleeper.pid}")
        (tmp_path / "zombie.pid").write_text(f"{zombie.pid}\n")
        (tmp_path / "junk.pid").write_text(f"{sleeper.pid}x\n")
        (tmp_path / "empty.pid").write_text("")
        (tmp_path / "dead.pid").write_text("999999999\n")
        cases = (("good.pid", "sleep"), ("bare.pid", "sleep"), ("good.pid", "uwsgi"), ("zombie.pid", "sleep"),
                 ("junk.pid", "sleep"), ("empty.pid", "sleep"), ("dead.pid", "sleep"), ("missing.pid", "sleep"))
        probe = "\n".join(["set -eu", shell.ALIVE_FN] + [
            f'echo "{f}:{name}=$(alive {q(str(tmp_path / f))} {name} || echo none)"' for f, name in cases])
        proc = subprocess.run([shell_name, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.splitlines() == [
            f"good.pid:sleep={sleeper.pid}", f"bare.pid:sleep={sleeper.pid}", "good.pid:uwsgi=none",
            "zombie.pid:sleep=none", "junk.pid:sleep=none", "empty.pid:sleep=none", "dead.pid:sleep=none",
            "missing.pid:sleep=none"]
    finally:
        sleeper.kill()
        sleeper.wait()
        zombie.wait()


@pytest.mark.parametrize("shell_name", ["dash", "bash"])
def test_is_release_is_the_release_id_pattern(shell_name):
    words = ["20261127T002703Z-2da6c8c", "20261127T002703Z-0", "20261127T002703Z-", "2026112T002703Z-2da6",
             "20261127T002703Z-2da6c8c.b", "20261127T002703Z-2DA6", "x20261127T002703Z-2da6", "", "*",
             "20261127T002703Z-2da6 x", "20261127T0027030Z-2da6"]
    probe = "\n".join([shell.IS_RELEASE_FN] + [f"is_release {q(w)} && echo yes || echo no" for w in words])
    got = subprocess.run([shell_name, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert got == ["yes" if re.match(RELEASE_GLOB_ERE, w) else "no" for w in words]
    assert got.count("yes") == 2


# === cleanup ==================================================================================================

RELEASES = [f"2026010{i}T000000Z-abcdef{i}" for i in range(1, 8)]
VENV_OF = {1: "v-a", 2: "v-b", 3: "v-a", 4: "v-c", 5: "v-d", 6: "v-d", 7: "v-e"}


def _cleanup_lab(tmp_path, current_index=2):
    deploy_to = tmp_path / "app"
    lay = Layout(str(deploy_to))
    for i, rid in enumerate(RELEASES, 1):
        meta = Path(lay.release(rid), ".fabdeploy")
        meta.mkdir(parents=True)
        (meta / "venv").write_text(VENV_OF[i] + "\n")
    Path(lay.releases, "not-a-release").mkdir()
    for v in ("v-a", "v-b", "v-c", "v-d", "v-e", "v-orphan"):
        Path(lay.venvs, v, "bin").mkdir(parents=True)
    os.symlink(lay.release(RELEASES[current_index - 1]), lay.current)
    Path(lay.staging(RELEASES[-1]), "wheels").mkdir(parents=True)
    Path(lay.run).mkdir(parents=True)
    # per-release static roots, the live link, and things cleanup must not take for a release's root
    for rid in RELEASES + ["20251201T000000Z-0ff0ff0"]:  # the last one's release is already gone
        Path(lay.static, rid, "pages").mkdir(parents=True)
        Path(lay.static, rid, "pages", "site.css").write_text(rid)
    os.symlink(RELEASES[current_index - 1], Path(lay.static, "current"))
    Path(lay.static, "pages").mkdir()  # collected before per-release roots existed
    Path(lay.static, "not-a-release").mkdir()
    return lay


def _static_entries(lay) -> list[str]:
    return sorted(os.listdir(lay.static))


def test_cleanup_keeps_newest_n_and_current_and_their_venvs(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=2)
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 3})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    # current (2nd), the way back (1st, the newest good one older than current) and the newest one
    assert sorted(os.listdir(lay.releases)) == sorted([RELEASES[0], RELEASES[1], RELEASES[6], "not-a-release"])
    assert sorted(os.listdir(lay.venvs)) == ["v-a", "v-b", "v-e"]
    assert not os.path.exists(lay.staging(RELEASES[-1]))
    assert os.readlink(lay.current) == lay.release(RELEASES[1])
    assert notes(out(proc)) == ["3 releases on disk (keep_releases = 3), removed 4"]
    # static roots follow the releases on disk; the live link and non-release entries stay
    assert _static_entries(lay) == sorted([RELEASES[0], RELEASES[1], RELEASES[6], "current", "pages",
                                           "not-a-release"])
    assert Path(lay.static, "current", "pages", "site.css").read_text() == RELEASES[1]


def test_cleanup_with_current_among_the_newest(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=7)
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 1})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert sorted(os.listdir(lay.releases)) == [RELEASES[6], "not-a-release"]
    assert os.listdir(lay.venvs) == ["v-e"]
    assert notes(out(proc)) == ["1 releases on disk (keep_releases = 1), removed 6"]
    assert _static_entries(lay) == sorted([RELEASES[6], "current", "pages", "not-a-release"])


@pytest.mark.parametrize("keep, bad, current, left", [
    # the way back (1st: the 2nd and 3rd are bad) survives; then the newest
    (3, {2, 3}, 4, [1, 4, 7]),
    (2, {2, 3}, 4, [1, 4]),
    # bad releases go first; the newest good ones stay
    (4, {5, 6}, 7, [2, 3, 4, 7]),
    (3, {6}, 7, [4, 5, 7]),
    # after a rollback to the 5th (6th and 7th bad): the 4th is the way back, the bad ones go
    (3, {6, 7}, 5, [3, 4, 5]),
    # keep_releases = 1 keeps only current: there is no way back by definition
    (1, set(), 7, [7]),
])
@pytest.mark.parametrize("mark", ["bad", "pending"])  # pending: prepared, never live
def test_prune_removes_bad_releases_first_and_keeps_the_way_back(tmp_path, keep, bad, current, left, mark):
    lay = _cleanup_lab(tmp_path, current_index=current)
    for i in bad:
        Path(lay.release(RELEASES[i - 1]), ".fabdeploy", mark).touch()
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": keep})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert sorted(os.listdir(lay.releases)) == sorted([RELEASES[i - 1] for i in left] + ["not-a-release"])
    assert notes(out(proc)) == [f"{len(left)} releases on disk (keep_releases = {keep}), removed {7 - len(left)}"]


def test_cleanup_keeps_the_venv_of_the_running_uwsgi_master(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=7)
    fake_uwsgi = Path(lay.venvs, "v-orphan", "bin", "uwsgi")
    shutil.copy(shutil.which("sleep"), fake_uwsgi)
    master = subprocess.Popen([str(fake_uwsgi), "30"])
    try:
        Path(UwsgiServer().paths(lay).pidfile).write_text(f"{master.pid}\n")
        cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 1})
        proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
        assert proc.returncode == 0, err(proc)
        assert sorted(os.listdir(lay.venvs)) == ["v-e", "v-orphan"]
    finally:
        master.kill()
        master.wait()


def _trash_emptied(lay) -> bool:
    for _ in range(100):  # (the background rm -rf: at most 10 s)
        if not os.path.exists(lay.trash):
            return True
        time.sleep(0.1)
    return False


def test_cleanup_renames_what_goes_into_the_trash_and_empties_it_in_the_background(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=7)
    Path(lay.log).mkdir(parents=True)
    pruned = Path(lay.release(RELEASES[0]))
    inode = pruned.stat().st_ino
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 1})
    # the background rm -rf is held back until the trash has been looked at
    hold = tmp_path / "bin"
    hold.mkdir()
    (hold / "setsid").write_text(f'#!/bin/sh\nwhile [ ! -e {tmp_path}/go ]; do sleep 0.05; done\nexec "$@"\n')
    (hold / "setsid").chmod(0o755)
    script = Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))])
    proc = subprocess.run(["sh", "-c", script.text()], capture_output=True, cwd=tmp_path,
                          env={**os.environ, "PATH": f"{hold}:{os.environ['PATH']}"})
    assert proc.returncode == 0, err(proc)
    assert sorted(os.listdir(lay.releases)) == [RELEASES[6], "not-a-release"]
    trash = Path(lay.trash, RELEASES[-1])
    # renamed (the same inode), not copied; venvs, static roots and the staging directory too
    assert (trash / f"r.{RELEASES[0]}").stat().st_ino == inode
    assert {"v.v-a", "v.v-orphan", f"s.{RELEASES[0]}", "staging"} <= set(os.listdir(trash))
    (tmp_path / "go").touch()
    assert _trash_emptied(lay) and Path(lay.log, "trash.log").read_text() == ""


def test_cleanup_removes_at_once_where_the_trash_would_copy(tmp_path):
    """A parent the device check cannot vouch for (here: tmp/ missing, so stat fails): everything is removed
    in place, nothing renamed."""
    lay = _cleanup_lab(tmp_path, current_index=7)
    shutil.rmtree(lay.tmp)
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 1})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert sorted(os.listdir(lay.releases)) == [RELEASES[6], "not-a-release"]
    assert os.listdir(lay.venvs) == ["v-e"] and not os.path.exists(lay.trash)


def test_a_trash_left_with_errors_is_said_at_the_next_cleanup(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=7)
    Path(lay.log).mkdir(parents=True)
    Path(lay.trash, "older").mkdir(parents=True)
    Path(lay.log, "trash.log").write_text("rm: cannot remove 'x': Permission denied\n")
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 10})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn {lay.trash} could not be removed: rm: cannot remove 'x': Permission denied" in out(proc)


def test_cleanup_keeps_everything_when_there_are_few_releases(tmp_path):
    lay = _cleanup_lab(tmp_path, current_index=7)
    cfg = make_cfg(lay.deploy_to, paths={"keep_releases": 10})
    proc = sh(Script([cleanup.cleanup(cfg, make_rel(RELEASES[-1]))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert len(os.listdir(lay.releases)) == 8
    assert sorted(os.listdir(lay.venvs)) == ["v-a", "v-b", "v-c", "v-d", "v-e"]
    assert _static_entries(lay) == sorted(RELEASES + ["current", "pages", "not-a-release"])  # only the orphan went


# === abandon ==================================================================================================

@pytest.mark.parametrize("is_current", [False, True])
def test_abandon_removes_the_half_built_release_unless_it_is_current(tmp_path, is_current):
    deploy_to = tmp_path / "app"
    lay = Layout(str(deploy_to))
    old = "20251231T000000Z-0000001"
    Path(lay.release(REL_ID)).mkdir(parents=True)
    Path(lay.release(old)).mkdir()
    Path(lay.staging(REL_ID)).mkdir(parents=True)
    Path(lay.config).mkdir(parents=True)
    Path(UwsgiServer().paths(lay).config).write_text("live")
    os.symlink(lay.release(REL_ID if is_current else old), lay.current)
    for rid in (REL_ID, old):
        Path(lay.static, rid).mkdir(parents=True)
    os.symlink(REL_ID if is_current else old, Path(lay.static, "current"))
    proc = sh(Script([cleanup.abandon(make_cfg(deploy_to), make_rel())]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert Path(lay.release(REL_ID)).exists() is is_current
    assert Path(lay.release(old)).is_dir()
    # the release's static root goes with it; the live one stays
    assert Path(lay.static, REL_ID).exists() is is_current
    assert Path(lay.static, old).is_dir() and Path(lay.static, "current").is_dir()
    assert not Path(lay.staging(REL_ID)).exists()
    assert Path(UwsgiServer().paths(lay).config).read_text() == "live"


def test_a_switch_whose_ini_cannot_be_installed_leaves_current_alone(tmp_path):
    lay = Layout(str(tmp_path / "app"))
    old = "20251231T000000Z-0000001"
    Path(lay.release(REL_ID)).mkdir(parents=True)  # (its saved ini is missing)
    Path(lay.release(old)).mkdir()
    Path(lay.config).mkdir(parents=True)
    os.symlink(lay.release(old), lay.current)
    proc = sh(Script([activate.switch(make_cfg(lay.deploy_to), make_rel())]), tmp_path)
    assert proc.returncode != 0
    assert os.readlink(lay.current) == lay.release(old)


def test_abandon_by_a_run_without_the_lock_removes_nothing(tmp_path):
    """A run refused by another's lock (same release id: same commit, same second) must not delete the
    holder's release or staged files."""
    lay = Layout(str(tmp_path / "app"))
    old = "20251231T000000Z-0000001"
    Path(lay.release(REL_ID), ".fabdeploy").mkdir(parents=True)
    Path(lay.release(REL_ID), ".fabdeploy", "uwsgi.ini").write_text("holder's")
    Path(lay.release(old)).mkdir()
    Path(lay.staging(REL_ID)).mkdir(parents=True)
    Path(lay.static, REL_ID).mkdir(parents=True)
    os.symlink(lay.release(old), lay.current)
    proc = sh(Script([cleanup.abandon(make_cfg(lay.deploy_to), make_rel(), held="false")]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert Path(lay.release(REL_ID), ".fabdeploy", "uwsgi.ini").read_text() == "holder's"
    assert Path(lay.staging(REL_ID)).is_dir() and Path(lay.static, REL_ID).is_dir()
    assert notes(out(proc)) == ["another run holds the deploy lock: nothing of this run to remove"]


# === hooks ====================================================================================================

@pytest.fixture(autouse=True)
def _clean_hooks():
    hooks.clear()
    yield
    hooks.clear()


def _ctx(cfg, release_path=None):
    lay = Layout(cfg.paths.deploy_to)
    return hooks.HookContext(cfg, "web1", REL_ID, release_path or lay.release(REL_ID), lay.venv(VENV))


def test_wrap_without_hooks_returns_the_phase_itself():
    cfg = make_cfg()
    phase = activate.switch(cfg, make_rel())
    assert hooks.wrap(phase, cfg, _ctx(cfg)) is phase


def test_wrap_puts_config_then_python_hooks_around_the_body():
    cfg = make_cfg(hooks={"before_django": ["./manage.py compilemessages"], "after_django": ["echo done"]})
    seen = []

    @hooks.before("django")
    def first(ctx):
        seen.append(ctx)
        return [f"{ctx.python} manage.py warm --release {q(ctx.release_id)}"]

    @hooks.after("django")
    def second(ctx):
        return None  # returning nothing is allowed

    ctx = _ctx(cfg)
    body = django_app.django(cfg, make_rel())
    wrapped = hooks.wrap(body, cfg, ctx)
    R = f"/srv/shop/releases/{REL_ID}"
    exports = [f"FABDEPLOY_RELEASE={REL_ID}", f"FABDEPLOY_RELEASE_PATH={R}", "FABDEPLOY_DEPLOY_TO=/srv/shop",
               f"FABDEPLOY_VENV=/srv/shop/venvs/{VENV}"]
    assert wrapped.name == "django" and wrapped.sudo == body.sudo
    n = len(body.lines)
    before, after = wrapped.lines[:4], wrapped.lines[4 + n:]
    assert wrapped.lines[4:4 + n] == body.lines
    for block in (before, after):
        export, _, rest = block[0].partition("; ")
        assert export.startswith("(export ") and set(exports) <= set(export.split()[1:])
        assert rest.startswith(f"cd {R} 2>/dev/null || cd /srv/shop")
        assert rest.endswith("; set -e")
        assert block[-1].startswith(")")
    assert before[1:3] == ["./manage.py compilemessages",
                           f"/srv/shop/venvs/{VENV}/bin/python manage.py warm --release {REL_ID}"]
    assert after[1:2] == ["echo done"] and len(after) == 3
    assert seen == [ctx]


def test_python_hooks_only_wrap_their_phase():
    hooks.after("restart")(lambda ctx: ["echo restarted"])
    cfg = make_cfg()
    assert hooks.wrap(activate.switch(cfg, make_rel()), cfg, _ctx(cfg)).lines == activate.switch(cfg, make_rel()).lines
    assert hooks.wrap(activate.restart(cfg, make_rel(), Facts()), cfg, _ctx(cfg)).lines[-2] == "echo restarted"


def test_unknown_hook_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'deploy'"):
        hooks.before("deploy")


def test_clear_empties_the_registry():
    hooks.before("code")(lambda ctx: ["echo x"])
    hooks.clear()
    cfg = make_cfg()
    phase = activate.switch(cfg, make_rel())
    assert hooks.wrap(Phase("code", ["true"]), cfg, _ctx(cfg)).lines == ["true"]
    assert hooks.wrap(phase, cfg, _ctx(cfg)) is phase


def test_wrapped_phase_runs_hooks_in_the_release_dir_with_the_env(tmp_path):
    deploy_to = tmp_path / "app"
    R = deploy_to / "releases" / REL_ID
    R.mkdir(parents=True)
    cfg = make_cfg(deploy_to, hooks={
        "before_switch": ["pwd > before.txt", "printf '%s' '$(touch PWNED) `touch PWNED`' > literal.txt"],
        "after_switch": ['printf "%s|%s|%s|%s" "$FABDEPLOY_RELEASE" "$FABDEPLOY_RELEASE_PATH" '
                         '"$FABDEPLOY_DEPLOY_TO" "$FABDEPLOY_VENV" > after.txt']})
    hooks.after("switch")(lambda ctx: [f"echo {q(ctx.host)} > host.txt"])
    body = Phase("switch", ["echo body > body.txt"])
    proc = sh(Script([hooks.wrap(body, cfg, _ctx(cfg))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert (R / "before.txt").read_text() == f"{R}\n"
    assert (R / "literal.txt").read_text() == "$(touch PWNED) `touch PWNED`"
    assert (tmp_path / "body.txt").exists()  # the body runs where the phase runs, not in the hook's cd
    assert (R / "after.txt").read_text() == f"{REL_ID}|{R}|{deploy_to}|{deploy_to}/venvs/{VENV}"
    assert (R / "host.txt").read_text() == "web1\n"
    assert not list(tmp_path.rglob("PWNED"))


def test_hook_runs_in_deploy_to_when_the_release_does_not_exist_yet(tmp_path):
    deploy_to = tmp_path / "app"
    deploy_to.mkdir()
    cfg = make_cfg(deploy_to, hooks={"before_setup": ["pwd > where.txt"]})
    proc = sh(Script([hooks.wrap(Phase("setup", ["true"]), cfg, _ctx(cfg))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert (deploy_to / "where.txt").read_text() == f"{deploy_to}\n"


def test_before_setup_hook_works_on_a_new_host(tmp_path):
    deploy_to = tmp_path / "app"  # does not exist: setup creates it
    cfg = make_cfg(deploy_to, hooks={"before_setup": [f"echo ran > {q(str(tmp_path / 'ran.txt'))}"]})
    proc = sh(Script([hooks.wrap(Phase("setup", ["true"]), cfg, _ctx(cfg))]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert (tmp_path / "ran.txt").read_text() == "ran\n"


def test_failing_before_hook_fails_the_phase_before_its_body(tmp_path):
    (tmp_path / "app").mkdir()
    cfg = make_cfg(tmp_path / "app", hooks={"before_django": ["false", "echo not reached > x"]})
    proc = sh(Script([hooks.wrap(Phase("django", ["echo body > body.txt"]), cfg, _ctx(cfg))]), tmp_path)
    assert proc.returncode != 0
    assert f"{MARK} end django 1" in out(proc)
    assert not (tmp_path / "body.txt").exists() and not list(tmp_path.rglob("x"))


def test_before_code_hook_does_not_eat_the_archive(tmp_path):
    deploy_to = tmp_path / "app"
    _setup_dirs(deploy_to)
    cfg = _sample_cfg(deploy_to, hooks={"before_code": ["cat > /dev/null"]})
    wrapped = hooks.wrap(code.code(cfg, make_rel()), cfg, _ctx(cfg))
    proc = sh(Script([wrapped]), tmp_path, stdin=_sample_bundle())
    assert proc.returncode == 0, err(proc)
    assert (deploy_to / "releases" / REL_ID / "manage.py").is_file()


def test_hook_context_python_is_quoted():
    cfg = make_cfg()
    ctx = hooks.HookContext(cfg, "h", REL_ID, "/r", "/srv/v env")
    assert ctx.python == "'/srv/v env/bin/python'"


def test_release_ids_used_here_are_valid():
    assert all(RELEASE_ID.match(r) for r in RELEASES + [REL_ID])


def test_unchanged_exit_skips_the_deploy_when_live_and_identical(tmp_path):
    cfg, lay = live_release_with_fingerprint(tmp_path, "f" * 20)
    # a live process named uwsgi (the master) with one child (a worker) working in the live release
    fake = tmp_path / "uwsgi"
    fake.write_text("#!/bin/sh\ncd \"$1\" && sleep 30 &\nwait\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([str(fake), lay.release(REL_ID)])
    try:
        Path(UwsgiServer().paths(lay).pidfile).write_text(str(proc.pid))
        same = Script([Phase("setup", [*live_check.unchanged_exit(cfg, "f" * 20, ["echo AFTER"]), "echo BUILT"])])
        for _ in range(50):  # until the worker runs
            text = out(sh(same, tmp_path))
            if "AFTER" in text:
                break
        assert "AFTER" in text and "BUILT" not in text
        assert f"{MARK} fact unchanged={REL_ID}" in text
        other = Script([Phase("setup", [*live_check.unchanged_exit(cfg, "e" * 20, ["echo AFTER"]), "echo BUILT"])])
        text = out(sh(other, tmp_path))
        assert "AFTER" not in text and "BUILT" in text
    finally:
        subprocess.run(["pkill", "-P", str(proc.pid)])
        proc.kill()
        proc.wait()


def test_unchanged_exit_deploys_when_the_workers_serve_another_release(tmp_path):
    """`current` names the release but the workers still run the old code (a switch whose reload never
    happened): not "already live"."""
    cfg, lay = live_release_with_fingerprint(tmp_path, "f" * 20)
    fake = tmp_path / "uwsgi"
    fake.write_text("#!/bin/sh\ncd \"$1\" && sleep 30 &\nwait\n")
    fake.chmod(0o755)
    proc = subprocess.Popen([str(fake), str(tmp_path)])
    try:
        Path(UwsgiServer().paths(lay).pidfile).write_text(str(proc.pid))
        same = Script([Phase("setup", [*live_check.unchanged_exit(cfg, "f" * 20, ["echo AFTER"]), "echo BUILT"])])
        text = out(sh(same, tmp_path))
        assert "AFTER" not in text and "BUILT" in text
    finally:
        subprocess.run(["pkill", "-P", str(proc.pid)])
        proc.kill()
        proc.wait()


def test_the_setup_phase_asks_the_hosts_python_its_facts_and_venv_support_in_one_start(tmp_path):
    """One python3 run: version, platform, then "venv" or "no-venv" (a Python whose venv/ensurepip does not
    import: the setup fails with the python3-venv hint)."""
    from fabdeploy.local.wheelhouse import PYTHON_FACTS_PY
    from fabdeploy.steps.setup import VENV_CHECK_PY, setup
    lines = setup(make_cfg()).lines
    assert sum(" -c " in ln and "python3" in ln for ln in lines) == 1
    assert any("apt-get install python3-venv" in ln and '"$py_venv" = venv' in ln for ln in lines)
    ok = subprocess.run([sys.executable, "-c", PYTHON_FACTS_PY + VENV_CHECK_PY], capture_output=True, text=True)
    assert ok.stdout.splitlines()[2] == "venv", ok
    (tmp_path / "ensurepip.py").write_text("raise ImportError('stripped')\n")
    bad = subprocess.run([sys.executable, "-c", PYTHON_FACTS_PY + VENV_CHECK_PY], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 0 and bad.stdout.splitlines()[2] == "no-venv", bad


def test_the_hosts_python_facts_are_asked_once_and_kept_with_the_interpreters_identity(tmp_path):
    """setup.python_facts_lines: the first run starts the Python, later runs read the cache; a changed
    interpreter (its mtime here) or a cached answer without venv support asks again."""
    from fabdeploy.steps.setup import python_facts_lines
    log, fake, cache = tmp_path / "starts", tmp_path / "py", tmp_path / "python-facts"
    fake.write_text(f'#!/bin/sh\necho started >> {log}\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    probe = "\n".join([*python_facts_lines(str(fake), str(cache)),
                       'echo "$python_version|$python_platform|$py_venv"'])

    def run():
        proc = subprocess.run(["sh", "-ec", probe], capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stderr == "", proc
        return proc.stdout.strip()

    want = f"{platform.python_version()}|{sys.implementation.name} {sysconfig.get_platform()} " \
           f"{'-'.join(platform.libc_ver()) or '-'}|venv"
    assert run() == want and run() == want
    assert log.read_text().count("started") == 1
    assert cache.read_text().splitlines()[1:] == want.split("|")
    os.utime(fake, (1, 1))  # another interpreter behind the name
    assert run() == want and log.read_text().count("started") == 2
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:3] + ["no-venv"]) + "\n")  # (never written so, but never trusted either)
    assert run() == want and log.read_text().count("started") == 3
    assert run() == want and log.read_text().count("started") == 3


def _group(command: str) -> subprocess.Popen:
    """A process group of its own (setsid execs: its pgid is the Popen's pid), left unreaped by this test
    until it waits: its leader stays a zombie once killed, as under an init that reaps late."""
    proc = subprocess.Popen(["setsid", "sh", "-c", command])
    deadline = time.monotonic() + 10
    while os.getpgid(proc.pid) != proc.pid or open(f"/proc/{proc.pid}/comm").read().strip() != "sleep":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("shell_name", ["dash", "bash"])
def test_stop_group_does_not_wait_for_zombies_but_for_the_living(shell_name):
    """shell.stop_group: TERM, then wait while a process of the group lives (zombies do not count: `kill -0`
    counted them and waited the full 5 s), then KILL. Counted in the loop's turns (50 = the full wait)."""
    dies = _group("sleep 30 & exec sleep 1000")
    # (ignored TERM is inherited; the full wait once, with dash)
    stubborn = _group("trap '' TERM; sleep 30 & exec sleep 1000") if shell_name == "dash" else None
    groups = [g for g in (dies, stubborn) if g]
    try:
        turns = []
        for proc in groups:
            script = "set -eu\n" + "\n".join(shell.stop_group(proc.pid)) + '\necho "turns=$i"'
            res = subprocess.run([shell_name, "-c", script], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            turns.append(int(res.stdout.split("turns=")[1]))
            assert proc.wait(timeout=10) in (-signal.SIGTERM, -signal.SIGKILL)
        assert turns[0] < 50 and dies.returncode == -signal.SIGTERM
        assert stubborn is None or (turns[1] == 50 and stubborn.returncode == -signal.SIGKILL)
    finally:
        for proc in groups:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("shell_name", ["dash", "bash"])
@pytest.mark.parametrize("source", ["children-file", "grep"])
def test_children_lists_and_counts_a_masters_children(shell_name, source):
    """shell.CHILDREN_FN: a master's child pids, one a line (from /proc/PID/task/*/children by `read`; the grep
    through /proc/*/status where a kernel has no such file), and n_children's count; nothing for a process
    that is gone."""
    fn = shell.CHILDREN_FN
    if source == "grep":  # (as on a kernel without CONFIG_PROC_CHILDREN)
        fn = fn.replace('[ -r "/proc/$1/task/$1/children" ]', "false")
    master = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while True:
            kids = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == master.pid]
            if len(kids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        script = f'{fn}\nchildren {master.pid}; echo "n=$(n_children {master.pid})"; children 999999999; echo end'
        res = subprocess.run([shell_name, "-c", script], capture_output=True, text=True, timeout=10)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == sorted(kids, key=int) + ["n=2", "end"]
    finally:
        for p in kids:
            os.kill(int(p), signal.SIGKILL)
        master.wait(timeout=10)


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("PPid:"))
    except (OSError, StopIteration):
        return -1
