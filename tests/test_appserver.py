"""The app-server seam: a second app server is one class and one registration line. A made-up one (speaking
HTTP, like gunicorn) registered in SERVERS runs through the whole pipeline (deploy, --plan's scripts,
rollback, the nginx sites, the health check, logs, the fingerprint) without a word of uWSGI in what it builds."""
from __future__ import annotations

import re

import pytest

from fabdeploy.appserver import beside
from fabdeploy import appserver, manager, pipeline
from fabdeploy.appserver.base import AppServer
from fabdeploy.appserver.gunicorn import Gunicorn
from fabdeploy.appserver.uwsgi import UWSGI
from fabdeploy.config.checks import _int
from fabdeploy.config.schema import Key
from fabdeploy.errors import ConfigError
from fabdeploy.front import nginx
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import servers
from fabdeploy.hosts.target import Target
from fabdeploy.local.wheelhouse import venv_hash
from fabdeploy.model import Facts
from fabdeploy.ops.logs import log_files
from fabdeploy.steps import live_check
from fabdeploy.steps.health import check_spec
from fabdeploy.steps.lock import LockOwner
from test_phases import make_cfg, make_rel


class Toy(AppServer):
    name = "toy"
    title = "Toy"
    section = "toy"
    keys = {"workers": Key(2, _int(1, 64)), "reload_timeout": Key(7, _int(1, 600))}
    process = "toyd"
    protocol = "http"
    config_name = "toy.conf"

    def requirement(self, cfg):
        return "toyd==1.0"

    def reload_timeout(self, cfg):
        return cfg.toy.reload_timeout

    def render_config(self, cfg, rel, server=None):
        return (f"bind = {self.listen(cfg, server)}\nchdir = {Layout(cfg.paths.deploy_to).release(rel.id)}\n"
                f"workers = {cfg.toy.workers}\n")

    def reload_lines(self, cfg, release_word, venv_word, label):
        p = self.paths(Layout(cfg.paths.deploy_to))
        return [f"{venv_word}/bin/toyd --config {p.config} --pidfile {p.pidfile} --reload-or-start",
                "action=reloaded; pid=1"]


@pytest.fixture
def toy():
    appserver.SERVERS["toy"] = Toy()
    try:
        yield appserver.SERVERS["toy"]
    finally:
        del appserver.SERVERS["toy"]


def cfg_for(server: str, roles: bool = False):
    if roles:
        return make_cfg(app={"server": server}, roles={"app": [{"host": "deploy@10.0.0.1"}], "lb": ["deploy@10.0.0.9"]})
    return make_cfg(app={"server": server})


def all_scripts(cfg, role: str = "app") -> str:
    """Every remote script a deploy and a rollback of this config would run on a host, as one text, without
    the lines that stop the other registered app servers when a host switches (appserver.retire_lines: they
    name every server on purpose)."""
    target = Target.named(cfg, "web1") if role == "app" else Target.named(cfg, "lb1", "lb")
    owner = LockOwner("deploy", "alice", "a1a1a1a1a1a1a1a1", 1, "now")
    rel = make_rel()
    facts = Facts(python_version="3.11.2", current="/srv/shop/releases/20250101T000000Z-0000000")
    state = pipeline.RunState(cfg, target, owner, rel.id, facts=facts, fingerprint="f" * 20)
    kind = "app" if role == "app" else "lb"
    texts = []
    for name in pipeline.PIPELINES[kind]:
        state.rel = None if name == "setup" else rel
        texts.append(pipeline.script(kind, name, state).text())
    texts.append(pipeline.script("rollback", "rollback", state).text())
    # (the lines that stop whatever other app server or process manager ran here before name them all, by design)
    retire = {ln.strip() for ln in appserver.retire_lines(cfg) + manager.switch_lines(cfg, appserver.of(cfg))
              for ln in ln.splitlines()}
    return "\n".join(ln for ln in "\n".join(texts).splitlines() if ln.strip() not in retire)


def test_the_registered_app_servers_are_the_choices_of_app_server(toy):
    assert appserver.of(cfg_for("toy")) is toy
    assert isinstance(appserver.of(cfg_for("uwsgi")), UWSGI)
    with pytest.raises(ConfigError, match=r'app.server must be "uwsgi" or "gunicorn" or "uvicorn" or "daphne" or "hypercorn" or "toy"'):
        cfg_for("nosuch")


