"""The app user's builders ([app] user): its default, the run-as lines ($ASAPP, as_user), the setup phase's
user creation and ownership lines, and where every app server and manager uses them. The end-to-end proof
is tests/test_app_user_e2e.py."""
from __future__ import annotations

import getpass
import subprocess

import pytest

from fabdeploy import appserver, manager
from fabdeploy.appserver.base import app_user
from fabdeploy.errors import ConfigError
from fabdeploy.ops.logs import tail_command
from fabdeploy.ops.manage import remote_command, wrapper
from fabdeploy.remote.shell import as_app_lines, as_user
from fabdeploy.steps import app_user as app_user_step
from fabdeploy.steps import cleanup, live_check, setup
from test_phases import make_cfg, make_rel

ME = getpass.getuser()


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


@pytest.mark.parametrize("name, user", [("shop", "shop"), ("My.App", "my-app"), ("1st", "app-1st"),
                                        ("a" * 40, "a" * 32)])
def test_the_default_app_user_is_the_project_name_as_a_user_name(name, user):
    cfg = make_cfg(project={"name": name}, app={"user": ""})
    assert app_user(cfg) == user


def test_an_app_user_that_is_no_user_name_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as e:
        make_cfg(app={"user": "Root Beer"})
    assert "app.user" in str(e.value) and "\n" not in str(e.value)


def test_as_app_lines_are_empty_for_the_ssh_user_and_sudo_u_for_another():
    same = sh("\n".join(as_app_lines(ME)) + '\nprintf "[%s]" "$ASAPP"')
    assert same.stdout == "[]"
    other = sh("\n".join(as_app_lines("shop")) + '\nprintf "[%s]" "$ASAPP"')
    assert other.stdout == "[sudo -n -u shop]"


def test_as_user_runs_the_lines_and_gives_back_their_output():
    res = sh(as_user(ME, ["echo one", "id -un"]))
    assert res.returncode == 0 and res.stdout.split() == ["one", ME]
    assert "sudo -n -u shop sh -c 'echo one" in as_user("shop", ["echo one"])


def test_the_alive_helper_reads_a_pidfile_it_cannot_read_as_the_app_user(tmp_path):
    """ALIVE_FN falls back to `$ASAPP cat` when the SSH user cannot read the pidfile (here: a fake sudo -u that
    answers for the app user), and never without $ASAPP."""
    from fabdeploy.remote.shell import ALIVE_FN
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        fake = tmp_path / "fake-sudo-u"
        fake.write_text(f"#!/bin/sh\necho {sleeper.pid}\n")
        fake.chmod(0o755)
        pidfile = tmp_path / "run" / "x.pid"  # (missing for us, "there" for the fake app user)
        assert sh(f"{ALIVE_FN}\nASAPP={fake}\nalive {pidfile} sleep").stdout.strip() == str(sleeper.pid)
        assert sh(f"{ALIVE_FN}\nASAPP=\nalive {pidfile} sleep").stdout.strip() == ""
        assert sh(f"set -u\n{ALIVE_FN}\nalive {pidfile} sleep").returncode == 1  # ($ASAPP unset: no error)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_every_reload_stop_and_pid_line_of_every_server_sets_asapp_first():
    for server in ("uwsgi", "gunicorn"):
        for mgr in ("pidfile", "supervisor", "systemd"):
            cfg = make_cfg(app={"server": server, "manager": mgr, "user": "shop"})
            app = appserver.of(cfg)
            for lines in (app.reload_lines(cfg, "/r", "/v", "R"), app.stop_lines(cfg), app.pid_lines(cfg)):
                assert lines[0] == as_app_lines("shop")[0], (server, mgr)
            text = "\n".join(app.reload_lines(cfg, "/r", "/v", "R"))
            assert '${ASAPP-} readlink "/proc/$c/cwd"' in text and "${ASAPP-} tail -n 20" in text
            assert not any(ln.strip().startswith(("kill ", "rm -f")) for ln in app.stop_lines(cfg))


