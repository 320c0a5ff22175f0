"""`fab deploy` end to end: the real fab command, a real sshd host, real nginx and uWSGI, the sample project.

The tests in this module run in order against one host and build on each other (first deploy, then a
changed revision, then pruning), as a user would.
"""
from __future__ import annotations

import json
import re
import stat
from types import SimpleNamespace

import pytest

from conftest import make_project, release_of, run_fab, sample_config

SECRET = "tok-SECRET-5f3e9c"


@pytest.fixture(scope="module")
def site(make_host, tmp_path_factory, wheel_cache):
    host = make_host("e2e")
    proj = make_project(tmp_path_factory.mktemp("proj"))
    proj.write_config(sample_config(host, keep=2, extra=f"""\
        [django]
        env = {{ API_TOKEN = "{SECRET}", GREETING = "50% off" }}
        """))
    return SimpleNamespace(host=host, proj=proj, cache=wheel_cache, releases=[], outputs=[])


def deploy(site, *args):
    res = run_fab(site.proj.root, "-H", site.host.ssh_target(), "deploy", *args, cache=site.cache)
    out = res.stdout + res.stderr
    site.outputs.append(out)
    assert res.returncode == 0, out
    rel = release_of(res.stdout)
    site.releases.append(rel)
    return rel, out


def get(site, path, **kw):
    return site.host.http(path, host_header=site.host.address, **kw)


def test_first_deploy_serves_the_page_naming_the_release(site):
    rel, out = deploy(site)
    for phase in ("setup", "code", "venv", "django", "config", "switch", "restart", "cleanup"):
        assert re.search(rf"^\S+\s+{phase}\s", out, re.M), f"no line for phase {phase}:\n{out}"
    assert f"http://{site.host.address}/" in out
    status, headers, body = get(site, "/")
    assert status == 200, body[:500]
    text = body.decode()
    assert f"Release: {rel}" in text
    assert "Hello from fabdeploy sample" in text
    assert headers.get("x-served-by") == "django"
    # The release layout: current -> releases/<id>, atomically switched.
    current = site.host.path("/srv/sample/current")
    assert current.is_symlink() and current.resolve().name == rel
    meta = json.loads(site.host.path(f"/srv/sample/releases/{rel}/.fabdeploy/release.json").read_text())
    assert meta["id"] == rel and len(meta["revision"]) == 40 and meta["branch"] == "main"


def test_static_css_is_served_by_nginx_from_shared(site):
    status, headers, body = get(site, "/static/pages/site.css")
    assert status == 200
    assert b"fabdeploy-sample-css" in body
    # Django would add X-Served-By (its middleware is on every Django response); nginx adds ETag/Expires.
    assert "x-served-by" not in headers
    assert "etag" in headers and "expires" in headers
    assert body == site.host.path("/srv/sample/shared/static/current/pages/site.css").read_bytes()
    log = site.host.path("/srv/sample/shared/log/uwsgi.log").read_text()
    assert "/static/pages/site.css" not in log


def test_debug_is_off(site):
    status, headers, body = get(site, "/no-such-page")
    assert status == 404
    assert headers.get("x-served-by") == "django"  # Django answered, with DEBUG off:
    for leak in (b"Traceback", b"URLconf", b"DEBUG = True", b"Using the URLconf"):
        assert leak not in body
    settings = site.host.path(f"/srv/sample/releases/{site.releases[-1]}/fabdeploy_settings.py").read_text()
    assert "DEBUG = False" in settings
    assert "from sampleproject.settings import *" in settings


def test_secrets_and_socket_are_locked_down(site):
    key = site.host.path("/srv/sample/shared/secret_key")
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640  # (its group: the app user's)
    value = key.read_text().strip()
    assert len(value) >= 50
    for out in site.outputs:
        assert value not in out and SECRET not in out
    sock = site.host.path("/srv/sample/shared/run/uwsgi.sock")
    st = sock.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert site.host.exec(["stat", "-c", "%U:%G", "/srv/sample/shared/run/uwsgi.sock"]).stdout.strip() == \
        "sample:www-data"  # (the app user: tests/test_app_user_e2e.py)
    ini = site.host.path("/srv/sample/shared/config/uwsgi.ini")
    assert stat.S_IMODE(ini.stat().st_mode) == 0o640
    text = ini.read_text()
    assert f"env = API_TOKEN={SECRET}" in text and "GREETING=50%% off" in text
    env = site.host.path("/srv/sample/shared/config/app.env")
    assert stat.S_IMODE(env.stat().st_mode) == 0o640


