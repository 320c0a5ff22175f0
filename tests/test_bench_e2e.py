"""The benchmark keeps working (CI runs its short version: sample project, 1 host, 25 ms). It asserts no
timing, only that it measured everything and that fab used the round trips it should: one SSH connection per
host per command (none with `[ssh] persist` once a keeper holds the connection), three channels for a first
deploy, two for a code-only redeploy (setup and prepare in one: steps/fold.py), one for a no-op redeploy and one
for a rollback, with uWSGI and with gunicorn (measured side by side in the same run); that the naive baseline was
measured beside the limit (every row has a naive time and a fab/naive ratio); and that the app server's RSS per
host was read for fab and for naive. The delay is the TUN link's (bench/tun_link.py)."""
import os
import re
import subprocess
import sys

import labindex
from conftest import REPO

MEASURES = ("first", "code", "noop", "rollback", "kept-code", "kept-noop", "kept-rollback")
ALT = "|".join(MEASURES)


def test_quick_benchmark_runs_and_counts_round_trips():
    # its one host takes an index of this worker's range (bench/run.py alone starts at 150)
    env = {**os.environ, "FABDEPLOY_BENCH_INDEX": str(labindex.next_index())}
    res = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the delay at the IP layer (bench/tun_link.py): fab's and the baselines' TCP cross it as on a network, and
    # the connections counted below are the SYNs that went over it
    assert "bench: link tun\n" in res.stdout
    rows = re.findall(rf"^sample\s+(uwsgi|gunicorn)\s+({ALT})\s+1\s+(\d+)ms\s+([\d.]+)\s+"
                      r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)$", res.stdout, re.M)
    assert {(r[0], r[1], r[2]) for r in rows} == {(s, m, "25") for s in ("uwsgi", "gunicorn") for m in MEASURES}
    for server in ("uwsgi", "gunicorn"):
        channels = {r[1]: int(r[9]) for r in rows if r[0] == server}
        assert channels == {"first": 3, "code": 2, "noop": 1, "rollback": 1,
                            "kept-code": 2, "kept-noop": 1, "kept-rollback": 1}, server
    # one SSH connection per host per command; none through the connection kept by the previous command
    assert {r[1]: int(r[8]) for r in rows} == {m: 0 if m.startswith("kept-") else 1 for m in MEASURES}
    for r in rows:  # every ratio is a real measurement of both sides (printed values are rounded)
        fab, limit, naive, to_limit, to_naive = (float(x) for x in r[3:8])
        assert fab > 0 and limit > 0 and naive > 0
        assert abs(to_limit - fab / limit) <= 0.1 * fab / limit
        assert abs(to_naive - fab / naive) <= 0.1 * fab / naive
    rss = re.findall(r"^sample\s+(uwsgi|gunicorn)\s+1\s+25ms\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", res.stdout, re.M)
    assert {r[0] for r in rss} == {"uwsgi", "gunicorn"} and len(rss) == 2
    # (after a code-only redeploy the first deploy's master is kept warm beside the live one: measured too)
    assert all(float(fab_mb) > 0 and float(warm_mb) > 0 and float(naive_mb) > 0
               for _, fab_mb, warm_mb, naive_mb in rss)
    assert "does not serve" not in res.stdout  # the naive script's reload reached the new release
    side = re.findall(rf"^  sample\s+gunicorn\s+({ALT})\s+1 hosts\s+(\d+)ms\s+([\d.]+)s vs "
                      r"([\d.]+)s\s+= ([\d.]+)$", res.stdout, re.M)
    assert {(m, d) for m, d, *_ in side} == {(m, "25") for m in MEASURES}
