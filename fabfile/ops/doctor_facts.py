"""`fab doctor`, the gathering half: ONE read-only program per host (run by the host's python3) that
collects facts (raw command output, file modes, HTTP answers) and prints them as one json marker line.
Nothing here decides what is wrong: ops/doctor_rules.py turns the facts into findings, on this side.

What the program reads as whom: the app user's files (its socket, pidfile, log, shared/run) through
`sudo -n -u <app user>` (as `fab status` and `fab logs` do); the listening sockets' owners and nginx -t
through `sudo -n` (without sudo, ss still lists the sockets, unnamed); what nginx's user can reach through
`sudo -n -u <nginx user> test`. A check sudo refuses is reported as unknown, never as a finding.
"""
from __future__ import annotations

import json

from fabdeploy import appserver, manager, model
from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.layout import NGINX_CONF, Layout, nginx_site_paths
from fabdeploy.front import tls
from fabdeploy.hosts.roles import Server, runs_nginx
from fabdeploy.remote import root
from fabdeploy.remote.markers import PY_MARKERS
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps.health import http_target

LOG_LINES = 200  # the last lines of the app server's log and of the site's nginx error log that are read
PROBE_PATH = "/fabdeploy-doctor-probe/"  # a path no project serves: Django's 404 (a debug page with DEBUG on)

