"""The pure builders of `fab db` and `fab rollback --restore-db` (issue 14): scripts parse, the shell pieces
that pick dumps run for real on a directory of files; the e2e proof is tests/test_dbtasks_e2e.py."""
from __future__ import annotations

import subprocess

import pytest

from fabdeploy.database import restore
from fabdeploy.errors import ConfigError
from fabdeploy.hosts.target import Target
from fabdeploy.ops import dbtasks
from fabdeploy.steps import rollback
from fabdeploy.steps.lock import LockOwner
from test_database import cfg_of, sh_ok

A, B, C = "20260101T000000Z-aaaaaaa", "20260102T000000Z-bbbbbbb", "20260103T000000Z-ccccccc"


def test_every_db_script_parses_and_never_holds_a_password():
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    owner = LockOwner.new("db-restore", "me")
    for action in dbtasks.ACTIONS:
        text = dbtasks.script(cfg, action, owner, 0, Target.named(cfg, "localhost"), A).text()
        sh_ok(text)
        assert "database.password" not in text  # (the tools get it from the settings, in their environment)
    names = [ph.name for ph in dbtasks.script(cfg, "restore", owner, 0, Target.named(cfg, "localhost"), A).phases]
    assert names == ["lock", "find", "stop", "restore", "start", "health", "finish"]
    assert [ph.name for ph in dbtasks.script(cfg, "backups", owner, 0, Target.named(cfg, "localhost")).phases] \
        == ["backups"]


@pytest.mark.parametrize("action, dump_id, message", [
    ("dump", "", "fab db takes backup, backups or restore (got 'dump')"),
    ("restore", "", "fab db restore needs --id ID of a dump"),
    ("restore", A + ";rm -rf /", "fab db restore needs --id ID of a dump"),
])
def test_bad_actions_and_ids_are_one_line(action, dump_id, message):
    with pytest.raises(ConfigError) as exc:
        dbtasks.check(action, dump_id)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_ids_of_both_kinds_of_dump_are_accepted():
    for ok in (A, A + ".20260101T010203Z"):
        dbtasks.check("restore", ok)


def run_sh(lines: list[str], d: str, pre: str = "") -> str:
    text = pre + "\n" + "\n".join(lines)
    res = subprocess.run(["sh", "-c", text.replace("/srv/shop/shared/backups", d)], capture_output=True,
                          text=True)
    return res.stdout + res.stderr


def test_the_matching_dump_is_the_oldest_pre_migration_dump_newer_than_the_target(tmp_path):
    cfg = cfg_of('[database]\nengine = "postgresql"\n')
    for name in (f"{A}.pgdump.gz", f"{A}.20260102T050000Z.pgdump.gz", f"{C}.pgdump.gz", f"{B}.pgdump.gz",
                 "notes.txt"):
        (tmp_path / name).write_text("x")
    lines = restore.matching_lines(cfg) + ['echo "match=$match"']
    assert run_sh(lines, str(tmp_path), f"T={A}").strip() == f"match={B}"
    assert run_sh(lines, str(tmp_path), f"T={C}").strip() == "match="


def test_find_lines_pick_the_dump_and_its_kind(tmp_path):
    cfg = cfg_of()
    (tmp_path / f"{A}.20260102T050000Z.sqlite3.gz").write_text("x")
    lines = restore.find_lines(cfg, f"{A}.20260102T050000Z", "X") + ['echo "$kind $(basename "$file")"']
    assert run_sh(lines, str(tmp_path)).strip() == f"sqlite3 {A}.20260102T050000Z.sqlite3.gz"
    lines = restore.find_lines(cfg, B, B)
    assert run_sh(lines, str(tmp_path)) .strip().endswith(f"no dump {B} in {tmp_path} (see fab db backups)")


def test_rollback_names_the_dump_and_with_restore_db_loads_it():
    cfg = cfg_of('[database]\nengine = "mysql"\n')
    plain = "\n".join(rollback.select_and_switch(cfg, None, False).lines)
    restoring = "\n".join(rollback.select_and_switch(cfg, None, False, restore_db=True).lines)
    sh_ok(plain)
    sh_ok(restoring)
    assert "the dump matching release $T is $match" in plain and "RESTORE" not in plain
    assert "import django" in restoring and "--restore-db: no dump in" in restoring
    assert restoring.index("pg_restore") < restoring.index('touch "$cur/.fabdeploy/bad"')


