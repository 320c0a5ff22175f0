"""ASGI builders: `[app] asgi` and its checks, gunicorn with uvicorn's worker, the uvicorn/daphne/hypercorn
app servers (their config module, command lines, start and reload lines), the lines that stop the previous
app server of a host, and the nginx site's WebSocket upgrade. The end-to-end proof is tests/test_asgi_e2e.py."""
from __future__ import annotations

import getpass
import os
import re
import subprocess
import time

import pytest

from fabdeploy import appserver
from fabdeploy.appserver.asgi import RUN_PREFIX
from fabdeploy.appserver.daphne import Daphne
from fabdeploy.appserver.gunicorn import Gunicorn
from fabdeploy.appserver.hypercorn import Hypercorn
from fabdeploy.appserver.uvicorn import Uvicorn
from fabdeploy.errors import ConfigError
from fabdeploy.front import nginx
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import servers
from fabdeploy.remote.shell import as_app_lines
from fabdeploy.steps.venv import venv_install_args
from test_phases import make_cfg, make_rel

ASGI = "shop.asgi:application"


def asgi_cfg(server: str, deploy_to="/srv/shop", roles: bool = False, **sections):
    app = {"server": server, "asgi": ASGI, **sections.pop("app", {})}
    if roles:
        sections["roles"] = {"app": [{"host": "deploy@10.0.0.1"}], "lb": ["deploy@10.0.0.9"]}
    return make_cfg(deploy_to, app=app, **sections)


def test_app_asgi_is_required_by_the_asgi_servers_refused_by_uwsgi_and_checked():
    for server in ("uvicorn", "daphne", "hypercorn"):
        with pytest.raises(ConfigError, match=rf'^app.asgi is required with app.server = "{server}"'):
            make_cfg(app={"server": server})
        assert appserver.of(asgi_cfg(server)).name == server
    with pytest.raises(ConfigError, match=r'^app.asgi is set but app.server = "uwsgi" runs WSGI only \(project.wsgi\); '
                                          r'choose app.server = "gunicorn" or "uvicorn" or "daphne" or "hypercorn"$'):
        make_cfg(app={"asgi": ASGI})
    with pytest.raises(ConfigError, match=r"^app.asgi must be \"module.path:callable\" \(got 'shop asgi'\)$"):
        make_cfg(app={"server": "gunicorn", "asgi": "shop asgi"})
    with pytest.raises(ConfigError, match=r"^uvicorn.workers must be between 2 and 1024"):
        asgi_cfg("uvicorn", uvicorn={"workers": 1})
    assert make_cfg(app={"server": "gunicorn"}).app.asgi == ""


def test_gunicorn_runs_app_asgi_with_uvicorns_worker_and_installs_its_package():
    rel = make_rel()
    cfg = asgi_cfg("gunicorn")
    g = Gunicorn()
    text = g.render_config(cfg, rel)
    assert "wsgi_app = 'shop.asgi:application'" in text
    assert "worker_class = 'uvicorn_worker.UvicornWorker'" in text
    assert g.requirements(cfg) == ["gunicorn", "uvicorn-worker"]
    assert venv_install_args(cfg, rel, "/tmp/x")[-2:] == ["gunicorn", "uvicorn-worker"]
    # [gunicorn] worker_class overrides; uvicorn's deprecated module installs uvicorn
    old = asgi_cfg("gunicorn", gunicorn={"worker_class": "uvicorn.workers.UvicornWorker"})
    assert "worker_class = 'uvicorn.workers.UvicornWorker'" in g.render_config(old, rel)
    assert g.requirements(old) == ["gunicorn", "uvicorn"]
    # WSGI stays as it was: project.wsgi, sync or gthread, gunicorn alone
    wsgi = make_cfg(app={"server": "gunicorn"}, gunicorn={"threads": 4})
    text = g.render_config(wsgi, rel)
    assert "wsgi_app = 'shop.wsgi:application'" in text and "worker_class = 'gthread'" in text
    assert g.requirements(wsgi) == ["gunicorn"]
    with pytest.raises(ConfigError, match=r"^gunicorn.worker_class must be a worker class"):
        make_cfg(app={"server": "gunicorn"}, gunicorn={"worker_class": "x; rm -rf /"})


