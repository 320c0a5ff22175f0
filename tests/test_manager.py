"""The process-manager seam (fabdeploy.manager): `[app] manager` chooses what runs the app server; the app
server's config, start, reload and stop lines follow it. Builders only; tests/test_supervisor_e2e.py runs them."""
from __future__ import annotations

import os
import subprocess

import pytest

from fabdeploy import appserver, manager
from fabdeploy.errors import ConfigError
from fabdeploy.hosts.layout import Layout
from fabdeploy.model import Facts
from fabdeploy.steps import activate, control
from test_phases import make_cfg, make_rel


def text(lines) -> str:
    return "\n".join(lines)


def test_the_default_is_the_daemonized_pidfile_master_of_before():
    cfg = make_cfg()
    assert cfg.app.manager == "pidfile" and manager.of(cfg).daemon
    ini = appserver.of(cfg).render_config(cfg, make_rel())
    assert "daemonize = /srv/shop/shared/log/uwsgi.log" in ini and "logto" not in ini
    restart = text(activate.restart(cfg, make_rel(), Facts(nginx_pid="/run/nginx.pid")).lines)
    assert "/bin/uwsgi --ini /srv/shop/shared/config/uwsgi.ini" in restart
    # supervisorctl only where a host that ran under supervisor switches back (manager.switch_lines)
    assert "supervisorctl signal" not in restart and "supervisorctl start" not in restart


def test_an_unknown_manager_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as e:
        make_cfg(app={"manager": "runit"})
    assert str(e.value).startswith('app.manager must be "pidfile" or "supervisor"'), str(e.value)
    assert "\n" not in str(e.value)


def test_a_supervisor_program_runs_the_app_server_in_the_foreground_through_the_venv_link():
    cfg = make_cfg(app={"manager": "supervisor", "user": ""})  # (the default app user)
    sup = manager.of(cfg)
    uw = appserver.of(cfg)
    assert sup.definition_path(cfg) == "/etc/supervisor/conf.d/shop.conf"
    prog = sup.definition(cfg, uw)
    assert "[program:shop]" in prog
    assert "command=/srv/shop/shared/config/uwsgi-venv/bin/uwsgi --ini /srv/shop/shared/config/uwsgi.ini" in prog
    assert "stopsignal=INT" in prog and "stopwaitsecs=60" in prog and "autorestart=true" in prog
    assert "user=shop" in prog  # the app user ([app] user, default the project name), not the deploy user
    ini = uw.render_config(cfg, make_rel())
    assert "daemonize" not in ini and "logto = /srv/shop/shared/log/uwsgi.log" in ini
    g = make_cfg(app={"manager": "supervisor", "server": "gunicorn"})
    gprog = sup.definition(g, appserver.of(g))
    assert ("command=/srv/shop/shared/config/gunicorn-venv/bin/python /srv/shop/shared/config/gunicorn-venv/bin/"
            "gunicorn -c /srv/shop/shared/config/gunicorn.conf.py") in gprog and "stopsignal=TERM" in gprog
    conf = appserver.of(g).render_config(g, make_rel())
    assert "daemon = False" in conf and "preload_app = False" in conf


def test_under_supervisor_reload_is_a_signal_through_supervisorctl_and_start_is_supervisorctl_start():
    cfg = make_cfg(app={"manager": "supervisor"})
    lines = activate.restart(cfg, make_rel(), Facts(nginx_pid="/run/nginx.pid")).lines
    assert "  sudo -n /usr/bin/supervisorctl signal HUP shop >/dev/null" in lines
    assert any(ln.strip().startswith("out=$(sudo -n /usr/bin/supervisorctl start shop 2>&1)") for ln in lines)
    assert not any(ln.strip().startswith("/srv/shop/venvs/") for ln in lines)  # never behind supervisor's back
    # the definition is written only when it differs, then reread + update
    t = text(lines)
    assert "cmp -s /srv/shop/shared/config/supervisor.definition /etc/supervisor/conf.d/shop.conf" in t
    assert "sudo -n /usr/bin/supervisorctl reread" in t and "sudo -n /usr/bin/supervisorctl update shop" in t
    g = make_cfg(app={"manager": "supervisor", "server": "gunicorn"})
    glines = activate.restart(g, make_rel(), Facts(nginx_pid="/run/nginx.pid")).lines
    assert "  sudo -n /usr/bin/supervisorctl signal HUP shop >/dev/null" in glines
    assert not any("USR2" in ln for ln in glines)  # the re-exec would leave supervisor a dead master