def test_a_second_app_server_brings_its_own_config_section(toy):
    cfg = make_cfg(app={"server": "toy"}, toy={"workers": 5})
    assert "workers = 5" in toy.render_config(cfg, make_rel())
    assert toy.reload_timeout(cfg) == 7
    with pytest.raises(ConfigError, match=r"toy.workers"):
        make_cfg(app={"server": "toy"}, toy={"workers": 0})
    with pytest.raises(ConfigError, match=r"unknown key toy.threads"):
        make_cfg(app={"server": "toy"}, toy={"threads": 2})


def test_uwsgi_is_the_default():
    assert appserver.of(make_cfg()).name == "uwsgi"


def test_a_second_app_server_runs_through_the_whole_pipeline_without_uwsgi(toy):
    cfg = cfg_for("toy")
    text = all_scripts(cfg)
    assert "toyd --config /srv/shop/shared/config/toy.conf --pidfile /srv/shop/shared/run/toy.pid" in text
    assert f"/srv/shop/releases/{make_rel().id}/.fabdeploy/toy.conf" in text  # staged in the release
    assert "/srv/shop/shared/run/toy.pid toyd" in text  # "already live" and cleanup look for its master
    assert not re.search("uwsgi", text, re.I), [ln for ln in text.splitlines() if re.search("uwsgi", ln, re.I)]
    # nginx speaks HTTP to it, on its own socket
    site = nginx.nginx_site(cfg)
    assert "proxy_pass http://unix:/srv/shop/shared/run/toy.sock:;" in site
    assert "X-Forwarded-Proto $scheme" in site and "uwsgi" not in site
    # its pip requirement is in the virtualenv (and so in its hash) and in the fingerprint
    assert venv_hash(cfg, b"django\n", "3.11.2") != venv_hash(cfg_for("uwsgi"), b"django\n", "3.11.2")
    assert live_check.fingerprint(cfg, "abc", b"") != live_check.fingerprint(cfg_for("uwsgi"), "abc", b"")
    assert log_files(cfg)["app"] == "/srv/shop/shared/log/toy.log"


def test_behind_a_balancer_the_second_app_server_listens_on_tcp_and_is_checked_in_http(toy):
    cfg = cfg_for("toy", roles=True)
    app = [s for s in servers(cfg) if s.role == "app"][0]
    assert toy.render_config(cfg, make_rel(), app).startswith("bind = 10.0.0.1:")
    assert check_spec(cfg, "10.0.0.1", app)["proto"] == "http"
    lb = nginx.lb_site(cfg)
    assert "proxy_pass http://shop_app;" in lb and "proxy_next_upstream error timeout;" in lb
    assert "uwsgi" not in lb
    assert not re.search("uwsgi", all_scripts(cfg, "lb"), re.I)


def test_uwsgi_keeps_its_socket_pidfile_and_ini_where_they_were():
    p = UWSGI().paths(Layout("/srv/shop"))
    assert (p.socket, p.pidfile, p.log, p.config) == (
        "/srv/shop/shared/run/uwsgi.sock", "/srv/shop/shared/run/uwsgi.pid", "/srv/shop/shared/log/uwsgi.log",
        "/srv/shop/shared/config/uwsgi.ini")


# gunicorn: the second real app server (its e2e proof: tests/test_gunicorn_e2e.py)

def gunicorn_cfg(roles: bool = False, **sections):
    if roles:
        return make_cfg(app={"server": "gunicorn"}, roles={"app": [{"host": "deploy@10.0.0.1"}], "lb": ["deploy@10.0.0.9"]},
                        **sections)
    return make_cfg(app={"server": "gunicorn"}, **sections)


def test_gunicorn_is_registered_with_its_own_section():
    cfg = gunicorn_cfg(gunicorn={"workers": 3, "package": "gunicorn==27.0.1"})
    app = appserver.of(cfg)
    assert isinstance(app, Gunicorn) and app.protocol == "http" and app.requirement(cfg) == "gunicorn==27.0.1"
    assert app.reload_timeout(cfg) == 60
    with pytest.raises(ConfigError, match=r"gunicorn.workers"):
        gunicorn_cfg(gunicorn={"workers": 0})
    with pytest.raises(ConfigError, match=r"unknown key gunicorn.processes"):
        gunicorn_cfg(gunicorn={"processes": 2})


