"""`fab secrets`: per app host, the names of the app's environment file (shared/config/app.env) and whether
each matches what this machine resolved, without any value crossing the wire or reaching the screen.

How values are compared: every run draws a random 256-bit key (per host, per run; it is never stored). The
host computes HMAC-SHA256(key, value) of each value of its env file (and of shared/secret_key, as
SECRET_KEY) with its own Python and sends back only the names and those hashes; this machine computes the
same of its resolved values and compares. A hash of a fresh random key says nothing about the value outside
this run, and the hashes are never printed either.

States: matches, differs (a deploy writes the new value), missing (configured, not on the host yet),
not configured (on the host, in neither [secrets] nor [django] env: `--prune` removes those lines from the
env file, under the deploy lock, and gracefully reloads the app so that its workers lose them).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets as _random
from dataclasses import dataclass, field

from fabdeploy.config import Config
from fabdeploy.hosts.connect import host_label, local_user
from fabdeploy.hosts.fleet import on_each_host
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.target import Target
from fabdeploy.ops import control as _control
from fabdeploy.ops.host_run import lock_wait, run_locked
from fabdeploy.output import Printer
from fabdeploy.remote.markers import PY_MARKERS
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import control
from fabdeploy.steps.code import host_managed
from fabdeploy.steps.lock import LockOwner

# Runs on the host: argv[1] = {"env": path, "secret_key": path, "key": hex, "keep": [names] or null}. With
# "keep", the lines of other names are removed from the env file (rewritten in place: owner, group and mode
# stay) and listed as "pruned".
HOST_PY = PY_MARKERS + r"""
import hashlib, hmac, json, os, shlex, sys
P = json.loads(sys.argv[1])
key = bytes.fromhex(P["key"])
def h(value):
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
def name_of(line):
    try:
        words = shlex.split(line)
    except ValueError:
        return None, None
    if len(words) == 1 and "=" in words[0]:
        return words[0].split("=", 1)
    return None, None
