"""The benchmark keeps working (CI runs its short version). It asserts no timing, only that it measured
everything and that fab used the round trips it should: one SSH connection per host per command, three
channels for a deploy, one for a no-op redeploy and one for a rollback, with uWSGI and with gunicorn (measured
side by side in the same run)."""
import re
import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_runs_and_counts_round_trips():
    res = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--delays", "0,25"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = re.findall(r"^(uwsgi|gunicorn)\s+(first|code|noop|rollback)\s+1\s+(\d+)ms\s+([\d.]+)\s+([\d.]+)\s+"
                      r"([\d.]+)\s+(\d+)\s+(\d+)$", res.stdout, re.M)
    assert {(r[0], r[1], r[2]) for r in rows} == {(s, m, d) for s in ("uwsgi", "gunicorn")
                                                  for m in ("first", "code", "noop", "rollback") for d in ("0", "25")}
    for server in ("uwsgi", "gunicorn"):
        channels = {r[1]: int(r[7]) for r in rows if r[0] == server}
        assert channels == {"first": 3, "code": 3, "noop": 1, "rollback": 1}, server
    assert {int(r[6]) for r in rows} == {1}
    for r in rows:  # every ratio is a real measurement of both sides (printed values are rounded)
        fab, limit, ratio = float(r[3]), float(r[4]), float(r[5])
        assert fab > 0 and limit > 0 and abs(ratio - fab / limit) <= 0.1 * fab / limit
    side = re.findall(r"^  gunicorn\s+(first|code|noop|rollback)\s+1 hosts\s+(\d+)ms\s+([\d.]+)s vs ([\d.]+)s\s+= "
                      r"([\d.]+)$", res.stdout, re.M)
    assert {(m, d) for m, d, *_ in side} == {(m, d) for m in ("first", "code", "noop", "rollback") for d in ("0", "25")}
