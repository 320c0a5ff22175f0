"""The marker protocol: every emitter of remote/markers.py run for real in /bin/sh (and the Python snippet in
this interpreter), read back by the runner's RunResult; RunResult.json's errors; no other module writes
marker lines itself. Nothing here uses SSH."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fabdeploy.errors import FabdeployError
from fabdeploy.remote import markers
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.runner import RunResult
from fabdeploy.remote.script import Phase, Script

FABFILE = Path(__file__).resolve().parent.parent / "fabfile"
HOSTILE = "it's $(touch pwned) `touch pwned` \"$HOME\" \\ 100%"


def run(lines: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", "\n".join(lines)], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_note_warn_and_line_expand_shell_words(tmp_path):
    proc = run(["n=3 who=me", markers.note("$n files"), markers.warn("held by $who for $((n * 2))s"),
                markers.line("waiting", "$n")], tmp_path)
    assert proc.stdout.splitlines() == [f"{MARK} note 3 files", f"{MARK} warn held by me for 6s",
                                        f"{MARK} waiting 3"]


def test_literal_and_fail_take_any_text_as_is_then_expand_their_tail(tmp_path):
    proc = run(["err='line one\nlast line'", markers.literal("warn", HOSTILE, ' "$(printf %s "$err" | tail -n 1)"'),
                markers.fail(HOSTILE + ": ", 4, then='"$(printf %s "$err" | tail -n 1)"')], tmp_path)
    assert proc.returncode == 4
    assert proc.stdout == f"{MARK} warn {HOSTILE} last line\n"
    assert proc.stderr == f"{MARK} error {HOSTILE}: last line\n"
    assert not (tmp_path / "pwned").exists()


def test_fail_expanded_stops_with_the_expanded_message(tmp_path):
    proc = run(["holder=alice", markers.fail_expanded("held by $holder", 75), "echo not reached"], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (75, "", f"{MARK} error held by alice\n")


def test_relay_and_as_markers_filter_an_embedded_programs_output(tmp_path):
    out = f"noise\n{MARK} warn one\n{MARK} error two\n  {MARK} warn indented"
    proc = run([f"out={markers.q(out)}", f"printf '%s\\n' \"$out\" | {markers.relay('warn')}",
                f"printf 'a (x.W001)\\nb\\n' | {markers.as_markers('warn')}"], tmp_path)
    assert proc.stdout.splitlines() == [f"{MARK} warn one", f"{MARK} warn a (x.W001)", f"{MARK} warn b"]


def test_begin_end_and_pgid_frame_each_phase_on_both_streams(tmp_path):
    text = Script([Phase("one", ["true"]), Phase("two", ["exit 3"])]).text()
    assert markers.begin("one") in text and markers.end("two") in text and markers.pgid() in text
    proc = subprocess.run(["sh", "-c", text], capture_output=True, text=True, timeout=30)
    out = proc.stdout.splitlines()
    assert re.fullmatch(rf"{MARK} pgid [0-9]+", out[0])
    assert out[1:] == [f"{MARK} begin one", f"{MARK} end one 0", f"{MARK} begin two", f"{MARK} end two 3"]
    assert proc.stderr.splitlines() == out[1:]


def test_facts_round_trip_through_sh_and_the_runner(tmp_path):
    proc = run(["v='a b=c'", markers.fact("thing", "$v"), markers.fact("empty", ""), "echo noise"], tmp_path)
    assert RunResult(0, {}, proc.stdout, "").facts == {"thing": "a b=c", "empty": ""}


def test_the_python_snippet_marks_and_the_runner_reads_its_json():
    doc = {"current": "R1", "text": HOSTILE, "n": [1, None, True]}
    code = markers.PY_MARKERS + f"mark_json({doc!r})\nmark('warn', 'careful')\nmark('error', 'bad', err=True)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.stderr == f"{MARK} error bad\n"
    assert proc.stdout.splitlines()[1] == f"{MARK} warn careful"
    assert RunResult(0, {}, proc.stdout, "", "web1").json() == doc


def test_json_missing_or_broken_is_one_line_naming_the_host():
    with pytest.raises(FabdeployError) as exc:
        RunResult(0, {}, f"noise\n{MARK} note hi", "", "web1:2222").json("plan facts")
    assert str(exc.value) == "web1:2222: the host returned no plan facts"
    with pytest.raises(FabdeployError) as exc:
        RunResult(0, {}, f"{MARK} json {{broken", "", "web1").json("report")
    assert str(exc.value).startswith("web1: its report is not JSON (") and "\n" not in str(exc.value)


def test_no_module_but_markers_writes_marker_lines():
    """The emitter is markers.py; the runner (the parser) may name MARK; nothing else spells a marker."""
    offenders = []
    for path in sorted(FABFILE.rglob("*.py")):
        rel = path.relative_to(FABFILE).as_posix()
        if rel in ("remote/markers.py", "remote/runner.py"):
            continue
        text = path.read_text()
        if "@@fabdeploy" in text or re.search(r"\bMARK\b", text):
            offenders.append(rel)
    assert offenders == []