FACTS_PY = PY_MARKERS + r"""
import json, os, pwd, re, shutil, subprocess, sys, time
P = json.loads(sys.argv[1])
F = {"time": time.time()}
ME = pwd.getpwuid(os.getuid()).pw_name
def run(argv, timeout=20):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return r.returncode, r.stdout, r.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return None, "", str(exc)
def as_user(user, argv):
    return list(argv) if user == ME else ["sudo", "-n", "-u", user, *argv]
def as_app(argv, timeout=20):
    return run(as_user(P["app_user"], argv), timeout)
def read(path, default=""):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return default
def tail(text, n):
    return "\n".join(text.splitlines()[-n:])
def alive(pidfile, name):
    pid = re.sub(r"\D", "", read(pidfile) or as_app(["cat", pidfile])[1])
    if pid and name in read(f"/proc/{pid}/comm") and not re.search(r"^State:\s*Z", read(f"/proc/{pid}/status"), re.M):
        return int(pid)
    return None
def can(user, test, path):
    # "yes"/"no" what `test <test> path` says as `user`; "" when sudo refused (unknown)
    rc, out, _ = run(as_user(user, ["sh", "-c", 'if test "$1" "$2"; then echo yes; else echo no; fi', "sh", test, path]))
    return out.strip() if out.strip() in ("yes", "no") else ""
def stats(paths):
    # path -> "mode owner group type" (as the SSH user, else as the app user for what only it can reach)
    out = {}
    for who in (run, as_app):
        left = [p for p in paths if p not in out]
        if not left:
            break
        rc, text, _ = who(["stat", "-c", "%n|%a|%U|%G|%F", *left])
        for ln in text.splitlines():
            parts = ln.split("|")
            if len(parts) == 5:
                out[parts[0]] = {"mode": parts[1], "owner": parts[2], "group": parts[3], "type": parts[4]}
    return out

# who listens where (unix stream and TCP), with the process names when sudo allows it
rc, out, err = run(["sudo", "-n", "ss", "-Hlnpxt"])
F["listeners_named"] = rc == 0
if rc != 0:
    rc, out, err = run(["ss", "-Hlnxt"])
F["listeners"] = out

# the app server: its master, its log (or the manager's journal)
if P["app"]:
    F["app_pid"] = alive(P["pidfile"], P["app_process"])
    # the live slot of a master started beside (appserver/beside.py): it listens on <socket>.<slot>
    F["app_slot"] = as_app(["cat", P["socket"] + ".live"])[1].strip() if P["socket"].startswith("/") else ""
    if P["journal_argv"]:
        F["app_log"] = tail(run(P["journal_argv"] + ["-n", str(P["lines"])])[1], P["lines"])
    else:
        F["app_log"] = tail(as_app(["tail", "-n", str(P["lines"]), P["log"]])[1], P["lines"])
    F["release"] = os.path.basename(os.path.realpath(P["current"])) if os.path.islink(P["current"]) else ""

# nginx: its user, master, config test, this site's file and error log
conf = read(P["nginx_conf"])
m = re.search(r"^\s*user\s+([^;\s]+)", conf, re.M)
F["nginx_user"] = P["nginx_user"] or (m.group(1) if m else "www-data")
m = re.search(r"^\s*pid\s+([^;\s]+)", conf, re.M)
F["nginx_installed"] = bool(conf)
if P["nginx"] and conf:
    F["nginx_pid"] = alive(m.group(1) if m else P["nginx_pid"], "nginx")
    rc, out, err = run(P["nginx_test"])
    F["nginx_test"] = {"rc": rc, "output": tail(out + err, 30)}
    F["site_path"] = next((s for s in P["sites"] if os.path.exists(s)), "")
    F["site"] = read(F["site_path"]) if F["site_path"] else ""
    F["site_enabled"] = any(os.path.exists(e) for e in P["enabled"])
    err_log = read(P["error_log"], None)
    if err_log is None:
        err_log = run(["sudo", "-n", "tail", "-n", str(P["lines"]), P["error_log"]])[1]
    F["nginx_error_log"] = tail(err_log or "", P["lines"])

# the app's unix socket: every directory on the way, and whether nginx's user may connect
sock = P["socket"]
if P["app"] and sock.startswith("/"):
    parts = sock.split("/")
    chain = ["/" + "/".join(parts[1:i]) for i in range(2, len(parts))] + [sock]
    F["socket_chain"] = [[p, stats([p]).get(p)] for p in chain]
    F["nginx_can_connect"] = can(F["nginx_user"], "-w", sock) if P["nginx"] else ""
    rc, out, _ = run(["id", "-Gn", F["nginx_user"]])
    F["nginx_groups"] = out.split()
if shutil.which("getenforce"):
    F["selinux"] = run(["getenforce"])[1].strip()

# static files: the site's static location and what nginx's user can read there
if P["nginx"] and P["static_url"]:
    site = F.get("site", "")
    m = re.search(r"location\s+" + re.escape(P["static_url"]) + r"\s*\{[^}]*?\balias\s+([^;]+);", site)
    alias = m.group(1).strip() if m else ""
    st = {"alias": alias, "exists": bool(alias) and os.path.isdir(alias),
          "real": os.path.realpath(alias) if alias else "", "sample": "", "nginx_can_read": ""}
    if st["exists"]:
        for d, _, files in os.walk(alias):
            if files:
                st["sample"] = os.path.relpath(os.path.join(d, files[0]), alias)
                break
        if st["sample"]:
            st["nginx_can_read"] = can(F["nginx_user"], "-r", os.path.join(alias, st["sample"]))
    elif alias:
        st["readable_to_me"] = os.access(os.path.dirname(alias.rstrip("/")), os.X_OK)
    F["static"] = st

# the secret key and the environment file: who may read them
if P["app"]:
    F["secret_files"] = stats(P["secret_files"])

# HTTP through nginx, once per name the installed site serves: the status and whether Django answers with
# its debug page (a path no project has: DEBUG on shows the technical 404)
if P["nginx"] and F.get("site") and F.get("nginx_pid"):
    import http.client, ssl
    class SNI(http.client.HTTPSConnection):
        def __init__(self, addr, port, name):
            super().__init__(addr, port, timeout=10, context=ssl._create_unverified_context())
            self.sni = name
        def connect(self):
            http.client.HTTPConnection.connect(self)
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.sni)
    names = []
    for m in re.finditer(r"^\s*server_name\s+([^;]+);", F["site"], re.M):
        names += [n for n in m.group(1).split() if n != "_" and "*" not in n and not n.startswith("~")]
    probes = []
    for name in dict.fromkeys(names or [P["host_header"]]):
        for path in [P["probe_path"]] + ([P["static_url"] + F["static"]["sample"]]
                                         if F.get("static", {}).get("sample") else []):
            try:
                if P["https_port"]:  # (the site's https server block, SNI the name; doctor checks the certificate)
                    c = SNI(P["addr"], P["https_port"], name)
                else:
                    c = http.client.HTTPConnection(P["addr"], P["port"], timeout=10)
                c.request("GET", path, headers={"Host": name, "User-Agent": "fabdeploy-doctor"})
                r = c.getresponse()
                body = r.read(200000)
                c.close()
                probes.append({"name": name, "path": path, "status": r.status,
                               "debug_page": b"DEBUG = True" in body})
            except Exception as exc:
                probes.append({"name": name, "path": path, "status": None, "error": str(exc)[:200]})
        if len(probes) >= 8:
            break
    F["probes"] = probes

# TLS: the files the installed site's ssl_certificate / ssl_certificate_key name, read by openssl as the SSH
# user (a readable chain) or root's (sudo; refused: left out, "exists"/"read" unknown): the certificate's end
# date, names and public key, the key's public key
if P["nginx"] and re.search(r"^\s*ssl_certificate\s", F.get("site", ""), re.M):
    site = F["site"]
    t = {"names": [], "sudo": run(["sudo", "-n", "true"])[0] == 0}
    for m in re.finditer(r"^\s*server_name\s+([^;]+);", site, re.M):
        t["names"] += [n for n in m.group(1).split() if n not in t["names"]]
    def openssl(argv):
        rc, out, _ = run(["openssl", *argv])
        if rc != 0 and t["sudo"]:
            rc, out, _ = run(["sudo", "-n", "openssl", *argv])
        return rc, out
    pem = re.compile(r"-----BEGIN PUBLIC KEY-----[^-]+-----END PUBLIC KEY-----")
    for k, d in (("certificate", "ssl_certificate"), ("key", "ssl_certificate_key")):
        m = re.search(r"^\s*" + d + r"\s+([^;]+);", site, re.M)
        f = t[k] = {"path": m.group(1).strip() if m else ""}
        if not f["path"]:
            f["exists"] = False
            continue
        f["exists"] = os.path.isfile(f["path"]) or (run(["sudo", "-n", "test", "-f", f["path"]])[0] == 0
                                                     if t["sudo"] else None)
        if not f["exists"]:
            continue
        if k == "certificate":
            rc, out = openssl(["x509", "-noout", "-enddate", "-ext", "subjectAltName", "-pubkey", "-in", f["path"]])
            m = re.search(r"notAfter=(.+)", out)
            if rc == 0 and m:
                import ssl
                f["not_after"] = ssl.cert_time_to_seconds(m.group(1).strip())
                f["names"] = re.findall(r"DNS:([^,\s]+)", out)
        else:
            rc, out = openssl(["pkey", "-pubout", "-in", f["path"]])
        f["read"] = rc == 0 or t["sudo"] or os.access(f["path"], os.R_OK)
        if rc == 0:
            f["pubkey"] = "".join(pem.findall(out))
    F["tls"] = t

# the host firewall (nftables; iptables-nft rules show there too): None when sudo refuses
if P["nginx"] and conf:
    rc, out, _ = run(["sudo", "-n", "nft", "list", "ruleset"])
    F["nft"] = out if rc == 0 else None

# room on the disks
for key, path in (("disk_deploy_to", P["deploy_to"]), ("disk_var_log", "/var/log")):
    try:
        s = os.statvfs(path)
        F[key] = {"free": s.f_bavail * s.f_frsize, "total": s.f_blocks * s.f_frsize}
    except OSError:
        F[key] = None
mark_json(F)
"""