def test_stop_goes_through_the_manager():
    cfg = make_cfg(app={"manager": "supervisor"})
    stop = control.stop(cfg).lines
    assert "  sudo -n /usr/bin/supervisorctl stop shop >/dev/null 2>&1 || true" in stop
    assert not any("--stop" in ln for ln in stop)
    plain = text(control.stop(make_cfg()).lines)
    assert "--stop /srv/shop/shared/run/uwsgi.pid" in plain and "supervisorctl" not in plain


def test_switching_managers_stops_the_app_server_under_the_old_one_and_records_the_new():
    cfg = make_cfg(app={"manager": "supervisor"})
    lines = manager.switch_lines(cfg, appserver.of(cfg))
    t = text(lines)
    assert "was=; [ ! -f /srv/shop/shared/config/manager ] || read -r was < /srv/shop/shared/config/manager || was=" \
        in lines
    i = lines.index("  pidfile)")
    branch = text(lines[i:lines.index("    ;;", i)])
    assert "--stop /srv/shop/shared/run/uwsgi.pid" in branch  # the daemon stopped by uWSGI itself
    assert "echo supervisor > /srv/shop/shared/config/manager" in t
    back = make_cfg()
    b = manager.switch_lines(back, appserver.of(back))
    i = b.index("  supervisor)")
    branch = text(b[i:b.index("    ;;", i)])
    assert "sudo -n /usr/bin/supervisorctl stop shop" in branch and "sudo -n /usr/bin/rm -f /etc/supervisor/conf.d/shop.conf" in branch