def test_the_pidfile_manager_starts_and_signals_as_the_app_user():
    cfg = make_cfg(app={"user": "shop"})
    text = "\n".join(appserver.of(cfg).reload_lines(cfg, "/r", "/v", "R"))
    # (a master started beside the live one: appserver/beside.py)
    assert "${ASAPP-} /v/bin/uwsgi --ini /srv/shop/shared/config/uwsgi.ini.\"$s\"" in text
    # (the swap, the records and the retired masters' signals: one sh -c as the app user)
    assert "gone=$(${ASAPP-} sh -c 'set -e" in text and "sh \"$s\" \"$pid\" \"$live\" \"$rel\" true uwsgi " in text
    # a master of another user (deployed before): stopped with sudo, started again as the app user
    assert 'if [ -n "$oldm" ] && [ "$(stat -c %U "/proc/$oldm" 2>/dev/null)" != shop ]; then' in text
    g = make_cfg(app={"server": "gunicorn", "user": "shop"})
    text = "\n".join(appserver.of(g).reload_lines(g, "/r", "/v", "R"))
    assert '"$(stat -c %U "/proc/$oldm" 2>/dev/null)" != shop' in text
    assert "&& ${ASAPP-} /v/bin/python /v/bin/gunicorn -c" in text
    # the graceful reload where the slots' sockets do not fit (a long deploy_to): USR2 as the app user
    g = make_cfg(app={"server": "gunicorn", "user": "shop"}, paths={"deploy_to": "/srv/" + "x" * 60})
    text = "\n".join(appserver.of(g).reload_lines(g, "/r", "/v", "R"))
    assert "${ASAPP-} kill -USR2" in text and "gunicorn-venv/bin/python" in text


def test_managers_name_the_app_user():
    for mgr, line in (("supervisor", "user=shop"), ("systemd", "User=shop")):
        cfg = make_cfg(app={"manager": mgr, "user": "shop"})
        assert line in manager.of(cfg).definition(cfg, appserver.of(cfg)).splitlines()
    cfg = make_cfg(app={"manager": "emperor", "user": "shop"})
    assert 'appg=$(id -gn shop); me="shop:$appg"' in "\n".join(manager.of(cfg).install_lines(cfg, appserver.of(cfg)))


def test_setup_creates_the_user_and_converts_the_layout_only_for_a_user_of_its_own():
    cfg = make_cfg(app={"user": "shop"})
    text = "\n".join(setup.setup(cfg).lines)
    assert ("sudo -n /usr/sbin/useradd --system --user-group --no-create-home --home-dir /srv/shop --shell "
            "/usr/sbin/nologin shop") in text
    assert "cannot create the app user shop (app.user; useradd with sudo -n)" in text
    for path, owner, mode in (("releases", '"$(id -un):$appg"', "2750"), ("shared/media", '"shop:$nginx_group"', "2750"),
                              ("shared/db", '"shop:$appg"', "700"), ("shared/run", '"shop:$nginx_group"', "2750"),
                              ("shared/log", '"$(id -un):$appg"', "2770")):
        assert f"sudo -n /usr/bin/chown -R -H {owner} /srv/shop/{path} && " in text
        assert f"sudo -n /usr/bin/chmod {mode} /srv/shop/{path};" in text
    assert "shared/static" not in "\n".join(app_user_step.ownership_lines(cfg))


def test_ownership_lines_do_nothing_where_a_directory_is_right(tmp_path):
    """(the app user is this user here: every directory right means no sudo at all; one wrong, only its fixed
    commands run)"""
    grp = sh("id -gn").stdout.strip()
    modes = {"releases": 0o2750, "venvs": 0o2750, "tmp": 0o2750, "shared/config": 0o2750, "shared/media": 0o2750,
             "shared/db": 0o700, "shared/run": 0o2750, "shared/log": 0o2770}
    for rel, mode in modes.items():
        (tmp_path / rel).mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).chmod(mode)
    (tmp_path / "shared").chmod(0o711)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sudo").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/sudo.log\n[ "$1" = -n ] && shift\nexec "$@"\n')
    (bindir / "sudo").chmod(0o755)
    lines = app_user_step.ownership_lines(make_cfg(str(tmp_path), app={"user": ME}))
    script = "\n".join([f"export PATH={bindir}:$PATH; appme=; appu={ME}; appg={grp}; nginx_group={grp}", *lines,
                        'echo "[$converted]"'])
    res = sh(script)
    assert res.returncode == 0 and res.stdout == "[]\n", res.stderr
    assert not (tmp_path / "sudo.log").exists()
    (tmp_path / "shared/db").chmod(0o750)
    res = sh(script)
    assert res.returncode == 0 and "[ db]" in res.stdout, res.stderr
    assert (tmp_path / "sudo.log").read_text().splitlines()[-1] == f"-n /usr/bin/chmod 700 {tmp_path}/shared/db"
    assert oct((tmp_path / "shared/db").stat().st_mode & 0o7777) == "0o700"
    # an empty directory (as a first deploy created it): chown and chmod only; one with files: all four
    (tmp_path / "sudo.log").unlink()
    (tmp_path / "shared/db").chmod(0o750)
    (tmp_path / "shared/run").chmod(0o750)
    (tmp_path / "shared/run/old.sock").write_text("")
    res = sh(script)
    assert res.returncode == 0 and "[ db run]" in res.stdout, res.stderr
    assert [ln.split()[1].rsplit("/", 1)[-1] for ln in (tmp_path / "sudo.log").read_text().splitlines()] == \
        ["chown", "chmod", "chown", "chmod", "find", "chmod"]
    assert oct((tmp_path / "shared/run").stat().st_mode & 0o7777) == "0o2750"


