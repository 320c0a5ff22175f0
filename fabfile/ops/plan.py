"""`fab deploy --plan` (or Invoke's `fab --dry deploy`): a truly read-only plan.

One read-only remote invocation per host learns what setup would (Python version, nginx layout, current
release, virtualenvs) and reads the live app-server config and nginx site. Nothing is uploaded, created, locked or
reloaded. Printed per host: the remote scripts a deploy would run (secrets masked) and a unified diff of
every rendered config against the host's copy; environment values (old ones read from the host as well as
new ones) are never shown, a changed one reads "******** (changed)".
"""
from __future__ import annotations

import difflib
import json
import re
import shlex

from fabdeploy import model, pipeline
from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.database import fleet
from fabdeploy.front import acme_fleet, nginx
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import NGINX_CONF, NGINX_PID, SETTINGS_MODULE, VENV_COMPLETE, Layout, nginx_site_paths
from fabdeploy.hosts.roles import runs_nginx
from fabdeploy.hosts.target import Target
from fabdeploy.local.source import read_source, release_id
from fabdeploy.local.tls import LocalPair
from fabdeploy.local.wheelhouse import venv_hash
from fabdeploy.output import Printer
from fabdeploy.remote.markers import PY_MARKERS
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import MASK, Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import code, live_check, lock
from fabdeploy.steps.lock import LockOwner

FACTS_PY = PY_MARKERS + r"""
import json, os, platform, re, sys, sysconfig
P = json.loads(sys.argv[1])
def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
def link(path):
    try:
        return os.readlink(path)
    except OSError:
        return ""
conf = read(P["nginx_conf"]) or ""
m = re.search(r"^\s*user\s+([^;\s]+)", conf, re.M)
user = P["nginx_user"] or (m.group(1) if m else "www-data")
m = re.search(r"^\s*pid\s+([^;\s]+)", conf, re.M)
pid = m.group(1) if m else P["nginx_pid"]
layout = P["layout"]
if layout == "auto":
    layout = "sites" if os.path.isdir("/etc/nginx/sites-enabled") and "sites-enabled" in conf else "conf.d"
site = P["sites"][layout]
current = link(P["current"])
venvs = sorted(v for v in (os.listdir(P["venvs"]) if os.path.isdir(P["venvs"]) else [])
               if os.path.isfile(os.path.join(P["venvs"], v, P["venv_complete"])))
files = {name: read(path) for name, path in P["files"].items()}
files["nginx site"] = read(site)
files["settings"] = read(os.path.join(current, P["settings"] + ".py")) if current else None
mark_json({
    "python_version": "%d.%d.%d" % sys.version_info[:3],
    # (as the setup phase reports it: wheelhouse.PYTHON_FACTS_PY)
    "python_platform": " ".join([sys.implementation.name, sysconfig.get_platform(),
                                 "-".join(platform.libc_ver()) or "-"]),
    "nginx_layout": layout, "nginx_user": user, "nginx_pid": pid, "current": current, "venvs": venvs,
    "site": site, "files": files, "static_current": os.path.basename(link(P["static_current"])),
    "locked": read(P["lock_info"]), "deploy_to_exists": os.path.isdir(P["deploy_to"])})
"""


