"""The uWSGI emperor manager's builders (fabdeploy.manager.emperor): its vassal, its unit, its binary, what a
deploy, a stop and a switch run. Builders only; tests/test_emperor_e2e.py runs them on a lab host."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from fabdeploy import appserver, manager
from fabdeploy.appserver.base import app_user
from fabdeploy.errors import ConfigError
from fabdeploy.manager import emperor
from fabdeploy.model import Facts
from fabdeploy.steps import activate, control
from test_phases import make_cfg, make_rel


def text(lines) -> str:
    return "\n".join(lines)


def restart_lines(cfg) -> list[str]:
    return activate.restart(cfg, make_rel(), Facts(nginx_pid="/run/nginx.pid")).lines


def test_the_emperor_runs_uwsgi_only_and_says_so_in_one_line():
    with pytest.raises(ConfigError) as e:
        make_cfg(app={"manager": "emperor", "server": "gunicorn"})
    msg = str(e.value)
    assert msg.startswith('app.manager "emperor" runs uWSGI vassals only, not gunicorn (app.server): choose "pidfile"'), msg
    assert '"emperor" or' not in msg.split("choose", 1)[1] and "\n" not in msg
    assert manager.of(make_cfg(app={"manager": "emperor"})).name == "emperor"


def test_the_vassal_includes_the_live_config_and_the_ini_logs_to_its_file():
    cfg = make_cfg(app={"manager": "emperor"})
    emp, uw = manager.of(cfg), appserver.of(cfg)
    assert emp.definition_path(cfg) == "/etc/uwsgi/vassals/shop.ini"
    vassal = emp.definition(cfg, uw).splitlines()
    assert vassal[0].startswith("; Managed by fabdeploy for shop")
    assert vassal[-2:] == ["[uwsgi]", "ini = /srv/shop/shared/config/uwsgi.ini"]
    ini = uw.render_config(cfg, make_rel())
    assert "daemonize" not in ini and "logto = /srv/shop/shared/log/uwsgi.log" in ini  # the emperor keeps it


def test_the_unit_is_simple_restarts_and_is_wanted_by_multi_user():
    unit = emperor.unit_text().splitlines()
    assert unit[0].startswith("# Managed by fabdeploy")
    for line in ("Type=simple", "Restart=always", "WantedBy=multi-user.target",
                 "ExecStart=/usr/local/lib/fabdeploy/uwsgi --emperor /etc/uwsgi/vassals --emperor-tyrant "
                 "--emperor-freq 1 --die-on-term --pidfile /run/fabdeploy-uwsgi-emperor.pid"):
        assert line in unit, line


def test_a_deploy_installs_the_emperor_only_where_it_differs_then_touches_the_vassal():
    cfg = make_cfg(app={"manager": "emperor"})
    lines = restart_lines(cfg)
    t = text(lines)
    # the binary: copied from the release's uWSGI (through the venv link) when missing, broken or older
    assert "ver=$(/srv/shop/shared/config/uwsgi-venv/bin/uwsgi --version 2>/dev/null) ||" in t
    assert "sort -V" in t and 'sudo -n mv -Tf /usr/local/lib/fabdeploy/uwsgi.tmp$$ /usr/local/lib/fabdeploy/uwsgi' in t
    assert "one emperor runs one Python" in t
    # the unit and its enabling link, written with sudo -n install only when they differ
    assert ("if ! cmp -s /srv/shop/shared/config/emperor.service /etc/systemd/system/fabdeploy-uwsgi-emperor.service; "
            "then") in lines
    assert ("sudo -n ln -sfn /etc/systemd/system/fabdeploy-uwsgi-emperor.service "
            "/etc/systemd/system/multi-user.target.wants/fabdeploy-uwsgi-emperor.service") in t
    # started when not running: systemctl where systemd runs, else the unit's command daemonized
    # (under a host-wide lock: two projects deploying at once start one emperor)
    assert "  if ! how=$(sudo -n flock -o -w 60 /run/fabdeploy-uwsgi-emperor.lock sh -c '" in t
    assert ("/usr/local/lib/fabdeploy/uwsgi --emperor /etc/uwsgi/vassals --emperor-tyrant --emperor-freq 1 "
            "--die-on-term --pidfile /run/fabdeploy-uwsgi-emperor.pid --daemonize "
            "/var/log/fabdeploy-uwsgi-emperor.log") in t
    assert "then systemctl start fabdeploy-uwsgi-emperor.service; else" in t
    # the vassal: the app user's file (tyrant mode runs it as that user), renamed into place, never over a file
    # not ours
    assert f'appg=$(id -gn {app_user(cfg)}); me="{app_user(cfg)}:$appg"' in t
    assert (f'sudo -n /usr/bin/install -o {app_user(cfg)} -g "$appg" -m 0644 /srv/shop/shared/config/emperor.definition '
            "/etc/uwsgi/vassals/.shop.ini.tmp && sudo -n /usr/bin/mv -f /etc/uwsgi/vassals/.shop.ini.tmp "
            "/etc/uwsgi/vassals/shop.ini") in t
    assert "grep -qs 'Managed by fabdeploy' /etc/uwsgi/vassals/shop.ini" in t
    # a reload touches the vassal with a newer mtime; nothing else signals the master
    assert ('  touch -c -d "@$t" /etc/uwsgi/vassals/shop.ini 2>/dev/null || '
            f'sudo -n -u {app_user(cfg)} touch -c -d "@$t" /etc/uwsgi/vassals/shop.ini') in lines
    assert "--reload" not in t and "kill -HUP" not in t
    assert not any(ln.strip().startswith("/srv/shop/venvs/") for ln in lines)  # never behind the emperor's back


def test_the_emperor_is_written_before_the_vassal_and_the_vassal_before_the_reload():
    t = text(restart_lines(make_cfg(app={"manager": "emperor"})))
    order = ["ver=$(/srv/shop/shared/config/uwsgi-venv/bin/uwsgi --version", "fabdeploy-uwsgi-emperor.service",
             "--daemonize",
             "/etc/uwsgi/vassals/.shop.ini.tmp", 'touch -c -d "@$t"']
    at = [t.index(s) for s in order]
    assert at == sorted(at), at


def test_stop_takes_the_vassal_out_even_when_the_master_is_down():
    cfg = make_cfg(app={"manager": "emperor"})
    stop = control.stop(cfg).lines
    out = "sudo -n /usr/bin/rm -f /etc/uwsgi/vassals/shop.ini"
    i = stop.index('if [ -z "$pid" ]; then')
    j = stop.index("else", i)
    assert "  " + out in stop[i:j]  # a crashed vassal the emperor would start again
    assert "  " + out in stop[j:]
    plain = control.stop(make_cfg()).lines
    assert not any("rm -f /etc/uwsgi" in ln for ln in plain)


def test_switching_to_and_from_the_emperor():
    cfg = make_cfg(app={"manager": "emperor"})
    lines = manager.switch_lines(cfg, appserver.of(cfg))
    i = lines.index("  pidfile)")
    assert "--stop /srv/shop/shared/run/uwsgi.pid" in text(lines[i:lines.index("    ;;", i)])
    assert "echo emperor > /srv/shop/shared/config/manager" in text(lines)
    back = make_cfg()
    b = manager.switch_lines(back, appserver.of(back))
    i = b.index("  emperor)")
    branch = b[i:b.index("    ;;", i)]
    # stopped (the vassal out, running or not), then removed
    assert text(branch).count("sudo -n /usr/bin/rm -f /etc/uwsgi/vassals/shop.ini") == 3
    # a host that leaves the emperor for gunicorn under supervisor: the emperor's branch stops uWSGI (the only
    # server it runs), not gunicorn
    g = make_cfg(app={"server": "gunicorn", "manager": "supervisor"})
    gl = manager.switch_lines(g, appserver.of(g))
    i = gl.index("  emperor)")
    branch = text(gl[i:gl.index("    ;;", i)])
    assert "/srv/shop/shared/run/uwsgi.pid" in branch and "gunicorn" not in branch


def test_status_reports_the_vassal_and_the_emperor(tmp_path):
    """The state command run for real: a process named uwsgi stands for the emperor."""
    cfg = make_cfg(app={"manager": "emperor"})
    argv = manager.of(cfg).state_argv(cfg)
    assert argv[-2:] == ["/etc/uwsgi/vassals/shop.ini", "/run/fabdeploy-uwsgi-emperor.pid"]
    vassal, pidfile = tmp_path / "shop.ini", tmp_path / "emperor.pid"
    fake = tmp_path / "uwsgi"
    shutil.copy("/bin/sleep", fake)

    def state() -> str:
        return subprocess.run([*argv[:-2], str(vassal), str(pidfile)], capture_output=True, text=True).stdout

    assert state() == "vassal EMPEROR-DOWN\n"
    with subprocess.Popen([str(fake), "30"]) as proc:
        try:
            pidfile.write_text(f"{proc.pid}\n")
            assert state() == "vassal STOPPED\n"
            vassal.write_text("[uwsgi]\n")
            assert state() == "vassal RUNNING\n"
        finally:
            proc.kill()


def test_fab_logs_shows_the_emperors_lines_about_this_vassal_only(tmp_path):
    """The filter command run for real on a log file (this machine runs no systemd: the file branch): the
    last lines naming shop.ini, never myshop.ini or shop.ini of another word; the journal branch asks
    journalctl for the emperor's unit with the same pattern."""
    from dataclasses import replace

    from fabdeploy.ops.logs import filter_command
    cfg = make_cfg(app={"manager": "emperor"})
    f = manager.of(cfg).log_filter(cfg)
    assert (f.label, f.path, f.unit) == ("emperor", emperor.LOG, emperor.UNIT_NAME)
    log = tmp_path / "emperor.log"
    log.write_text("*** starting uWSGI Emperor ***\n"
                   "[uWSGI] getting INI configuration from shop.ini\n"
                   "Wed Nov 25 22:00:01 2026 - [emperor] vassal shop.ini is ready to accept requests\n"
                   "Wed Nov 25 22:00:02 2026 - [emperor] vassal myshop.ini is ready to accept requests\n"
                   "Wed Nov 25 22:00:03 2026 - [emperor] vassal shop-two.ini has been spawned\n"
                   "Wed Nov 25 22:00:04 2026 - [emperor] curse the uwsgi instance shop.ini (pid: 42)\n"
                   "Wed Nov 25 22:00:05 2026 - [emperor] removed uwsgi instance shop.ini\n")
    command = filter_command(replace(f, path=str(log)), 2, False)
    assert "journalctl --no-pager -o short-iso -u fabdeploy-uwsgi-emperor.service --grep" in command
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout
    assert out.splitlines() == ["Wed Nov 25 22:00:04 2026 - [emperor] curse the uwsgi instance shop.ini (pid: 42)",
                                "Wed Nov 25 22:00:05 2026 - [emperor] removed uwsgi instance shop.ini"]
    out = subprocess.run(["sh", "-c", filter_command(replace(f, path=str(log)), 10, False)],
                         capture_output=True, text=True, timeout=30).stdout
    assert len(out.splitlines()) == 4 and "myshop" not in out and "shop-two" not in out
    dotted = make_cfg(app={"manager": "emperor"}, project={"name": "my.shop"})
    assert manager.of(dotted).log_filter(dotted).pattern == r"(^|[^[:alnum:]_.-])my\.shop\.ini([^[:alnum:]_-]|$)"