def test_migrate_and_fab_manage_run_as_the_app_user():
    from fabdeploy.steps import django_app
    cfg = make_cfg(app={"user": "shop"})
    from test_phases import _boots
    # (a redeploy: the app user's one boot, the deploy user's collect after it; a first deploy: side by side)
    one, redeploy, collect, deploy, app = _boots(django_app.django(cfg, make_rel()).lines)
    assert redeploy[0].startswith("${ASAPP-} sh -c") and "migrate" in redeploy[1] and "static" not in redeploy[1]
    assert collect[0].startswith("/srv/") and collect[1] == {"static": True}
    assert app[0].startswith("${ASAPP-} sh -c") and "migrate" in app[1] and "static" not in app[1]
    assert deploy[0].startswith("/srv/") and deploy[1]["static"] and "migrate" not in deploy[1]
    assert "sudo -n -u shop" in remote_command(cfg, ["shell"])
    assert '[ "$(id -un)" = shop ] || exec sudo -n -u shop "$0" "$@"' in wrapper(cfg)


def test_cleanup_and_live_check_read_the_master_as_the_app_user():
    cfg = make_cfg(app={"user": "shop"})
    assert '${ASAPP-} readlink "/proc/$pid/exe"' in "\n".join(cleanup.cleanup(cfg, make_rel()).lines)
    # the pidfile and every worker's cwd are read in one shell run as the app user (one sudo, not one per file)
    text = "\n".join(live_check.unchanged_exit(cfg, "fp", []))
    assert "${ASAPP-} sh -c " in text and 'readlink "/proc/$c/cwd"' in text and "${ASAPP-} readlink" not in text


def test_logs_tail_the_app_log_as_the_app_user_and_other_logs_as_root():
    cmd = tail_command(["/a/app.log", "/var/log/nginx/x.log"], 5, False, "/a/app.log", "shop")
    assert "S='sudo -n -u shop'" in cmd and 'S="sudo -n"' in cmd


def test_stop_signals_a_master_of_another_user_with_sudo():
    """(a host not converted yet: its daemonized master runs as the deploy user)"""
    cfg = make_cfg(app={"user": "shop"})
    text = "\n".join(appserver.of(cfg).stop_lines(cfg))
    # (the deploy user's own master: a plain kill; another user's: sudo, where the rules allow it)
    assert ('[ "$(stat -c %U "/proc/$pid" 2>/dev/null)" = shop ] || kill -INT "$pid" 2>/dev/null || '
            'sudo -n kill -INT "$pid"') in text
    assert "|| kill -KILL $pid $kids 2>/dev/null || sudo -n kill -KILL $pid $kids" in text
    sup = make_cfg(app={"user": "shop", "manager": "supervisor"})
    assert "sudo -n kill -INT" not in "\n".join(appserver.of(sup).stop_lines(sup))


