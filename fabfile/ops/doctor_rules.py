"""`fab doctor`, the deciding half (the app server's rules here; the site's and the host's in doctor_site.py,
the firewall's in doctor_firewall.py; ops/doctor.py lists them all): pure functions from one host's facts (ops/doctor_facts.py: FACTS_PY's
document) and parameters (doctor_facts.facts_params, plus "upstream", "app_title", "static_root", ...) to
findings. Each finding has the cause in one line and the fix; no SSH here, so each rule is unit-tested on
facts written by hand."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """What is wrong (the cause, one line) and what to do about it."""

    what: str  # a short name: "address in use", "app down", ...
    cause: str
    fix: str


# ---- reading the raw facts

_PROC = re.compile(r'\("([^"]+)",pid=(\d+)')


def parse_listeners(text: str) -> list[dict]:
    """`ss -Hlnpxt` lines as {"proto": "unix"|"tcp", "addr": path or address, "port": int|None,
    "procs": [(name, pid), ...]} (procs empty when ss could not name them)."""
    out = []
    for ln in text.splitlines():
        f = ln.split()
        if len(f) < 5:
            continue
        procs = [(n, int(p)) for n, p in _PROC.findall(ln)]
        if f[0].startswith("u_"):
            out.append({"proto": "unix", "addr": f[4], "port": None, "procs": procs})
        elif f[0].startswith("tcp"):
            addr, _, port = f[4].rpartition(":")
            out.append({"proto": "tcp", "addr": addr.strip("[]"), "port": int(port) if port.isdigit() else None,
                        "procs": procs})
    return out


def site_listen_ports(site: str, default: int) -> list[int]:
    """The ports of the site's `listen` directives (the configured port when it has none)."""
    ports = []
    for m in re.finditer(r"^\s*listen\s+([^;]+);", site, re.M):
        word = m.group(1).split()[0]
        port = word.rpartition(":")[2] if ":" in word or not word.isdigit() else word
        if port.isdigit():
            ports.append(int(port))
    return list(dict.fromkeys(ports)) or [default]


def site_upstream(site: str) -> str:
    """Where the site's `location /` passes requests: uwsgi_pass/proxy_pass, an `upstream` block resolved to
    its first server ("unix:/path" or "address:port"); "" when there is none."""
    m = re.search(r"(?:^|[\s{;])(?:uwsgi_pass|proxy_pass)\s+([^;]+);", site)
    if not m:
        return ""
    target = re.sub(r"^https?://", "", m.group(1).strip())
    if target.startswith("unix:"):
        return target.rstrip(":")
    up = re.search(r"upstream\s+" + re.escape(target) + r"\s*\{[^}]*?\bserver\s+([^\s;]+)", site)
    return up.group(1) if up else target


def _holders(listeners: list[dict], proto: str, addr: str, port: int | None) -> list[dict]:
    if proto == "unix":
        return [x for x in listeners if x["proto"] == "unix" and x["addr"] == addr]
    return [x for x in listeners if x["proto"] == "tcp" and x["port"] == port
            and (x["addr"] in ("0.0.0.0", "*", "::") or addr in ("0.0.0.0", "*", "::", x["addr"]))]


def _names(procs) -> str:
    return ", ".join(f"{n} (pid {p})" for n, p in dict.fromkeys(procs))


def _split_listen(listen: str) -> tuple[str, str, int | None]:
    if listen.startswith("/"):
        return "unix", listen, None
    addr, _, port = listen.rpartition(":")
    return "tcp", addr.strip("[]"), int(port) if port.isdigit() else None


# ---- the rules: each rule(facts, params) -> list[Finding]

