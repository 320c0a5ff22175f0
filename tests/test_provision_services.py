"""Unit tests of provision's services and [cache]: the config keys, the package plan, the step builders
(the sudoers drop-in's name and source, the process manager per config), the settings overlay's CACHES and
the deploy's REDIS_URL line (its shell run by a real sh on files under tmp_path)."""
from __future__ import annotations

import subprocess

import pytest

from fabdeploy.config import parse_config
from fabdeploy.errors import ConfigError
from fabdeploy.local.render import render
from fabdeploy.local.wheelhouse import venv_hash
from fabdeploy.ops import secrets
from fabdeploy.ops.sudoers import drop_in
from fabdeploy.provision import manager_service, packages, redis, sudoers, system
from fabdeploy.steps import code

BASE = {"project": {"name": "mysite", "django_settings": "m.settings", "wsgi": "m.wsgi:application"},
        "paths": {"deploy_to": "/srv/mysite"}, "pip": {"wheelhouse": True}}
DEB = system.detect({"ID": "debian", "VERSION_ID": "12"})
ROCKY9 = system.detect({"ID": "rocky", "ID_LIKE": "rhel centos fedora", "VERSION_ID": "9.3"})


def cfg(path=None, **sections):
    raw = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw, path)


def test_cache_keys_default_off_and_sessions_need_redis():
    c = cfg()
    assert (c.cache.redis, c.cache.sessions) == (False, False)
    with pytest.raises(ConfigError, match=r"^cache.sessions = true needs cache.redis = true"):
        cfg(cache={"sessions": True})
    with pytest.raises(ConfigError, match=r"cache.redis must be true or false"):
        cfg(cache={"redis": "yes"})


def test_redis_is_refused_for_several_app_hosts():
    with pytest.raises(ConfigError, match=r"^cache.redis = true with 2 app hosts"):
        cfg(cache={"redis": True}, roles={"app": ["a1", "a2"], "lb": ["lb"]})


def test_redis_joins_the_venv_packages_and_its_hash():
    off, on = cfg(), cfg(cache={"redis": True})
    assert on.pip.packages == ["redis"] and off.pip.packages == []
    assert venv_hash(on, b"Django\n", "3.11.2") != venv_hash(off, b"Django\n", "3.11.2")
    assert cfg(cache={"redis": True}, pip={"packages": ["redis[hiredis]>=5"]}).pip.packages == ["redis[hiredis]>=5"]
    assert cfg(cache={"redis": True}, pip={"packages": ["redis-lock"]}).pip.packages == ["redis-lock", "redis"]


def test_the_package_plan_adds_the_redis_server_on_app_hosts():
    c = cfg(cache={"redis": True})
    assert packages.plan(c, DEB)[-1] == "redis-server"
    assert packages.plan(c, ROCKY9)[-1] == "redis"
    assert "redis-server" not in packages.plan(c, DEB, "lb")
    assert redis.redis_steps(c, DEB, "lb") == [] and redis.redis_steps(cfg(), DEB, "app") == []
    assert [s.name for s in redis.redis_steps(c, DEB, "app")] == ["redis-password", "redis-config", "redis"]


def test_the_process_manager_step_per_config():
    def names(manager, system_=DEB, role="app"):
        return [(s.name, s.what) for s in manager_service.manager_steps(cfg(app={"manager": manager}), system_, role)]
    assert names("supervisor") == [("manager", "supervisor enabled and started (app.manager = supervisor)")]
    assert names("supervisor", ROCKY9)[0][1].startswith("supervisord enabled")
    assert names("pidfile")[0][1].startswith("cron enabled") and names("pidfile", ROCKY9)[0][1].startswith("crond")
    assert names("systemd") == [("manager", "systemd is not running")]
    assert names("emperor") == [] and names("supervisor", role="lb") == []


def test_the_drop_in_name_sudo_reads():
    assert sudoers.drop_in_path(cfg()) == "/etc/sudoers.d/fabdeploy-mysite"
    assert sudoers.drop_in_path(cfg(project={"name": "my.site"})) == "/etc/sudoers.d/fabdeploy-my_site"


