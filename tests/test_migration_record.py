"""The migration record (steps/migration_record.py): its builders' exact lines, and run with /bin/sh in temp
dirs: the records written from the program's output, a rollback answered by them without starting Python,
the fallbacks to the target's Django, and a real Django deploy writing them (no SSH here)."""
from __future__ import annotations

import os
from pathlib import Path

from fabdeploy.database import fleet
from fabdeploy.ops import dbtasks
from fabdeploy.ops.manage import remote_command, wrapper
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Script
from fabdeploy.steps import django_app
from fabdeploy.steps import migration_record as record
from test_ops_builders import R1, R5, RollbackLab, migrated_then_one_more, rollback
from test_phases import err, make_cfg, make_rel, out, sh

P = record.PREFIX
APPLIED_R5 = "auth 0001_initial\npages 0001_initial\npages 0002_tag\n"


def test_the_builders_exact_lines():
    assert record.invalidate_line("/srv/x/current") == \
        "rm -f /srv/x/current/.fabdeploy/migrations.applied 2>/dev/null || true"
    assert record.usable_line(False) == "rec="
    assert record.usable_line(True) == ('rec=; [ -f "$cur/.fabdeploy/migrations.applied" ] && '
                                        '[ -f "$R/.fabdeploy/migrations.disk" ] && rec=1 || true')
    assert record.compare_line("exit 1") == ('unknown=$(LC_ALL=C comm -23 "$cur/.fabdeploy/migrations.applied" '
                                             '"$R/.fabdeploy/migrations.disk") || exit 1')
    assert record.carry_line() == (
        'if [ -n "$rec" ] && cp "$cur/.fabdeploy/migrations.applied" "$R/.fabdeploy/migrations.applied".tmp '
        '2>/dev/null; then mv -f "$R/.fabdeploy/migrations.applied".tmp "$R/.fabdeploy/migrations.applied"; '
        'else rm -f "$R/.fabdeploy/migrations.applied" "$R/.fabdeploy/migrations.applied".tmp; fi')


def test_every_way_to_change_the_database_outside_a_deploy_removes_the_live_record():
    cfg = make_cfg(Path("/srv/x"))
    gone = record.invalidate_line("/srv/x/current")
    assert remote_command(cfg, ["migrate"]).startswith(gone + "; ")
    assert gone in wrapper(cfg).splitlines()[:6]  # (before it runs itself again as the app user)
    assert gone in dbtasks.restore_phase(cfg, "x").lines
    assert django_app.django(cfg, make_rel()).lines[6] == gone  # (before any boot)


def _program_out(tmp_path, text: str) -> tuple[Path, Path]:
    rel = tmp_path / "rel"
    (rel / ".fabdeploy").mkdir(parents=True)
    (tmp_path / "o").write_text(text)
    return rel, tmp_path / "o"


def test_the_records_are_written_when_complete_and_not_at_all_otherwise(tmp_path):
    """django_app.scan_lines (the one pass over what the boot said) writes the records; boot_lines removes any
    from before first."""
    def scan(rc=0):
        for f in (rel / ".fabdeploy").iterdir():  # (what boot_lines' first lines do)
            f.unlink()
        lines = [f"rc={rc}", *django_app.scan_lines(str(o), str(rel / ".fabdeploy"))]
        return sh("\n".join(lines), tmp_path)
    rel, o = _program_out(tmp_path, f"noise\n{P}applied pages 0001_initial\n{P}disk pages 0001_initial\n"
                                    f"{P}disk pages 0002_tag\n{P}record 1 2\n")
    proc = scan()
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b"", proc
    assert (rel / ".fabdeploy/migrations.applied").read_text() == "pages 0001_initial\n"
    assert (rel / ".fabdeploy/migrations.disk").read_text() == "pages 0001_initial\npages 0002_tag\n"
    assert not o.exists()  # (the boot's output removed)
    # a line lost (e.g. glued to the project's own output): no record
    o.write_text(f"print without newline{P}applied pages 0001_initial\n{P}disk pages 0001_initial\n{P}record 1 1\n")
    assert scan().returncode == 0
    assert not list((rel / ".fabdeploy").iterdir())
    o.write_text("Traceback: no record line at all\n")
    assert scan().returncode == 0
    assert not list((rel / ".fabdeploy").iterdir())
    # a boot that failed writes none, shows its own lines on stderr (not the records) and stops
    o.write_text(f"{P}applied pages 0001_initial\n{P}disk pages 0001_initial\n{P}record 1 1\n@@fabdeploy warn w\n"
                 "Traceback (most recent call last):\nValueError: boom\n")
    proc = scan(rc=1)
    assert proc.returncode == 1 and not list((rel / ".fabdeploy").iterdir())
    assert proc.stdout.decode() == "@@fabdeploy warn w\n"
    assert proc.stderr.decode() == "Traceback (most recent call last):\nValueError: boom\n"
    cfg = make_cfg(Path("/srv/x"))
    first = django_app.boot_lines(cfg, make_rel(), django_app.program_args(cfg, make_rel(), check_import=True,
                                                                          migrate=True, rest=True), as_app=False)
    assert any(ln.startswith("rm -f ") and "/.fabdeploy/migrations.applied" in ln and "/.fabdeploy/migrations.disk"
               in ln for ln in first[:3])


