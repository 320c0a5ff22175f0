"""The naive baseline: the deploy script a competent user writes in an afternoon. It checks nothing.

Per host ONE `ssh` session (the system ssh client, through the same LatencyProxy as fab, so it pays the same
latency and SSH handshake) runs ONE bash script, hosts in parallel:
  - makes DEPLOY_TO with sudo (owned by the deploy user) the first time;
  - reads `git archive` (plain tar, made once per deploy inside the clock) on stdin into releases/<id>;
  - reuses the virtualenv venvs/<hash of requirements.txt + app server> when it exists, else builds it with
    `pip install --no-index --find-links WHEELS`. The wheels are ALREADY ON THE HOST: the bench copies this
    checkout's .cache/wheels into each host's /srv/naive-wheels before any clock starts, standing in
    for the package index a host downloads from (fab uploads its wheelhouse in its stream: a first deploy of
    the naive script moves less over SSH, a strict baseline);
  - writes a settings overlay `naive_settings.py` at the release root (DEBUG off, SECRET_KEY read from
    shared/secret_key, made once with 0600, STATIC_ROOT / MEDIA_ROOT / the sqlite database under shared/);
  - `manage.py migrate --noinput`, `manage.py collectstatic --noinput` (one shared STATIC_ROOT);
  - switches `current` with `ln -sfn` + `mv -T`;
  - uWSGI: rewrites its ini, then `uwsgi --reload <pidfile>` without waiting (`uwsgi --ini` the first time);
    gunicorn: `kill -HUP <master>` (a daemonized start the first time);
  - writes the nginx site `naive` (server_name naive.test) and reloads nginx only the first time;
  - prunes to 5 releases.
Rollback: `current` back to the release before it, then the same reload. Nothing else (no lock, no health
check, no check of what the workers run). It lives in DEPLOY_TO, beside fab's deploy_to on the same hosts:
fab and naive never share state (own releases, venvs, shared/, sockets, pidfiles and nginx site).
"""
from __future__ import annotations

import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEPLOY_TO = "/srv/naive"
SITE = "naive"
SERVER_NAME = "naive.test"
KEEP = 5
SHARED = f"{DEPLOY_TO}/shared"
PIDFILE = {"uwsgi": f"{SHARED}/run/uwsgi.pid", "gunicorn": f"{SHARED}/run/gunicorn.pid"}
SOCKET = {"uwsgi": f"{SHARED}/run/uwsgi.sock", "gunicorn": f"{SHARED}/run/gunicorn.sock"}

OVERLAY = '''from {settings} import *  # noqa
DEBUG = False
SECRET_KEY = open("{shared}/secret_key").read().strip()
ALLOWED_HOSTS = ["{server_name}"]
STATIC_ROOT = "{shared}/static"
MEDIA_ROOT = "{shared}/media"
DATABASES["default"]["NAME"] = "{shared}/db/db.sqlite3"
'''

UWSGI_INI = '''[uwsgi]
chdir = {d}/current
pythonpath = {d}/current
home = $V
module = {wsgi}
env = DJANGO_SETTINGS_MODULE=naive_settings
master = true
processes = {processes}
threads = {threads}
enable-threads = true
socket = {socket}
chmod-socket = 666
pidfile = {pidfile}
daemonize = {shared}/log/uwsgi.log
vacuum = true
'''

NGINX_SITE = '''server {{
    listen 80;
    server_name {server_name};
    location /static/ {{ alias {shared}/static/; }}
    location /media/ {{ alias {shared}/media/; }}
    location / {{
        {upstream}
    }}
}}
'''


def _reload(server: str, wsgi: str, workers: int, threads: int) -> list[str]:
    """Reload the running app server without waiting, or start it (uWSGI re-reads the ini it was given)."""
    pid = PIDFILE[server]
    running = f'[ -s {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'
    if server == "uwsgi":
        ini = UWSGI_INI.format(d=DEPLOY_TO, wsgi=wsgi, processes=workers, threads=threads, socket=SOCKET[server],
                               pidfile=pid, shared=SHARED)
        return [f"cat > {SHARED}/uwsgi.ini <<EOF\n{ini}EOF",
                f'if {running}; then "$V/bin/uwsgi" --reload {pid}; else "$V/bin/uwsgi" --ini {SHARED}/uwsgi.ini; fi']
    start = (f'DJANGO_SETTINGS_MODULE=naive_settings "$V/bin/gunicorn" --daemon --pid {pid} '
             f'--bind unix:{SOCKET[server]} --workers {workers} --threads {threads} --chdir {DEPLOY_TO}/current '
             f'--error-logfile {SHARED}/log/gunicorn.log {wsgi}')
    return [f'if {running}; then kill -HUP "$(cat {pid})"; else {start}; fi']


