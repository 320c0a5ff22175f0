"""The Invoke/Fabric tasks. Import them into a team fabfile: ``from fabdeploy.tasks import *``."""
from __future__ import annotations

import functools
import json as _json
import sys

from fabric import Connection
from invoke import task
from invoke.exceptions import Exit

from fabdeploy import executor, quick_exit
from fabdeploy.config import Config, check_rolling, load_config
from fabdeploy.errors import ConfigError, FabdeployError
from fabdeploy.hosts.connect import host_label, make_connection, open_connection, prepare
from fabdeploy.hosts.fleet import on_each_host, signals_as_interrupt
from fabdeploy.hosts.roles import ALL_ROLES, ROLES, attach, balanced, parse_roles, select
from fabdeploy.local import secrets as _secrets
from fabdeploy.ops import control as _control
from fabdeploy.ops import manage as _manage
from fabdeploy.ops import starter
from fabdeploy.ops.deploy import deploy_all
from fabdeploy.output import Printer, add_secrets, masked
from fabdeploy.remote.runner import run_script
from fabdeploy.remote.script import Script
from fabdeploy.steps import lock

CONFIG_HELP = "deploy.toml to use (default: $FABDEPLOY_CONFIG, else ./deploy.toml)"
ROLES_HELP = "only hosts of these roles: app, lb or app,lb (default: all)"
PARALLEL_HELP = "hosts worked on at once (default: fleet.parallel)"

executor.use_fleet_executor()  # `fab -H a,b task` with these tasks imported: one call for all hosts, no fabric.yaml
quick_exit.install()  # no last garbage collections when the process ends (quick_exit.py)


