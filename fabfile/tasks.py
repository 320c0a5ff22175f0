"""The Invoke/Fabric tasks. Import them into a team fabfile: ``from fabdeploy.tasks import *``."""
from __future__ import annotations

import functools

from fabric import Connection
from invoke import task
from invoke.exceptions import Exit

from .config import Config, load_config
from .connect import make_connection, prepare
from .deploy import deploy_all
from .errors import ConfigError, FabdeployError
from .output import Printer

CONFIG_HELP = "deploy.toml to use (default: $FABDEPLOY_CONFIG, else ./deploy.toml)"


def one_line_errors(fn):
    """Turn fabdeploy errors into one line on stderr and exit status 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FabdeployError as exc:
            raise Exit(f"fabdeploy: {exc}", code=1) from None
        except KeyboardInterrupt:
            raise Exit("fabdeploy: interrupted", code=130) from None
    return wrapper


def target_connections(c, cfg: Config) -> list[Connection]:
    """`fab -H host` gives one Connection; without -H, the hosts listed in deploy.toml."""
    if isinstance(c, Connection):
        return [prepare(c, cfg)]
    if not cfg.project.hosts:
        raise ConfigError("no hosts: pass -H user@host or set project.hosts in deploy.toml")
    return [make_connection(h, cfg, c.config) for h in cfg.project.hosts]


@task(help={"config": CONFIG_HELP, "verbose": "show every remote command and its output"})
@one_line_errors
def deploy(c, config=None, verbose=False):
    """Deploy the project: upload, virtualenv, migrate, collectstatic, switch, reload uWSGI and nginx."""
    cfg = load_config(config)
    printer = Printer(verbose=verbose)
    outcomes = deploy_all(target_connections(c, cfg), cfg, printer)
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if o.ok:
            printer.info(f"{o.host}: deployed {o.release} in {o.duration:.1f}s -> {o.url}")
    if failed:
        raise Exit("\n".join(f"fabdeploy: {o.error}" for o in failed), code=1)


__all__ = ["deploy"]