def test_the_sudoers_step_is_on_by_default_and_can_be_turned_off():
    (st,) = sudoers.sudoers_steps(cfg())
    assert st.name == "sudoers" and "deploy ALL=(root) NOPASSWD: FABDEPLOY_MYSITE" in "\n".join(st.apply)
    assert "/usr/sbin/visudo -c -f" in "\n".join(st.apply)
    # the text is put together on the host, with the host's nginx group (this machine's nginx.conf: www-data)
    res = subprocess.run(["sh", "-c", "\n".join([*st.check[:2], 'printf "%s" "$want"'])], capture_output=True,
                         text=True, check=True)
    assert res.stdout == drop_in(cfg(), "deploy", "www-data").rstrip("\n")
    assert sudoers.sudoers_steps(cfg(provision={"sudoers": False})) == []
    (emperor,) = sudoers.sudoers_steps(cfg(app={"manager": "emperor"}))
    assert emperor.skip.startswith('app.manager = \'emperor\' needs more than a drop-in lists')


def test_a_sudoers_file_is_read_beside_the_config(tmp_path):
    (tmp_path / "mine.sudoers").write_text("deploy ALL=(root) NOPASSWD: /usr/bin/true")
    c = cfg(tmp_path / "deploy.toml", provision={"sudoers_file": "mine.sudoers"})
    assert sudoers.drop_in_text(c) == "deploy ALL=(root) NOPASSWD: /usr/bin/true\n"
    c = cfg(tmp_path / "deploy.toml", provision={"sudoers_file": "missing.sudoers"})
    with pytest.raises(ConfigError, match=r"^provision.sudoers_file missing.sudoers: cannot read it"):
        sudoers.sudoers_steps(c)


def overlay(c) -> str:
    return render("settings.py.j2", release_id="R1", django_settings="m.settings", shared="/srv/mysite/shared",
                  allowed_hosts=["x"], static_url="/static/", media_url="/media/", cache=c.cache,
                  name=c.project.name)


def test_the_settings_overlay_sets_caches_and_sessions_from_redis_url():
    on = overlay(cfg(cache={"redis": True, "sessions": True}))
    assert '"django.core.cache.backends.redis.RedisCache"' in on and '_os.environ["REDIS_URL"]' in on
    assert "\"KEY_PREFIX\": 'mysite'" in on
    assert 'SESSION_ENGINE = "django.contrib.sessions.backends.cache"' in on
    assert "SESSION_ENGINE" not in overlay(cfg(cache={"redis": True}))
    assert "CACHES" not in overlay(cfg())
    compile(on, "fabdeploy_settings.py", "exec")


def test_the_deploy_writes_redis_url_from_the_hosts_password(tmp_path):
    c = cfg(paths={"deploy_to": str(tmp_path / "site")}, django={"env": {"GREETING": "hi"}}, cache={"redis": True})
    conf = tmp_path / "site" / "shared" / "config"
    conf.mkdir(parents=True)
    env = conf / "app.env"
    script = "set -e\n" + "\n".join(code.env_file_lines(c, str(env)))
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert res.returncode != 0 and not env.exists()
    assert "cache.redis = true but" in res.stderr and "run `fab provision`" in res.stderr
    (conf / "redis.password").write_text("ab12\n")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert env.read_text() == "GREETING=hi\nREDIS_URL=redis://:ab12@127.0.0.1:6379/0\n"
    assert oct(env.stat().st_mode & 0o777) == "0o600" and not (conf / "app.env.new").exists()
    assert code.env_file_lines(cfg(), str(env))[-1].startswith("mv -f")  # (off: the plain write)
    assert "REDIS_URL" not in "\n".join(code.env_file_lines(cfg(), str(env)))


def test_fab_secrets_knows_redis_url_as_the_hosts_own():
    c = cfg(cache={"redis": True})
    key = "00" * 32
    assert secrets.compare(c, {"names": {"REDIS_URL": "x"}}, key) == [("REDIS_URL", "set on the host (cache.redis)")]
    assert secrets.compare(c, {"names": {}}, key) == [("REDIS_URL", "missing")]
    assert secrets.compare(cfg(), {"names": {"REDIS_URL": "x"}}, key) == [("REDIS_URL", "not configured")]