def one_line_errors(fn):
    """Turn fabdeploy errors into one line on stderr and exit status 1, never a traceback; SIGTERM and SIGHUP
    act like Ctrl-C (exit 130 after the same cleanup). Marks the task as
    one that handles many hosts itself (see executor.FleetExecutor) and refuses to be called once per -H
    host by another executor."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            executor.refuse_per_host_call(args[0], fn.__name__)
            with signals_as_interrupt():
                return fn(*args, **kwargs)
        except FabdeployError as exc:
            raise Exit(masked(f"fabdeploy: {exc}"), code=1) from None
        except KeyboardInterrupt:
            raise Exit("fabdeploy: interrupted", code=130) from None
    wrapper.fabdeploy_fleet = True
    return wrapper


def _load(config: str | None, secrets: str = "") -> Config:
    """load_config, and its secrets masked in everything this run prints (see output.masked). secrets=
    "strict" resolves [secrets] before any SSH (one that cannot be had ends the task: deploy, fab secrets);
    "mask" resolves what it can, only to mask the values (a failure is a warning); "" not at all."""
    cfg = load_config(config)
    warnings = list(cfg.warnings) if secrets == "strict" else []
    if secrets:
        warnings += _secrets.apply(cfg, strict=secrets == "strict").warnings
    add_secrets(cfg.secret_values())
    for w in warnings:
        Printer().warn(w)
    return cfg


def target_connections(c, cfg: Config, roles: str | None = None, allowed: tuple[str, ...] = ROLES) -> list[Connection]:
    """The hosts to work on, each Connection carrying its Server (role, weight...): `fab -H host` gives one
    Connection (with FleetExecutor, all -H hosts at once); without -H, the hosts in deploy.toml. `roles`
    ("app", "lb", "app,lb") narrows them; `allowed` the roles the task works on (provision: the db host too)."""
    wanted = parse_roles(roles, allowed)
    if isinstance(c, Connection):
        attach(c, select(cfg, [c.original_host or _target(c)], wanted)[0])
        return [prepare(c, cfg)]
    conns = []
    for server in select(cfg, executor.cli_hosts(c), wanted):
        conn = make_connection(server.target, cfg, c.config)
        conns.append(attach(conn, server))
    return conns


def _target(conn: Connection) -> str:
    return f"{conn.user}@{conn.host}" + (f":{conn.port}" if conn.port != 22 else "")


@task(help={"config": CONFIG_HELP, "verbose": "show every remote command and its output",
            "wait": "seconds to wait for another run's deploy lock (default: lock.wait)",
            "plan": "print the remote commands and config diffs per host; change nothing (also: fab --dry)",
            "force": "deploy even when the live release already is this revision with the same configs",
            "roles": ROLES_HELP, "parallel": PARALLEL_HELP,
            "rolling": "switch app hosts in batches of N or N% (default: fleet.rolling; 0 = all at once)",
            "adopt-secret-key": "app hosts whose SECRET_KEYs differ: give every app host HOST's key (implies "
                                "--force)"})
@one_line_errors
def deploy(c, config=None, verbose=False, wait=None, plan=False, force=False, roles=None, parallel=None,
           rolling=None, adopt_secret_key=None):
    """Deploy the project: upload, virtualenv, migrate, collectstatic, switch, reload uWSGI and nginx."""
    cfg = _load(config, "strict")
    printer = Printer(verbose=verbose)
    conns = target_connections(c, cfg, roles)
    if plan or c.config.run.dry:
        from fabdeploy.ops.plan import plan_all  # (the modules of one task are imported in it)
        errors = plan_all(conns, cfg, printer, _seconds(wait, "--wait"), force)
        _exit_if_failed(errors)
        return
    if roles and "app" not in parse_roles(roles) and balanced(cfg):
        raise ConfigError("deploy --roles lb needs the app hosts too (the load balancers get their static files "
                          "from them): use --roles app,lb or no --roles")
    outcomes = deploy_all(conns, cfg, printer, wait=_seconds(wait, "--wait"), force=force or bool(adopt_secret_key),
                          parallel=_positive(parallel, "--parallel"), rolling=_rolling(rolling),
                          adopt_secret_key=adopt_secret_key)
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if o.ok:
            what = "already live" if o.unchanged else "deployed"
            printer.info(f"{o.host}: {what} {o.release} in {o.duration:.1f}s -> {o.url}")
    if len(outcomes) > 1:
        printer.info(summary_table(outcomes))
    _exit_if_failed([o.error for o in failed])


def summary_table(outcomes) -> str:
    """HOST, RELEASE, DURATION, RESULT, ERROR: one row per host of a fleet deploy."""
    rows = [("HOST", "RELEASE", "DURATION", "RESULT", "ERROR")]
    for o in outcomes:
        result = "unchanged" if o.unchanged else ("ok" if o.ok else "FAILED")
        rows.append((o.host, o.release, f"{o.duration:.1f}s", result, (o.error or "").splitlines()[0][:90]
                     if o.error else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@task(help={"config": CONFIG_HELP, "to": "release id to go back to (default: the previous good release)",
            "strict": "refuse when the database has migrations the target release does not know",
            "wait": "seconds to wait for another run's deploy lock", "verbose": "show the remote script",
            "parallel": PARALLEL_HELP,
            "restore-db": "when the database has migrations the target does not know: stop the app, load the dump "
                          "taken before them (shared/backups), then switch and start"})
@one_line_errors
def rollback(c, to=None, strict=False, config=None, wait=None, verbose=False, parallel=None, restore_db=False):
    """Switch back to the previous good release (or --to ID), reload gracefully, mark the abandoned one bad."""
    from fabdeploy.ops.rollback import rollback_all
    cfg = _load(config, "mask")
    printer = Printer(verbose=verbose)
    outcomes = rollback_all(target_connections(c, cfg, "app"), cfg, printer, to, strict,
                            wait=_seconds(wait, "--wait"), parallel=_parallel(parallel, cfg),
                            restore_db=bool(restore_db))
    for o in outcomes:
        if o.ok:
            printer.info(f"{o.host}: rolled back to {o.release} in {o.duration:.1f}s")
    failed = [o for o in outcomes if not o.ok]
    _exit_if_failed([o.error for o in failed])


CONTROL_HELP = {"config": CONFIG_HELP, "wait": "seconds to wait for another run's deploy lock (default: lock.wait)",
                "verbose": "show the remote script", "parallel": PARALLEL_HELP}


def _run_control(c, action: str, config, wait, verbose, parallel, nginx=False) -> None:
    """One of stop/start/restart/reload on every app host: phase lines, a table for several hosts, exit 1
    naming each failed host."""
    cfg = _load(config, "mask")
    printer = Printer(verbose=verbose)
    outcomes = _control.control_all(target_connections(c, cfg, "app"), cfg, printer, action, bool(nginx),
                                    wait=_seconds(wait, "--wait"), parallel=_parallel(parallel, cfg))
    _exit_if_failed(_control.report(outcomes, printer))


@task(help={**CONTROL_HELP, "nginx": "also take the site out of nginx (nginx -t, reload); fab start --nginx "
                                     "puts it back"})
@one_line_errors
def stop(c, nginx=False, config=None, wait=None, verbose=False, parallel=None):
    """Stop the app server, wait until its master and workers are gone (--nginx: the site out of nginx too).

    Stopping a stopped site is ok ("already stopped"); the nginx site stays unless --nginx."""
    _run_control(c, "stop", config, wait, verbose, parallel, nginx)


@task(help={**CONTROL_HELP, "nginx": "also put the site back into nginx (after fab stop --nginx)"})
@one_line_errors
def start(c, nginx=False, config=None, wait=None, verbose=False, parallel=None):
    """Start the live release's app server, wait until every worker is up, run the health check."""
    _run_control(c, "start", config, wait, verbose, parallel, nginx)