def test_a_systemd_unit_per_project_notify_type_reload_signal_and_the_journal():
    cfg = make_cfg(app={"manager": "systemd", "user": ""})
    sd = manager.of(cfg)
    uw = appserver.of(cfg)
    assert sd.definition_path(cfg) == "/etc/systemd/system/shop.service" and sd.journal and not sd.daemon
    unit = sd.definition(cfg, uw)
    for line in ("Type=notify", "NotifyAccess=all", "User=shop", "WorkingDirectory=/srv/shop",
                 "ExecStart=/srv/shop/shared/config/uwsgi-venv/bin/uwsgi --ini /srv/shop/shared/config/uwsgi.ini",
                 "ExecReload=/bin/kill -HUP $MAINPID", "KillSignal=SIGINT", "Restart=always",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines(), line
    ini = uw.render_config(cfg, make_rel())
    assert "daemonize" not in ini and "logto" not in ini  # uWSGI's output goes to the journal
    g = make_cfg(app={"manager": "systemd", "server": "gunicorn"})
    conf = appserver.of(g).render_config(g, make_rel())
    assert "errorlog = '-'" in conf and "daemon = False" in conf
    assert "KillSignal=SIGTERM" in sd.definition(g, appserver.of(g))
    lines = activate.restart(cfg, make_rel(), Facts(nginx_pid="/run/nginx.pid")).lines
    assert "  sudo -n /usr/bin/systemctl reload shop.service" in lines
    t = text(lines)
    assert "sudo -n /usr/bin/systemctl enable --quiet shop.service" in t and "sudo -n /usr/bin/systemctl daemon-reload" in t
    assert "[ -d /run/systemd/system ] ||" in t  # a host without systemd: one line, not a hang


def test_a_definition_never_replaces_a_file_fabdeploy_did_not_write():
    cfg = make_cfg(app={"manager": "systemd"})
    t = text(manager.of(cfg).install_lines(cfg, appserver.of(cfg)))
    assert ("if [ -e /etc/systemd/system/shop.service ] && ! grep -qs 'Managed by fabdeploy' "
            "/etc/systemd/system/shop.service; then") in t


@pytest.mark.parametrize("mgr", ["supervisor", "systemd"])
def test_the_asgi_servers_run_under_supervisor_and_systemd_through_the_runner_script(mgr):
    """Their definition runs fabdeploy's runner script (no sd_notify: a Type=exec unit); a reload is the
    server's graceful signal through the manager when the master runs the live command line, else (and
    always for daphne) the manager's restart; gunicorn with uvicorn's worker is gunicorn, as before."""
    for server in ("uvicorn", "hypercorn", "daphne"):
        cfg = make_cfg(app={"manager": mgr, "server": server, "asgi": "shop.asgi:application"})
        app = appserver.of(cfg)
        definition = manager.of(cfg).definition(cfg, app)
        run = f"/bin/sh /srv/shop/shared/config/{server}-run.sh"
        assert (f"command={run}" if mgr == "supervisor" else f"ExecStart={run}") in definition
        if mgr == "systemd":
            assert "Type=exec" in definition and "Type=notify" not in definition
        t = text(app.reload_lines(cfg, "'/r'", "'/v'", "R"))
        restart = "supervisorctl restart shop" if mgr == "supervisor" else "systemctl restart shop.service"
        assert restart in t and "start_detached '/v'" not in t  # (never detached: the manager starts it)
        signal = "supervisorctl signal HUP shop" if mgr == "supervisor" else "systemctl reload shop.service"
        assert (signal in t) == (server != "daphne"), (server, mgr)
    cfg = make_cfg(app={"manager": mgr, "server": "gunicorn", "asgi": "shop.asgi:application"})
    assert "uvicorn_worker.UvicornWorker" in appserver.of(cfg).render_config(cfg, make_rel())
    assert "Type=notify" in manager.of(cfg).definition(cfg, appserver.of(cfg)) or mgr == "supervisor"


def test_the_runner_script_execs_the_live_command_line_with_its_pid_in_the_pidfile(tmp_path):
    """Run for real with sh: the live config's `# run:` line with "$V" the resolved virtualenv link, from
    shared/config, its pid (kept by exec: the manager's main pid) in the pidfile, output to the log."""
    cfg = make_cfg(deploy_to=str(tmp_path), app={"manager": "supervisor", "server": "uvicorn",
                                                 "asgi": "shop.asgi:application"})
    app = appserver.of(cfg)
    lay = Layout(str(tmp_path))
    p = app.paths(lay)
    for d in (lay.config, lay.run, lay.log, f"{tmp_path}/venvs/h/bin"):
        os.makedirs(d, exist_ok=True)
    server = tmp_path / "venvs/h/bin/uvicorn"
    server.write_text('#!/bin/sh\necho "pid $$ cwd $(pwd) args $*"\n')
    server.chmod(0o755)
    os.symlink(f"{tmp_path}/venvs/h", app.venv_link(lay))
    with open(p.config, "w") as f:
        f.write('# run: "$V"/bin/uvicorn --uds \'/a b.sock\' --workers 2\n')
    runner = tmp_path / "run.sh"
    runner.write_text(app.runner_text(cfg))
    proc = subprocess.run(["sh", str(runner)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    pid = open(p.pidfile).read().strip()
    assert open(p.log).read() == f"pid {pid} cwd {lay.config} args --uds /a b.sock --workers 2\n"


def test_fab_logs_reads_the_supervisor_programs_output_file_on_app_hosts_only():
    from fabdeploy.ops.logs import WHICH, log_files
    cfg = make_cfg(app={"manager": "supervisor"})
    assert manager.of(cfg).log_files(cfg, appserver.of(cfg)) == {"supervisor": "/srv/shop/shared/log/uwsgi.log.out"}
    assert manager.of(cfg).definition(cfg, appserver.of(cfg)).count("stdout_logfile=/srv/shop/shared/log/uwsgi.log.out") == 1
    assert manager.of(cfg).log_filter(cfg) is None and "manager" in WHICH
    plain = make_cfg()
    assert manager.of(plain).log_files(plain, appserver.of(plain)) == {} and manager.of(plain).log_filter(plain) is None
    assert "app" in log_files(cfg)  # (show_logs adds the manager's logs where the app server runs)
