"""`fab releases` and `fab status`: one read-only remote invocation per host (a small Python program run
by the host's python3), printed as tables (ops/report_text.py) or JSON. Neither takes the lock nor writes anything."""
from __future__ import annotations

import json

from fabdeploy import appserver, manager, model
from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.connect import host_label
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import NGINX_CONF, RELEASE_GLOB_ERE, VENV_COMPLETE, Layout, nginx_site_paths
from fabdeploy.hosts.roles import Server, runs_nginx, server_of
from fabdeploy.ops.cert_expiry import CERT_PY, cert_param
from fabdeploy.remote.markers import PY_MARKERS
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import lock
from fabdeploy.steps.health import PROBE_PY, check_spec

# Every host path comes in P (common_params, releases_params, status_params: Layout, steps/lock, nginx_site_paths).
_COMMON = PY_MARKERS + r"""
import json, os, re, subprocess, sys, time
P = json.loads(sys.argv[1])
def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default
def current():
    try:
        return os.path.basename(os.readlink(P["current"]))
    except OSError:
        return ""
def audit(n):
    lines = read(P["audit"]).splitlines()[-n:]
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except ValueError:
            pass
    return out
def meta(rdir, name):
    return os.path.join(rdir, P["meta_dir"], name)
"""

RELEASES_PY = _COMMON + r"""
cur = current()
rels = []
names = sorted(os.listdir(P["releases"]), reverse=True) if os.path.isdir(P["releases"]) else []
for r in names:
    if not re.match(P["pattern"], r):
        continue
    rdir = os.path.join(P["releases"], r)
    try:
        m = json.loads(read(meta(rdir, P["metadata"]), "{}"))
    except ValueError:
        m = {}
    venv = m.get("venv") or read(meta(rdir, P["venv_name"]))
    status = "current" if r == cur else ("bad" if os.path.exists(meta(rdir, P["bad"])) else
                                         "never live" if os.path.exists(meta(rdir, P["pending"])) else "ok")
    rels.append({"id": r, "revision": m.get("revision", ""), "branch": m.get("branch", ""),
                 "deployed_at": m.get("deployed_at", ""), "deployed_by": m.get("deployed_by", ""),
                 "status": status, "venv": venv,
                 "venv_present": bool(venv) and os.path.isfile(os.path.join(P["venvs"], venv, P["venv_complete"]))})
mark_json({"current": cur, "releases": rels, "audit": audit(10)})
"""

STATUS_PY = _COMMON + PROBE_PY + CERT_PY + r"""
def as_app(argv):
    # the app user's pidfile and processes (its cwd needs its uid): read as it (sudo -n -u) unless we are it
    import pwd
    if pwd.getpwuid(os.getuid()).pw_name != P["app_user"]:
        argv = ["sudo", "-n", "-u", P["app_user"], *argv]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
def alive(pidfile, name):
    pid = re.sub(r"\D", "", read(pidfile) or (as_app(["cat", pidfile]) if name == P["app_process"] else ""))
    if pid and name in read(f"/proc/{pid}/comm"):
        return int(pid)
    return None
def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and re.search(rf"^PPid:\s*{pid}$", read(f"/proc/{d}/status"), re.M):
            out.append(int(d))
    return out
def app_workers(pid):
    # (ASGI servers: the children named like the master, or the master itself when it is the only worker)
    if P.get("app_single"):
        return [pid]
    kids = children(pid)
    return [k for k in kids if read(f"/proc/{k}/comm").strip() == P["app_process"]] if P.get("app_named") else kids
cur = current()
res = {"current": cur, "revision": "", "branch": ""}
if cur:
    try:
        m = json.loads(read(meta(os.path.join(P["releases"], cur), P["metadata"]), "{}"))
        res["revision"], res["branch"] = m.get("revision", ""), m.get("branch", "")
    except ValueError:
        pass
pid = alive(P["pidfile"], P["app_process"])
workers = app_workers(pid) if pid else []
running_under = read(P["manager_record"]).strip() or ("pidfile" if pid else "")
state = ""
if P["manager_state"]:
    try:
        out = subprocess.run(P["manager_state"], capture_output=True, text=True, timeout=10).stdout.split()
        state = out[1] if len(out) > 1 else (out[0] if out else "")  # (supervisorctl status; systemctl)
    except (OSError, subprocess.SubprocessError):
        state = "unknown"
res["app"] = {"server": P["app_title"], "manager": P["manager"], "running_under": running_under,
              "manager_state": state, "pid": pid, "workers": len(workers),
              "on_current": bool(workers) and all(
                  cwd == os.path.realpath(P["current"])
                  for cwd in as_app(["readlink", "-e", *[f"/proc/{w}/cwd" for w in workers]]).split())}
conf = read(P["nginx_conf"])
m = re.search(r"^\s*pid\s+([^;\s]+)", conf, re.M)
npid = alive(m.group(1) if m else P["nginx_pid"], "nginx")
enabled = any(os.path.exists(site) for site in P["site_enabled"])
res["nginx"] = {"pid": npid, "site_enabled": enabled}
res["role"], res["nginx_expected"] = P["role"], P["nginx"]
if P["role"] == "lb":
    res["static"] = os.path.basename(os.path.realpath(P["static_current"]))
else:  # the fingerprint of the deploy's key agreement (secret_key.fingerprint_lines), never the key
    import hashlib
    key = read(P["secret_key"])
    res["secret_key_fp"] = hashlib.sha256(("fabdeploy-secret-key:" + key).encode()).hexdigest()[:16] if key else ""
start = time.monotonic()
spec, said, bad, statuses, error = P["check"], [], [], [], ""
for host in spec["hosts"]:
    try:
        ok, line, status = probe(spec, host)
    except Exception as exc:
        ok, line, status, error = False, f"GET {spec['path']} (Host: {host}): {str(exc)[:200]}", None, str(exc)[:200]
    said.append(line)
    if not ok:
        bad.append(line)
    statuses.append((ok, status))
# status: the final answer of the first failing name (None: no answer), else of the first name
res["http"] = {"ok": not bad, "status": min(statuses, key=lambda s: s[0])[1], "answer": "; ".join(bad or said),
               "via": spec["proto"], "ms": round((time.monotonic() - start) * 1000), "error": error}
try:
    st = os.statvfs(P["deploy_to"])
    res["disk_free_bytes"] = st.f_bavail * st.f_frsize
except OSError:
    res["disk_free_bytes"] = None
res["tls"] = cert_expiry(P.get("tls_cert", ""))
lock = P["lock"]
res["lock"] = ({"holder": read(P["lock_info"], "unknown"), "age_s": int(time.time() - os.stat(lock).st_mtime)}
               if os.path.isdir(lock) else None)
last = audit(1)
res["last"] = last[0] if last else None
mark_json(res)
"""