def test_old_emperor_copies_nothing_uses_are_pruned(tmp_path):
    """prune_lines run for real on a directory standing in for /usr/local/lib/fabdeploy: kept are the copy
    the link names, copies running processes execute (one deleted under it), one a unit names by path and
    one younger than PRUNE_AFTER minutes; the old unused copy goes, and the note names it."""
    import os
    import time
    lib, units = tmp_path / "lib", tmp_path / "units"
    units.mkdir()
    names = ["uwsgi-2.0.1-aaa", "uwsgi-2.0.2-run", "uwsgi-2.0.3-del", "uwsgi-2.0.4-unit", "uwsgi-2.0.5-cur",
             "uwsgi-2.0.6-young", "uwsgi-1.9.0-old"]
    for n in names:
        (lib / n).mkdir(parents=True)
        shutil.copy("/bin/sleep", lib / n / "uwsgi")
    (lib / "uwsgi").symlink_to("uwsgi-2.0.5-cur/uwsgi")
    (units / "other.service").write_text(f"ExecStart={lib}/uwsgi-2.0.4-unit/uwsgi --emperor /x\n")
    procs = [subprocess.Popen([str(lib / n / "uwsgi"), "60"]) for n in ("uwsgi-2.0.2-run", "uwsgi-2.0.3-del")]
    try:
        (lib / "uwsgi-2.0.3-del" / "uwsgi").unlink()
        old = time.time() - 3600
        for n in names:
            if n != "uwsgi-2.0.6-young":
                os.utime(lib / n, (old, old))
        script = "\n".join([*emperor.prune_lines(str(lib), (str(units),)), 'echo "pruned=$pruned"'])
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in lib.iterdir() if p.is_dir() and not p.is_symlink()) == sorted(
        n for n in names if n not in ("uwsgi-2.0.1-aaa", "uwsgi-1.9.0-old"))
    assert "@@fabdeploy note uWSGI emperor: old copies removed: " in out.stdout
    assert "uwsgi-1.9.0-old" in out.stdout and "uwsgi-2.0.1-aaa" in out.stdout and "cur" not in out.stdout
    # the deploy runs it after the emperor is up, before the vassal
    lines = text(manager.of(make_cfg(app={"manager": "emperor"})).install_lines(
        make_cfg(app={"manager": "emperor"}), appserver.of(make_cfg(app={"manager": "emperor"}))))
    assert lines.index("pruned=$(sudo -n sh -c") > lines.index("emperor=$(alive")
    assert lines.index("pruned=$(sudo -n sh -c") < lines.index("vassals/shop.ini")


