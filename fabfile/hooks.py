"""Hooks before and after every deploy phase (Capistrano's before/after).

Two kinds, both turned into shell lines inside the phase's own remote invocation (no extra round trip):
- deploy.toml: ``[hooks] before_django = ["./manage.py compilemessages"]`` runs in the release directory.
- Python, in a team fabfile::

      from fabdeploy import hooks

      @hooks.after("django")
      def warm_cache(ctx):
          return [f"{ctx.python} manage.py warm_cache"]

  The function gets a HookContext and returns shell commands (strings), which it should quote itself
  (``shlex.quote``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from .config import PHASES, Config
from .layout import SETTINGS_MODULE, Layout
from .script import Phase, q

_REGISTRY: dict[tuple[str, str], list[Callable]] = defaultdict(list)


@dataclass
class HookContext:
    cfg: Config
    host: str
    release_id: str
    release_path: str
    venv_path: str

    @property
    def python(self) -> str:
        return q(self.venv_path + "/bin/python")


def _register(when: str, phase: str):
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases are: {', '.join(PHASES)}")

    def decorator(fn):
        _REGISTRY[(when, phase)].append(fn)
        return fn
    return decorator


def before(phase: str):
    """Register fn(ctx) -> list of shell commands, run at the start of `phase`."""
    return _register("before", phase)


def after(phase: str):
    """Register fn(ctx) -> list of shell commands, run at the end of `phase`."""
    return _register("after", phase)


def clear() -> None:
    _REGISTRY.clear()


def _commands(when: str, phase: str, cfg: Config, ctx: HookContext) -> list[str]:
    commands = list(cfg.hooks.__dict__.get(f"{when}_{phase}", []))
    for fn in _REGISTRY.get((when, phase), []):
        commands += list(fn(ctx) or [])
    return commands


def wrap(phase: Phase, cfg: Config, ctx: HookContext) -> Phase:
    """The phase with its before/after hook commands around it, each run from the release directory."""
    lay = Layout(cfg.paths.deploy_to)
    env = (f"export FABDEPLOY_RELEASE={q(ctx.release_id)} FABDEPLOY_RELEASE_PATH={q(ctx.release_path)} "
           f"FABDEPLOY_DEPLOY_TO={q(lay.deploy_to)} FABDEPLOY_VENV={q(ctx.venv_path)} "
           f"DJANGO_SETTINGS_MODULE={SETTINGS_MODULE}")

    def block(when: str) -> list[str]:
        cmds = _commands(when, phase.name, cfg, ctx)
        if not cmds:
            return []
        cd = f"cd {q(ctx.release_path)} 2>/dev/null || cd {q(lay.deploy_to)} 2>/dev/null || true"
        # stdin is closed: in the prepare invocation it carries the release archive.
        return [f"({env}; {cd}; set -e", *cmds, ") </dev/null"]

    before_lines, after_lines = block("before"), block("after")
    if not before_lines and not after_lines:
        return phase
    return Phase(phase.name, before_lines + phase.lines + after_lines, phase.sudo, phase.keep_going)
