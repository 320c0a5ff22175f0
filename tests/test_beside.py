"""The builders of start beside, swap, keep warm (appserver/beside.py): where they apply, the order of their
steps, what keep_warm changes, what fab stop adds. (Run for real: tests/test_beside_e2e.py.)"""
from __future__ import annotations

import subprocess

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
    assert ("mv -Tf /srv/shop/shared/run/" in text) is applies


@pytest.mark.parametrize("server", ["uwsgi", "gunicorn"])
def test_the_swap_is_one_rename_after_the_new_master_is_ready_and_before_anything_is_stopped(server):
    cfg = make_cfg(app={"server": server})
    lines = [ln.strip() for ln in reload(cfg, "'/srv/shop/releases/X'", "'/v'", "X")]
    sock = f"/srv/shop/shared/run/{server}.sock"
    ready = lines.index('if [ -z "$ready" ]; then')
    link = lines.index(f'${{ASAPP-}} ln -f {sock}."$s" {sock}.swap')
    rename = lines.index(f"${{ASAPP-}} mv -Tf {sock}.swap {sock}")
    pointer = lines.index(f'${{ASAPP-}} sh -c {beside.q(beside.WRITE_SH)} sh "$pid" /srv/shop/shared/run/{server}.pid')
    retire = lines.index('${ASAPP-} kill -TERM "$m" 2>/dev/null || true')
    assert ready < link == rename - 1 < pointer < retire
    # the new master runs in its slot: its own socket and pidfile, the release's virtualenv
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


def test_keep_warm_keeps_the_replaced_master_unless_switched_off():
    warm = "\n".join(reload(make_cfg(), "'/r/X'", "'/v'", "X"))
    cold = "\n".join(reload(make_cfg(app={"keep_warm": False}), "'/r/X'", "'/v'", "X"))
    # (shared/run is the app user's: the deploy user looks at its files as it)
    keep = "{ ${ASAPP-} test -e /srv/shop/shared/run/uwsgi.sock.adopted.\"$x\" || { %s && [ \"${x%%.b}\" != \"$rel\" ]; }; }"
    assert keep % "true" in warm and keep % "false" in cold
    # the replaced master, when stopped, first serves what nginx queued on it (its listen queue empty)
    assert "ss -xlH" in cold


def test_retire_keeps_at_most_one_warm_master(tmp_path):
    """The retire loop's choice, run by sh over stand-in slots: the replaced slot is kept warm, every other
    live slot is signalled, dead slots' files are removed."""
    cfg = make_cfg(tmp_path / "d")
    app = appserver.of(cfg)
    sl = beside.Slots(cfg, app)
    run = tmp_path / "d" / "shared" / "run"
    run.mkdir(parents=True)
    (tmp_path / "d" / "shared" / "config").mkdir()
    slots = {"20260101T000000Z-aaaaaaa": "live-before", "20260102T000000Z-bbbbbbb": "warm-before",
             "20260103T000000Z-ccccccc": "new", "20260104T000000Z-ddddddd": "dead"}
    procs = {}
    for slot, role in slots.items():
        if role != "dead":
            procs[slot] = subprocess.Popen(["sleep", "60"])
        (run / f"uwsgi.pid.{slot}").write_text(f"{procs[slot].pid if slot in procs else 999999}\n")
    lines = ["ALIVE_PID=1", "alive() { p=$(cat \"$1\" 2>/dev/null) && [ -d /proc/$p ] && echo $p; }",
             "children() { true; }", "s=20260103T000000Z-ccccccc", "rel=20260103T000000Z-ccccccc",
             "live=20260101T000000Z-aaaaaaa",
             *beside.retire_lines(cfg, app, sl, "sleep"), 'echo "warm=$warm"']
    try:
        out = subprocess.run(["sh", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "warm=20260101T000000Z-aaaaaaa"
        assert procs["20260102T000000Z-bbbbbbb"].wait(timeout=5) == -15  # TERM
        assert procs["20260101T000000Z-aaaaaaa"].poll() is None and procs["20260103T000000Z-ccccccc"].poll() is None
        assert not (run / "uwsgi.pid.20260104T000000Z-ddddddd").exists()
    finally:
        for p in procs.values():
            p.kill()


def test_fab_stop_stops_the_slots_too_only_where_they_exist():
    stop = "\n".join(appserver.of(make_cfg()).stop_lines(make_cfg()))
    assert 'rm -f /srv/shop/shared/run/uwsgi.sock.live /srv/shop/shared/run/uwsgi.sock' in stop
    cfg = make_cfg(app={"manager": "supervisor"})
    assert "uwsgi.sock.live" not in "\n".join(appserver.of(cfg).stop_lines(cfg))


def test_keep_warm_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"app\.keep_warm"):
        make_cfg(app={"keep_warm": "yes"})