def test_the_config_module_moves_each_worker_into_its_release_with_the_production_environment():
    rel = make_rel()
    cfg = asgi_cfg("uvicorn", django={"env": {"API_TOKEN": "it's 50%"}})
    text = Uvicorn().render_config(cfg, rel)
    compile(text, "fabdeploy_uvicorn.py", "exec")  # plain Python
    assert f"RELEASE = '/srv/shop/releases/{rel.id}'" in text and "os.chdir(RELEASE)" in text
    assert "'DJANGO_SETTINGS_MODULE=fabdeploy_settings'" in text and f"'FABDEPLOY_RELEASE={rel.id}'" in text
    assert "importlib.import_module('shop.asgi'), 'application')" in text
    assert '_comm.write(\'uvicorn\')' in text and "# workers: 4" in text
    assert "current" not in text.split("RELEASE = ")[1].splitlines()[0]
    # --plan masks the user's env values only
    assert [m.group(2) for m in map(Uvicorn.env_line.match, text.splitlines()) if m] == ["API_TOKEN"]
    # its command line: what a start runs and a reload compares ("$V": the virtualenv)
    [run] = [ln for ln in text.splitlines() if ln.startswith(RUN_PREFIX)]
    assert run == (RUN_PREFIX + '"$V"/bin/uvicorn --app-dir /srv/shop/shared/config --uds '
                   "/srv/shop/shared/run/uvicorn.sock --forwarded-allow-ips '*' --workers 4 "
                   "--timeout-graceful-shutdown 30 --timeout-keep-alive 5 --timeout-worker-healthcheck 30 "
                   "--backlog 1024 --proxy-headers fabdeploy_uvicorn:application")


def test_each_server_listens_on_its_unix_socket_or_on_address_and_port_behind_balancers():
    for cls, unix, tcp in [
        (Uvicorn, "--uds /srv/shop/shared/run/uvicorn.sock", "--host 10.0.0.1 --port 8001"),
        (Hypercorn, "--bind unix:/srv/shop/shared/run/hypercorn.sock", "--bind 10.0.0.1:8001"),
        (Daphne, "-e unix:/srv/shop/shared/run/daphne.sock:mode=660:lockfile=0",
         "-e tcp:port=8001:interface=10.0.0.1"),
    ]:
        words = " ".join(cls().foreground_argv(asgi_cfg(cls.name), "/v"))
        assert unix in words and words.startswith(f"/v/bin/{cls.name} "), words
        cfg = asgi_cfg(cls.name, roles=True)
        app_host = [s for s in servers(cfg) if s.role == "app"][0]
        assert tcp in " ".join(cls().foreground_argv(cfg, "/v", app_host))
        assert tcp in cls().render_config(cfg, make_rel(), app_host)  # the host's own run line
    assert "--workers 3" in " ".join(Hypercorn().foreground_argv(asgi_cfg("hypercorn", hypercorn={"workers": 3}), "/v"))
    assert "--workers" not in " ".join(Daphne().foreground_argv(asgi_cfg("daphne"), "/v"))


def test_foreground_argv_is_the_server_alone_and_the_daemon_bits_are_separate():
    for cls in (Uvicorn, Daphne, Hypercorn):
        cfg = asgi_cfg(cls.name)
        fg = " ".join(cls().foreground_argv(cfg, '"$V"'))
        assert "setsid" not in fg and ".pid" not in fg and "nohup" not in fg
        daemon = " ".join(cls().daemon_lines(cfg))
        assert "setsid nohup ${ASAPP-} sh -c" in daemon and f"/srv/shop/shared/run/{cls.name}.pid" in daemon
        assert "umask 117" in daemon and f"' /srv/shop/shared/run/{cls.name}.pid /srv/shop/shared/log/{cls.name}.log" in daemon


def test_the_run_line_comes_back_word_for_word_through_the_shell(tmp_path):
    """argv_of (reload_lines' shell function) reads the live config's run line back as the words a start
    execs and a reload compares with the master's /proc/<pid>/cmdline."""
    cfg = asgi_cfg("uvicorn", deploy_to=str(tmp_path / "site"), uvicorn={"options": {"root-path": "/a b's"}})
    app = Uvicorn()
    live = app.paths(Layout(cfg.paths.deploy_to)).config
    (tmp_path / "site/shared/config").mkdir(parents=True)
    with open(live, "w") as f:
        f.write(app.render_config(cfg, make_rel()))
    fns = "\n".join(app.run_fns(cfg))
    res = subprocess.run(["sh", "-c", fns + '\nargv_of "/srv/venvs/h 1"'], capture_output=True, text=True, check=True)
    words = res.stdout.splitlines()
    assert words[0] == "/srv/venvs/h 1/bin/uvicorn" and words[-1] == "fabdeploy_uvicorn:application"
    assert words[words.index("--root-path") + 1] == "/a b's" and words[words.index("--uds") + 1].endswith("uvicorn.sock")