try:
    with open(P["env"], encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    exists = True
except FileNotFoundError:
    lines, exists = [], False
names, kept, pruned = {}, [], []
for line in lines:
    name, value = name_of(line.strip())
    if name is not None and P["keep"] is not None and name not in P["keep"]:
        pruned.append(name)
        continue
    kept.append(line)
    if name is not None:
        names[name] = h(value)
if pruned:
    with open(P["env"], "r+", encoding="utf-8") as f:
        f.write("".join(kept))
        f.truncate()
    mark("note", "removed from app.env (not configured): " + ", ".join(pruned))
try:
    with open(P["secret_key"], encoding="utf-8") as f:
        secret_key = h(f.read().rstrip("\n"))
except FileNotFoundError:
    secret_key = None
mark_json({"exists": exists, "names": names, "secret_key": secret_key, "pruned": pruned})
"""


def read_script(cfg: Config, key: str, prune: bool = False) -> Script:
    """The host half: hashes of the env file's values under `key` (hex); prune=True also removes the names
    that are not configured. One phase, no value in the script or its output."""
    lay = Layout(cfg.paths.deploy_to)
    params = {"env": lay.env_file, "secret_key": lay.secret_key, "key": key,
              "keep": sorted(configured(cfg)) if prune else None}
    return Script([Phase("secrets", [f"{q(cfg.project.python)} -c {q(HOST_PY)} {q(json.dumps(params))}"])])


def configured(cfg: Config) -> set[str]:
    """Names the env file should have: [django] env and [secrets] (but SECRET_KEY: shared/secret_key), and
    the ones the deploy writes on the host (DATABASE_URL, REDIS_URL: steps.code.host_managed)."""
    return (set(cfg.django.env) | set(cfg.data.get("secrets", {})) | set(host_managed(cfg))) - {"SECRET_KEY"}


def compare(cfg: Config, answer: dict, key: str) -> list[tuple[str, str]]:
    """(name, state) sorted by name, from the host's answer and this machine's values."""
    def h(value: str) -> str:
        return hmac.new(bytes.fromhex(key), value.encode(), hashlib.sha256).hexdigest()
    want = {**cfg.django.env, **{k: v for k, v in cfg.secret_env.items() if k != "SECRET_KEY"}}
    names, rows = answer.get("names", {}), {}
    for name in configured(cfg) | set(names):
        if name not in names:
            rows[name] = "missing" if name in want or name in host_managed(cfg) else "absent (optional, unset here)"
        elif name in host_managed(cfg):
            rows[name] = host_managed(cfg)[name]
        elif name not in configured(cfg):
            rows[name] = "not configured"
        elif name in want and hmac.compare_digest(names[name], h(want[name])):
            rows[name] = "matches"
        else:
            rows[name] = "differs"
    if "SECRET_KEY" in cfg.secret_env:
        on_host = answer.get("secret_key")
        rows["SECRET_KEY"] = "missing" if not on_host else \
            "matches" if hmac.compare_digest(on_host, h(cfg.secret_env["SECRET_KEY"])) else "differs"
    for name in answer.get("pruned", []):
        rows[name] = "pruned"
    return sorted(rows.items())


def prune_script(cfg: Config, key: str, owner: LockOwner, wait: int, target: Target) -> Script:
    """`fab reload`'s invocation (lock, reload, health, finish) with the pruning read right after the lock."""
    phases = control.phases(cfg, "reload", owner, wait, target.address, target.server, False)
    at = next(i for i, ph in enumerate(phases) if ph.name == "lock") + 1
    return Script([*phases[:at], *read_script(cfg, key, prune=True).phases, *phases[at:]],
                  tuple(cfg.secret_values()), on_failure=control.on_failure(cfg, owner))


@dataclass
class SecretsOutcome:
    host: str
    ok: bool
    rows: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""
    reloaded: str = ""

    def count(self, state: str) -> int:
        return sum(1 for _, s in self.rows if s == state)


def secrets_all(conns: list, cfg: Config, printer: Printer, prune: bool = False, wait: int | None = None,
                parallel: int | None = None) -> list[SecretsOutcome]:
    """fab secrets on every app host in parallel: one read-only invocation each; with prune and names to
    prune, a second one (deploy lock, prune, graceful reload, health check, audit line)."""
    wait = lock_wait(cfg, printer, conns, wait)

    def one(conn, cancel) -> SecretsOutcome:
        host, key = host_label(conn), _random.token_hex(32)
        answer = run_script(conn, read_script(cfg, key), host=host, timeout=60, cancel=cancel).json("secrets")
        rows = compare(cfg, answer, key)
        reloaded = ""
        if prune and any(state == "not configured" for _, state in rows):
            owner = LockOwner.new("secrets-prune", local_user())
            target = Target.of(conn, cfg)
            script = prune_script(cfg, key, owner, wait, target)
            res = run_locked(conn, cfg, script, owner, host, _control.timeout(cfg, "reload", wait), printer)
            rows = compare(cfg, res.json("secrets"), key)
            reloaded = "; ".join(n for ph in res.phases.values() if ph.name not in ("lock", "finish", "secrets")
                                 for n in ph.notes)
        return SecretsOutcome(host, True, rows, reloaded=reloaded)

    return on_each_host(conns, one, parallel or cfg.fleet.parallel,
                        failed=lambda conn, exc: SecretsOutcome(host_label(conn), False, error=str(exc)))


def report(outcomes: list[SecretsOutcome], printer: Printer) -> list[str]:
    """A line per name per host, host-prefixed; a table for several hosts; the errors (a host that could not be
    read, or whose names are out of step: one line each)."""
    errors = []
    for o in outcomes:
        if not o.ok:
            errors.append(o.error)
            continue
        if not o.rows:
            printer.line(o.host, "no environment names (nothing configured, none on the host)")
        for name, state in o.rows:
            printer.line(o.host, f"{name:<24} {state}")
        if o.reloaded:
            printer.line(o.host, f"reloaded: {o.reloaded}")
        drift = [f"{name} {state}" for name, state in o.rows if state in ("differs", "missing", "not configured")]
        if drift:
            errors.append(f"{o.host}: secrets out of step: {', '.join(drift)} (fab deploy writes the configured "
                          "values; fab secrets --prune removes names no longer configured)")
    if len(outcomes) > 1:
        printer.info(summary_table(outcomes))
    return errors


def summary_table(outcomes: list[SecretsOutcome]) -> str:
    """HOST, MATCH, DIFFER, MISSING, STALE, RESULT: one row per host."""
    rows = [("HOST", "MATCH", "DIFFER", "MISSING", "STALE", "RESULT")]
    for o in outcomes:
        if not o.ok:
            rows.append((o.host, "", "", "", "", "FAILED: " + o.error.splitlines()[0][:80]))
            continue
        stale = o.count("not configured")
        ok = not (o.count("differs") or o.count("missing") or stale)
        rows.append((o.host, str(o.count("matches")), str(o.count("differs")), str(o.count("missing")), str(stale),
                     "in step" if ok else "out of step"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


__all__ = ["secrets_all", "report", "read_script", "compare"]