def _program(cfg: Config, code: str, params: dict) -> Script:
    return Script([Phase("read", [f"{q(cfg.project.python)} -c {q(code)} {q(json.dumps(params))}"])])




def common_params(cfg: Config) -> dict:
    """The host paths both programs read: Layout's, the audit log's (steps/lock) and a release's own files
    (under <release>/.fabdeploy: the metadata code.py writes, venv, the bad and never-live marks)."""
    lay = Layout(cfg.paths.deploy_to)
    return {"deploy_to": lay.deploy_to, "current": lay.current, "releases": lay.releases, "venvs": lay.venvs,
            "audit": lock.audit_file(cfg), "meta_dir": ".fabdeploy", "metadata": "release.json",
            "venv_name": "venv", "bad": "bad", "pending": model.PENDING, "venv_complete": VENV_COMPLETE}


def releases_params(cfg: Config) -> dict:
    return {**common_params(cfg), "pattern": RELEASE_GLOB_ERE}


def status_params(cfg: Config, server: Server, check: dict) -> dict:
    """STATUS_PY's parameters for one host: the app server's pidfile and process name, nginx's config and
    both candidate site paths (the enabled link of a sites layout, the conf.d file), the balancer's static
    link, the secret key, the deploy lock; `check` is health.check_spec of the host."""
    lay = Layout(cfg.paths.deploy_to)
    name = cfg.project.name
    app = appserver.of(cfg)
    mgr = manager.of(cfg)
    return {**common_params(cfg), "manager": mgr.name, "manager_state": mgr.state_argv(cfg), "app_user": app_user(cfg),
            "manager_record": lay.config + "/manager", "pidfile": app.paths(lay).pidfile, "app_process": app.process, "app_title": app.title,
            "app_single": getattr(app, "single_process", False), "app_named": getattr(app, "interface", "") == "asgi",
            "nginx_conf": NGINX_CONF, "nginx_pid": model.Facts().nginx_pid,
            "site_enabled": [nginx_site_paths("sites", name)[1], nginx_site_paths("conf.d", name)[0]],
            "static_current": lay.static + "/current", "secret_key": lay.secret_key,
            "lock": lock.lock_dir(cfg), "lock_info": lock.lock_dir(cfg) + "/info",
            "role": server.role, "check": check, "nginx": runs_nginx(cfg, server), "tls_cert": cert_param(cfg, server)}


def _collect(conns, cfg: Config, code: str, params_for, parallel: int | None = None) -> list[dict]:
    def one(conn, cancel) -> dict:
        host = host_label(conn)
        res = run_script(conn, _program(cfg, code, params_for(conn)), host=host, timeout=60, cancel=cancel)
        return {"host": host, **res.json("report")}
    return on_each_host(conns, one, parallel or cfg.fleet.parallel,
                        failed=lambda conn, exc: {"host": host_label(conn), "error": str(exc)})


def releases(conns, cfg: Config, parallel: int | None = None) -> list[dict]:
    return _collect(conns, cfg, RELEASES_PY, lambda conn: releases_params(cfg), parallel)


def status(conns, cfg: Config, parallel: int | None = None) -> list[dict]:
    def params(conn):
        server = server_of(conn)
        return status_params(cfg, server, check_spec(cfg, conn.host, server))
    # (the app server's own client first: the check may go straight to it, in its protocol)
    return _collect(conns, cfg, appserver.of(cfg).probe_client_py + STATUS_PY, params, parallel)