@task(help=CONTROL_HELP)
@one_line_errors
def restart(c, config=None, wait=None, verbose=False, parallel=None):
    """Hard restart (stop, then start: a new master) for when a graceful reload is not enough."""
    _run_control(c, "restart", config, wait, verbose, parallel)


@task(help=CONTROL_HELP)
@one_line_errors
def reload(c, config=None, wait=None, verbose=False, parallel=None):
    """Gracefully reload the live release (no request dropped), wait until every worker runs it, health check."""
    _run_control(c, "reload", config, wait, verbose, parallel)


@task(positional=["action"], help={
    "action": "backup (a dump now), backups (list them) or restore (load --id ID into the database)",
    "id": "restore: the dump's id (fab db backups)", "yes": "restore without asking on the terminal",
    "json": "backups: print JSON (one object per host)", "config": CONFIG_HELP,
    "wait": "seconds to wait for another run's deploy lock", "verbose": "show the remote script",
    "parallel": PARALLEL_HELP})
@one_line_errors
def db(c, action, id=None, yes=False, json=False, config=None, wait=None, verbose=False, parallel=None):
    """The app database's dumps in shared/backups: fab db backup | fab db backups [--json] |
    fab db restore --id ID [--yes] (stops the app, restores, starts it; asks first unless --yes)."""
    from fabdeploy.ops import dbtasks
    cfg = _load(config, "mask")
    printer = Printer(verbose=verbose)
    dbtasks.check(action, id or "")
    conns = target_connections(c, cfg, "app")
    from fabdeploy.database import fleet
    shared = fleet.shared(cfg) and len(conns) > 1
    if shared and action != "restore":  # one database for the fleet: its dumps taken and listed once (first app)
        conns = conns[:1]
    if action == "restore":  # (shared: every app host stopped, the dump loaded once: ops/db_fleet.py)
        _confirm(f"restore dump {id} into the database {'shared by' if shared else 'of'} "
                 f"{', '.join(host_label(x) for x in conns)}", yes)
    outcomes = dbtasks.db_all(conns, cfg, printer, action, id or "", wait=_seconds(wait, "--wait"),
                              parallel=_parallel(parallel, cfg))
    if action == "backups":
        out = [{"host": o.host, "dumps": o.dumps} if o.ok else {"host": o.host, "error": o.error} for o in outcomes]
        print(masked(_json.dumps(out, indent=2) if json else dbtasks.format_dumps(outcomes)))
    for o in outcomes:
        if o.ok and action != "backups":
            printer.info(f"{o.host}: db {action} ok in {o.duration:.1f}s: {o.said}")
    _exit_if_failed([o.error for o in outcomes if not o.ok])