def test_sqlite_database_lives_in_shared(site):
    status, _, body = site.host.http("/notes/add", host_header=site.host.address, method="POST",
                                     body=b"text=hello", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body.strip() == b"1"
    assert site.host.path("/srv/sample/shared/db/default.sqlite3").stat().st_size > 0
    assert not site.host.path(f"/srv/sample/releases/{site.releases[-1]}/db.sqlite3").exists()


def test_verbose_shows_commands_but_masks_secrets(site):
    site.proj.commit("B", {"pages/message.txt": "Second revision of the sample\n"})
    status, _, body = site.host.http(
        "/upload", host_header=site.host.address, method="POST",
        body=(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"keep.txt\"\r\n"
              b"Content-Type: text/plain\r\n\r\nmedia survives deploys\r\n--XyZ--\r\n"),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert status == 200, body
    site.media_path = body.decode().strip()
    venv_dir = next(site.host.path("/srv/sample/venvs").iterdir())
    marker = (venv_dir / ".fabdeploy-complete").stat().st_mtime_ns
    rel, out = deploy(site, "--verbose")
    assert "manage.py" in out and 'command("migrate", interactive=False' in out  # the commands are shown ...
    assert SECRET not in out and "********" in out              # ... with secrets masked
    # The virtualenv was reused: no pip run, no wheel build, the venv untouched.
    assert re.search(r"venv\s+reused", out)
    assert "building the wheelhouse" not in out
    assert (venv_dir / ".fabdeploy-complete").stat().st_mtime_ns == marker
    assert [p.name for p in site.host.path("/srv/sample/venvs").iterdir()] == [venv_dir.name]
    status, _, body = get(site, "/")
    assert status == 200 and f"Release: {rel}".encode() in body and b"Second revision of the sample" in body


def test_media_survives_a_deploy(site):
    assert site.media_path.startswith("uploads/keep")
    status, headers, body = get(site, "/media/" + site.media_path)
    assert status == 200 and body == b"media survives deploys"
    assert "x-served-by" not in headers


def test_data_is_not_readable_by_other_local_users(site):
    """Password hashes, sessions, uploads and the audit log are for the app (and, for media and static
    files, the web server's group) only; nginx still serves static files and media (the tests above)."""
    d = "/srv/sample"
    modes = {p: site.host.exec(["stat", "-c", "%a %G", p]).stdout.split() for p in
             (d, f"{d}/shared", f"{d}/shared/db", f"{d}/shared/config", f"{d}/shared/log", f"{d}/releases",
              f"{d}/shared/static", f"{d}/shared/media", f"{d}/shared/db/default.sqlite3",
              f"{d}/shared/log/audit.jsonl", f"{d}/shared/media/{site.media_path}")}
    assert modes[d][0] == modes[f"{d}/shared"][0] == "711"
    assert modes[f"{d}/shared/db"][0] == "700" and modes[f"{d}/shared/config"][0] == "2750"
    assert modes[f"{d}/shared/log"][0] == "2770" and modes[f"{d}/releases"][0] == "2750"
    assert modes[f"{d}/shared/static"] == ["2755", "www-data"] and modes[f"{d}/shared/media"] == ["2750", "www-data"]
    assert modes[f"{d}/shared/db/default.sqlite3"][0] == modes[f"{d}/shared/log/audit.jsonl"][0] == "640"
    assert modes[f"{d}/shared/media/{site.media_path}"] == ["640", "www-data"]
    for path in (f"{d}/shared/db/default.sqlite3", f"{d}/shared/log/audit.jsonl", f"{d}/shared/media/{site.media_path}",
                 f"{d}/current/{'pages/views.py'}"):
        res = site.host.exec(["cat", path], user="nobody", check=False)
        assert res.returncode != 0 and "Permission denied" in res.stderr, (path, res.stdout[:100])


def test_every_worker_runs_the_new_release(site):
    pid = int(site.host.path("/srv/sample/shared/run/uwsgi.pid").read_text())
    children = site.host.exec(f"grep -l '^PPid:[[:space:]]*{pid}$' /proc/[0-9]*/status | cut -d/ -f3").stdout.split()
    assert len(children) == 2
    for child in children:
        cwd = site.host.exec(["readlink", f"/proc/{child}/cwd"]).stdout.strip()
        assert cwd == f"/srv/sample/releases/{site.releases[-1]}"


def test_keep_releases_prunes_old_releases(site):
    site.proj.commit("C", {"pages/message.txt": "Third revision\n"})
    rel, out = deploy(site)
    names = sorted(p.name for p in site.host.path("/srv/sample/releases").iterdir())
    assert names == sorted(site.releases[-2:]) and rel in names
    assert re.search(r"cleanup\s+2 releases on disk \(keep_releases = 2\), removed 1", out), out
    assert b"Third revision" in get(site, "/")[2]


def test_changed_requirements_build_a_new_venv_beside_the_old(site):
    req = (site.proj.src / "requirements.txt").read_text()
    site.proj.commit("D", {"requirements.txt": req + "sqlparse\n"})
    rel, out = deploy(site)
    assert re.search(r"venv\s+built [0-9a-f]{16} from the wheelhouse", out)
    venvs = sorted(p.name for p in site.host.path("/srv/sample/venvs").iterdir())
    # keep_releases = 2: the previous release (old venv) and the new one (new venv) are both kept.
    assert len(venvs) == 2
    meta = json.loads(site.host.path(f"/srv/sample/releases/{rel}/.fabdeploy/release.json").read_text())
    assert meta["venv"] in venvs
    assert f"Release: {rel}".encode() in get(site, "/")[2]


def test_noop_redeploy_is_detected_in_one_round_trip(site, tmp_path):
    live = site.releases[-1]
    before = sorted(p.name for p in site.host.path("/srv/sample/releases").iterdir())
    trace = tmp_path / "trace"
    res = run_fab(site.proj.root, "-H", site.host.ssh_target(), "deploy", cache=site.cache,
                  env={"FABDEPLOY_TRACE": str(trace)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"already live {live}" in res.stdout and "--force deploys anyway" in res.stdout
    assert trace.read_text().splitlines() == [f"channel {site.host.address}"]  # one remote invocation
    assert sorted(p.name for p in site.host.path("/srv/sample/releases").iterdir()) == before
    assert not site.host.path("/srv/sample/.fabdeploy-lock").exists()
    last = json.loads(site.host.path("/srv/sample/shared/log/audit.jsonl").read_text().splitlines()[-1])
    assert last["result"] == "unchanged" and last["live"] == live
    # --force deploys anyway; a full deploy is three invocations
    trace.unlink()
    res = run_fab(site.proj.root, "-H", site.host.ssh_target(), "deploy", "--force", cache=site.cache,
                  env={"FABDEPLOY_TRACE": str(trace)})
    assert res.returncode == 0, res.stdout + res.stderr
    assert release_of(res.stdout) != live
    assert len(trace.read_text().splitlines()) == 3
