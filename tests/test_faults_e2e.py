"""Fault injection on real hosts: every failure leaves the last good release serving through nginx, media
intact, no lock held, and one clear message naming host and phase."""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import FAB, make_project, release_of, run_fab, sample_config

MEDIA = b"uploaded before the faults"
RAISING_MIGRATION = '''from django.db import migrations


def boom(apps, schema_editor):
    raise RuntimeError("migration exploded on purpose")


class Migration(migrations.Migration):
    dependencies = [("pages", "0001_initial")]
    operations = [migrations.RunPython(boom)]
'''


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("faults")
    proj = make_project(tmp_path_factory.mktemp("faults"))
    proj.write_config(sample_config(host))
    env = SimpleNamespace(host=host, proj=proj, cache=wheel_cache)
    res = fab(env, "deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    env.good = release_of(res.stdout)
    status, _, body = host.http("/upload", host_header=host.address, method="POST",
                                body=(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.txt\"\r\n"
                                      b"Content-Type: text/plain\r\n\r\n" + MEDIA + b"\r\n--B--\r\n"),
                                headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert status == 200
    env.media = body.decode().strip()
    env.releases = releases(env)
    return env


def fab(env, *args, config="deploy.toml"):
    return run_fab(env.proj.root, "deploy" if not args else args[0], *args[1:], "--config", config,
                   cache=env.cache)


def releases(env) -> list[str]:
    return sorted(p.name for p in env.host.path("/srv/sample/releases").iterdir())


def assert_intact(env, res=None, *needles):
    """The last good release still serves, media intact, no lock, nothing half-built left; the message."""
    host = env.host
    status, headers, body = host.http("/", host_header=host.address)
    assert status == 200 and f"Release: {env.good}".encode() in body, body[:300]
    status, _, body = host.http("/media/" + env.media, host_header=host.address)
    assert status == 200 and body == MEDIA
    status, _, css = host.http("/static/pages/site.css", host_header=host.address)
    assert status == 200 and b"fabdeploy-sample-css" in css
    assert not host.path("/srv/sample/.fabdeploy-lock").exists()
    assert os.path.basename(os.readlink(host.path("/srv/sample/current"))) == env.good
    assert releases(env) == env.releases
    if res is not None:
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "Traceback" not in out, out
        for needle in needles:
            assert needle in out, f"{needle!r} not in:\n{out}"


def with_change(env, files: dict, config_extra: str = "", name="fault.toml"):
    env.proj.commit("fault", files)
    env.proj.write_config(sample_config(env.host, extra=config_extra), name=name)
    return name


def restore_source(env):
    """Back to the good revision's files (a new commit), so the next fault starts from it."""
    subprocess.run(["git", "-C", str(env.proj.src), "-c", "user.name=t", "-c", "user.email=t@t", "revert",
                    "--no-edit", "HEAD"], check=True, capture_output=True)


def test_1_migration_that_raises(site):
    cfgname = with_change(site, {"pages/migrations/0002_boom.py": RAISING_MIGRATION})
    res = fab(site, "deploy", config=cfgname)
    assert_intact(site, res, f"{site.host.address}: django failed", "migration exploded on purpose")
    restore_source(site)


def test_2a_requirement_that_cannot_be_built_here(site):
    req = (site.proj.src / "requirements.txt").read_text()
    cfgname = with_change(site, {"requirements.txt": req + "no-such-package-fabdeploy-test==1.0\n"})
    res = fab(site, "deploy", config=cfgname)
    assert_intact(site, res, "wheelhouse: pip wheel failed", "no-such-package-fabdeploy-test")
    restore_source(site)


def test_2b_requirement_that_the_host_cannot_install(site):
    # no wheelhouse: the host's pip must fetch from an index that has nothing (a file:// index, no network)
    cfgname = with_change(site, {"pages/message.txt": "needs a new venv\n"}, config_extra="")
    text = (site.proj.root / cfgname).read_text().replace("wheelhouse = true",
                                                          'wheelhouse = false\nindex_url = "file:///nonexistent-index"')
    (site.proj.root / cfgname).write_text(text)
    res = fab(site, "deploy", config=cfgname)
    assert_intact(site, res, f"{site.host.address}: venv failed")
    restore_source(site)


def test_3_app_that_fails_to_import(site):
    views = (site.proj.src / "pages" / "views.py").read_text()
    cfgname = with_change(site, {"pages/views.py": "import no_such_module_fabdeploy  # broken on purpose\n" + views})
    res = fab(site, "deploy", config=cfgname)
    assert_intact(site, res, "does not import with the production settings", "no_such_module_fabdeploy")
    restore_source(site)


def test_4_nginx_template_that_fails_nginx_t(site):
    (site.proj.root / "bad-site.conf.j2").write_text(
        "server {\n    listen {{ listen }};\n    server_name {{ server_name }};\n    bogus_directive on;\n}\n")
    cfgname = with_change(site, {"pages/message.txt": "new text\n"}, '[nginx]\ntemplate = "bad-site.conf.j2"\n')
    text = (site.proj.root / cfgname).read_text()
    # merge the two [nginx] tables the helper produced
    text = text.replace('[nginx]\ntemplate = "bad-site.conf.j2"\n', "").replace(
        "[nginx]\n", '[nginx]\ntemplate = "bad-site.conf.j2"\n', 1)
    (site.proj.root / cfgname).write_text(text)
    res = fab(site, "deploy", config=cfgname)
    assert_intact(site, res, "config failed", "bogus_directive", "previous nginx config was restored")
    site_file = site.host.path("/etc/nginx/sites-available/sample").read_text()
    assert "bogus_directive" not in site_file and "uwsgi_pass" in site_file
    restore_source(site)


def slow_deploy(env, hook: str, seconds: int, sigint_ignored: bool = False):
    """Start a deploy whose `hook` signals it started (a file in the host's /tmp) and then sleeps;
    `sigint_ignored`: fab inherits SIGINT ignored, as `fab deploy &` started by a script does."""
    flag = env.host.path("/tmp/fabdeploy-test-in-hook")
    flag.unlink(missing_ok=True)
    name = with_change(env, {"pages/message.txt": f"slow {hook}\n"},
                       f'[hooks]\n{hook} = ["touch /tmp/fabdeploy-test-in-hook", "sleep {seconds}"]\n',
                       name="slow.toml")
    proc = subprocess.Popen([FAB, "deploy", "--config", name], cwd=env.proj.root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "XDG_CACHE_HOME": str(env.cache)},
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)
    deadline = time.monotonic() + 90
    while not flag.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the hook never ran"
        time.sleep(0.1)
    return proc


def no_sleep_left(env) -> bool:
    comms = [env.host.exec(["cat", f"/proc/{p}/comm"], check=False).stdout.strip() for p in env.host.pids()]
    return "sleep" not in comms


def wait_until_no_sleep(env, seconds: float = 10) -> None:
    """The remote half was stopped: no hook `sleep` left (bounded wait: killed processes may take a moment
    to be reaped in the namespace)."""
    deadline = time.monotonic() + seconds
    while not no_sleep_left(env) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert no_sleep_left(env)


def test_5_ssh_connection_killed_during_upload(site):
    # before_code sleeps while the archive waits on stdin: kill the SSH session processes then.
    proc = slow_deploy(site, "before_code", 20)
    sessions = [p for p in site.host.pids() if p != site.host.sshd_pid and
                site.host.exec(["cat", f"/proc/{p}/cmdline"], check=False).stdout.startswith("sshd: deploy")]
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    assert_intact(site, res, "SSH connection lost")
    wait_until_no_sleep(site)
    restore_source(site)


@pytest.mark.parametrize("hook", ["before_setup", "before_code", "before_venv", "before_django", "before_config",
                                  "after_config"])
def test_6_sigint_during_preparation(site, hook):
    proc = slow_deploy(site, hook, 30)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    assert_intact(site, res, "interrupted")
    wait_until_no_sleep(site)
    restore_source(site)


def test_6_sigint_reaches_a_deploy_that_inherited_it_ignored(site):
    # a script's `fab deploy &` (no job control) starts fab with SIGINT ignored: a SIGINT still interrupts it
    proc = slow_deploy(site, "before_setup", 30, sigint_ignored=True)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    assert_intact(site, res, "interrupted")
    assert res.returncode == 130
    wait_until_no_sleep(site)
    restore_source(site)


@pytest.mark.parametrize("hook", ["before_switch", "before_restart"])
def test_6_sigint_during_the_switch_is_held_until_it_completes(site, hook):
    proc = slow_deploy(site, hook, 3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert "interrupt held until the switch finished" in out, out
    rel = release_of(out)
    status, _, body = site.host.http("/", host_header=site.host.address)
    assert status == 200 and f"Release: {rel}".encode() in body
    assert not site.host.path("/srv/sample/.fabdeploy-lock").exists()
    # this became the good release
    site.good, site.releases = rel, releases(site)
    restore_source(site)


def test_7_disk_full_on_deploy_to(site):
    host = site.host
    host.exec("mkdir -p /srv/full && mount -t tmpfs -o size=120m tmpfs /srv/full && chmod 755 /srv/full")
    try:
        cfg = sample_config(host, name="full", deploy_to="/srv/full/app", listen=8081)
        site.proj.write_config(cfg, name="full.toml")
        res = fab(site, "deploy", config="full.toml")
        assert res.returncode == 0, res.stdout + res.stderr
        full_good = release_of(res.stdout)
        # (the tmpfs exists only in the host's mount namespace: look from inside)
        def full_releases():
            return sorted(host.exec("ls -1 /srv/full/app/releases").stdout.split())
        before = full_releases()
        # fill the file system, leaving a little room (the lock directory still fits; the release does not)
        host.exec("fallocate -l $(( $(df --output=avail -B1 /srv/full | tail -n1) - 300000 )) /srv/full/filler")
        site.proj.commit("bigger", {"pages/message.txt": "does not fit\n", "pages/static/pages/big.bin": "x" * 2_000_000})
        res = fab(site, "deploy", config="full.toml")
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "Traceback" not in out
        assert "No space left on device" in out, out
        conn = http.client.HTTPConnection(host.address, 8081, timeout=10)
        conn.request("GET", "/", headers={"Host": host.address})
        body = conn.getresponse().read()
        assert f"Release: {full_good}".encode() in body
        assert full_releases() == before
        assert host.exec("test -e /srv/full/app/.fabdeploy-lock", check=False).returncode == 1
        assert_intact(site)  # the other site on the host is untouched too
    finally:
        host.exec("rm -f /srv/full/filler", check=False)
        # stop the second site's uWSGI (its files vanish with the tmpfs) and unmount
        host.exec("kill $(cat /srv/full/app/shared/run/uwsgi.pid) 2>/dev/null; sleep 1; umount -l /srv/full",
                  check=False)
        restore_source(site)


def test_8_health_check_failing_after_the_switch_reverts(site):
    views = (site.proj.src / "pages" / "views.py").read_text()
    broken = views.replace("def index(request):\n", "def index(request):\n    raise RuntimeError('500 on purpose')\n")
    assert broken != views
    cfgname = with_change(site, {"pages/views.py": broken}, "[health]\ntimeout = 3\n")
    res = fab(site, "deploy", config=cfgname)
    out = res.stdout + res.stderr
    assert re.search(rf"health check failed: GET / \(Host: [^)]+\) -> 500; reverted to {site.good}", out), out
    bad = release_of_attempt(out)
    assert site.host.path(f"/srv/sample/releases/{bad}/.fabdeploy/bad").exists()
    # the failed release stays on disk (marked bad) for inspection; everything else is as before
    site.releases = releases(site)
    assert_intact(site, res, "health check failed")
    restore_source(site)


def release_of_attempt(output: str) -> str:
    m = re.search(r"upload\s+release (\d{8}T\d{6}Z-[0-9a-f]+)", output)
    assert m, output
    return m.group(1)


def test_9_one_of_two_hosts_unreachable_switches_none(site, make_host):
    other = make_host("faults2")
    os.kill(other.sshd_pid, signal.SIGTERM)  # the second host is down: connection refused
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{other.sshd_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    site.proj.commit("two", {"pages/message.txt": "fleet change\n"})
    cfg = sample_config(site.host).replace(f'hosts = ["{site.host.ssh_target()}"]',
                                           f'hosts = ["{site.host.ssh_target()}", "{other.ssh_target()}"]')
    site.proj.write_config(cfg, name="two.toml")
    res = fab(site, "deploy", config="two.toml")
    assert_intact(site, res, f"{other.address}: cannot connect", "not switched")
    restore_source(site)
