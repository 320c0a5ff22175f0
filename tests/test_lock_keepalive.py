"""The lock's heartbeat, its owner files on a full disk and a failing audit write, run for real with /bin/sh
in temp dirs (issue 11, "also fix"). The end-to-end versions are in test_lock_heartbeat_e2e.py."""
from __future__ import annotations

import os
import time

from fabdeploy.steps import lock
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from test_ops_builders import ALICE, BOB, LockLab
from test_phases import err, out, sh


def mtime_age(path) -> float:
    return time.time() - os.stat(path).st_mtime


def test_a_kept_alive_phase_refreshes_the_lock_at_its_start(tmp_path):
    lab = LockLab(tmp_path, ttl=600)
    assert lab.acquire(ALICE).returncode == 0
    lab.age(3600)
    proc = lab.run(lock.kept_alive(Phase("code", ["true"]), lab.cfg, ALICE))
    assert proc.returncode == 0, err(proc)
    assert mtime_age(lab.dir) < 600


def test_the_background_loop_refreshes_the_lock_while_the_invocation_runs(tmp_path):
    lab = LockLab(tmp_path, ttl=10)  # refreshed every 10 // 4 = 2 s
    assert lab.acquire(ALICE).returncode == 0
    aged = f"touch -d @$(( $(date +%s) - 3600 )) {lab.dir}"
    proc = lab.run(lock.kept_alive(Phase("venv", [aged, "sleep 5"]), lab.cfg, ALICE))
    assert proc.returncode == 0, err(proc)
    assert mtime_age(lab.dir) < 600  # aged inside the phase, refreshed by the loop during the sleep


def test_the_loop_never_refreshes_someone_elses_lock(tmp_path):
    lab = LockLab(tmp_path, ttl=10)
    assert lab.acquire(BOB).returncode == 0
    lab.age(3600)
    proc = lab.run(lock.kept_alive(Phase("venv", ["sleep 3"]), lab.cfg, ALICE))
    assert proc.returncode == 0, err(proc)
    assert mtime_age(lab.dir) > 3000
    assert lab.token() == BOB.token


def test_the_loop_never_creates_a_released_lock(tmp_path):
    lab = LockLab(tmp_path, ttl=10)
    assert lab.acquire(ALICE).returncode == 0
    proc = lab.run(lock.kept_alive(Phase("venv", ["sleep 1"]), lab.cfg, ALICE), lock.finish(lab.cfg, ALICE, {}),
                   Phase("after", ["sleep 3"]))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()


def test_acquire_removes_a_lock_whose_owner_files_cannot_be_written(tmp_path):
    lab = LockLab(tmp_path)
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "date").write_text("#!/bin/sh\necho 'date: write error: No space left on device' >&2\nexit 1\n")
    (fakebin / "date").chmod(0o755)
    proc = sh(Script([Phase("setup", lock.acquire(lab.cfg, ALICE))]), tmp_path,
              env={"PATH": f"{fakebin}:{os.environ['PATH']}"})
    assert proc.returncode == 1
    errors = [ln for ln in err(proc).splitlines() if ln.startswith(f"{MARK} error ")]
    assert errors == [f"{MARK} error cannot write the deploy lock files in {lab.dir} (disk full?): "
                      "date: write error: No space left on device"]
    assert not lab.dir.exists()


def test_finish_warns_when_the_audit_line_cannot_be_written_and_still_releases(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    lab.audit.parent.mkdir(parents=True)
    lab.audit.mkdir()  # a directory where the audit log should be
    proc = lab.run(lock.finish(lab.cfg, ALICE, {"result": "ok"}))
    assert proc.returncode == 0, err(proc)
    assert not lab.dir.exists()
    warns = [ln for ln in out(proc).splitlines() if ln.startswith(f"{MARK} warn ")]
    assert len(warns) == 1 and warns[0].startswith(f"{MARK} warn could not append the audit line to {lab.audit}: ")
    assert "Is a directory" in warns[0]
