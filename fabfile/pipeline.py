"""The pipeline, declared once: which phases run in which remote invocation, on app hosts, on load balancers
and in a rollback, which hooks wrap each phase, and which builder makes it. `fab deploy`, `fab deploy --plan`
and `fab rollback` all build their remote scripts with `script()` below, so the plan prints exactly what a
deploy runs, and a hook runs wherever its phase runs.

    app host   setup     setup                                   lock, facts; "already live" ends here
               prepare   code venv django config                 the release archive on stdin
               publish   switch restart health cleanup finish    detached on the host
    balancer   setup     setup facts                             lock, facts
               relay     relay                                   ACME, several balancers: challenges relayed
               prepare   static config                           this release's static files on stdin
               drain     drain                                   a rolling batch out of the upstream
               finish    config restart health cleanup finish    detached on the host
    rollback   rollback  lock rollback restart health finish     rollback's switch runs the switch hooks

Adding a phase: a builder (a function of RunState returning a Phase, or None to leave it out), one Step in
the invocation that runs it, and its hook name in config.PHASES when users may hook it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from fabdeploy import hooks
from fabdeploy.appserver import beside
from fabdeploy.config import PHASES, Config
from fabdeploy.front.firewall import port_check
from fabdeploy.hosts.layout import nginx_site_paths
from fabdeploy.hosts.target import Target
from fabdeploy.model import Facts, Release
from fabdeploy.remote.script import Phase, Script
from fabdeploy.remote.shell import q
from fabdeploy.steps import (activate, balancer, cleanup, code, configure, control, django_app, live_check,
                             lock, rollback, setup, venv)
from fabdeploy.steps.health import health
from fabdeploy.steps.lock import LockOwner


@dataclass(frozen=True)
class Step:
    phase: str  # the name output shows
    hook: str = ""  # the hooks around it (before_<hook>, after_<hook>); "" none


@dataclass(frozen=True)
class Invocation:
    name: str
    steps: tuple[Step, ...]
    locked: bool = True  # the run holds the lock when it starts (the first phase keeps it fresh)
    detached: bool = False  # runs on the host in its own session (finishes when fab dies: remote/detach.py)


APP = {inv.name: inv for inv in (
    Invocation("setup", (Step("setup", "setup"),), locked=False),
    Invocation("prepare", (Step("code", "code"), Step("venv", "venv"), Step("django", "django"),
                           Step("config", "config"))),
    Invocation("publish", (Step("switch", "switch"), Step("restart", "restart"), Step("health"),
                           Step("cleanup", "cleanup"), Step("finish")), detached=True),
)}
BALANCER = {inv.name: inv for inv in (
    Invocation("setup", (Step("setup", "setup"), Step("facts")), locked=False),
    Invocation("relay", (Step("relay"),)),  # ACME, several balancers: the others, before the issuer prepares
    Invocation("prepare", (Step("static"), Step("config", "config"))),
    Invocation("drain", (Step("drain"),)),
    Invocation("finish", (Step("config"), Step("restart", "restart"), Step("health"), Step("cleanup", "cleanup"),
                          Step("finish")), detached=True),
)}
ROLLBACK = {inv.name: inv for inv in (
    Invocation("rollback", (Step("lock"), Step("rollback", "switch"), Step("restart", "restart"), Step("health"),
                            Step("finish")), locked=False),
)}
PIPELINES = {"app": APP, "lb": BALANCER, "rollback": ROLLBACK}


@dataclass
class RunState:
    """What the builders need to know about one host's run (worked out by the task, or by --plan)."""

    cfg: Config
    target: Target
    owner: LockOwner
    release_id: str
    record: dict = field(default_factory=dict)  # the audit line's fields (revision, branch)
    wait: int = 0  # seconds to wait for the lock
    rel: Release | None = None  # app hosts, once prepared
    facts: Facts | None = None  # after setup
    fingerprint: str = ""  # app: the "already live" check ("" with --force: none)
    requirement_files: dict = field(default_factory=dict)
    secret_key: str = ""  # app: the fleet's key, when this host must get it (never printed)
    fleet_passwords: dict = field(default_factory=dict)  # app: the db host's password files (never printed)
    migrate: bool = True  # app: this host migrates (a shared database: one host per deploy)
    static_upload: bool = True  # balancer: this release's static files come on stdin
    drained: tuple[str, ...] = ()  # balancer: upstream addresses marked down
    outcome: dict = field(default_factory=lambda: {"result": "ok"})  # balancer finish: how the deploy ended
    to: str | None = None  # rollback --to
    strict: bool = False  # rollback --strict
    restore_db: bool = False  # rollback --restore-db

    def audit(self, result: str, error: str = "") -> dict:
        rec = {"release": self.release_id, **self.record, "result": result}
        if error:
            rec["error"] = error
        return rec

    @property
    def staging(self) -> str:
        return self.target.layout.staging(self.release_id) + ("-lb" if self.target.role == "lb" else "")


def _app_setup(r: RunState) -> Phase:
    cfg, owner = r.cfg, r.owner
    unchanged = live_check.unchanged_exit(cfg, r.fingerprint, [
        *lock.audit(cfg, owner, r.audit("unchanged"), dynamic={"live": '"$(basename "$cur")"'}),
        *lock.release(cfg, owner)]) if r.fingerprint else []
    return setup.setup(cfg, [*lock.acquire(cfg, owner, r.wait), *port_check(cfg, r.target.server)], unchanged)


def _app_health(r: RunState) -> Phase:
    site, _ = nginx_site_paths(r.facts.nginx_layout, r.cfg.project.name)
    return health(r.cfg, r.target.address, r.rel.id, r.facts.current, r.target.layout.staging(r.rel.id), site,
                  r.facts.nginx_pid, r.target.server)