def test_gunicorn_config_runs_the_release_itself_with_the_production_settings():
    cfg = gunicorn_cfg(gunicorn={"workers": 3, "threads": 1, "options": {"limit-request-line": 8190}},
                       django={"env": {"API_TOKEN": "it's 50%"}})
    rel = make_rel()
    text = Gunicorn().render_config(cfg, rel)
    ns: dict = {}
    exec(compile(text.split("# fabdeploy finds the master")[0], "gunicorn.conf.py", "exec"), ns)  # plain Python
    assert ns["chdir"] == f"/srv/shop/releases/{rel.id}" and ns["wsgi_app"] == "shop.wsgi:application"
    assert ns["raw_env"] == ["DJANGO_SETTINGS_MODULE=fabdeploy_settings", f"FABDEPLOY_RELEASE={rel.id}",
                             "API_TOKEN=it's 50%"]
    assert ns["bind"] == ["unix:/srv/shop/shared/run/gunicorn.sock"] and ns["umask"] == 0o117
    assert (ns["workers"], ns["worker_class"], ns["daemon"], ns["preload_app"]) == (3, "sync", True, True)
    assert ns["pidfile"] == "/srv/shop/shared/run/gunicorn.pid" and ns["errorlog"] == "/srv/shop/shared/log/gunicorn.log"
    assert ns["limit_request_line"] == 8190
    assert "current" not in ns["chdir"]
    threaded = Gunicorn().render_config(gunicorn_cfg(gunicorn={"threads": 4}), rel)
    assert "threads = 4" in threaded and "worker_class = 'gthread'" in threaded
    # --plan masks the user's env values, not the two fabdeploy sets
    masked = [m.group(2) for m in map(Gunicorn.env_line.match, text.splitlines()) if m]
    assert masked == ["API_TOKEN"]


def test_gunicorn_behind_a_balancer_binds_address_and_port_and_is_checked_in_http():
    cfg = gunicorn_cfg(roles=True)
    app = [s for s in servers(cfg) if s.role == "app"][0]
    assert "bind = ['10.0.0.1:" in Gunicorn().render_config(cfg, make_rel(), app)
    assert check_spec(cfg, "10.0.0.1", app)["proto"] == "http"
    assert "proxy_pass http://shop_app;" in nginx.lb_site(cfg)


def test_gunicorn_reload_is_the_usr2_upgrade_then_the_old_master_stops():
    # (where it listens on address:port, behind balancers; on a unix socket it starts beside: test_beside.py)
    cfg = gunicorn_cfg(roles=True)
    switch = set(manager.switch_lines(cfg, Gunicorn()))  # (names every server and manager, by design)
    lines = "\n".join(ln for ln in Gunicorn().reload_lines(cfg, "'/srv/shop/releases/X'", "'/srv/shop/venvs/h'", "X")
                      if ln not in switch)
    # python and bin/gunicorn through the link to this release's virtualenv: the USR2 re-exec runs them again
    assert ("ln -sfn '/srv/shop/venvs/h' /srv/shop/shared/config/gunicorn-venv.tmp && "
            "mv -Tf /srv/shop/shared/config/gunicorn-venv.tmp /srv/shop/shared/config/gunicorn-venv") in lines
    assert ("/srv/shop/shared/config/gunicorn-venv/bin/python /srv/shop/shared/config/gunicorn-venv/bin/gunicorn "
            "-c /srv/shop/shared/config/gunicorn.conf.py") in lines
    usr2, term = lines.index('${ASAPP-} kill -USR2 "$oldm"'), lines.index('${ASAPP-} kill -TERM "$oldm"')
    wait = lines.index("""[ "$(${ASAPP-} readlink "/proc/$c/cwd" 2>/dev/null)" = '/srv/shop/releases/X' ]""")
    assert usr2 < wait < term  # the old master stops only once every new worker runs the release
    assert "kill -HUP" not in lines and "uwsgi" not in lines.lower()