def test_reload_is_the_servers_signal_when_the_command_line_is_the_same_else_a_stop_and_a_start():
    for cls in (Uvicorn, Hypercorn):
        text = "\n".join(cls().reload_lines(asgi_cfg(cls.name), "'/srv/shop/releases/X'", "'/srv/v/h'", "X"))
        same = text.index('tr "\\000" "\\n" < "/proc/$pid/cmdline" | tail -n +2)" = "$(argv_of \'/srv/v/h\')"')
        hup, start = text.index('kill -HUP "$pid"'), text.index("start_detached '/srv/v/h'")
        assert same < hup < start and "how=restarted" in text
        # ready: every worker named like the server runs the release, none of the old ones, the socket there
        assert f"grep -qsx {cls.name} " in text
        assert """[ "$(${ASAPP-} readlink "/proc/$c/cwd" 2>/dev/null)" = '/srv/shop/releases/X' ]""" in text
        assert f"-S /srv/shop/shared/run/{cls.name}.sock" in text
        assert f"chmod 660 /srv/shop/shared/run/{cls.name}.sock" in text
    daphne = "\n".join(Daphne().reload_lines(asgi_cfg("daphne"), "'/r'", "'/v'", "X"))
    assert "kill -HUP" not in daphne and "kill -TERM" in daphne and "start_detached '/v'" in daphne
    assert 'workers() { echo "$1"; }' in daphne
    # SIGKILL after application_close_timeout + 5 s (under traffic it never exits on SIGTERM)
    stop = "\n".join(Daphne().stop_lines(asgi_cfg("daphne", daphne={"application_close_timeout": 7})))
    assert "[ $i -lt 120 ]" in stop and "killed after 12s" in stop


def test_every_asgi_server_runs_reads_and_signals_as_the_app_user():
    """reload_lines set $ASAPP first; every read of the running server (pidfile through alive, socket, log,
    workers' cwd) and every signal runs as the app user; a master of another user found by pid_lines is
    stopped (sudo) before the graceful reload is considered; the detached start runs as the app user."""
    for cls in (Uvicorn, Daphne, Hypercorn):
        cfg = asgi_cfg(cls.name, app={"user": "shop"})
        app = cls()
        lines = app.reload_lines(cfg, "'/r'", "'/v'", "X")
        for each in (lines, app.stop_lines(cfg), app.pid_lines(cfg)):
            assert each[0] == as_app_lines("shop")[0], cls.name
        text = "\n".join(lines)
        sock, pidfile = f"/srv/shop/shared/run/{cls.name}.sock", f"/srv/shop/shared/run/{cls.name}.pid"
        for want in ("""[ "$(${ASAPP-} readlink "/proc/$c/cwd" 2>/dev/null)" = '/r' ]""",
                     f"${{ASAPP-}} test -S {sock}", f"${{ASAPP-}} tail -n 20 /srv/shop/shared/log/{cls.name}.log",
                     f"${{ASAPP-}} rm -f {sock} {pidfile}", f"${{ASAPP-}} chmod 660 {sock}",
                     f"setsid nohup ${{ASAPP-}} sh -c 'umask 117 && exec >> \"$1\" 2>&1 && echo $$ > \"$0\" && "
                     f"shift && exec \"$@\"' {pidfile} /srv/shop/shared/log/{cls.name}.log"):
            assert want in text, (cls.name, want)
        # no bare reads or signals of the server's own files and processes
        for ln in lines:
            assert not ln.strip().startswith(("kill ", "rm -f ", "tail ", "[ -S", "chmod ")), (cls.name, ln)
            for word in ("readlink ", "kill -HUP", "kill -TERM"):
                if word in ln:
                    assert "${ASAPP-} " + word in ln or "sudo -n " + word in ln, (cls.name, ln)
        foreign = lines.index('if [ -n "$pid" ] && [ "$(stat -c %U "/proc/$pid" 2>/dev/null)" != shop ]; then')
        found = next(i for i, ln in enumerate(lines) if ln.startswith("pid=$(alive "))
        assert found < foreign < lines.index("  start_detached '/v'")
        assert "sudo -n kill -TERM" in lines[foreign + 1] and lines[lines.index("  pid=", foreign) + 1] == "fi"
        if cls.graceful_signal:
            assert lines.index('  ${ASAPP-} kill -HUP "$pid"') > foreign


