"""`fab deploy --plan` (or Invoke's `fab --dry deploy`): a truly read-only plan.

One read-only remote invocation per host learns what setup would (Python version, nginx layout, current
release, virtualenvs) and reads the live uWSGI ini and nginx site. Nothing is uploaded, created, locked or
reloaded. Printed per host: the remote scripts a deploy would run (secrets masked) and a unified diff of
every rendered config against the host's copy; environment values (old ones read from the host as well as
new ones) are never shown, a changed one reads "******** (changed)".
"""
from __future__ import annotations

import difflib
import json
import re

from . import lock, phases
from .config import Config
from .connect import host_label, local_user, open_connection
from .errors import FabdeployError
from .fleet import for_each_host
from .health import health
from .roles import runs_nginx, server_of
from .layout import SETTINGS_MODULE, Layout, nginx_site_paths
from .lock import LockOwner
from .output import Printer
from .runner import run_script
from .render import render
from .script import MARK, MASK, Phase, Script, q
from .source import read_source, release_id
from .wheelhouse import venv_hash

FACTS_PY = r"""
import json, os, platform, re, sys, sysconfig
P = json.loads(sys.argv[1])
D = P["deploy_to"]
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
conf = read("/etc/nginx/nginx.conf") or ""
m = re.search(r"^\s*user\s+([^;\s]+)", conf, re.M)
user = P["nginx_user"] or (m.group(1) if m else "www-data")
m = re.search(r"^\s*pid\s+([^;\s]+)", conf, re.M)
pid = m.group(1) if m else "/run/nginx.pid"
layout = P["layout"]
if layout == "auto":
    layout = "sites" if os.path.isdir("/etc/nginx/sites-enabled") and "sites-enabled" in conf else "conf.d"
site = f"/etc/nginx/sites-available/{P['name']}" if layout == "sites" else f"/etc/nginx/conf.d/{P['name']}.conf"
try:
    current = os.readlink(D + "/current")
except OSError:
    current = ""
venvs = sorted(v for v in (os.listdir(D + "/venvs") if os.path.isdir(D + "/venvs") else [])
               if os.path.isfile(f"{D}/venvs/{v}/.fabdeploy-complete"))
print("@@fabdeploy json " + json.dumps({
    "python_version": "%d.%d.%d" % sys.version_info[:3],
    # (as the setup phase reports it: wheelhouse.PYTHON_FACTS_PY)
    "python_platform": " ".join([sys.implementation.name, sysconfig.get_platform(), "-".join(platform.libc_ver()) or "-"]),
    "nginx_layout": layout, "nginx_user": user,
    "nginx_pid": pid, "current": current, "venvs": venvs, "site": site,
    "files": {"uwsgi.ini": read(D + "/shared/config/uwsgi.ini"), "app.env": read(D + "/shared/config/app.env"),
              "nginx site": read(site),
              "settings": read(f"{current}/{P['settings']}.py") if current else None},
    "locked": read(D + "/.fabdeploy-lock/info"), "deploy_to_exists": os.path.isdir(D)}))
"""


def read_host(conn, cfg: Config) -> dict:
    params = {"deploy_to": Layout(cfg.paths.deploy_to).deploy_to, "name": cfg.project.name,
              "layout": cfg.nginx.layout, "nginx_user": cfg.nginx.user, "settings": SETTINGS_MODULE}
    script = Script([Phase("read", [f"{q(cfg.project.python)} -c {q(FACTS_PY)} {q(json.dumps(params))}"])])
    res = run_script(conn, script, host=host_label(conn), timeout=60)
    for line in res.stdout.splitlines():
        if line.startswith(f"{MARK} json "):
            return json.loads(line[len(MARK) + 6:])
    raise FabdeployError(f"{host_label(conn)}: plan: the host returned no facts")


def facts_from(raw: dict) -> phases.Facts:
    """The Facts the setup phase would report, from read_host()'s answer."""
    return phases.Facts(python_version=raw["python_version"], python_platform=raw.get("python_platform", ""),
                        nginx_layout=raw["nginx_layout"],
                        nginx_user=raw["nginx_user"], nginx_pid=raw["nginx_pid"], current=raw["current"],
                        venvs=raw["venvs"])


def _diff(name: str, old: str | None, new: str, env_line=None) -> str:
    """A unified diff of the host's `old` file against the `new` one. With `env_line` (a pattern whose groups
    are the text before the value, the variable's name and its value), those values are never shown: a line
    whose value changed reads `******** (changed)` on the new side."""
    if old == new:
        return f"--- {name}: unchanged\n"
    if env_line is not None:
        old, new = _mask_env(old, new, env_line)
        if old == new:  # only the text of masked values differs (an escaped form): say so without them
            return f"--- {name}: changed values only (masked)\n"
    lines = difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"{name} (on host)" if old is not None else f"{name} (absent)",
                                 tofile=f"{name} (would be written)")
    return "".join(lines)