def address_in_use(F: dict, P: dict) -> list[Finding]:
    """Another process holds the app server's socket path or port, or a port of the nginx site."""
    out = []
    listeners = parse_listeners(F.get("listeners", ""))
    named = F.get("listeners_named", False)
    if P.get("app"):
        proto, addr, port = _split_listen(P["socket"])
        where = addr if proto == "unix" else P["socket"]
        for x in _holders(listeners, proto, addr, port):
            others = [(n, p) for n, p in x["procs"] if n != P["app_process"]]
            if others:
                pids = " ".join(str(p) for _, p in dict.fromkeys(others))
                out.append(Finding("address in use", f"{where} is held by {_names(others)}, not {P['app_title']} "
                                   f"(it cannot bind: \"Address already in use\")",
                                   f"stop that process (kill {pids}), then `fab start`"))
            elif not named and not F.get("app_pid"):
                out.append(Finding("address in use", f"{where} is held by another process while "
                                   f"{P['app_title']} is down (sudo refused `ss -p`, which would name it)",
                                   "find it with `sudo ss -lxp` / `sudo ss -ltnp` and stop it, then `fab start`"))
    if P.get("nginx") and F.get("site"):
        for port in site_listen_ports(F["site"], P["port"]):
            for x in _holders(listeners, "tcp", "0.0.0.0", port):
                others = [(n, p) for n, p in x["procs"] if n != "nginx"]
                if others:
                    pids = " ".join(str(p) for _, p in dict.fromkeys(others))
                    out.append(Finding("address in use", f"port {port} (the nginx site's) is held by {_names(others)}, "
                                       "not nginx", f"stop that process (kill {pids}) or move it to another port, "
                                       "then start nginx (`sudo nginx`)"))
    return out


_ERROR_LINE = re.compile(r"Traceback|Error|Exception|error|FAILED|no app loaded|unable to load")