def test_the_detached_start_runs_through_asapp_and_the_pidfile_names_the_server(tmp_path):
    """start_detached, run by the shell: $ASAPP (here a stand-in that records its use, then execs the command)
    runs the server's command line; the pid written is the server's own (exec all the way), umask 117 inside;
    its output goes to the log, opened by the app user (here: $ASAPP's stand-in)."""
    site = tmp_path / "site"
    cfg = asgi_cfg("uvicorn", deploy_to=str(site))
    app = Uvicorn()
    lay = Layout(cfg.paths.deploy_to)
    p = app.paths(lay)
    for d in ("shared/config", "shared/run", "shared/log", "v/bin"):
        (site / d).mkdir(parents=True)
    with open(p.config, "w") as f:
        f.write(app.render_config(cfg, make_rel()))
    fake_server = site / "v/bin/uvicorn"  # writes its umask next to the pidfile, then waits
    fake_server.write_text(f"#!/bin/sh\numask > {site}/shared/run/umask\necho serving\nexec sleep 30\n")
    fake_server.chmod(0o755)
    asapp = tmp_path / "as-app"
    asapp.write_text(f"#!/bin/sh\necho used > {tmp_path}/asapp-used\nexec \"$@\"\n")
    asapp.chmod(0o755)
    fns = "\n".join(app.run_fns(cfg))
    subprocess.run(["sh", "-c", f"ASAPP={asapp}\n{fns}\nstart_detached {site}/v"], check=True, timeout=10)
    pid = None
    try:
        for _ in range(100):
            text = open(p.pidfile).read().strip() if os.path.exists(p.pidfile) else ""
            if text and open(f"/proc/{text}/comm").read().strip() == "sleep":
                pid = int(text)
                break
            time.sleep(0.05)
        assert pid, "no pidfile naming the server"
        assert (tmp_path / "asapp-used").read_text() == "used\n"
        assert (site / "shared/run/umask").read_text().strip() == "0117"
        assert os.stat(p.pidfile).st_mode & 0o777 == 0o660
        assert open(p.log).read() == "serving\n" and os.stat(p.log).st_mode & 0o777 == 0o660
    finally:
        if pid:
            os.kill(pid, 9)


def test_a_host_switching_servers_stops_every_other_one_first():
    cfg = asgi_cfg("uvicorn")
    text = "\n".join(appserver.retire_lines(cfg))
    for other in ("uwsgi", "gunicorn", "daphne", "hypercorn"):
        # (shared/run is the app user's: looked at and emptied as it)
        assert (f'case "$present" in *" "/srv/shop/shared/run/{other}.pid" "* | '
                f'*" "/srv/shop/shared/run/{other}.sock" "*)') in text
        assert f"${{ASAPP-}} rm -f /srv/shop/shared/run/{other}.pid" in text
    assert "run/uvicorn.pid" not in text and appserver.retire_lines(cfg)[0] == as_app_lines(getpass.getuser())[0]
    assert "--stop /srv/shop/shared/run/uwsgi.pid" in text  # each stopped its own way
    from fabdeploy.steps.activate import reload
    lines = reload(cfg, "'/r'", "'/v'", "X")  # (every deploy, revert and rollback reloads through it)
    first_own = next(i for i, ln in enumerate(lines) if ln.startswith("argv_of()"))
    assert lines.index(appserver.retire_lines(cfg)[0]) < first_own


def test_nginx_passes_websocket_upgrades_to_http_app_servers_with_a_map_of_the_sites_own():
    site = nginx.nginx_site(asgi_cfg("hypercorn"))
    assert re.search(r"^map \$http_upgrade \$fabdeploy_shop_upgrade \{\n    default upgrade;\n    ''      close;\n\}",
                     site, re.M), site
    assert site.index("map $http_upgrade") < site.index("server {")  # the http context, not the server's
    for line in ("proxy_http_version 1.1;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $fabdeploy_shop_upgrade;", "proxy_pass http://fabdeploy_shop_app;"):
        assert line in site
    # ASGI: the socket twice in an upstream, so nginx retries an idempotent request a worker closed unanswered
    assert re.search(r"^upstream fabdeploy_shop_app \{\n(    server unix:/srv/shop/shared/run/hypercorn.sock "
                     r"max_fails=0;\n){2}\}", site, re.M), site
    other = make_cfg(project={"name": "my-shop"}, app={"server": "gunicorn"})
    assert "$fabdeploy_my_hshop_upgrade" in nginx.nginx_site(other)  # two sites on a host: two names
    assert "upstream" not in nginx.nginx_site(other)  # WSGI gunicorn: proxy_pass to its socket, as before
    assert "proxy_pass http://unix:/srv/shop/shared/run/gunicorn.sock:;" in nginx.nginx_site(other)
    assert "map " not in nginx.nginx_site(make_cfg()) and "Upgrade" not in nginx.nginx_site(make_cfg())


def test_behind_balancers_the_readiness_wait_asks_for_no_socket_file():
    """An app host of a balanced fleet listens on address:port: a start that waited for the unix socket
    file would time out with the server up (tests/test_lb_websocket_e2e.py deploys one)."""
    for cls in (Uvicorn, Daphne, Hypercorn):
        sock = f"test -S /srv/shop/shared/run/{cls.name}.sock"
        alone = "\n".join(cls().reload_lines(asgi_cfg(cls.name), "R", "V", "r"))
        assert sock in alone
        behind = "\n".join(cls().reload_lines(asgi_cfg(cls.name, roles=True), "R", "V", "r"))
        assert sock not in behind and "ready=1; break" in behind