def test_parse_dumps():
    out = f"@@x\ndump {A}.pgdump.gz 10 0\ndump {A}.20260102T050000Z.sql.gz 20 86400\n"
    assert dbtasks.parse_dumps(out) == [
        {"id": A, "release": A, "kind": "pgdump", "size": 10, "time": "1970-01-01T00:00:00Z"},
        {"id": f"{A}.20260102T050000Z", "release": A, "kind": "sql", "size": 20, "time": "1970-01-02T00:00:00Z"}]


def test_a_backup_is_named_with_one_timestamp():
    """The name is used for the dump, its rename and the note: the clock is read once (a second ticking over
    between two reads named a file that was not there)."""
    text = "\n".join(dbtasks.backup_phase(cfg_of()).lines)
    assert text.count("date -u") == 1 and '"$T.$stamp"' in text


def test_the_old_backups_key_is_one_line_naming_keep_backups():
    with pytest.raises(ConfigError) as exc:
        cfg_of("[database]\nbackups = 3\n")
    assert "unknown key database.backups (did you mean 'keep_backups'?)" in str(exc.value)


@pytest.mark.parametrize("rc, started, said", [
    (0, False, "database restored from x.pgdump.gz"),
    (restore.UNCHANGED, True, "restoring x.pgdump.gz failed: psql: ERROR: boom; the database was left unchanged, "
                              "the app was started again"),
    (1, False, "restoring x.pgdump.gz failed: psql: ERROR: boom; the database may be partly restored and the app "
               "is left stopped: retry with fab db restore --id x --yes"),
])
def test_a_failed_restore_says_whether_the_database_changed(tmp_path, rc, started, said):
    """restore_lines run for real (gzip, the branches) with a stand-in for the app's python: a failure that
    changed nothing starts the app again; any other leaves it stopped and names the retry."""
    stub = tmp_path / "py"
    stub.write_text(f"cat >/dev/null; echo 'psql: ERROR: boom' >&2; exit {rc}\n")
    subprocess.run(f"echo data | gzip > {tmp_path}/x.pgdump.gz", shell=True, check=True)
    lines = restore.restore_lines("", f"sh {stub}", ["echo STARTED"], "fab db restore --id x --yes")
    out = run_sh(lines, str(tmp_path), f"set -e; file={tmp_path}/x.pgdump.gz; kind=pgdump")
    assert said in out and ("STARTED" in out) == started, out


def test_a_file_that_is_not_gzip_changes_nothing(tmp_path):
    (tmp_path / "x.pgdump.gz").write_bytes(b"PGDMP truncated")
    lines = restore.restore_lines("", "false", ["echo STARTED"], "R")
    out = run_sh(lines, str(tmp_path), f"set -e; file={tmp_path}/x.pgdump.gz; kind=pgdump")
    assert "STARTED" in out and "failed: not a complete gzip file; the database was left unchanged" in out, out


def test_the_start_after_a_failed_restore_keeps_its_chatter_out_of_the_error(tmp_path):
    """(the app server's stderr lines would follow the one-line error) A start that fails shows them."""
    subprocess.run(f"echo data | gzip > {tmp_path}/x.pgdump.gz", shell=True, check=True)
    stub = tmp_path / "py"
    stub.write_text(f"cat >/dev/null; echo 'psql: ERROR: boom' >&2; exit {restore.UNCHANGED}\n")
    pre = f"set -e; file={tmp_path}/x.pgdump.gz; kind=pgdump"
    out = run_sh(restore.restore_lines("", f"sh {stub}", ["echo chatter >&2", "echo STARTED"], "R"), str(tmp_path), pre)
    assert "STARTED" in out and "chatter" not in out and "the app was started again" in out, out
    out = run_sh(restore.restore_lines("", f"sh {stub}", ["echo broke >&2", "false", "echo STARTED"], "R"),
                 str(tmp_path), pre)
    assert "broke" in out and "STARTED" not in out and "the app was started again" not in out, out
