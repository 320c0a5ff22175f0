"""Detached scripts (publish survives losing the client), the on-failure audit/unlock, settle, the lock wait cap
and SIGTERM/SIGHUP as Ctrl-C: the builders run for real with /bin/sh in temp dirs. Nothing here uses SSH."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fabdeploy.remote import detach

from fabdeploy.steps import lock
from fabdeploy.hosts.fleet import deferred_interrupt, signals_as_interrupt
from fabdeploy.remote.markers import MARK, fail_expanded
from fabdeploy.remote.runner import RunResult
from fabdeploy.remote.script import Phase, Script
from test_ops_builders import ALICE, BOB, LockLab
from test_phases import REL_ID, err, make_cfg, sh


def files(prefix: Path) -> set[str]:
    return {p.name for p in prefix.parent.iterdir() if p.name.startswith(prefix.name)}


def test_a_detached_script_streams_its_markers_and_exit_status_through_the_channel(tmp_path):
    prefix = tmp_path / "r1.publish"
    script = Script([Phase("one", ["echo hello", f"echo '{MARK} note hi'"]),
                     Phase("two", ["echo oops >&2", fail_expanded("it broke", 3)])], detach=str(prefix))
    proc = sh(script, tmp_path)
    assert proc.returncode == 3, err(proc)
    stdout = [ln for ln in proc.stdout.decode().splitlines() if not ln.startswith(f"{MARK} pgid")]
    assert stdout == [f"{MARK} begin one", "hello", f"{MARK} note hi", f"{MARK} end one 0",
                      f"{MARK} begin two", f"{MARK} end two 3"]
    assert err(proc).splitlines() == [f"{MARK} begin one", f"{MARK} end one 0", f"{MARK} begin two", "oops",
                                      f"{MARK} error it broke", f"{MARK} end two 3"]
    # the output files are gone once followed to the end; the status stays for a cleanup that lost its channel
    assert files(prefix) == {"r1.publish.status", "r1.publish.pid"} and (tmp_path / "r1.publish.status").read_text() == "3\n"
    # the next detached run in the directory removes leftovers
    assert sh(Script([Phase("x", ["true"])], detach=str(tmp_path / "r2.publish")), tmp_path).returncode == 0
    assert files(tmp_path / "r") == {"r2.publish.status", "r2.publish.pid"}


def test_a_detached_script_over_the_128_kib_argument_limit_runs(tmp_path):
    """SSH hands the command to the remote shell as one argument (Linux: at most 128 KiB): the script goes
    packed, is unpacked into <prefix>.sh and run from there (a publish with every manager's switch lines is
    that big)."""
    prefix = tmp_path / "big.publish"
    filler = [f": line {i} of a big publish script, padding it beyond MAX_ARG_STRLEN" for i in range(3000)]
    script = Script([Phase("big", [*filler, "echo done"])], detach=str(prefix))
    assert len(script.text()) > 131072 > len(script.command())
    proc = subprocess.run(["bash", "-c", script.command()], cwd=tmp_path, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout.decode().splitlines()
    assert files(prefix) == {"big.publish.status", "big.publish.pid"}  # (the unpacked script removed)


def test_a_detached_script_finishes_when_the_channel_side_is_killed(tmp_path):
    prefix = tmp_path / "r1.publish"
    done = tmp_path / "done"
    script = Script([Phase("slow", ["sleep 1", "echo progress", "sleep 1", f"echo finished > {done}"])],
                    detach=str(prefix))
    proc = subprocess.Popen(script.command(), shell=True, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline().startswith(f"{MARK} pgid".encode())
    os.killpg(proc.pid, signal.SIGKILL)  # the wrapper, its tails, everything of the "SSH session"
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 20
    while not (prefix.parent / "r1.publish.status").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done.read_text() == "finished\n"
    assert (prefix.parent / "r1.publish.status").read_text() == "0\n"
    assert f"{MARK} end slow 0" in (prefix.parent / "r1.publish.out").read_text()  # left for inspection


def test_on_failure_audits_the_failed_phase_and_its_error_then_unlocks(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(ALICE).returncode == 0
    message = 'health check failed: GET / -> 500 \\"x\\" back\\\\slash'  # (double-quoted by fail_expanded)
    script = Script([Phase("restart", ["true"]), Phase("health", [fail_expanded(message)]),
                     Phase("cleanup", ["echo never"])],
                    on_failure=lock.failed_here(lab.cfg, ALICE, {"result": "failed", "release": REL_ID}),
                    detach=str(tmp_path / "r.publish"))
    proc = sh(script, tmp_path)
    assert proc.returncode == 1 and b"never" not in proc.stdout
    assert not lab.dir.exists()
    (line,) = [json.loads(ln) for ln in lab.audit.read_text().splitlines()]
    assert (line["result"], line["release"], line["action"]) == ("failed", REL_ID, "deploy")
    assert line["error"] == 'health failed: health check failed: GET / -> 500 "x" back\\slash'


def test_on_failure_leaves_someone_elses_lock_and_writes_nothing(tmp_path):
    lab = LockLab(tmp_path)
    assert lab.acquire(BOB).returncode == 0
    script = Script([Phase("health", ["exit 1"])],
                    on_failure=lock.failed_here(lab.cfg, ALICE, {"result": "failed", "release": REL_ID}))
    assert sh(script, tmp_path).returncode == 1
    assert lab.token() == BOB.token and not lab.audit.exists()


def test_a_script_without_on_failure_is_unchanged():
    assert "fabdeploy_on_failure" not in Script([Phase("a", ["true"])]).text()


@pytest.mark.parametrize("present,expected", [
    ({}, None),                                        # no detached run was started
    ({"out": "", "status": "0\n"}, "0"),               # it ended while we reconnected
    ({"status": "4\n"}, "4"),                          # followed to its end, then the channel broke
    ({"out": "", "pid": "LIVE"}, "running"),           # still going after `seconds`
    ({"out": "", "pid": "DEAD"}, "unknown"),           # killed before it could write a status: no waiting
])
def test_settle_reports_the_detached_status(tmp_path, present, expected):
    prefix = tmp_path / "r.publish"
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        for suffix, text in present.items():
            Path(f"{prefix}.{suffix}").write_text(text.replace("LIVE", str(live.pid)).replace("DEAD", str(dead.pid)))
        proc = sh(Script([Phase("settle", detach.settle(str(prefix), 1 if expected != "unknown" else 600))]),
                  tmp_path, timeout=30)
        assert proc.returncode == 0, err(proc)
        assert RunResult(0, {}, proc.stdout.decode(), "").facts.get(detach.STATUS_FACT) == expected
    finally:
        live.kill()
        live.wait()


def test_settle_waits_for_a_run_left_behind(tmp_path):
    prefix = tmp_path / "r.publish"
    Path(f"{prefix}.out").write_text("")
    later = subprocess.Popen(f"sleep 1; echo 0 > {prefix}.status", shell=True)
    Path(f"{prefix}.pid").write_text(f"{later.pid}\n")
    proc = sh(Script([Phase("settle", detach.settle(str(prefix), 30))]), tmp_path)
    later.wait(timeout=10)
    assert RunResult(0, {}, proc.stdout.decode(), "").facts[detach.STATUS_FACT] == "0"


def test_a_lock_wait_longer_than_lock_ttl_is_capped_with_one_line():
    cfg = make_cfg(lock={"ttl": 60})
    warnings: list[str] = []
    assert lock.capped_wait(cfg, 100000, warnings.append) == 60
    assert warnings == ["a lock wait of 100000s is longer than lock.ttl = 60s: waiting 60s at most"]
    assert lock.capped_wait(cfg, 60, warnings.append) == 60 and lock.capped_wait(cfg, 0, warnings.append) == 0
    assert len(warnings) == 1


def test_a_sigint_inherited_as_ignored_is_ctrl_c_inside_and_ignored_again_after():
    # (`fab deploy &` in a script: sh ignores SIGINT for it and Python installs no handler)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_as_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # interrupted long before
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_act_like_ctrl_c(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt):
        with signals_as_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # interrupted long before
    assert signal.getsignal(sig) == before
    # held like Ctrl-C while a switch runs, raised after it
    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_as_interrupt():
            with deferred_interrupt():
                os.kill(os.getpid(), sig)
                time.sleep(0.2)
                done.append(True)
    assert done == [True]
