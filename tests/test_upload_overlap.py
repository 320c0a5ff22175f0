"""The release archive travels during setup (issue 16): the setup phase asks for it with a marker once the
lock is ours and the release is not already live, receives it while its checks run, and the code phase then
reads only the wheelhouse (when one is built) from its own stdin. Run with sh here (the e2e deploys prove it
over SSH)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

from fabdeploy import pipeline
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.target import Target
from fabdeploy.local.source import bundle
from fabdeploy.remote.markers import MARK
from fabdeploy.remote.script import Phase, Script
from fabdeploy.steps import code, lock, setup
from fabdeploy.steps.lock import LockOwner
from test_phases import REL_ID, _sample_bundle, _sample_cfg, _setup_dirs, make_cfg, make_rel, out, sh


def test_setup_asks_for_the_archive_after_the_lock_and_the_live_check_and_extracts_it_last():
    cfg = make_cfg("/srv/shop")
    state = pipeline.RunState(cfg, Target.named(cfg, "h"), LockOwner.new("deploy", "me@x"), REL_ID,
                              fingerprint="f" * 20)
    lines = pipeline.script("app", "setup", state).phases[0].lines
    text = "\n".join(lines)
    send = lines.index(f'echo "{MARK} send "')
    T = f"/srv/shop/tmp/{REL_ID}"
    asked = text.index(f'echo "{MARK} send "')
    assert text.index("mkdir /srv/shop/.fabdeploy-lock") < text.index("already live") < asked
    assert lines[send - 2:send] == [f"rm -rf {T}", f"mkdir -p {T}"]
    extract = next(i for i, ln in enumerate(lines) if ln.startswith(f"tar -xzf - -C {T} || "))
    # every check runs between asking and extracting: the archive arrives meanwhile
    assert extract > send + 10 and all("fact " not in ln for ln in lines[send:extract])
    # a load balancer's setup receives nothing; setup on its own neither
    assert "send" not in "\n".join(setup.setup(cfg, lock.acquire(cfg, state.owner), app=False).lines)
    assert f'echo "{MARK} send "' not in setup.setup(cfg).lines


def test_the_code_phase_uses_the_archive_setup_received_and_reads_no_stdin(tmp_path):
    deploy_to = tmp_path / "app"
    cfg = _sample_cfg(deploy_to)
    lay = _setup_dirs(deploy_to)
    first, last = setup.receive_lines(lay.staging(REL_ID))
    received = Script([Phase("setup", [*first, "echo CHECKS", *last])])
    proc = sh(received, tmp_path, stdin=_sample_bundle())
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"{MARK} send" in out(proc) and (Path(lay.staging(REL_ID)) / "release" / "manage.py").is_file()
    # the code phase's stdin is empty (fab sends nothing without a wheelhouse): it must not read it
    proc = sh(Script([code.code(cfg, make_rel())]), tmp_path, stdin=b"")
    assert proc.returncode == 0, proc.stderr.decode()
    assert (Path(lay.release(REL_ID)) / "manage.py").is_file()


def test_with_a_wheelhouse_the_code_phase_reads_only_the_wheels_from_stdin(tmp_path):
    deploy_to = tmp_path / "app"
    cfg = _sample_cfg(deploy_to)
    lay = _setup_dirs(deploy_to)
    first, last = setup.receive_lines(lay.staging(REL_ID))
    assert sh(Script([Phase("setup", [*first, *last])]), tmp_path, stdin=_sample_bundle()).returncode == 0
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    wheels_only = bundle(None, [wheel])
    with tarfile.open(fileobj=io.BytesIO(wheels_only)) as tar:
        assert tar.getnames() == ["wheels", f"wheels/{wheel.name}"]
    proc = sh(Script([code.code(cfg, make_rel(has_wheels=True))]), tmp_path, stdin=wheels_only)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (Path(lay.staging(REL_ID)) / "wheels" / wheel.name).read_bytes() == b"not really a wheel"
    assert (Path(lay.release(REL_ID)) / "manage.py").is_file()


def test_a_truncated_upload_fails_setup_with_one_line(tmp_path):
    lay = Layout(str(tmp_path / "app"))
    Path(lay.tmp).mkdir(parents=True)
    first, last = setup.receive_lines(lay.staging(REL_ID))
    proc = sh(Script([Phase("setup", [*first, *last])]), tmp_path, stdin=_sample_bundle()[:200])
    assert proc.returncode == 1
    assert f"{MARK} error the upload of the release archive failed (tar -xzf)" in proc.stderr.decode()
