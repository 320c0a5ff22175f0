"""The awk programs fabdeploy runs on hosts (django_app.SCAN_AWK, uwsgi.WANT_AWK) with every awk this machine
has (Debian's default mawk and gawk): only POSIX awk is used."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fabdeploy.appserver.uwsgi import WANT_AWK
from fabdeploy.steps import django_app
from fabdeploy.steps import migration_record as record

AWKS = [a for a in ("mawk", "gawk", "original-awk", "busybox") if shutil.which(a)] or ["awk"]


def run(awk: str, program: str, path, **v) -> subprocess.CompletedProcess:
    words = [awk] + (["awk"] if awk == "busybox" else [])
    for k, val in v.items():
        words += ["-v", f"{k}={val}"]
    return subprocess.run([*words, program, str(path)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("awk", AWKS)
def test_want_awk(awk, tmp_path):
    ini = tmp_path / "uwsgi.ini"
    for text, want in (("processes = 4\n", "4"), ("processes = 4\ncheaper = 2\n", "2"),
                       ("processes = 4\ncheaper = 1\ncheaper-initial = 3\n", "3"), ("processes=7 \n", "7"),
                       ("processes = 2\nprocesses = 5\n", "5"), ("master = true\n", "")):
        ini.write_text(text)
        assert run(awk, WANT_AWK, ini).stdout == want + "\n", (awk, text)


@pytest.mark.parametrize("awk", AWKS)
def test_scan_awk(awk, tmp_path):
    P = record.PREFIX
    out = tmp_path / "django.out"
    rec = tmp_path / "rec"
    rec.mkdir()
    out.write_text(f"@@fabdeploy note 0 migrations applied\nnoise\n{django_app.DUMP_OK}sql\n{django_app.EARLY_OK}\n"
                   f"{P}applied pages 0001\n{P}disk pages 0001\n{P}disk pages 0002\n{P}record 1 2\n")
    v = {"NOTE": "@@fabdeploy note ", "WARN": "@@fabdeploy warn ", "DUMP": django_app.DUMP_OK,
         "EARLY": django_app.EARLY_OK, "CHANGED": django_app.PROBE_CHANGED, "PREFIX": P,
         "VARS": f"{out}.vars", "rec": str(rec)}
    proc = run(awk, django_app.SCAN_AWK, out, rc="0", **v)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "@@fabdeploy note 0 migrations applied\n", "")
    assert (tmp_path / "django.out.vars").read_text() == "sql\n1\n\n"
    assert (rec / "migrations.disk").read_text() == "pages 0001\npages 0002\n"
    assert (rec / "migrations.applied").read_text() == "pages 0001\n"
    proc = run(awk, django_app.SCAN_AWK, out, rc="1", **{**v, "rec": str(tmp_path / "none")})
    assert proc.stderr == "noise\n" and not (tmp_path / "none").exists()