def _with_records(lab: RollbackLab, applied: str = APPLIED_R5, disk: str = "auth 0001_initial\npages 0001_initial\n"):
    Path(lab.lay.release(R5), ".fabdeploy", "migrations.applied").write_text(applied)
    Path(lab.lay.release(R1), ".fabdeploy", "migrations.disk").write_text(disk)


def test_a_rollback_with_records_warns_from_them_and_starts_no_python(tmp_path):
    lab = RollbackLab(tmp_path)
    _with_records(lab)
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn the database has migration pages.0002_tag that {R1} does not know" in out(proc)
    assert lab.calls_made() == []  # the target's python was never started
    assert lab.state()["current"] == lab.lay.release(R1)
    # the database did not change: the target's applied record is now the abandoned release's
    assert Path(lab.lay.release(R1), ".fabdeploy", "migrations.applied").read_text() == APPLIED_R5


def test_a_rollback_with_records_and_nothing_unknown_is_silent(tmp_path):
    lab = RollbackLab(tmp_path)
    _with_records(lab, applied="pages 0001_initial\n", disk="auth 0001_initial\npages 0001_initial\n")
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn" not in out(proc) and lab.calls_made() == []


def test_strict_asks_the_database_even_with_records_and_drops_the_targets_record(tmp_path):
    lab = RollbackLab(tmp_path, unknown="pages 0002_tag")
    _with_records(lab, applied="pages 0001_initial\n")  # (a record saying nothing is unknown is not enough)
    proc = lab.run(strict=True)
    assert proc.returncode == 1 and len(lab.calls_made()) == 1
    assert lab.state() == lab.before
    lab = RollbackLab(tmp_path / "b")
    _with_records(lab)
    Path(lab.lay.release(R1), ".fabdeploy", "migrations.applied").write_text("stale\n")
    proc = lab.run(strict=True)
    assert proc.returncode == 0, err(proc)
    assert len(lab.calls_made()) == 1
    assert not Path(lab.lay.release(R1), ".fabdeploy", "migrations.applied").exists()


def test_without_the_live_record_the_target_is_asked_and_warns_the_same(tmp_path):
    lab = RollbackLab(tmp_path, unknown="pages 0002_tag")
    _with_records(lab)
    os.unlink(Path(lab.lay.release(R5), ".fabdeploy", "migrations.applied"))
    proc = lab.run()
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn the database has migration pages.0002_tag that {R1} does not know" in out(proc)
    assert len(lab.calls_made()) == 1


def test_a_shared_database_never_trusts_a_record(tmp_path):
    lab = RollbackLab(tmp_path)
    _with_records(lab)
    lab.cfg = make_cfg(tmp_path / "app", database={"engine": "postgresql", "host": "url"},
                       secrets={"DATABASE_URL": {"env": "DATABASE_URL"}})
    assert fleet.shared(lab.cfg)
    phase = rollback.select_and_switch(lab.cfg, None, False)
    assert "rec=" in phase.lines and record.usable_line(True) not in phase.lines
    assert django_app.program_args(lab.cfg, make_rel(), check_import=False, migrate=True,
                                   rest=False)["migrate"]["record"] is False


def test_a_real_django_deploy_writes_the_records_and_a_rollback_needs_no_python(tmp_path):
    """Release A migrates; B adds pages.0002_tag and migrates; with every python of the venv broken, the
    rollback to A still names it (from the records), and A's applied record becomes B's."""
    cfg, lay, a, b = migrated_then_one_more(tmp_path)
    os.symlink(lay.release(a.id), lay.current)
    proc = sh(Script([django_app.django(cfg, b)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert "fabdeploy-migration-" not in out(proc) + err(proc)
    assert not Path(lay.release(a.id), ".fabdeploy", "migrations.applied").exists()  # the live one, invalidated
    meta_a, meta_b = Path(lay.release(a.id), ".fabdeploy"), Path(lay.release(b.id), ".fabdeploy")
    disk_a = (meta_a / "migrations.disk").read_text().splitlines()
    assert disk_a == sorted(disk_a) and "pages 0001_initial" in disk_a and "pages 0002_tag" not in disk_a
    assert (meta_b / "migrations.disk").read_text().splitlines() == sorted(disk_a + ["pages 0002_tag"])
    applied_b = (meta_b / "migrations.applied").read_text()
    assert applied_b == (meta_b / "migrations.disk").read_text()  # (every migration on B's disk is applied)
    for r in (a, b):
        (Path(lay.release(r.id), ".fabdeploy") / "uwsgi.ini").write_text(f"ini of {r.id}\n")
    Path(lay.venv(a.venv_hash), ".fabdeploy-complete").touch()
    Path(lay.config, "uwsgi.ini").write_text(f"ini of {b.id}\n")
    os.unlink(lay.current)
    os.symlink(lay.release(b.id), lay.current)
    python = Path(lay.venv(a.venv_hash), "bin", "python")
    python.unlink()
    python.write_text("#!/bin/sh\necho python started >&2\nexit 3\n")
    python.chmod(0o755)
    proc = sh(Script([rollback.select_and_switch(cfg, None, False)]), tmp_path)
    assert proc.returncode == 0, err(proc)
    assert f"{MARK} warn the database has migration pages.0002_tag that {a.id} does not know" in out(proc)
    assert "python started" not in err(proc)
    assert os.readlink(lay.current) == lay.release(a.id)
    assert (meta_a / "migrations.applied").read_text() == applied_b
