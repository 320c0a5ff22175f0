"""`fab doctor`'s rules about what nginx serves and the host around it: static files, the answers of the
site (ALLOWED_HOSTS, DEBUG, 5xx), the secret files' modes, nginx's own state, disks and the clock. Pure
functions of (facts, params), like ops/doctor_rules.py."""
from __future__ import annotations

import re

from fabdeploy.ops.doctor_rules import Finding


def static_files(F: dict, P: dict) -> list[Finding]:
    """No CSS: the static location is missing or points at the wrong or a missing directory, nothing was
    collected, or nginx's user cannot read the files."""
    st = F.get("static")
    if not st or not P.get("nginx") or not F.get("site"):
        return []
    want = P["static_root"].rstrip("/")
    url = P["static_url"]
    if not st["alias"]:
        return [Finding("static", f"the nginx site has no `location {url}` with an alias: no CSS",
                        "`fab deploy` rewrites the site")]
    alias = st["alias"].rstrip("/")
    if alias != want:
        return [Finding("static", f"the site's location {url} points at {st['alias']}, not {want}/",
                        "`fab deploy` rewrites the site")]
    if not st["exists"]:
        return [Finding("static", f"{st['alias']} (location {url}) does not exist: static files not collected",
                        "`fab deploy` collects them (collectstatic) and links static/current")]
    if not st["sample"]:
        return [Finding("static", f"{st['alias']} is empty: collectstatic collected nothing (STATICFILES_DIRS, "
                        "django.contrib.staticfiles in INSTALLED_APPS?)", "fix the settings, `fab deploy`")]
    if st["nginx_can_read"] == "no":
        return [Finding("static", f"nginx's user {F.get('nginx_user')} cannot read {st['alias']}{st['sample']} "
                        "(403 on static files)",
                        f"chmod -R g+rX {P['static_dir']} and chgrp it to nginx's group (`fab deploy` sets "
                        "2750 deploy:<nginx group>)")]
    bad = [p for p in F.get("probes", []) if p["path"] != P["probe_path"] and p["status"] not in (200, 304, None)
           and F.get("site_enabled")]
    if bad:
        return [Finding("static", f"GET {bad[0]['path']} (Host: {bad[0]['name']}) answers {bad[0]['status']}",
                        "`fab logs --which error` says why")]
    return []


def http_answers(F: dict, P: dict) -> list[Finding]:
    """400 on every request (a name not in ALLOWED_HOSTS), DEBUG on, or another 5xx of the site."""
    out = []
    probes = [p for p in F.get("probes", []) if p["path"] == P["probe_path"]]
    for p in probes:
        if p["status"] == 400:
            out.append(Finding("allowed hosts", f"Host: {p['name']} (the nginx site's server_name) gets 400 Bad "
                               "Request: ALLOWED_HOSTS of the running settings does not contain it",
                               f"add {p['name']} to [django] allowed_hosts (or nginx.server_name) and `fab deploy`"))
    if not out and re.search(r"DisallowedHost|Invalid HTTP_HOST header", F.get("app_log", "")):
        m = re.findall(r"Invalid HTTP_HOST header: '([^']+)'", F.get("app_log", ""))
        out.append(Finding("allowed hosts", "the app log has DisallowedHost errors"
                           + (f" (Host: {m[-1]})" if m else "") + ": requests for a name not in ALLOWED_HOSTS get 400",
                           "add that name to [django] allowed_hosts if it is yours, and `fab deploy`"))
    if any(p.get("debug_page") for p in probes):
        out.append(Finding("debug", "DEBUG is on in production: Django answers with its debug page (settings, "
                           "paths and tracebacks shown to anyone)",
                           "find what sets it (DJANGO_SETTINGS_MODULE or DEBUG in the app server's environment, "
                           "[django] env) and remove it; the fabdeploy settings say DEBUG = False"))
    if F.get("app_pid") or not P.get("app"):
        for p in probes:
            if (p["status"] in (502, 503, 504, None)) and not any(f.what == "allowed hosts" for f in out):
                last = [ln for ln in F.get("nginx_error_log", "").splitlines() if "[error]" in ln or "[crit]" in ln]
                got = p["status"] or f"no answer ({p.get('error') or 'nothing'})"
                out.append(Finding("http", f"Host: {p['name']} gets {got}"
                                   + (f"; nginx's error log: {last[-1][-240:]}" if last else ""),
                                   "`fab logs --which error,app`"))
                break
    return out


