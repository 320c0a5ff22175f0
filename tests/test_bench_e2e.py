"""The benchmark keeps working (CI runs its short version). It asserts no timing, only that it measured
everything and that fab used the round trips it should: one SSH connection per host per command, three
channels for a deploy, one for a no-op redeploy and one for a rollback."""
import re
import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_runs_and_counts_round_trips():
    res = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--delays", "0,25"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = re.findall(r"^(first|code|noop|rollback)\s+1\s+(\d+)ms\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$",
                      res.stdout, re.M)
    assert {(r[0], r[1]) for r in rows} == {(m, d) for m in ("first", "code", "noop", "rollback") for d in ("0", "25")}
    channels = {r[0]: int(r[6]) for r in rows}
    connections = {int(r[5]) for r in rows}
    assert channels == {"first": 3, "code": 3, "noop": 1, "rollback": 1}
    assert connections == {1}
    for r in rows:  # every ratio is a real measurement of both sides (printed values are rounded)
        fab, limit, ratio = float(r[2]), float(r[3]), float(r[4])
        assert fab > 0 and limit > 0 and abs(ratio - fab / limit) <= 0.1 * fab / limit
