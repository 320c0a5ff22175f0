"""`fab provision`'s services end to end (real fab, one lab host, tests in order): with `[app] manager =
"supervisor"` and `[cache] redis = true, sessions = true`, provision as root installs redis-server (a real
`apt-get install` into the host's private dpkg database, pkglab.py), starts supervisord, writes the Redis
password (0600, the deploy user's; never printed), binds Redis to 127.0.0.1 with it and starts the
distribution's daemonized redis-server (its pidfile and data in the host's private /run and /var/lib/redis),
and installs the `fab sudoers` drop-in (visudo clean, 0440). A second run changes nothing. Then the lab's
`ALL` grant is removed: the deploy user, limited to the drop-in, deploys the sample project under
supervisor, and Django's cache and sessions round-trip through the real Redis. Last, a drop-in visudo
refuses ([provision] sudoers_file) is never installed: /etc/sudoers.d is as it was and sudo still works."""
from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace

import pytest

import hostlab
import pkglab
from conftest import make_project, run_fab, sample_config

D = "/srv/sample"
DROP_IN = "/etc/sudoers.d/fabdeploy-sample"
PASSWORD = f"{D}/shared/config/redis.password"
EXTRA = '[app]\nmanager = "supervisor"\n[cache]\nredis = true\nsessions = true\n[django]\nenv = { GREETING = "hi" }\n'


@pytest.fixture(scope="module")
def sv(make_host, tmp_path_factory, wheel_cache):
    host = make_host("provsvc")
    repo = pkglab.private_apt(host)
    pkglab.assert_private(host)
    pkglab.forget(host, "redis-server")  # the host believes it is missing: a real apt-get install of it
    pkglab.fake_deb(repo, "redis-server", pkglab.machine_version("redis-server") + "+lab1")
    pkglab.allow_root(host)
    proj = make_project(tmp_path_factory.mktemp("provsvc"))
    proj.write_config(sample_config(host, extra=EXTRA))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, outputs=[])


def fab(sv, *args, root=False):
    res = run_fab(sv.proj.root, *(["-H", f"root@{sv.host.address}"] if root else []), *args, cache=sv.cache)
    sv.outputs.append(res.stdout + res.stderr)
    return res


def sh(sv, command: str, **kw) -> str:
    return sv.host.exec(command, **kw).stdout.strip()


def password(sv) -> str:
    return sv.host.path(PASSWORD).read_text().strip()


def changed(stdout: str) -> list[str]:
    return [ln for ln in stdout.splitlines() if re.search(r": (changed|would change): ", ln)]


def redis_cli(sv, *args: str, auth: bool = True) -> str:
    env = f"REDISCLI_AUTH={password(sv)} " if auth else ""
    return sh(sv, f"{env}redis-cli -h 127.0.0.1 {' '.join(args)} 2>&1", check=False)


def test_provision_installs_starts_and_limits(sv):
    res = fab(sv, "provision", "--verbose", root=True)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for line in ("packages: changed: installed redis-server",
                 "manager: changed: supervisor enabled and started (app.manager = supervisor)",
                 f"redis-password: changed: {PASSWORD} holds the Redis password (0600)",
                 "redis-config: changed: Redis bound to 127.0.0.1:6379 with a password",
                 "redis: changed: Redis enabled and (re)started with its password",
                 f"sudoers: changed: {DROP_IN} installed (visudo -c clean)"):
        assert line in out, out
    h = sv.host
    assert pkglab.installed_version(h, "redis-server").startswith("installed ")
    # supervisord answers (started by provision: the lab host ran none)
    assert h.exec("supervisorctl pid").returncode == 0
    # the drop-in: root's, 0440, visudo clean with the whole configuration, and it names the project's commands
    assert sh(sv, f"stat -c %U:%G:%a {DROP_IN}") == "root:root:440"
    assert h.exec(["visudo", "-c"], check=False).returncode == 0
    assert "deploy ALL=(root) NOPASSWD: FABDEPLOY_SAMPLE" in h.path(DROP_IN).read_text()
    assert not [p.name for p in h.path("/etc/sudoers.d").iterdir() if p.name.startswith(".")]
    # Redis: the distribution's daemon, as redis, from its pidfile; bound to 127.0.0.1 only; the password
    pid = h.path("/run/redis/redis-server.pid").read_text().strip()
    assert sh(sv, f"stat -c %U /proc/{pid}") == "redis"
    assert sh(sv, f"stat -c %U:%a {PASSWORD}") == "deploy:600"
    pw = password(sv)
    assert re.fullmatch(r"[0-9a-f]{48}", pw)
    assert "NOAUTH" in redis_cli(sv, "ping", auth=False)  # a client without the password is refused
    assert redis_cli(sv, "ping") == "PONG"
    assert "refused" in sh(sv, f"redis-cli -h {h.address} ping 2>&1", check=False).lower()
    assert pw not in res.stdout + res.stderr  # (--verbose: the script shown, no password in it)
    sv.password = pw


