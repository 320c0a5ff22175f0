"""Hooks before and after every deploy phase (Capistrano's before/after).

Two kinds, both turned into shell lines inside the phase's own remote invocation (no extra round trip):
- deploy.toml: ``[hooks] before_django = ["./manage.py compilemessages"]`` runs in the release directory;
  a table ``after_restart = { lb = ["..."] }`` runs only on hosts of those roles (app, lb).
- Python, in a team fabfile::

      from fabdeploy import hooks

      @hooks.after("django")
      def warm_cache(ctx):
          return [f"{ctx.python} manage.py warm_cache"]

  The function gets a HookContext and returns shell commands (strings), which it should quote itself
  (``shlex.quote``); ``@hooks.after("restart", roles=("lb",))`` limits it to some roles.

A hook runs wherever its phase runs (pipeline.py declares which): app hosts and load balancers in a deploy
(setup, config, restart and cleanup run on both), and the switch and restart phases of a rollback. Every
command sees FABDEPLOY_RELEASE, FABDEPLOY_RELEASE_PATH, FABDEPLOY_VENV, FABDEPLOY_DEPLOY_TO, FABDEPLOY_ROLE
("app" or "lb") and FABDEPLOY_ACTION ("deploy" or "rollback").
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from fabdeploy.config import PHASES, Config
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import q

ROLES = ("app", "lb")
_REGISTRY: dict[tuple[str, str], list[tuple[Callable, tuple[str, ...]]]] = defaultdict(list)


@dataclass
class HookContext:
    """What a hook is told: the host, its role ("app" or "lb"), the action ("deploy" or "rollback") and the
    release. In a rollback the release is picked on the host: release_id, release_path and venv_path are ""
    and the hook's environment reads them from `current` when it runs."""

    cfg: Config
    host: str
    release_id: str
    release_path: str
    venv_path: str
    role: str = "app"
    action: str = "deploy"

    @property
    def python(self) -> str:
        return q(self.venv_path + "/bin/python") if self.venv_path else "\"$FABDEPLOY_VENV/bin/python\""


def _register(when: str, phase: str, roles):
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases are: {', '.join(PHASES)}")
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    if not roles or any(r not in ROLES for r in roles):
        raise ValueError(f"roles must be among {', '.join(ROLES)}")

    def decorator(fn):
        _REGISTRY[(when, phase)].append((fn, roles))
        return fn
    return decorator


def before(phase: str, roles=ROLES):
    """Register fn(ctx) -> list of shell commands, run at the start of `phase` on hosts of `roles`."""
    return _register("before", phase, roles)


def after(phase: str, roles=ROLES):
    """Register fn(ctx) -> list of shell commands, run at the end of `phase` on hosts of `roles`."""
    return _register("after", phase, roles)


def clear() -> None:
    _REGISTRY.clear()


def _commands(when: str, phase: str, cfg: Config, ctx: HookContext) -> list[str]:
    value = getattr(cfg.hooks, f"{when}_{phase}", [])
    commands = list(value.get(ctx.role, []) if isinstance(value, dict) else value)
    for fn, roles in _REGISTRY.get((when, phase), []):
        if ctx.role in roles:
            commands += list(fn(ctx) or [])
    return commands


def wrap(phase: Phase, cfg: Config, ctx: HookContext, hook: str = "") -> Phase:
    """The phase with the before/after hook commands of `hook` (a name of config.PHASES; default the phase's
    own name) around it, each block run from the release directory (deploy_to on a balancer) in a subshell."""
    hook = hook or phase.name
    lay = Layout(cfg.paths.deploy_to)
    common = (f"FABDEPLOY_DEPLOY_TO={q(lay.deploy_to)} FABDEPLOY_ROLE={q(ctx.role)} FABDEPLOY_ACTION={q(ctx.action)} "
              f"DJANGO_SETTINGS_MODULE={SETTINGS_MODULE}")
    if ctx.release_id:
        env = (f"export FABDEPLOY_RELEASE={q(ctx.release_id)} FABDEPLOY_RELEASE_PATH={q(ctx.release_path)} "
               f"FABDEPLOY_VENV={q(ctx.venv_path)} {common}")
        where = q(ctx.release_path) if ctx.release_path else ""
    else:  # a rollback: the release `current` points at when the hook runs
        env = (f'FABDEPLOY_RELEASE_PATH=$(readlink {q(lay.current)} 2>/dev/null || true); '
               'FABDEPLOY_RELEASE=$(basename "$FABDEPLOY_RELEASE_PATH"); '
               f'FABDEPLOY_VENV={q(lay.venvs)}/"$(cat "$FABDEPLOY_RELEASE_PATH/.fabdeploy/venv" 2>/dev/null)"; '
               f"export FABDEPLOY_RELEASE FABDEPLOY_RELEASE_PATH FABDEPLOY_VENV {common}")
        where = '"$FABDEPLOY_RELEASE_PATH"'
    cd = (f"cd {where} 2>/dev/null || " if where else "") + f"cd {q(lay.deploy_to)} 2>/dev/null || true"

    def block(when: str) -> list[str]:
        cmds = _commands(when, hook, cfg, ctx)
        if not cmds:
            return []
        # stdin is closed: in the prepare invocation it carries the release archive.
        return [f"({env}; {cd}; set -e", *cmds, ") </dev/null"]

    before_lines, after_lines = block("before"), block("after")
    if not before_lines and not after_lines:
        return phase
    return Phase(phase.name, before_lines + phase.lines + after_lines, phase.sudo, phase.keep_going)