def facts_params(cfg: Config, server: Server | None, host: str) -> dict:
    """Everything FACTS_PY needs to know about this host: the app server's paths and process, where nginx's
    site and logs are, the secret files, how to reach the site from the host itself."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    paths = app.paths(lay)
    mgr = manager.of(cfg)
    name = cfg.project.name
    is_app = server is None or server.role == "app"
    addr, port, host_header = http_target(cfg, host)
    sites = [nginx_site_paths("sites", name), nginx_site_paths("conf.d", name)]
    return {"app": is_app, "app_user": app_user(cfg), "pidfile": paths.pidfile, "log": paths.log,
            "app_process": app.process, "journal_argv": mgr.journal_argv(cfg) if mgr.journal else None,
            "socket": app.listen(cfg, server), "current": lay.current, "deploy_to": lay.deploy_to,
            "nginx": runs_nginx(cfg, server), "nginx_conf": NGINX_CONF, "nginx_pid": model.Facts().nginx_pid,
            "nginx_user": cfg.nginx.user, "nginx_test": root.NGINX_TEST.split(),
            "sites": [s for s, _ in sites], "enabled": [sites[0][1], sites[1][0]],
            "error_log": f"/var/log/nginx/{name}.error.log", "static_url": cfg.django.static_url,
            "secret_files": [lay.secret_key, lay.env_file], "lines": LOG_LINES,
            "addr": addr, "port": port, "host_header": host_header, "probe_path": PROBE_PATH,
            "https_port": cfg.tls.port if tls.terminates(cfg, server) or (server is not None and server.role == "lb"
                                                                         and tls.enabled(cfg)) else 0}


def facts_script(cfg: Config, params: dict) -> Script:
    """The one remote invocation: the host's python3 running FACTS_PY on the parameters."""
    return Script([Phase("facts", [f"{q(cfg.project.python)} -c {q(FACTS_PY)} {q(json.dumps(params))}"])])
