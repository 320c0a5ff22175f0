"""`fab releases` and `fab status` as text: the tables, the drift warnings (release, SECRET_KEY), and whether a
host is healthy, from the reports that ops/report.py collects (pure functions)."""
from __future__ import annotations

from fabdeploy.ops.cert_expiry import status_line


def drift(reports: list[dict]) -> str:
    """A warning when the hosts do not all serve the same release."""
    apps = [r for r in reports if "error" not in r and r.get("role", "app") == "app"]
    seen = {r.get("current") or "(none)" for r in apps}
    if len(seen) <= 1:
        return ""
    by = ", ".join(f"{r['host']}={r.get('current') or '(none)'}" for r in apps)
    return f"DRIFT: hosts are not on the same release: {by}"


def key_drift(reports: list[dict]) -> str:
    """A warning when the app hosts do not all have the same SECRET_KEY (fingerprints, grouped)."""
    apps = [r for r in reports if "secret_key_fp" in r]
    fps = {r["host"]: r["secret_key_fp"] for r in apps}
    if len(set(fps.values())) <= 1:
        return ""
    groups = "; ".join(f"{', '.join(h for h, f in fps.items() if f == fp)} ({fp[:8] or 'no key'})"
                       for fp in sorted(set(fps.values())))
    return f"SECRET_KEY DIFFERS between app hosts: {groups} (fab deploy --adopt-secret-key HOST)"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _per_host(reports: list[dict], body) -> list[str]:
    """The host's name, then body(report) lines, or its error."""
    out = []
    for rep in reports:
        out.append(rep["host"])
        out += [f"  error: {rep['error']}"] if "error" in rep else body(rep)
    return out


def format_releases(reports: list[dict]) -> str:
    def body(rep) -> list[str]:
        if not rep["releases"]:
            return ["  no releases"]
        rows = [["RELEASE", "REVISION", "BRANCH", "DEPLOYED AT", "DEPLOYED BY", "STATUS", "VENV"]]
        for r in rep["releases"]:
            rows.append([r["id"], r["revision"][:10], r["branch"] or "-", r["deployed_at"] or "-",
                         r["deployed_by"] or "-", r["status"], "yes" if r["venv_present"] else "removed"])
        return _table(rows)
    return "\n".join(_per_host(reports, body))


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "?"


def _manager_line(app: dict) -> str:
    """The process manager configured, its state of the program, and the one that really runs it when that
    differs (a host that the next deploy switches)."""
    line = app["manager"] + (f" ({app['manager_state']})" if app.get("manager_state") else "")
    under = app.get("running_under")
    if under and under != app["manager"]:
        line += f"; the running {app['server']} was started by {under} (the next deploy switches it)"
    return line


def format_status(reports: list[dict]) -> str:
    def body(rep) -> list[str]:
        app, ngx, http = rep["app"], rep["nginx"], rep["http"]
        rev = (rep["revision"] or "")[:10]
        where = f"  ({rev}, {rep['branch']})" if rev and rep["branch"] else (f"  ({rev})" if rev else "")
        lb = rep.get("role") == "lb"
        server = app.get("server", "uWSGI")
        via = f" ({http['via']} protocol, straight to {server})" if http.get("via") not in (None, "http") else (
            " (through the load balancer)" if lb else "")
        out = [f"  role      load balancer; static files of {rep.get('static') or '(none)'}" if lb else
               f"  release   {rep['current'] or '(none)'}{where}",
               "  app       " + ("none (load balancer)" if lb else
                                 f"{server} master {app['pid']} up, {app['workers']} workers"
                                 + ("" if app["on_current"] else " (NOT all on current)")
                                 if app["pid"] else f"{server} DOWN"),
               *([] if lb or "manager" not in app else ["  manager   " + _manager_line(app)]),
               "  nginx     " + ("not used (behind the load balancer)" if not rep.get("nginx_expected", True) else
                                 (f"up (master {ngx['pid']})" if ngx["pid"] else "DOWN")
                                 + (", site enabled" if ngx["site_enabled"] else ", site NOT enabled")),
               "  http      " + (f"{http['answer']} in {http['ms']} ms{via}" if http.get("ok") else
                                 f"FAILED: {http.get('answer') or http['error']}" if http["status"] is None else
                                 f"UNHEALTHY: {http['answer']}{via}"),
               *status_line(rep), f"  disk free {_size(rep['disk_free_bytes'])}"]
        if rep["lock"]:
            out.append(f"  lock      held by {rep['lock']['holder']} for {rep['lock']['age_s']}s")
        last = rep.get("last")
        if last:
            out.append(f"  last      {last.get('action')} {last.get('release', '')} {last.get('result')} "
                       f"by {last.get('who')} at {last.get('time')}")
        return out

    out = _per_host(reports, body)
    for warning in (drift(reports), key_drift(reports)):
        if warning:
            out.append(warning)
    return "\n".join(out)


def unhealthy(rep: dict) -> str:
    """Why a host is unhealthy ("" when it is not): unreachable, the app server or nginx down, or the HTTP check
    failing the health rule (health.PROBE_PY, the same as the deploy's health gate)."""
    if "error" in rep:
        return rep["error"]
    if rep.get("role") != "lb" and not rep["app"]["pid"]:
        return f"{rep['app'].get('server', 'uWSGI')} is down"
    if rep.get("nginx_expected", True) and not rep["nginx"]["pid"]:
        return "nginx is down"
    http = rep["http"]
    if not http.get("ok"):
        return f"http: {http.get('answer') or http['error']}"
    return ""


def healthy(rep: dict) -> bool:
    return not unhealthy(rep)