def test_gunicorn_whole_pipeline_and_site_without_uwsgi():
    cfg = gunicorn_cfg()
    text = all_scripts(cfg)
    assert "/srv/shop/shared/run/gunicorn.pid gunicorn" in text  # "already live" and cleanup find its master
    assert f"/srv/shop/releases/{make_rel().id}/.fabdeploy/gunicorn.conf.py" in text
    assert not re.search("uwsgi", text, re.I), [ln for ln in text.splitlines() if re.search("uwsgi", ln, re.I)]
    site = nginx.nginx_site(cfg)
    assert "proxy_pass http://unix:/srv/shop/shared/run/gunicorn.sock:;" in site and "uwsgi" not in site
    for header in ("Host $http_host", "X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme"):
        assert f"proxy_set_header {header};" in site
    assert log_files(cfg)["app"] == "/srv/shop/shared/log/gunicorn.log"


def seam_cfgs():
    """Every app server under every process manager that can run it (make_cfg configs)."""
    for name, server in appserver.SERVERS.items():
        for mgr_name, mgr in manager.MANAGERS.items():
            if mgr.refuse(server) or (mgr_name == "emperor" and name != "uwsgi"):
                continue
            app = {"server": name, "manager": mgr_name}
            if server.interface == "asgi":
                app["asgi"] = "shop.asgi:application"
            yield make_cfg(app=app)


def test_every_server_waits_for_readiness_with_the_one_loop_of_the_seam():
    """AppServer.ready_lines is the readiness wait of every app server under every manager: one loop per
    start or reload, the seam's own text (each server only says how its pid, workers and socket are found)."""
    seen = set()
    for cfg in seam_cfgs():
        app = appserver.of(cfg)
        lines = app.reload_lines(cfg, "'/r'", "'/v'", "X")
        loop = 'for c in $(workers "$pid"); do'
        assert [ln.strip() for ln in lines].count(loop) == 1, (app.name, cfg.app.manager)
        start = next(i for i, ln in enumerate(lines) if ln.strip() in ("i=0; ready=; gone=0; n=0",
                                                                      "i=$late; ready=; gone=0; n=0"))
        wait = app.ready_lines(cfg, "'/r'", "X")[1:]
        # (beside: after the fast path waited the whole reload_timeout for an early master, no second wait)
        assert ("$late" in lines[start]) == beside.applies(cfg, app)
        if beside.applies(cfg, app):  # (the master started beside the live one, in its slot)
            assert lines[start + 2].strip() == f'pid=$(alive /srv/shop/shared/run/{app.name}.pid."$s" {app.process} || true)'
        elif app.name == "gunicorn" and cfg.app.manager == "pidfile":  # (the new master of a USR2 upgrade)
            assert lines[start + 2].startswith("  pid=$(alive /srv/shop/shared/run/gunicorn.pid.2 gunicorn")
        else:
            assert lines[start:start + len(wait)] == wait, (app.name, cfg.app.manager)
        assert f'echo "{app.title} did not come up serving X within {app.reload_timeout(cfg)}s; last lines of ' \
               f'{app.paths(Layout(cfg.paths.deploy_to)).log}:" >&2' in [ln.strip() for ln in lines]
        seen.add((app.name, cfg.app.manager))
    assert {("uwsgi", "emperor"), ("gunicorn", "systemd"), ("uvicorn", "pidfile"), ("daphne", "pidfile")} <= seen


def test_a_server_switch_and_a_manager_switch_stop_the_old_server_with_the_same_block():
    """AppServer.stop_if_present_lines: appserver.retire_lines (another server) and manager.switch_lines
    (another manager) both stop an app server whose pidfile or socket is there with it."""
    cfg = make_cfg(app={"server": "gunicorn", "manager": "supervisor"})
    retire = appserver.retire_lines(cfg)
    switch = manager.switch_lines(cfg, appserver.of(cfg))
    for name in ("uwsgi", "uvicorn", "daphne", "hypercorn"):
        block = appserver.SERVERS[name].stop_if_present_lines(cfg)
        assert block[0] == (f'case "$present" in *" "/srv/shop/shared/run/{name}.pid" "* | '
                            f'*" "/srv/shop/shared/run/{name}.sock" "*)')
        i = retire.index("  " + block[0])
        assert retire[i:i + len(block)] == ["  " + ln for ln in block]
    pidfile_block = ["    " + ln for ln in UWSGI().stop_if_present_lines(cfg, manager.MANAGERS["pidfile"])]
    i = switch.index(pidfile_block[0])
    assert switch[i:i + len(pidfile_block)] == pidfile_block
    assert sum(ln.strip().startswith('present=" $(') for ln in retire + switch) == 2  # (one listing each)