def _confirm(what: str, yes: bool) -> None:
    """Ask on the terminal (y/N) unless --yes; without a terminal and without --yes: refuse, one line."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{what}: no terminal to confirm on; pass --yes")
    if input(f"{what}? [y/N] ").strip().lower() not in ("y", "yes"):
        raise FabdeployError("not confirmed: nothing done")


@task(help={"config": CONFIG_HELP, "prune": "remove the names no longer configured from the hosts' env file, "
                                           "then reload the app gracefully",
            "wait": "seconds to wait for another run's deploy lock (--prune)", "parallel": PARALLEL_HELP})
@one_line_errors
def secrets(c, prune=False, config=None, wait=None, parallel=None):
    """Per app host: the names of the app's environment and whether each matches [secrets] / [django] env
    (compared by keyed hashes: no value is sent or shown). Exits 1 naming each host out of step."""
    from fabdeploy.ops import secrets as _secrets_task
    cfg = _load(config, "strict")
    printer = Printer()
    outcomes = _secrets_task.secrets_all(target_connections(c, cfg, "app"), cfg, printer, bool(prune),
                                         _seconds(wait, "--wait"), _parallel(parallel, cfg))
    _exit_if_failed(_secrets_task.report(outcomes, printer))


@task(help={"config": CONFIG_HELP, "json": "print JSON (one object per host) for scripts",
            "parallel": PARALLEL_HELP})
@one_line_errors
def releases(c, json=False, config=None, parallel=None):
    """List the releases on each app host: id, revision, branch, when, by whom, status, virtualenv."""
    from fabdeploy.ops import report, report_text
    cfg = _load(config)
    reports = report.releases(target_connections(c, cfg, "app"), cfg, _parallel(parallel, cfg))
    print(masked(_json.dumps(reports, indent=2) if json else report_text.format_releases(reports)))
    if any("error" in r for r in reports):
        raise Exit(code=1)


@task(help={"config": CONFIG_HELP, "json": "print JSON (one object per host) for scripts", "roles": ROLES_HELP,
            "parallel": PARALLEL_HELP})
@one_line_errors
def status(c, json=False, config=None, roles=None, parallel=None):
    """Per host: current release, uWSGI master and workers, nginx, the health check, disk free; flags drift.
    Exits 1 naming each unhealthy host and why."""
    from fabdeploy.ops import report, report_text
    cfg = _load(config, "mask")
    reports = report.status(target_connections(c, cfg, roles), cfg, _parallel(parallel, cfg))
    print(masked(_json.dumps(reports, indent=2) if json else report_text.format_status(reports)))
    _exit_if_failed([f"{r['host']}: unhealthy: {report_text.unhealthy(r)}" for r in reports if report_text.unhealthy(r)])


@task(help={"config": CONFIG_HELP, "roles": ROLES_HELP, "parallel": PARALLEL_HELP})
@one_line_errors
def doctor(c, config=None, roles=None, parallel=None):
    """Diagnose each host (read-only): address in use, socket permissions, 502/504 causes, static files,
    ALLOWED_HOSTS, DEBUG, secret key modes, nginx -t, disk, clock. Exits 1 when anything is found."""
    from fabdeploy.ops import doctor as _doctor
    cfg = _load(config, "mask")
    reports = _doctor.diagnose(target_connections(c, cfg, roles), cfg, _parallel(parallel, cfg))
    print(masked(_doctor.format_report(reports)))
    if _doctor.failed(reports):
        raise Exit(code=1)


@task(help={"config": CONFIG_HELP, "n": "lines to show from each log (default 20)",
            "follow": "keep streaming new lines until Ctrl-C", "which": "app, manager, access, error (comma separated)",
            "roles": ROLES_HELP, "parallel": PARALLEL_HELP})
@one_line_errors
def logs(c, n=20, follow=False, which=None, config=None, roles=None, parallel=None):
    """Show the app server log, the process manager's lines about it, and this site's nginx logs (-f follows).

    The manager's lines: supervisor's program output file, the uWSGI emperor's lines about this vassal, or the
    unit's journal under systemd. -f follows every host's logs, merged."""
    from fabdeploy.ops.logs import show_logs
    cfg = _load(config, "mask")
    errors = show_logs(target_connections(c, cfg, roles), cfg, Printer(), _seconds(n, "-n"), follow, which,
                       _parallel(parallel, cfg))
    _exit_if_failed(errors)


@task(help={"config": CONFIG_HELP, "force": "also break a lock younger than lock.ttl", "roles": ROLES_HELP,
            "parallel": PARALLEL_HELP})
@one_line_errors
def unlock(c, force=False, config=None, roles=None, parallel=None):
    """Break a deploy lock left by a run that is gone (always when older than lock.ttl; else with --force)."""
    cfg = _load(config)
    printer = Printer()

    def one(conn, cancel) -> str | None:
        host = host_label(conn)
        res = run_script(conn, Script([lock.unlock(cfg, force)]), host=host, timeout=60, cancel=cancel)
        printer.info(f"{host}: " + "; ".join(res.phases["unlock"].notes))
        return None
    errors = on_each_host(target_connections(c, cfg, roles), one, _parallel(parallel, cfg))
    _exit_if_failed([e for e in errors if e])


@task(help={"config": CONFIG_HELP, "roles": ROLES_HELP,
            "all": "every connection this user has kept, whatever the config (no deploy.toml needed)"})
@one_line_errors
def disconnect(c, config=None, roles=None, all=False):
    """End the SSH connections kept open for the next fab command ([ssh] persist), like `ssh -O exit`."""
    from fabdeploy.hosts import keeper
    printer = Printer()
    if all:
        paths = keeper.kept_sockets()
        printer.info(f"ended {keeper.close_kept(paths)} kept SSH connection(s)")
        return
    cfg = _load(config)
    directory = keeper.runtime_dir(create=False)
    for conn in target_connections(c, cfg, roles, ALL_ROLES):
        spec = keeper.spec_of(conn, cfg.ssh, 1)
        live = keeper.close_kept([keeper.socket_path(spec, directory)]) if directory and spec else 0
        printer.info(f"{host_label(conn)}: " + ("kept SSH connection ended" if live else "no kept SSH connection"))


@task(help={"config": CONFIG_HELP, "host": "the app host to run it on (default: the first app host or -H host)"},
      auto_shortflags=False)
@one_line_errors
def manage(c, host=None, config=None):
    """Run manage.py in the live release: fab manage -- createsuperuser (production settings, exit status kept)."""
    args = _manage.remainder()
    if not args:
        raise ConfigError("manage needs the command after --, e.g. fab manage -- createsuperuser")
    cfg = _load(config)
    if host:
        server = select(cfg, [host], ("app",))[0]
        conn = attach(make_connection(server.target, cfg, c.config), server)
    else:
        conn = target_connections(c, cfg, "app")[0]
    open_connection(conn)
    print(f"{host_label(conn)}: manage.py {' '.join(args)}", file=sys.stderr)
    # A terminal on both ends when stdin is one (interactive createsuperuser, shell); else plain streams, and
    # stdin goes through (loaddata -). The program ends with the command's exit status.
    result = conn.run(_manage.remote_command(cfg, args), pty=sys.stdin.isatty(), warn=True, hide=False,
                      echo=False)
    raise Exit(code=result.exited if result.exited >= 0 else 255)


manage.body.fabdeploy_remainder = True  # the words after `--` are its arguments (see executor.FleetExecutor)


@task(help={"source": "the Django project directory, with manage.py (default: .)",
            "output": "the file to write (default: deploy.toml; never overwritten)"})
@one_line_errors
def init(c, source=".", output="deploy.toml"):
    """Write a starting deploy.toml guessed from the Django project (settings, WSGI app, requirements, name)."""
    path, project = starter.write_init(source, output)
    print(f"wrote {path}: name {project.name.value}, settings {project.settings.value}, "
          f"wsgi {project.wsgi.value}, requirements {project.requirements.value or '(none)'}")
    print("next: fill in the TODO lines (hosts, deploy_to, server_name), then `fabdeploy deploy`")


@task(help={"config": CONFIG_HELP, "user": "the deploy user the rules are for (default: the SSH user of the "
            "config's hosts)", "nginx_group": "nginx's group on the hosts (default: www-data)"})
@one_line_errors
def sudoers(c, user=None, nginx_group="www-data", config=None):
    """Print a sudoers drop-in limiting the deploy user to this project's root commands (visudo -c clean)."""
    from fabdeploy.ops import sudoers as _sudoers
    cfg = _load(config)
    print(_sudoers.drop_in(cfg, user or _sudoers.default_user(cfg), nginx_group), end="")