def _nginx_first_time(server: str) -> list[str]:
    if server == "uwsgi":
        upstream = f"uwsgi_pass unix:{SOCKET[server]};\n        include uwsgi_params;"
    else:
        upstream = (f"proxy_pass http://unix:{SOCKET[server]}:;\n        proxy_set_header Host $host;\n"
                    "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
    site = NGINX_SITE.format(server_name=SERVER_NAME, shared=SHARED, upstream=upstream)
    return [f"if [ ! -e /etc/nginx/sites-enabled/{SITE} ]; then",
            f"  sudo tee /etc/nginx/sites-available/{SITE} >/dev/null <<'EOF'\n{site}EOF",
            f"  sudo ln -sfn /etc/nginx/sites-available/{SITE} /etc/nginx/sites-enabled/{SITE}",
            "  sudo nginx -s reload",
            "fi"]


def deploy_script(release: str, settings: str, wsgi: str, server: str, wheels: str, workers: int = 2,
                  threads: int = 2) -> str:
    """The naive deploy of one host: `git archive`'s tar arrives on stdin."""
    overlay = OVERLAY.format(settings=settings, shared=SHARED, server_name=SERVER_NAME)
    lines = [
        "set -e",
        f"D={DEPLOY_TO}; S={SHARED}; R=$D/releases/{shlex.quote(release)}",
        '[ -d $D ] || { sudo mkdir -p $D; sudo chown "$(id -un):" $D; }',
        "mkdir -p $D/releases $D/venvs $S/static $S/media $S/db $S/run $S/log $R",
        "tar -x -C $R",
        f'H=$( (cat $R/requirements.txt; echo {server}) | sha256sum | cut -c1-16 ); V=$D/venvs/$H',
        'if [ ! -x "$V/bin/python" ]; then',
        '  rm -rf "$V"; python3 -m venv "$V"',
        f'  "$V/bin/pip" install -q --no-index --find-links {shlex.quote(wheels)} -r $R/requirements.txt {server}',
        "fi",
        "[ -s $S/secret_key ] || (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(50))' "
        "> $S/secret_key)",
        f"cat > $R/naive_settings.py <<'EOF'\n{overlay}EOF",
        "cd $R; export DJANGO_SETTINGS_MODULE=naive_settings",
        '"$V/bin/python" manage.py migrate --noinput',
        '"$V/bin/python" manage.py collectstatic --noinput',
        "ln -sfn $R $D/current.new && mv -T $D/current.new $D/current",
        *_reload(server, wsgi, workers, threads),
        *_nginx_first_time(server),
        f"cd $D/releases && ls -1 | sort | head -n -{KEEP} | xargs -r rm -rf",
    ]
    return "\n".join(lines) + "\n"


def rollback_script(server: str) -> str:
    """`current` back to the release before it, and the same reload (no checks)."""
    pid = PIDFILE[server]
    reload = f'"$V/bin/uwsgi" --reload {pid}' if server == "uwsgi" else f'kill -HUP "$(cat {pid})"'
    return "\n".join([
        "set -e",
        f"D={DEPLOY_TO}",
        'cur=$(basename "$(readlink $D/current)")',
        "prev=$(cd $D/releases && ls -1 | sort | awk -v c=\"$cur\" '$0 == c {print p} {p = $0}')",
        '[ -n "$prev" ]',
        'ln -sfn "$D/releases/$prev" $D/current.new && mv -T $D/current.new $D/current',
        f"V=$(sed -n 's/^home = //p' {SHARED}/uwsgi.ini 2>/dev/null || true)",
        reload,
    ]) + "\n"


def reset_line() -> str:
    """Stop both app servers and remove the deploy and the site (a fresh host for a first deploy)."""
    kills = " ".join(PIDFILE.values())
    return (f"for f in {kills}; do p=$(cat $f 2>/dev/null) || continue; kill -INT $p; "
            "for i in $(seq 50); do [ -e /proc/$p ] || break; sleep 0.1; done; done; "
            f"rm -rf {DEPLOY_TO} /etc/nginx/sites-enabled/{SITE} /etc/nginx/sites-available/{SITE}")


def release_name(seq: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{seq:04d}"


def run(ssh_argvs: list[list[str]], script: str, stdin: bytes = b"") -> None:
    """The same script over one ssh session per host, hosts in parallel; fails with the host's stderr."""
    def one(i: int) -> None:
        res = subprocess.run([*ssh_argvs[i], script], input=stdin, capture_output=True, timeout=900)
        if res.returncode != 0:
            raise SystemExit(f"bench: naive script failed on host {i}: {res.stderr.decode()[-1500:]}")

    with ThreadPoolExecutor(max_workers=len(ssh_argvs)) as pool:
        list(pool.map(one, range(len(ssh_argvs))))


def deploy(ssh_argvs: list[list[str]], src: Path, seq: int, settings: str, wsgi: str, server: str,
           wheels: str) -> float:
    """Wall time of one naive deploy: `git archive` of HEAD, then the script on every host."""
    t = time.monotonic()
    tar = subprocess.run(["git", "-C", str(src), "archive", "--format=tar", "HEAD"], check=True,
                         capture_output=True).stdout
    run(ssh_argvs, deploy_script(release_name(seq), settings, wsgi, server, wheels), tar)
    return time.monotonic() - t


def rollback(ssh_argvs: list[list[str]], server: str) -> float:
    t = time.monotonic()
    run(ssh_argvs, rollback_script(server))
    return time.monotonic() - t