# environment lines whose values are masked in the diffs: the user's [django] env (not the two fabdeploy sets)
UWSGI_ENV_LINE = re.compile(r"^(env\s*=\s*)(?!DJANGO_SETTINGS_MODULE=|FABDEPLOY_)([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
APP_ENV_LINE = re.compile(r"^()([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _mask_env(old: str | None, new: str, pattern: re.Pattern) -> tuple[str | None, str]:
    def values(text):
        return {m.group(2): m.group(3) for m in map(pattern.match, (text or "").splitlines()) if m}
    before, after = values(old), values(new)

    def hide(text, changed_label):
        out = []
        for line in text.splitlines(keepends=True):
            m = pattern.match(line.rstrip("\n"))
            if m:
                name = m.group(2)
                changed = name in before and name in after and before[name] != after[name]
                line = f"{m.group(1)}{name}={MASK}{changed_label if changed else ''}\n"
            out.append(line)
        return "".join(out)
    return (None if old is None else hide(old, "")), hide(new, " (changed)")


def plan_host(conn, cfg: Config, source, rel_id: str) -> str:
    host = host_label(conn)
    open_connection(conn)
    raw = read_host(conn, cfg)
    facts = facts_from(raw)
    server = server_of(conn)
    site, _ = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    if server.role == "lb":
        return "\n".join([f"===== {host}: plan (load balancer) for release {rel_id} (nothing below has been run)",
                          "static files of the release are copied here from an app host; the site:",
                          _diff(f"nginx site {site}", raw["files"]["nginx site"], phases.lb_site(cfg))])
    key = venv_hash(cfg, source.requirements, facts.python_version)
    rel = phases.Release(rel_id, source.revision, source.branch, source.kind, "<deploy time>", local_user(), key,
                         cfg.pip.wheelhouse and key not in facts.venvs)
    owner = LockOwner("deploy", local_user(), "<token>", 0, "<deploy time>")
    lay = Layout(cfg.paths.deploy_to)
    invocations = [
        ("1 (setup)", [phases.setup(cfg, lock.acquire(cfg, owner))]),
        ("2 (prepare; the release archive on stdin)",
         [phases.code(cfg, rel), phases.venv(cfg, rel, source.requirement_files), phases.django(cfg, rel),
          phases.config(cfg, rel, facts, server)]),
        ("3 (publish)", [phases.switch(cfg, rel, server), phases.restart(cfg, rel, facts, server),
                         health(cfg, conn.host, rel.id, facts.current, lay.staging(rel.id), site, facts.nginx_pid,
                                server),
                         phases.cleanup(cfg, rel), lock.finish(cfg, owner, {"result": "ok"})]),
    ]
    out = [f"===== {host}: plan for release {rel_id} (nothing below has been run)"]
    out.append(f"current release: {facts.current or '(none)'}; virtualenv {key}: "
               + ("reused" if key in facts.venvs else "would be built"
                  + (" from a local wheelhouse" if cfg.pip.wheelhouse else "")))
    if raw.get("locked"):
        out.append(f"NOTE: the deploy lock is held by {raw['locked'].strip()}: a deploy now would fail")
    for title, built in invocations:
        out.append(f"----- remote invocation {title}")
        out.append(Script(built, tuple(cfg.secret_values())).display().rstrip())
    settings = render("settings.py.j2", release_id=rel.id, django_settings=cfg.project.django_settings,
                             shared=lay.shared, allowed_hosts=cfg.allowed_hosts, static_url=cfg.django.static_url,
                             media_url=cfg.django.media_url)
    out.append("----- config diffs")
    files = raw["files"]
    out.append(_diff("uwsgi.ini", files["uwsgi.ini"], phases.uwsgi_ini(cfg, rel, server), UWSGI_ENV_LINE))
    out.append(_diff("app.env", files["app.env"], phases.env_file_text(cfg), APP_ENV_LINE))
    if runs_nginx(cfg, server):
        out.append(_diff(f"nginx site {site}", files["nginx site"], phases.nginx_site(cfg, server)))
    out.append(_diff(f"{SETTINGS_MODULE}.py", files["settings"], settings))
    return "\n".join(out)


def plan_all(conns: list, cfg: Config, printer: Printer) -> list[str]:
    source = read_source(cfg)
    for w in source.warnings:
        printer.warn(w)
    rel_id = release_id(source)
    errors: list[str] = []

    def one(conn, cancel) -> str:
        try:
            return plan_host(conn, cfg, source, rel_id)
        except FabdeployError as exc:
            errors.append(str(exc))
            return ""
        finally:
            conn.close()

    for text in for_each_host(conns, one):
        if text:
            printer.info(text)
    return errors