@task
def example_config(c):
    """Print the configuration reference, every key commented: fabdeploy example-config > deploy.toml"""
    print(starter.example_config(), end="")


@task(help={"config": CONFIG_HELP, "plan": "print what would change on each host; change nothing",
            "verbose": "show the remote scripts", "parallel": PARALLEL_HELP})
@one_line_errors
def provision(c, config=None, plan=False, verbose=False, parallel=None):
    """Make fresh servers ready for deploy (as root or a sudo user): packages, nginx, users, deploy_to."""
    from fabdeploy.provision import run as _prov
    from fabdeploy.provision.users import public_keys
    cfg = _load(config)
    printer = Printer(verbose=verbose)
    key = (c.config.get("connect_kwargs") or {}).get("key_filename")
    keys = public_keys(cfg, key[0] if isinstance(key, (list, tuple)) and key else key or None)
    outcomes = _prov.provision_all(target_connections(c, cfg, allowed=ALL_ROLES), cfg, keys, plan, printer, _parallel(parallel, cfg))
    printer.info(_prov.summary(outcomes, plan))
    _exit_if_failed([o.error for o in outcomes if o.error])


def _exit_if_failed(errors: list[str]) -> None:
    """One line per failed host on stderr, exit status 1."""
    if errors:
        raise Exit(masked("\n".join(f"fabdeploy: {e}" for e in errors)), code=1)


def _positive(value, flag: str):
    number = _seconds(value, flag)
    if number == 0:
        raise ConfigError(f"{flag} takes a number >= 1 (got {value!r})")
    return number


def _parallel(value, cfg: Config) -> int:
    return _positive(value, "--parallel") or cfg.fleet.parallel


def _rolling(value):
    """--rolling N or N%: checked like fleet.rolling."""
    if value is None:
        return None
    text = str(value).strip()
    parsed = int(text) if text.isdigit() else text
    problem = check_rolling(parsed)
    if problem:
        raise ConfigError(f"--rolling {problem} (got {value!r})")
    return parsed


def _seconds(value, flag: str):
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} takes a whole number (got {value!r})") from None
    if number < 0:
        raise ConfigError(f"{flag} takes a number >= 0 (got {value!r})")
    return number


__all__ = ["deploy", "provision", "rollback", "db", "secrets", "releases", "status", "logs", "unlock", "manage", "stop", "start", "disconnect",
           "restart", "reload", "sudoers", "doctor"]