def read_host(conn, cfg: Config) -> dict:
    """What a deploy's setup would learn, and the host's copies of the files a deploy writes, read in one
    read-only invocation (paths from Layout and the modules that own them)."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    params = {"deploy_to": lay.deploy_to, "current": lay.current, "venvs": lay.venvs, "venv_complete": VENV_COMPLETE,
              "nginx_conf": NGINX_CONF, "nginx_pid": NGINX_PID,
              "static_current": lay.static + "/current", "lock_info": lock.lock_dir(cfg) + "/info",
              "files": {"app server": app.paths(lay).config, "app.env": lay.env_file},
              "sites": {kind: nginx_site_paths(kind, cfg.project.name)[0] for kind in ("sites", "conf.d")},
              "layout": cfg.nginx.layout, "nginx_user": cfg.nginx.user, "settings": SETTINGS_MODULE}
    script = Script([Phase("read", [f"{q(cfg.project.python)} -c {q(FACTS_PY)} {q(json.dumps(params))}"])])
    return run_script(conn, script, host=host_label(conn), timeout=60).json("plan facts")


def facts_from(raw: dict) -> model.Facts:
    """The Facts the setup phase would report, from read_host()'s answer."""
    return model.Facts(python_version=raw["python_version"], python_platform=raw.get("python_platform", ""),
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


def secrets_line(cfg: Config, old_env: str | None) -> str:
    """`secrets: NAME changed, NAME unchanged, ...`: each [secrets] name against the host's app.env (read
    there, compared here, never shown). SECRET_KEY is shared/secret_key: installed by the deploy when another."""
    old = {}
    for line in (old_env or "").splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            old[name] = value
    states = []
    for name in sorted(cfg.data["secrets"]):
        if name == "SECRET_KEY":
            state = "shared/secret_key (replaced by the deploy when another)" if name in cfg.secret_env else "unset"
        elif name not in cfg.secret_env:
            state = "removed (unset here)" if name in old else "unset (optional)"
        else:
            state = "new" if name not in old else "unchanged" if old[name] == cfg.secret_env[name] else "changed"
        states.append(f"{name} {state}")
    return "--- secrets: " + ", ".join(states) + "\n"


# environment lines whose values are masked in the diffs (the app server's config has its own: env_line)
APP_ENV_LINE = re.compile(r"^()([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def _host_written(text: str | None, names: set[str]) -> str | None:
    """app.env without the lines the deploy builds on the host itself (DATABASE_URL: fabdeploy.database)."""
    if text is None or not names:
        return text
    return "".join(ln for ln in text.splitlines(keepends=True) if ln.split("=", 1)[0] not in names)


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


# the lock owner's token, pid and start: known only when the deploy runs
PLAN_OWNER = (pipeline.PLACEHOLDER_TOKEN, 0, "<deploy time>")


def _invocations(kind: str, state: pipeline.RunState, names: list[str], rel=None) -> list[str]:
    """The scripts of these invocations, as `fab deploy --verbose` prints them before running each (an app
    host's Release exists from the prepare invocation on)."""
    out = []
    for name in names:
        if kind == "app":
            state.rel = None if name == "setup" else rel
        out.append(pipeline.listing(name, pipeline.script(kind, name, state)))
    return out


def plan_host(conn, cfg: Config, source, rel_id: str, wait: int = 0, force: bool = False,
              db_digest: str = "") -> str:
    target = Target.of(conn, cfg)
    host, server = target.label, target.server
    raw = read_host(conn, cfg)
    facts = facts_from(raw)
    site, _ = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    owner = LockOwner("deploy", local_user(), *PLAN_OWNER)
    record = {"revision": source.revision, "branch": source.branch}
    if server.role == "lb":
        names, notes = ["setup", "prepare", "finish"], []
        if acme_fleet.active(cfg) and not acme_fleet.is_issuer(cfg, server):  # (the issuer's pair, in files mode)
            cfg = acme_fleet.derived(cfg, "files", LocalPair("(the issuer's certificate chain, read by the deploy)\n",
                                                             "(the issuer's key, read by the deploy)\n", None, None))
            names, notes = ["setup", "relay", "prepare", "finish"], [
                f"ACME: {acme_fleet.issuer(cfg).target} issues; its certificate and key are installed here"]
        state = pipeline.RunState(cfg, target, owner, rel_id, record, wait, facts=facts,
                                  static_upload=raw.get("static_current") != rel_id)
        return "\n".join([f"===== {host}: plan (load balancer) for release {rel_id} (nothing below has been run)",
                          "static files of the release come from an app host (on stdin of prepare)", *notes,
                          *_invocations("lb", state, names),
                          "----- config diffs",
                          _diff(f"nginx site {site}", raw["files"]["nginx site"], nginx.lb_site(cfg))])
    key = venv_hash(cfg, source.requirements, facts.python_version)
    fingerprint = live_check.fingerprint(cfg, source.revision, source.requirements, server, db_digest)
    rel = model.Release(rel_id, source.revision, source.branch, source.kind, "<deploy time>", local_user(), key,
                        cfg.pip.wheelhouse and key not in facts.venvs, fingerprint)
    state = pipeline.RunState(cfg, target, owner, rel_id, record, wait, facts=facts,
                              fingerprint="" if force else fingerprint,
                              requirement_files=source.requirement_files)
    out = [f"===== {host}: plan for release {rel_id} (nothing below has been run)"]
    out.append(f"current release: {facts.current or '(none)'}; virtualenv {key}: "
               + ("reused" if key in facts.venvs else "would be built"
                  + (" from a local wheelhouse" if cfg.pip.wheelhouse else "")))
    if raw.get("locked"):
        out.append(f"NOTE: the deploy lock is held by {raw['locked'].strip()}: a deploy now would fail")
    out += _invocations("app", state, ["setup", "prepare", "publish"], rel)
    settings = code.settings_overlay(cfg, rel.id)
    out.append("----- config diffs")
    files = raw["files"]
    app = appserver.of(cfg)
    out.append(_diff(app.config_name, files["app server"], app.render_config(cfg, rel, server), app.env_line))
    out.append(_diff("app.env", _host_written(files["app.env"], set(code.host_managed(cfg))), code.env_file_text(cfg),
                     APP_ENV_LINE))
    if cfg.data.get("secrets"):
        out.append(secrets_line(cfg, files["app.env"]))
    if runs_nginx(cfg, server):
        out.append(_diff(f"nginx site {site}", files["nginx site"], nginx.nginx_site(cfg, server)))
    out.append(_diff(f"{SETTINGS_MODULE}.py", files["settings"], settings))
    return "\n".join(out)


def plan_all(conns: list, cfg: Config, printer: Printer, wait: int | None = None, force: bool = False) -> list[str]:
    source = read_source(cfg)
    for w in source.warnings:
        printer.warn(w)
    rel_id = release_id(source)
    wait = lock.capped_wait(cfg, cfg.lock.wait if wait is None else wait, lambda _: None)
    errors: list[str] = []
    # (the db host's passwords are part of the "already live" fingerprint, as in the deploy: read, never shown)
    db_digest = fleet.digest(cfg, fleet.read_passwords(cfg, conns[0].config, printer)) if conns else ""

    def failed(conn, exc) -> str:
        errors.append(str(exc))
        return ""

    for text in on_each_host(conns, lambda conn, cancel: plan_host(conn, cfg, source, rel_id, wait, force, db_digest),
                             failed=failed):
        if text:
            printer.info(text)
    return errors
