"""The runner's marker parser (remote/runner.py _Phases) with stdout and stderr arriving in either order:
they are two streams of one SSH channel, read in turns, so one may be ahead of the other. A phase is
reported once both streams ended it, with the error line stderr carried (the gunicorn e2e's revert once
showed "restart  FAILED: " with no message: stdout's end marker was read before stderr's error line)."""
from __future__ import annotations

from fabdeploy.remote import markers
from fabdeploy.remote.runner import _Phases

M = markers.MARK


def feed(parser, lines):
    for stream, line in lines:
        parser.handle(stream, line)


def test_a_phase_is_reported_only_after_stderr_ended_it_too_with_its_error_line():
    seen = []
    p = _Phases({}, on_phase=lambda ph: seen.append((ph.name, ph.rc, list(ph.errors), list(ph.stderr))))
    feed(p, [("out", f"{M} begin restart"), ("out", f"{M} end restart 1"), ("out", f"{M} begin health"),
             ("err", f"{M} begin restart"), ("err", "gunicorn did not come up serving X within 60s; last lines:"),
             ("err", "")])
    assert seen == []  # stdout is ahead: stderr's part of the phase is not read yet
    feed(p, [("err", f"{M} error gunicorn did not come up serving X (the live master 7 still serves, untouched)"),
             ("err", f"{M} end restart 1")])
    assert seen == [("restart", 1, ["gunicorn did not come up serving X (the live master 7 still serves, untouched)"],
                     ["gunicorn did not come up serving X within 60s; last lines:", ""])]


def test_stderr_ahead_of_stdout_keeps_the_phases_lines_and_reports_once():
    seen = []
    p = _Phases({}, on_phase=lambda ph: seen.append((ph.name, ph.rc, list(ph.errors), list(ph.notes))))
    feed(p, [("err", f"{M} begin code"), ("err", f"{M} error cannot unpack"), ("err", f"{M} end code 2"),
             ("out", f"{M} begin code"), ("out", f"{M} note 5 files"), ("out", f"{M} end code 2")])
    assert seen == [("code", 2, ["cannot unpack"], ["5 files"])]
    assert p.phases["code"].duration >= 0


def test_finish_reports_a_phase_whose_stderr_end_never_came_and_not_a_running_one():
    seen = []
    p = _Phases({}, on_phase=lambda ph: seen.append((ph.name, ph.rc)))
    feed(p, [("out", f"{M} begin lock"), ("out", f"{M} end lock 0"), ("out", f"{M} begin code"),
             ("err", f"{M} begin lock")])
    p.finish()
    assert seen == [("lock", 0)]
    p.finish()
    assert seen == [("lock", 0)]