def test_fab_logs_follows_the_emperors_lines_and_ends_with_the_channel(tmp_path):
    """-f, run for real: a new line about the vassal arrives, one about another does not; closing stdin (the
    SSH channel) ends the command and its tail."""
    import time
    from dataclasses import replace

    from fabdeploy.ops.logs import filter_command
    cfg = make_cfg(app={"manager": "emperor"})
    log = tmp_path / "emperor.log"
    log.write_text("[emperor] vassal shop.ini has been spawned\n")
    command = filter_command(replace(manager.of(cfg).log_filter(cfg), path=str(log)), 5, True)
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "[emperor] vassal shop.ini has been spawned\n"
        time.sleep(1.5)  # (tail -F starts at the end of the file)
        with log.open("a") as f:
            f.write("[emperor] vassal other.ini is ready to accept requests\n")
            f.write("[emperor] vassal shop.ini is ready to accept requests\n")
        assert proc.stdout.readline() == "[emperor] vassal shop.ini is ready to accept requests\n"
        proc.stdin.close()
        proc.wait(timeout=10)  # (raises when the command outlives its channel)
        assert proc.stdout.read() == ""  # (the other vassal's line never came)
    finally:
        proc.kill()
    tails = ["pgrep", "-f", f"tail -n 0 -F --pid=[0-9]* {log}"]
    deadline = time.monotonic() + 10  # tail sees its shell gone within a second (--pid)
    while subprocess.run(tails, capture_output=True).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert subprocess.run(tails, capture_output=True).returncode == 1, "the tail outlived the channel"