def error_lines(log: str, n: int = 8) -> list[str]:
    """The last error of a log: from its last traceback (or last error-looking line) on, at most n lines."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    start = max((i for i, ln in enumerate(lines) if "Traceback" in ln), default=-1)
    if start < 0:
        start = max((i for i, ln in enumerate(lines) if _ERROR_LINE.search(ln)), default=-1)
    if start < 0:
        return []
    block = lines[start:]
    errs = [i for i, ln in enumerate(block) if re.match(r"^\w+(\.\w+)*(Error|Exception|Exit)\b", ln.strip())]
    end = errs[-1] + 1 if errs else len(block)
    return block[:end][-n:]


def app_down(F: dict, P: dict) -> list[Finding]:
    """The app server is not running (502 Bad Gateway); with the last error of its log (a crash on import)."""
    if not P.get("app") or F.get("app_pid"):
        return []
    if not F.get("release"):
        return [Finding("app down", "nothing is deployed here yet (no current release)", "`fab deploy`")]
    errs = error_lines(F.get("app_log", ""))
    if errs:
        return [Finding("app down", f"{P['app_title']} is not running: it crashed; the last error of its log:\n"
                        + "\n".join("      | " + e for e in errs),
                        "fix that error in the code or settings and `fab deploy` (or `fab rollback`); "
                        "`fab logs --which app` shows more")]
    return [Finding("app down", f"{P['app_title']} is not running (no live master in {P['pidfile']}): requests "
                    "to it get 502 Bad Gateway", "`fab start` (`fab logs` says why it stopped)")]


def _can(user: str, groups: list[str], st: dict, bit: int) -> bool:
    """Do the mode bits of st (a stat fact) give `user` (in `groups`) the permission `bit` (1 x, 2 w, 4 r)?"""
    mode = int(st["mode"], 8) & 0o777
    if user == "root":
        return True
    if st["owner"] == user:
        return bool(mode >> 6 & bit)
    if st["group"] in groups:
        return bool(mode >> 3 & bit)
    return bool(mode & bit)


def socket_permission(F: dict, P: dict) -> list[Finding]:
    """nginx's worker user cannot connect to the app's unix socket: the directory or socket that stops it
    (mode, group), or SELinux enforcing."""
    if F.get("nginx_can_connect") != "no" or not F.get("app_pid"):  # (a server that is down: app_down says it)
        return []
    user, groups = F.get("nginx_user", "www-data"), F.get("nginx_groups", [])
    chain = F.get("socket_chain", [])
    blocker = ""
    for i, (path, st) in enumerate(chain):
        if not st:
            blocker = f"{path} is missing"
            break
        last = i == len(chain) - 1
        if not _can(user, groups, st, 2 if last else 1):
            blocker = (f"{path} is {st['mode']} {st['owner']}:{st['group']}: {user} (groups {' '.join(groups)}) "
                       f"may not {'write to it' if last else 'enter it'}")
            break
    cause = f"nginx's user {user} cannot connect to the app socket {P['socket']} (502, \"Permission denied\")"
    if blocker:
        cause += f": {blocker}"
    elif F.get("selinux") == "Enforcing":
        cause += ": the modes allow it, SELinux (enforcing) does not"
    fix = ("`fab deploy` sets shared/run back to 2750 app:<nginx group> and the socket to 660; or by hand: "
           "chmod 2750 the directory, chgrp the nginx group")
    if F.get("selinux") == "Enforcing":
        fix += "; SELinux: `setsebool -P httpd_can_network_connect 1` and label deploy_to httpd_var_run_t"
    return [Finding("socket permission", cause, fix)]


def upstream_mismatch(F: dict, P: dict) -> list[Finding]:
    """The nginx site sends requests somewhere the app server does not listen (502)."""
    if not P.get("nginx") or not P.get("app") or not F.get("site"):
        return []
    target = site_upstream(F["site"])
    if not target:
        return [Finding("upstream", f"the nginx site {F.get('site_path')} passes requests nowhere (no uwsgi_pass or "
                        "proxy_pass)", "`fab deploy` rewrites the site")]
    if target != P["upstream"]:
        return [Finding("upstream", f"nginx sends requests to {target} but {P['app_title']} listens on "
                        f"{P['upstream']} (502 Bad Gateway)",
                        f"`fab deploy` rewrites the site {F.get('site_path')} (or fix its pass line by hand and "
                        "reload nginx)")]
    pid = F.get("app_pid")
    listeners = parse_listeners(F.get("listeners", ""))
    if pid and F.get("listeners_named"):
        proto, addr, port = _split_listen(target[5:] if target.startswith("unix:") else target)
        # (started beside: the live master listens on <socket>.<slot>, the socket nginx uses a second name of it)
        names = [addr] + ([f"{addr}.{F['app_slot']}"] if proto == "unix" and F.get("app_slot") else [])
        mine = [x for a in names for x in _holders(listeners, proto, a, port)
                if any(n == P["app_process"] for n, _ in x["procs"])]
        if not mine:
            own = [x["addr"] if x["proto"] == "unix" else f"{x['addr']}:{x['port']}" for x in listeners
                   if any(n == P["app_process"] for n, _ in x["procs"])]
            return [Finding("upstream", f"nginx sends requests to {target} but the running {P['app_title']} "
                            f"(master {pid}) listens on {', '.join(own) or 'nothing'}",
                            "`fab restart` (it runs with an old config)")]
    return []


def timeouts(F: dict, P: dict) -> list[Finding]:
    """Requests killed by the app server's timeout (uWSGI harakiri, gunicorn's worker timeout) or cut by
    nginx's proxy timeout (504)."""
    out = []
    log = F.get("app_log", "")
    lines = log.splitlines()
    killed = [ln for ln in lines if "HARAKIRI ON WORKER" in ln or "WORKER TIMEOUT" in ln]
    if killed:
        # (uWSGI names the request it killed: "HARAKIRI [core 0] 127.0.0.1 - GET /slow since 1764...")
        req = [m.group(1) for m in map(re.compile(r"HARAKIRI \[core \d+\] (.*?)(?: since \d+)?$").search, lines) if m]
        out.append(Finding("timeout", f"{len(killed)} request(s) killed by {P['app_title']}'s timeout "
                           f"({P.get('timeout_key', 'its timeout')}) in the last lines of its log; the last: "
                           f"{req[-1] if req else killed[-1].strip()}",
                           f"make that view faster, or raise {P.get('timeout_key', 'the timeout')} in deploy.toml"))
    timed = [ln for ln in F.get("nginx_error_log", "").splitlines() if "upstream timed out" in ln]
    if timed:
        m = re.search(r'request: "([^"]+)"', timed[-1])
        out.append(Finding("timeout", f"{len(timed)} request(s) cut by nginx's proxy timeout (504): upstream timed "
                           f"out{' on ' + m.group(1) if m else ''}",
                           "make that view faster, or raise uwsgi_read_timeout/proxy_read_timeout in a custom "
                           "nginx template (nginx_template)"))
    return out