BUILDERS: dict[tuple[str, str], Callable[[RunState], Phase | None]] = {
    ("app", "setup"): _app_setup,
    ("app", "code"): lambda r: code.code(r.cfg, r.rel, r.secret_key or None, r.fleet_passwords),
    ("app", "venv"): lambda r: venv.venv(r.cfg, r.rel, r.requirement_files),
    ("app", "django"): lambda r: django_app.django(r.cfg, r.rel, r.migrate,
                                                   beside.early(r.cfg, r.rel, r.target.server)),
    ("app", "config"): lambda r: configure.config(r.cfg, r.rel, r.facts, r.target.server),
    ("app", "switch"): lambda r: activate.switch(r.cfg, r.rel, r.target.server),
    ("app", "restart"): lambda r: activate.restart(r.cfg, r.rel, r.facts, r.target.server),
    ("app", "health"): _app_health,
    ("app", "cleanup"): lambda r: cleanup.cleanup(r.cfg, r.rel),
    ("app", "finish"): lambda r: lock.finish(r.cfg, r.owner, r.audit("ok")),
    ("lb", "setup"): lambda r: setup.setup(r.cfg, lock.acquire(r.cfg, r.owner, r.wait), app=False),
    ("lb", "facts"): lambda r: balancer.facts(r.cfg),
    ("lb", "static"): lambda r: balancer.static(r.cfg, r.release_id, r.static_upload),
    ("lb", "config"): lambda r: balancer.site(r.cfg, r.facts, r.staging),
    ("lb", "relay"): lambda r: balancer.relay(r.cfg, r.facts, r.staging),
    ("lb", "drain"): lambda r: balancer.drain(r.cfg, r.facts, r.staging, r.drained),
    ("lb", "restart"): lambda r: balancer.restart(r.facts, r.staging),
    ("lb", "health"): lambda r: balancer.health(r.cfg, r.target) if r.outcome.get("result") == "ok" else None,
    ("lb", "cleanup"): lambda r: balancer.cleanup(r.cfg, r.staging),
    ("lb", "finish"): lambda r: lock.finish(r.cfg, r.owner, {**r.audit("ok"), **r.outcome}),
    ("rollback", "lock"): lambda r: rollback.lock_phase(r.cfg, r.owner, r.wait),
    ("rollback", "rollback"): lambda r: rollback.select_and_switch(r.cfg, r.to, r.strict, r.restore_db),
    ("rollback", "restart"): lambda r: rollback.restart(r.cfg),
    ("rollback", "health"): lambda r: control.health(r.cfg, r.target.address, r.target.server),
    ("rollback", "finish"): lambda r: rollback.finish(r.cfg, r.owner),
}


def hook_context(kind: str, r: RunState) -> hooks.HookContext:
    lay = r.target.layout
    if kind == "rollback":  # the release is picked on the host: the hooks read it from `current`
        return hooks.HookContext(r.cfg, r.target.label, "", "", "", role=r.target.role, action="rollback")
    if kind == "lb":
        return hooks.HookContext(r.cfg, r.target.label, r.release_id, "", "", role="lb")
    return hooks.HookContext(r.cfg, r.target.label, r.release_id, lay.release(r.release_id),
                             lay.venv(r.rel.venv_hash) if r.rel else "")


def script(kind: str, name: str, r: RunState, *, only: tuple[str, ...] = ()) -> Script:
    """The remote script of invocation `name` of pipeline `kind` ("app", "lb", "rollback") for this run:
    each phase built, wrapped in its hooks; when the run already holds the lock, the first phase keeps it
    fresh; a detached invocation knows where its files go and what to do when a phase fails. `only`: build
    just these phases (the balancer's setup without its facts, say), in the declared order."""
    inv = PIPELINES[kind][name]
    ctx = hook_context(kind, r)
    phases = []
    for step in inv.steps:
        if only and step.phase not in only:
            continue
        built = BUILDERS[(kind, step.phase)](r)
        if built is not None:
            phases.append(hooks.wrap(built, r.cfg, ctx, step.hook) if step.hook else built)
    if inv.locked:
        phases[0] = lock.kept_alive(phases[0], r.cfg, r.owner)
    out = Script(phases, tuple(r.cfg.secret_values()) + ((r.secret_key,) if r.secret_key else ())
                 + tuple(r.fleet_passwords.values()))
    if inv.detached:
        lay = r.target.layout
        out.detach = f"{lay.tmp}/{r.release_id}" + ("-lb.publish" if kind == "lb" else ".publish")
        if kind == "app":
            out.on_failure = [f"rm -rf {q(lay.staging(r.release_id))} || true",
                              # (the master started early for a release that is not live after all: stopped)
                              *(beside.not_live_lines(r.cfg, r.rel) if r.rel else []),
                              *lock.failed_here(r.cfg, r.owner, r.audit("failed"))]
    return out


def listing(name: str, built: Script) -> str:
    """How `fab deploy --verbose` (before running it) and `--plan` show an invocation: the same text."""
    return f"----- remote invocation {name}\n{built.display().rstrip()}\n----- end of invocation {name}"


PLACEHOLDER_TOKEN = "TOKEN-OF-THE-DEPLOY"  # --plan: the lock token a deploy draws when it runs


def _check() -> None:
    """Every hook name the pipelines use is a phase users can hook (config.PHASES), and every phase has a
    builder."""
    for kind, pipeline in PIPELINES.items():
        for inv in pipeline.values():
            for step in inv.steps:
                assert not step.hook or step.hook in PHASES, (kind, step)
                assert (kind, step.phase) in BUILDERS, (kind, step)


_check()