def test_a_second_provision_changes_nothing(sv):
    res = fab(sv, "provision", root=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert changed(res.stdout) == [], res.stdout
    assert re.search(r"Debian GNU/Linux 12 \(bookworm\)\s+0\s+ok$", res.stdout, re.M), res.stdout
    assert "sudoers: ok" in res.stdout and "redis: ok" in res.stdout and "manager: ok" in res.stdout
    assert password(sv) == sv.password  # the same password: nothing to restart


def test_the_deploy_user_limited_to_the_drop_in_deploys_under_supervisor(sv):
    sv.host.path(str(hostlab.SUDOERS_FILE)).unlink()  # the lab's ALL grant: only the drop-in is left
    assert sv.host.exec(["sudo", "-n", "/usr/bin/id"], user="deploy", check=False).returncode != 0
    res = fab(sv, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sv.host.http("/", host_header=sv.host.address)[0] == 200
    pid = int(sh(sv, "supervisorctl pid sample"))  # the program's process, run by supervisord
    assert pid > 0 and "uwsgi" in sh(sv, f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    env = sv.host.path(f"{D}/shared/config/app.env").read_text()
    assert f"REDIS_URL=redis://:{password(sv)}@127.0.0.1:6379/0" in env.splitlines()
    res = fab(sv, "deploy", "--plan")  # REDIS_URL is the host's own: not a difference
    assert res.returncode == 0 and "--- app.env: unchanged" in res.stdout, res.stdout + res.stderr


CACHE = ("from django.core.cache import cache; from django.conf import settings; "
         "from django.contrib.sessions.backends.cache import SessionStore; "
         "cache.set('roundtrip', 'via-redis-42'); s = SessionStore(); s['who'] = 'lab'; s.save(); "
         "print(settings.CACHES['default']['BACKEND'], settings.SESSION_ENGINE); "
         "print('got', cache.get('roundtrip'), 'session', s.session_key, 'from-cli', cache.get('fromcli'))")


def test_the_cache_and_sessions_round_trip_through_the_real_redis(sv):
    # a value put into the host's Redis by redis-cli (Django stores ints as they are), read by Django below
    assert redis_cli(sv, "set", "sample:1:fromcli", "4242") == "OK"
    res = fab(sv, "manage", "--", "shell", "-c", CACHE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("django.core.cache.backends.redis.RedisCache django.contrib.sessions.backends.cache"
            in res.stdout.splitlines()), res.stdout
    m = re.search(r"^got via-redis-42 session (\w+) from-cli 4242$", res.stdout, re.M)
    assert m, res.stdout
    # what Django wrote is in the host's Redis (KEY_PREFIX "sample", version 1), read with redis-cli
    assert redis_cli(sv, "exists", "sample:1:roundtrip") == "1"
    keys = redis_cli(sv, "--scan", "--pattern", "'sample:*'").splitlines()
    assert "sample:1:roundtrip" in keys
    assert f"sample:1:django.contrib.sessions.cache{m.group(1)}" in keys, keys
    # fab secrets knows REDIS_URL as the host's own
    res = fab(sv, "secrets")
    assert re.search(r"REDIS_URL\s+set on the host \(cache\.redis\)", res.stdout), res.stdout + res.stderr


def test_a_drop_in_visudo_refuses_is_never_left_in_place(sv):
    h = sv.host
    before = sorted(p.name for p in h.path("/etc/sudoers.d").iterdir())
    digest = hashlib.sha256(h.path(DROP_IN).read_bytes()).hexdigest()
    (sv.proj.root / "broken.sudoers").write_text("deploy ALL=(root) NOPASSWD /usr/bin/id\n")  # (no ':')
    sv.proj.write_config(sample_config(h, extra=EXTRA + '[provision]\nsudoers_file = "broken.sudoers"\n'))
    res = fab(sv, "provision", root=True)
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "step sudoers failed" in err[0] and "visudo -c refused the drop-in" in err[0], err
    assert "Traceback" not in res.stderr
    assert sorted(p.name for p in h.path("/etc/sudoers.d").iterdir()) == before
    assert hashlib.sha256(h.path(DROP_IN).read_bytes()).hexdigest() == digest
    assert h.exec(["visudo", "-c"], check=False).returncode == 0
    # sudo still works: the deploy user's drop-in commands
    assert h.exec(["sudo", "-n", "/usr/sbin/nginx", "-t"], user="deploy", check=False).returncode == 0
    assert sv.host.http("/", host_header=sv.host.address)[0] == 200


def test_manager_systemd_on_a_host_without_systemd_is_one_line(sv):
    sv.proj.write_config(sample_config(sv.host, extra=EXTRA.replace('"supervisor"', '"systemd"')))
    res = fab(sv, "provision", root=True)
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and 'step manager failed (systemd is not running): app.manager = "systemd" needs systemd ' \
        "running as the host's init" in err[0], err
    assert "manager: changed" not in res.stdout


def test_nothing_printed_the_password(sv):
    pw = password(sv)
    assert sv.outputs and not [o for o in sv.outputs if pw in o]


def test_under_systemd_supervisor_and_redis_are_enabled_with_systemctl(make_host, tmp_path):
    """A host whose PID 1 is systemd (the machine's packages: nothing to install): supervisor and redis-server
    disabled and stopped there first; provision (as the deploy user, sudo) enables and starts both with
    systemctl, Redis under its unit with the password; the next run changes nothing."""
    host = make_host("provsvd", init="systemd")
    host.systemctl("disable", "--now", "supervisor", "redis-server")
    proj = make_project(tmp_path)
    proj.write_config(sample_config(host, extra=EXTRA))
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "manager: changed: supervisor enabled and started" in res.stdout, res.stdout
    assert "redis: changed: Redis enabled and (re)started with its password" in res.stdout, res.stdout
    for unit in ("supervisor", "redis-server"):
        assert host.systemctl("is-enabled", unit).stdout.strip() == "enabled", unit
        assert host.systemctl("is-active", unit).stdout.strip() == "active", unit
    pw = host.path(PASSWORD).read_text().strip()
    cli = "redis-cli -h 127.0.0.1 ping 2>&1"
    assert "NOAUTH" in host.exec(cli, check=False).stdout
    assert host.exec(f"REDISCLI_AUTH={pw} {cli}", check=False).stdout.strip() == "PONG"
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0 and changed(res.stdout) == [], res.stdout + res.stderr
    assert pw not in res.stdout + res.stderr
    # app.manager = "systemd" here: systemd runs, the step is ok (the drop-in changes: other root commands)
    proj.write_config(sample_config(host, extra=EXTRA.replace('"supervisor"', '"systemd"')))
    res = run_fab(proj.root, "provision")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "manager: ok" in res.stdout and [ln.split()[1] for ln in changed(res.stdout)] == ["sudoers:"], \
        res.stdout