def secret_files(F: dict, P: dict) -> list[Finding]:
    """The secret key (shared/secret_key) or the environment file (shared/config/app.env) readable by others."""
    out = []
    for path, st in (F.get("secret_files") or {}).items():
        if int(st["mode"], 8) & 0o007:
            out.append(Finding("secret readable", f"{path} is {st['mode']} {st['owner']}:{st['group']}: every user "
                               "of the host can read it", f"chmod 0640 {path} (`fab deploy` writes it 0640)"))
    return out


_NGINX_PREFIX = re.compile(r"^(nginx: |\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )\[(\w+)\] (\d+#\d+: )?")


def _nginx_line(line: str) -> str:
    """An nginx message without its time and pid: "[warn] conflicting server name ..."."""
    return _NGINX_PREFIX.sub(r"[\2] ", line.strip())


def nginx_state(F: dict, P: dict) -> list[Finding]:
    """nginx down, its config failing `nginx -t`, another site claiming the same server_name, this site not
    there or not enabled."""
    if not P.get("nginx"):
        return []
    if not F.get("nginx_installed"):
        return [Finding("nginx", f"nginx is not installed (no {P.get('nginx_conf', 'nginx.conf')})", "`fab provision`")]
    out = []
    test = F.get("nginx_test") or {}
    text = test.get("output", "")
    if test.get("rc") not in (0, None) and "sudo" not in text:
        why = [ln for ln in text.splitlines() if "[emerg]" in ln or "[alert]" in ln] or text.splitlines()[-1:]
        out.append(Finding("nginx -t", f"nginx's config does not pass `nginx -t`: {_nginx_line(why[0]) if why else '?'}",
                           "fix that file; nginx keeps its old config until then (and cannot start)"))
    for ln in text.splitlines():
        if "conflicting server name" in ln:
            out.append(Finding("nginx server_name", f"{_nginx_line(ln)} (another site claims the same name: nginx "
                               "sends that name's requests to the first one it read)",
                               "remove the name from the other site, or disable it"))
    if not F.get("nginx_pid"):
        out.append(Finding("nginx", "nginx is not running", "`sudo nginx` (or systemctl start nginx); "
                           "`fab status` checks it after"))
    if not F.get("site"):
        out.append(Finding("nginx site", f"this project's nginx site is not there ({' or '.join(P['sites'])})",
                           "`fab deploy` (or `fab start --nginx` after `fab stop --nginx`)"))
    elif not F.get("site_enabled"):
        out.append(Finding("nginx site", f"the nginx site {F.get('site_path')} is not enabled",
                           "`fab start --nginx` (or `fab deploy`)"))
    return out


def disks(F: dict, P: dict) -> list[Finding]:
    out = []
    for key, where in (("disk_deploy_to", P["deploy_to"]), ("disk_var_log", "/var/log")):
        d = F.get(key)
        if d and d["total"] and (d["free"] < 200 * 2**20 or d["free"] / d["total"] < 0.05):
            out.append(Finding("disk", f"the disk of {where} is almost full ({d['free'] // 2**20} MiB free)",
                               "remove old releases (paths.keep_releases), logs (logrotate) or grow the disk"))
    return out


def clock(F: dict, P: dict) -> list[Finding]:
    skew = F.get("clock_skew")
    if skew is not None and abs(skew) > P.get("max_skew", 30):
        return [Finding("clock", f"the host's clock is {abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} this "
                        "machine's: release ids and log times disagree between hosts", "run NTP (chrony or "
                        "systemd-timesyncd) on the host")]
    return []
