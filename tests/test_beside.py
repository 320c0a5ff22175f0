"""The builders of start beside, swap, keep warm (appserver/beside.py): where they apply, the order of their
steps, what keep_warm changes, what fab stop adds. (Run for real: tests/test_beside_e2e.py.)"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabdeploy import appserver
from fabdeploy.appserver import beside
from fabdeploy.errors import ConfigError
from fabdeploy.steps.activate import reload
from test_phases import make_cfg

FLEET = {"roles": {"app": [{"host": "deploy@10.0.0.1"}], "lb": ["deploy@10.0.0.9"]}}


@pytest.mark.parametrize("sections, applies", [
    ({}, True),
    ({"app": {"server": "gunicorn"}}, True),
    ({"app": {"server": "gunicorn", "asgi": "shop.asgi:application"}}, True),  # (uvicorn's worker)
    ({"app": {"manager": "supervisor"}}, False),
    ({"app": {"manager": "emperor"}}, False),
    ({"app": {"server": "uvicorn", "asgi": "shop.asgi:application"}}, False),
    (FLEET, False),  # app hosts listen on address:port
    ({"paths": {"deploy_to": "/srv/" + "x" * 60}}, False),  # a slot's socket path would not fit in sun_path
])
def test_it_applies_to_uwsgi_and_gunicorn_on_a_unix_socket_without_a_process_manager(sections, applies):
    cfg = make_cfg(**sections)
    assert beside.applies(cfg, appserver.of(cfg)) is applies
    text = "\n".join(reload(cfg, "'/srv/shop/releases/X'", "'/v'", "X"))
    assert (beside.q(beside.SWAP_SH) in text) is applies


@pytest.mark.parametrize("server", ["uwsgi", "gunicorn"])
def test_the_swap_is_one_rename_after_the_new_master_is_ready_and_before_anything_is_stopped(server):
    cfg = make_cfg(app={"server": server})
    lines = [ln.strip() for ln in reload(cfg, "'/srv/shop/releases/X'", "'/v'", "X")]
    ready = lines.index('if [ -z "$ready" ]; then')
    swap = next(i for i, ln in enumerate(lines) if ln.startswith("gone=$(${ASAPP-} sh -c "))
    assert ready < swap
    # (in SWAP_SH, run as the app user) the rename, then the records, then the other masters stopped
    body = beside.SWAP_SH.splitlines()
    link, rename = body.index('ln -f "$sock.$s" "$sock.swap"'), body.index('mv -Tf "$sock.swap" "$sock"')
    pointer = body.index('(umask 027; printf "%s\\n" "$pid" > "$pidf.tmp"; mv -f "$pidf.tmp" "$pidf")')
    retire = body.index('    kill -TERM "$m" 2>/dev/null || true')
    assert link == rename - 1 < pointer < retire
    # the new master runs in its slot: its own socket and pidfile, the release's virtualenv
    sock = f"/srv/shop/shared/run/{server}.sock"
    start = next(ln for ln in lines if "'/v'/bin/" in ln)
    if server == "uwsgi":
        assert start.startswith("${ASAPP-} '/v'/bin/uwsgi --ini /srv/shop/shared/config/uwsgi.ini.\"$s\"")
        assert "--hook-master-start 'unix_signal:15 gracefully_kill_them_all'" in start  # TERM: graceful
        assert f'sed -i -e "s|^socket = .*|socket = {sock}.$s|"' in "\n".join(lines)
    else:
        assert f'--bind unix:{sock}."$s" --pid /srv/shop/shared/run/gunicorn.pid."$s")' in start
    # a master that never got ready is stopped and its slot removed; the live one was never touched
    fail = lines[ready:lines.index("fi", ready)]
    assert any(ln.startswith('{ [ -z "$pid" ] || ${ASAPP-} kill -KILL "$pid" $(children "$pid"); ') for ln in fail)
    assert any("(the live master $oldm still serves, untouched)" in ln for ln in fail)


@pytest.mark.parametrize("shell_name", ["dash", "bash"])
def test_is_slot_is_the_slot_pattern(shell_name):
    words = ["20261127T002703Z-2da6c8c", "20261127T002703Z-2da6c8c.b", "20261127T002703Z-2da6c8c.b.b", "adopted",
             "20261127T002703Z-2da6c8c.c", ".b", "", "20261127T002703Z-.b"]
    probe = "\n".join([beside.SLOT_FNS] + [f"is_slot {beside.q(w)} && echo yes || echo no" for w in words])
    got = subprocess.run([shell_name, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert got == ["yes" if re.fullmatch(beside.SLOT_ERE, w) else "no" for w in words] == \
        ["yes", "yes", "no", "no", "no", "no", "no", "no"]


def test_the_app_users_part_of_a_switch_is_one_sudo_to_read_and_one_to_swap():
    """The exact lines: one STATE_SH call reads the live slot and the masters, one SWAP_SH call swaps,
    records and retires (they ran as a dozen `sudo -n -u` calls); the deploy user removes the config copies."""
    cfg = make_cfg(app={"user": "shop"})
    sl = beside.Slots(cfg, appserver.of(cfg))
    run, ere = "/srv/shop/shared/run", beside.q(beside.SLOT_ERE)
    assert beside.state_lines(sl, "uwsgi") == [
        f"st=$(${{ASAPP-}} sh -c {beside.q(beside.STATE_SH)} sh {run}/uwsgi.sock.live {run}/uwsgi.pid \"$rel\" "
        f"uwsgi {ere} || true)",
        'words() { live=${1:--} livem=${2:--} wa=${3:--} ra=${4:--} wb=${5:--} rb=${6:--}; }; words $st',
        '[ "$live" != - ] || live=',
        'case "$livem" in "" | *[!0-9]*) livem=;; esac',
        'case "$wa" in "" | *[!0-9]*) wa=;; esac',
        'case "$ra" in "" | *[!0-9]*) ra=;; esac',
        'case "$wb" in "" | *[!0-9]*) wb=;; esac',
        'case "$rb" in "" | *[!0-9]*) rb=;; esac',
    ]
    assert beside.swap_retire_lines(cfg, appserver.of(cfg), sl, "uwsgi") == [
        f'gone=$(${{ASAPP-}} sh -c {beside.q(beside.SWAP_SH)} sh "$s" "$pid" "$live" "$rel" true uwsgi '
        f"{run}/uwsgi.sock {run}/uwsgi.pid {run}/uwsgi.sock.live {ere})",
        'for x in $gone; do if is_slot "$x" || [ "$x" = adopted ]; then '
        'rm -f /srv/shop/shared/config/uwsgi.ini."$x"; fi; done',
    ]
    # a rollback to the warm master: after the state read, the only app-user command is the swap
    lines = [ln.strip() for ln in reload(cfg, "'/srv/shop/releases/X'", "'/v'", "X")]
    warm = lines.index('if [ -n "$pid" ]; then', lines.index(beside.state_lines(sl, "uwsgi")[0]))
    assert lines[warm + 1] == 'n=$(n_children "$pid"); action="swapped to its warm master"'
    assert lines[warm + 2] == "else"  # (the branch that starts a new master and waits for it)
    after = lines[lines.index('action="${oldm:+started$e beside $oldm, swapped}"; action="${action:-started$e}"') + 1:]
    assert [ln for ln in after if "${ASAPP-}" in ln] == [beside.swap_retire_lines(cfg, appserver.of(cfg), sl, "uwsgi")[0]]


def test_keep_warm_keeps_the_replaced_master_unless_switched_off():
    warm = "\n".join(reload(make_cfg(), "'/r/X'", "'/v'", "X"))
    cold = "\n".join(reload(make_cfg(app={"keep_warm": False}), "'/r/X'", "'/v'", "X"))
    assert 'sh "$s" "$pid" "$live" "$rel" true uwsgi' in warm and 'sh "$s" "$pid" "$live" "$rel" false uwsgi' in cold
    # (SWAP_SH) the replaced master is kept when keep_warm and its release differs, or adopted; when stopped,
    # it first serves what nginx queued on it (its listen queue empty)
    assert '{ [ -e "$sock.adopted.$x" ] || { $keep && [ "${x%.b}" != "$rel" ]; }; }' in beside.SWAP_SH
    assert "ss -xlH" in beside.SWAP_SH


def sh_app(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script, "sh", *map(str, args)], capture_output=True, text=True, timeout=30)


def wait_for(path: Path, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_the_swap_keeps_at_most_one_warm_master(tmp_path):
    """SWAP_SH run by sh over stand-in slots: the socket path becomes the new slot's (one rename), the
    records name it, the replaced slot is kept warm, every other live slot is signalled, dead slots' files are
    removed; it prints the slots gone."""
    run = tmp_path / "run"
    run.mkdir()
    slots = {"20260101T000000Z-aaaaaaa": "live-before", "20260102T000000Z-bbbbbbb": "warm-before",
             "20260103T000000Z-ccccccc": "new", "20260104T000000Z-ddddddd": "dead"}
    procs = {}
    # (stand-in masters: a TERM is noted in <run>/<pid>.term and, like a uWSGI master finishing its
    # requests, they stay up until killed)
    stand_in = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: "
                "open(os.path.join(sys.argv[1], str(os.getpid()) + '.term'), 'w').close()); "
                "open(os.path.join(sys.argv[1], str(os.getpid()) + '.up'), 'w').close(); time.sleep(60)")
    for slot, role in slots.items():
        if role != "dead":
            procs[slot] = subprocess.Popen([sys.executable, "-c", stand_in, str(run)])
        (run / f"uwsgi.pid.{slot}").write_text(f"{procs[slot].pid if slot in procs else 999999}\n")
        (run / f"uwsgi.sock.{slot}").write_text(slot)
    (run / "uwsgi.sock").write_text("x")
    assert all(wait_for(run / f"{p.pid}.up") for p in procs.values())  # (their TERM handler set)
    new, live = "20260103T000000Z-ccccccc", "20260101T000000Z-aaaaaaa"
    try:
        name = Path(f"/proc/{procs[new].pid}/comm").read_text().strip()
        out = sh_app(beside.SWAP_SH, new, procs[new].pid, live, new, "true", name, run / "uwsgi.sock",
                     run / "uwsgi.pid", run / "uwsgi.sock.live", beside.SLOT_ERE)
        assert out.returncode == 0, out.stderr
        assert sorted(out.stdout.split()) == ["20260102T000000Z-bbbbbbb", "20260104T000000Z-ddddddd"]
        assert (run / "uwsgi.sock").read_text() == new and (run / "uwsgi.sock").stat().st_nlink == 2
        assert (run / "uwsgi.pid").read_text() == f"{procs[new].pid}\n" and (run / "uwsgi.sock.live").read_text() == new + "\n"
        retired = procs["20260102T000000Z-bbbbbbb"]
        assert wait_for(run / f"{retired.pid}.term")  # TERM
        # (marked retiring with its pid: the state read never offers it as a warm master)
        assert (run / "uwsgi.sock.retiring.20260102T000000Z-bbbbbbb").read_text() == f"{retired.pid}\n"
        assert procs[live].poll() is None and procs[new].poll() is None
        assert not (run / "uwsgi.pid.20260104T000000Z-ddddddd").exists()
        # the next swap (a rollback) while it still finishes its requests: no second TERM; once it has
        # exited, its files and mark go
        (run / f"{retired.pid}.term").unlink()
        args = (live, procs[live].pid, new, live, "true", name, run / "uwsgi.sock", run / "uwsgi.pid",
                run / "uwsgi.sock.live", beside.SLOT_ERE)
        again = sh_app(beside.SWAP_SH, *args)
        assert again.returncode == 0 and again.stdout.split() == ["20260102T000000Z-bbbbbbb"], again
        assert not (run / f"{retired.pid}.term").exists() and retired.poll() is None
        retired.kill()
        retired.wait()
        again = sh_app(beside.SWAP_SH, new, procs[new].pid, live, new, *args[4:])
        assert again.returncode == 0 and again.stdout.split() == ["20260102T000000Z-bbbbbbb"], again
        assert not list(run.glob("uwsgi.*.20260102T000000Z-bbbbbbb")) and procs[new].poll() is None
        # a failing step stops it with its own message: nothing after it ran
        (run / "uwsgi.sock.20260105T000000Z-eeeeeee").mkdir()
        bad = sh_app(beside.SWAP_SH, "20260105T000000Z-eeeeeee", 1, new, "x", "true", name, run / "uwsgi.sock",
                     run / "uwsgi.pid", run / "uwsgi.sock.live", beside.SLOT_ERE)
        assert bad.returncode != 0 and "ln" in bad.stderr and bad.stdout == ""
        assert (run / "uwsgi.sock.live").read_text() == new + "\n"
    finally:
        for p in procs.values():
            p.kill()


def test_the_state_read_names_the_live_slot_and_the_releases_masters(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    me = subprocess.Popen(["sleep", "60"])
    try:
        (run / "uwsgi.sock.live").write_text("20260101T000000Z-aaaaaaa\n")
        (run / "uwsgi.pid.20260101T000000Z-aaaaaaa").write_text(f"{me.pid}\n")
        (run / "uwsgi.pid.20260102T000000Z-bbbbbbb.b").write_text(f"{me.pid}\n")
        args = (run / "uwsgi.sock.live", run / "uwsgi.pid", "20260102T000000Z-bbbbbbb", "sleep", beside.SLOT_ERE)
        assert sh_app(beside.STATE_SH, *args).stdout == f"20260101T000000Z-aaaaaaa {me.pid} - - {me.pid} -\n"
        # a master a swap stopped (marked retiring with its pid) is no warm master: the last word names it
        (run / "uwsgi.sock.retiring.20260102T000000Z-bbbbbbb.b").write_text(f"{me.pid}\n")
        assert sh_app(beside.STATE_SH, *args).stdout == f"20260101T000000Z-aaaaaaa {me.pid} - - - {me.pid}\n"
        (run / "uwsgi.sock.retiring.20260102T000000Z-bbbbbbb.b").write_text("1\n")  # (another pid's, stale)
        assert sh_app(beside.STATE_SH, *args).stdout == f"20260101T000000Z-aaaaaaa {me.pid} - - {me.pid} -\n"
        (run / "uwsgi.sock.live").write_text("../etc\n")  # not a slot's name
        assert sh_app(beside.STATE_SH, *args).stdout == f"- - - - {me.pid} -\n"
    finally:
        me.kill()


def test_fab_stop_stops_the_slots_too_only_where_they_exist():
    stop = "\n".join(appserver.of(make_cfg()).stop_lines(make_cfg()))
    assert f"sh -c {beside.q(beside.RM_RECORD_SH)} sh /srv/shop/shared/run/uwsgi.sock.live /srv/shop/shared/run/uwsgi.sock" in stop
    cfg = make_cfg(app={"manager": "supervisor"})
    assert "uwsgi.sock.live" not in "\n".join(appserver.of(cfg).stop_lines(cfg))


def test_keep_warm_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"app\.keep_warm"):
        make_cfg(app={"keep_warm": "yes"})


def test_the_fast_path_swaps_in_one_call_only_when_the_common_case_holds(tmp_path):
    """fast_sh run by sh over stand-in masters (bash, each with one child in its release directory): the
    master started early with its workers in the release and its socket there is swapped to ("swapped <slot>
    <pid> <workers> early <live master>", then SWAP_SH's lines); a warm master of the release likewise
    ("warm"); an early master not ready yet is waited for (its socket appears 0.3 s later: swapped), and is
    "late" once the turns are spent; it prints nothing (the usual path decides) when that master is dead or
    retiring, when the live slot is an adopted one, or when the live master already runs the release."""
    import socket as _socket
    import tempfile
    short = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))  # (a unix socket's path: at most 107 bytes)
    run, rel_dir, live_dir = short / "run", tmp_path / "releases" / "R", tmp_path / "releases" / "L"
    for d in (run, rel_dir, live_dir):
        d.mkdir(parents=True)
    live, rel = "20260101T000000Z-aaaaaaa", "20260102T000000Z-bbbbbbb"
    procs = [subprocess.Popen(["bash", "-c", 'cd "$1" && sleep 60 & wait', "sh", str(d)]) for d in (live_dir, rel_dir)]
    try:
        old, new = procs
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(subprocess.run(
                ["pgrep", "-P", str(p.pid)], capture_output=True).stdout.strip() for p in procs):
            time.sleep(0.02)
        (run / "uwsgi.sock.live").write_text(live + "\n")
        (run / "uwsgi.pid").write_text(f"{old.pid}\n")
        (run / f"uwsgi.pid.{live}").write_text(f"{old.pid}\n")
        (run / f"uwsgi.pid.{rel}").write_text(f"{new.pid}\n")
        (run / f"uwsgi.sock.{live}").write_text("live")
        (run / "uwsgi.sock").write_text("live")

        def fast(early: str = rel, dir_: Path = rel_dir, want: int = 1, fresh: str = "", turns: int = 0):
            return sh_app(beside.fast_sh(appserver.of(make_cfg())), run / "uwsgi.sock.live", run / "uwsgi.pid", rel,
                          "bash", beside.SLOT_ERE, early, fresh, "true", run / "uwsgi.sock", dir_, want, beside.SWAP_SH,
                          turns)

        assert fast().stdout == "late\n"  # (no socket yet: not ready, and no turn left to wait)
        sock = _socket.socket(_socket.AF_UNIX)
        sock.bind(str(run / f"uwsgi.sock.{rel}"))
        # (too few workers; elsewhere: waited 3 turns, 0.15 s)
        assert fast(want=2, turns=3).stdout == "late\n" and fast(dir_=live_dir).stdout == "late\n"
        (run / f"uwsgi.pid.{rel}").write_text("999999\n")  # (that master died: the usual path at once)
        t0 = time.monotonic()
        assert fast(turns=1000).stdout == "" and time.monotonic() - t0 < 5
        (run / f"uwsgi.pid.{rel}").write_text(f"{new.pid}\n")
        (run / f"uwsgi.sock.retiring.{rel}").write_text(f"{new.pid}\n")
        assert fast().stdout == ""
        (run / f"uwsgi.sock.retiring.{rel}").unlink()
        (run / "uwsgi.sock.live").write_text("adopted\n")
        assert fast().stdout == ""
        (run / "uwsgi.sock.live").write_text(live + "\n")
        # not ready yet (its socket comes 0.3 s later, as a master's after its warm-up GET and fork): waited for
        sock.close()
        (run / f"uwsgi.sock.{rel}").unlink()
        import threading

        def bind_later():
            time.sleep(0.3)
            sock2.bind(str(run / f"uwsgi.sock.{rel}"))
        sock = sock2 = _socket.socket(_socket.AF_UNIX)
        threading.Thread(target=bind_later).start()
        res = fast(turns=200)
        assert res.returncode == 0 and res.stdout.splitlines()[0] == f"swapped {rel} {new.pid} 1 early {old.pid}", res
        assert (run / "uwsgi.sock.live").read_text() == rel + "\n" and (run / "uwsgi.pid").read_text() == f"{new.pid}\n"
        assert (run / "uwsgi.sock").stat().st_ino == (run / f"uwsgi.sock.{rel}").stat().st_ino
        assert old.poll() is None  # (kept warm: keep, another release)
        # the live master runs the release already: nothing here, unless fresh (fab reload: a new master)
        assert fast(early="").stdout == "" and fast(early="", fresh="1").stdout == ""
        # back to the warm master of the release before (a rollback): swapped, "warm"
        back = sh_app(beside.fast_sh(appserver.of(make_cfg())), run / "uwsgi.sock.live", run / "uwsgi.pid", live,
                      "bash", beside.SLOT_ERE, "", "", "true", run / "uwsgi.sock", live_dir, 1, beside.SWAP_SH)
        assert back.stdout.splitlines()[0] == f"swapped {live} {old.pid} 1 warm {new.pid}", back
        sock.close()
    finally:
        for p in procs:
            subprocess.run(["pkill", "-P", str(p.pid)])
            p.kill()
        import shutil
        shutil.rmtree(short, ignore_errors=True)
