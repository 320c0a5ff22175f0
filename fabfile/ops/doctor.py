"""`fab doctor`: read-only diagnosis of every host at once. Per host ONE remote program gathers the facts
(ops/doctor_facts.py), pure rules turn them into findings (ops/doctor_rules.py), and this module prints each
host's findings (the cause in one line, then the fix) or "no problems found". Takes no lock, writes nothing."""
from __future__ import annotations

import time

from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.hosts.connect import host_label
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import server_of
from fabdeploy.ops import doctor_rules as rules
from fabdeploy.ops import doctor_site as site
from fabdeploy.ops import doctor_tls
from fabdeploy.ops.doctor_facts import facts_params, facts_script
from fabdeploy.ops.doctor_firewall import firewall
from fabdeploy.ops.doctor_rules import Finding
from fabdeploy.remote.runner import run_script

# the setting that kills a slow request, per app server (for the timeout finding's fix)
TIMEOUT_KEYS = {"uwsgi": "[uwsgi] harakiri", "gunicorn": "[gunicorn] timeout"}


RULES = (site.nginx_state, rules.address_in_use, rules.app_down, rules.socket_permission, rules.upstream_mismatch,
         site.http_answers, rules.timeouts, site.static_files, site.secret_files, firewall, site.disks, site.clock,
         *doctor_tls.RULES)


def findings(F: dict, P: dict) -> list[Finding]:
    """Every finding of one host (a bare "http" answer only when no other finding explains it)."""
    found = [f for rule in RULES for f in rule(F, P)]
    causes = [f for f in found if f.what != "http"]
    return causes if causes else found


def rule_params(cfg: Config, server, host: str) -> dict:
    """The rules' parameters for a host: what the facts program got, and what this side knows beyond it."""
    app = appserver.of(cfg)
    lay = Layout(cfg.paths.deploy_to)
    return {**facts_params(cfg, server, host), "upstream": app.upstream(cfg, server), "app_title": app.title,
            "timeout_key": TIMEOUT_KEYS.get(app.name, f"[{app.section}] options"),
            "static_root": lay.static + "/current", "static_dir": lay.static, **tls_fixes(cfg)}


def tls_fixes(cfg: Config) -> dict:
    """What to do about an expiring certificate or one for other names, by [tls] mode."""
    if cfg.tls.mode == "acme":
        from fabdeploy.front import acme
        return {"tls_renew_fix": f"renew now: `sudo {acme.scripts(cfg)['renew']} --force-renewal "
                                 "--no-random-sleep-on-renew` on the host that issues (then `fab deploy` on a fleet); "
                                 "why the timer did not: /var/log/letsencrypt/letsencrypt.log",
                "tls_names_fix": "`fab deploy` (it re-issues for every nginx.server_name)"}
    return {"tls_renew_fix": "a new certificate in [tls] certificate/key, then `fab deploy`",
            "tls_names_fix": "a certificate for every nginx.server_name in [tls] certificate/key, then `fab deploy`"}


def diagnose(conns, cfg: Config, parallel: int) -> list[dict]:
    """{"host", "findings": [Finding]} or {"host", "error"} for every host, gathered in parallel."""
    def one(conn, cancel) -> dict:
        host = host_label(conn)
        params = rule_params(cfg, server_of(conn), conn.host)
        start = time.time()
        res = run_script(conn, facts_script(cfg, params), host=host, timeout=120, cancel=cancel)
        facts = res.json("doctor facts")
        facts["clock_skew"] = facts["time"] - (start + time.time()) / 2
        return {"host": host, "findings": findings(facts, params)}
    return on_each_host(conns, one, parallel, failed=lambda conn, exc: {"host": host_label(conn), "error": str(exc)})


def format_report(reports: list[dict]) -> str:
    """Each host, then its findings (PROBLEM: the cause; fix: ...) or "no problems found"."""
    out = []
    for rep in reports:
        out.append(rep["host"])
        if "error" in rep:
            out.append(f"  could not check: {rep['error']}")
        elif not rep["findings"]:
            out.append("  no problems found")
        for f in rep.get("findings", []):
            out.append(f"  PROBLEM ({f.what}): {f.cause}")
            out.append(f"     fix: {f.fix}")
    total = sum(len(r.get("findings", [])) for r in reports)
    failed = [r for r in reports if "error" in r]
    if total or failed:
        hosts = sum(1 for r in reports if r.get("findings"))
        out.append(f"{total} problem(s) on {hosts} host(s)" + (f"; {len(failed)} host(s) not checked" if failed else ""))
    else:
        out.append("no problems found")
    return "\n".join(out)


def failed(reports: list[dict]) -> bool:
    return any("error" in r or r["findings"] for r in reports)


__all__ = ["Finding", "diagnose", "findings", "format_report", "failed"]