def test_a_server_or_manager_switch_looks_at_shared_run_as_the_app_user():
    """shared/run is app:www-data 2750: the SSH user cannot see its pidfiles and sockets, so the lines that
    find another app server (or one the old manager ran) to stop test and remove them as the app user."""
    cfg = make_cfg(app={"server": "uvicorn", "asgi": "shop.asgi:application", "user": "shop"})
    app = appserver.of(cfg)
    for lines in (appserver.retire_lines(cfg), manager.switch_lines(cfg, app)):
        assert lines[0] == as_app_lines("shop")[0]
        assert "[ -e /srv/shop/shared/run" not in "\n".join(lines)
    switch = manager.switch_lines(cfg, app)
    assert any(ln.startswith('  present=" $(${ASAPP-} sh -c ') and "/srv/shop/shared/run/uwsgi.sock" in ln
               for ln in switch)
    assert ('    case "$present" in *" "/srv/shop/shared/run/uwsgi.pid" "* | '
            '*" "/srv/shop/shared/run/uwsgi.sock" "*)') in switch
    retire = appserver.retire_lines(cfg)
    # (only while shared/config/server does not name the server: see test_appserver)
    assert retire[1].startswith("srv_was=; [ ! -f /srv/shop/shared/config/server ]")
    assert retire[3].startswith('  present=" $(${ASAPP-} sh -c ') and "/srv/shop/shared/run/uwsgi.sock" in retire[3]
    assert "    ${ASAPP-} rm -f /srv/shop/shared/run/gunicorn.pid /srv/shop/shared/run/gunicorn.pid.2 " \
           "/srv/shop/shared/run/gunicorn.sock;;" in retire


def test_retiring_stops_and_clears_only_the_servers_whose_files_are_there(tmp_path):
    """The retire lines, run by the shell (here the app user is the current user: $ASAPP empty): one listing
    of shared/run finds the files; each server that has one is stopped (none runs: "already stopped") and its
    files removed; the others are left alone; the chosen server's own files are never touched."""
    cfg = make_cfg(deploy_to=str(tmp_path), app={"server": "uvicorn", "asgi": "shop.asgi:application"})
    run = tmp_path / "shared/run"
    run.mkdir(parents=True)
    for name in ("uwsgi.sock", "gunicorn.pid", "gunicorn.pid.2", "uvicorn.pid", "uvicorn.sock"):
        (run / name).write_text("")
    res = sh("\n".join(appserver.retire_lines(cfg)))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in run.iterdir()) == ["uvicorn.pid", "uvicorn.sock"]
    assert "uwsgi already stopped" in res.stdout and "gunicorn already stopped" in res.stdout
    assert "daphne" not in res.stdout and "hypercorn" not in res.stdout
    # with shared/config there, the server is recorded and the next run looks at nothing
    (tmp_path / "shared/config").mkdir()
    (run / "uwsgi.sock").write_text("")
    assert sh("\n".join(appserver.retire_lines(cfg))).returncode == 0 and not (run / "uwsgi.sock").exists()
    assert (tmp_path / "shared/config/server").read_text() == "uvicorn\n"
    (run / "uwsgi.sock").write_text("")
    again = sh("\n".join(appserver.retire_lines(cfg)))
    assert again.returncode == 0 and again.stdout == "" and (run / "uwsgi.sock").exists()


def test_reload_lines_define_each_helper_once_and_stay_valid_shell():
    """The helpers every stop block repeats ($ASAPP, alive, children) are kept once after their first top-level
    definition: the reload lines shrink (a deploy's publish script reloads twice and must stay under 128 KiB)
    and stay valid shell for every manager and server."""
    from fabdeploy.remote.shell import ALIVE_FN, CHILDREN_FN
    from fabdeploy.steps.activate import reload
    for mgr in ("pidfile", "emperor", "supervisor", "systemd"):
        for server in ("uwsgi", "gunicorn", "uvicorn"):
            if mgr in ("supervisor", "systemd", "emperor") and server == "uvicorn":
                continue
            if mgr == "emperor" and server != "uwsgi":
                continue
            cfg = make_cfg(app={"server": server, "manager": mgr, "user": "shop", "asgi": "a.asgi:app"}
                           if server != "uwsgi" else {"manager": mgr, "user": "shop"})
            lines = reload(cfg, "'/r'", "'/v'", "X")
            top = [ln for ln in lines if ln in (ALIVE_FN, CHILDREN_FN, as_app_lines("shop")[0])]
            assert len(top) == len(set(top)) and lines[0] == as_app_lines("shop")[0], (mgr, server)
            assert sum(ln.strip() == ALIVE_FN for ln in lines) == 1, (mgr, server)
            res = sh("set -n\n" + "\n".join(lines))
            assert res.returncode == 0, (mgr, server, res.stderr)
