"""The deploy engine: named phases with hooks, three remote invocations per host, hosts in parallel.

    invocation 1  setup                          create the layout, take the deploy lock, learn host facts
    (local)                                      every app host's SECRET_KEY fingerprint compared (one key)
    (local)                                      build wheels when the host's venv must be built
    invocation 2  code, venv, django, config     archive on stdin; nothing the live site uses changes
    invocation 3  switch, restart, health,       make it live, reload, check, prune, audit line, release the
                  cleanup, finish                lock: detached on the host (detach.py), so it finishes even
                                                 when fab dies or its connection drops

A code-only redeploy to a host that is as fab remembers it runs invocations 1 and 2 as one (steps/fold.py).
A failure (or Ctrl-C) before the switch stops the remote half, removes the half-built release and leaves
`current`, uWSGI and nginx as they were; the switch invocation is never cut in half by Ctrl-C. Every run
ends with an audit line and the lock released.
"""
from __future__ import annotations

import threading
import time

from fabdeploy.config import Config
from fabdeploy.database import fleet
from fabdeploy.front import acme_fleet
from fabdeploy.errors import FabdeployError, RemoteError
from fabdeploy.hosts.connect import host_label, open_early
from fabdeploy.hosts.fleet import for_each_host
from fabdeploy.hosts.roles import batches, server_of
from fabdeploy.local.source import read_source, release_id
from fabdeploy.ops.app_host import HostDeploy
from fabdeploy.ops.balancer import LbDeploy
from fabdeploy.ops.outcome import Outcome, Shared
from fabdeploy.output import Printer
from fabdeploy.remote.runner import run_script
from fabdeploy.steps import lock, secret_key


def deploy_all(conns: list, cfg: Config, printer: Printer, wait: int | None = None, force: bool = False,
               parallel: int | None = None, rolling=None, adopt_secret_key: str | None = None) -> list[Outcome]:
    """Deploy to every connection, two-phase: prepare every host in parallel (app hosts: code, venv,
    migrate, static, config; load balancers: lock, then this release's static files and their upstream
    site); only when every host prepared, switch the app hosts (all at once, or in rolling batches that
    the load balancers take out of their upstream first), then finish on the load balancers. One Outcome
    per host. Ctrl-C during preparation: every host cleans up, then KeyboardInterrupt propagates.
    Between the app hosts' setup and their upload, their secret keys are made one (see share_secret_key);
    keys that differ (without adopt_secret_key) stop the deploy before any host changed anything."""
    open_early(conns)  # the SSH handshakes run while the source is read and fingerprinted here
    try:
        source = read_source(cfg)
    except BaseException:
        _close_all(conns)
        raise
    for w in source.warnings:
        printer.warn(w)
    rel_id = release_id(source)
    printer.width = max(len(host_label(c)) for c in conns)
    shared = Shared()
    wait = lock.capped_wait(cfg, cfg.lock.wait if wait is None else wait, printer.warn)
    parallel = parallel or cfg.fleet.parallel
    rolling = cfg.fleet.rolling if rolling is None else rolling
    cancel = threading.Event()
    app_conns = [conn for conn in conns if server_of(conn).role == "app"]
    # the db host's passwords, read once before the app hosts' setup: they are part of the "already live"
    # fingerprint (a rotated password reaches every app host on the next deploy)
    passwords = fleet.read_passwords(cfg, app_conns[0].config, printer) if app_conns else {}
    apps = [HostDeploy(conn, cfg, source, rel_id, printer, shared, cancel, wait, force, passwords,
                       fold_key(cfg, len(app_conns), adopt_secret_key)) for conn in app_conns]
    for hd in apps:  # (known before setup: a host that prepares in its setup invocation needs them)
        hd.state.fleet_passwords = dict(passwords)
    record = {"revision": source.revision, "branch": source.branch}
    lbs = [LbDeploy(conn, cfg, rel_id, printer, cancel, wait, record) for conn in conns
           if server_of(conn).role == "lb"]
    if lbs and not apps:
        raise FabdeployError("the load balancers get this release's static files from the app hosts: deploy them "
                             "in the same run (fab deploy, or -H with the app hosts too and the FleetExecutor)")
    everyone = apps + lbs
    if acme_fleet.active(cfg) and lbs and not any(acme_fleet.is_issuer(cfg, lb.server) for lb in lbs):
        raise FabdeployError(f"tls.mode = \"acme\" with several lb hosts: the first, "
                             f"{acme_fleet.issuer(cfg).target}, issues the certificate: deploy it in the same run")
    outcomes: dict[str, Outcome] = {}

    def failed_outcome(hd, exc) -> Outcome:
        return Outcome(hd.host, rel_id, False, str(exc), time.monotonic() - hd.started)

    def step(hosts, fn) -> list[bool]:
        """fn(host) on every host in parallel; a FabdeployError becomes that host's outcome."""
        def one(hd, host_cancel) -> bool:
            hd.cancel = host_cancel
            try:
                fn(hd)
                return True
            except FabdeployError as exc:
                outcomes[hd.host] = failed_outcome(hd, exc)
                return False
        return for_each_host(hosts, one, parallel)

    def interrupted() -> None:
        """Ctrl-C: hosts that prepared and will not switch remove what they built and unlock; balancers put
        their site back (keeping the new static files once an app host serves the new release)."""
        switched = any(hd.stage in ("publish", "published") for hd in apps)
        for hd in apps:
            if hd.stage in ("locked", "prepared"):  # ("unchanged" hosts hold no lock and built nothing)
                hd.abort("interrupted")
        for lb in lbs:
            if lb.stage in ("prepared", "locked"):
                lb.abort("interrupted", keep_static=switched)

    def steps() -> list[Outcome]:
        """deploy_all's steps: prepare, stage the balancers, switch (in batches), finish the balancers."""

        def not_switched(hd, why: str) -> None:
            """hd will not switch: it removes what it built and unlocks (an unchanged host, which built nothing
            and holds no lock, reports "already live")."""
            if isinstance(hd, HostDeploy) and hd.stage == "unchanged":
                outcomes[hd.host] = hd.publish()
                return
            hd.abort(f"not switched: {why}")
            outcomes[hd.host] = Outcome(hd.host, rel_id, False, f"{hd.host}: not switched: {why}",
                                        time.monotonic() - hd.started)

        def give_up(why: str) -> list[Outcome]:
            """Nothing switches: every prepared host removes what it built and unlocks."""
            for hd in everyone:
                if hd.host not in outcomes:
                    not_switched(hd, f"{why} (no host switches unless all prepared)")
            return [outcomes[hd.host] for hd in everyone]

        ok = step(everyone, lambda hd: hd.setup() if isinstance(hd, HostDeploy) else hd.prepare())
        if not all(ok):
            return give_up(", ".join(hd.host for hd, good in zip(everyone, ok) if not good) + " failed to prepare")
        try:
            share_secret_key(apps, adopt_secret_key)
        except FabdeployError:
            for hd in everyone:  # nothing was changed: unlock, audit, and say it in one line
                if hd.stage != "unchanged":
                    hd.abort("secret keys differ")
            raise
        share_database(apps, cfg, printer, passwords)
        ok = step(apps, lambda hd: hd.build())
        if not all(ok):
            return give_up(", ".join(hd.host for hd, good in zip(apps, ok) if not good) + " failed to prepare")
        if lbs:
            try:
                static_id, tar = apps[0].live_release(), apps[0].export_static()
            except FabdeployError as exc:
                return give_up(f"could not read the static files from {apps[0].host}: {exc}")
            for group in acme_order(lbs, cfg):
                if callable(group):  # (the issuer's pair, for the other balancers)
                    try:
                        group()
                    except FabdeployError as exc:
                        return give_up(str(exc))
                    continue
                hosts, fn = group
                ok = step(hosts, (lambda lb: lb.relay()) if fn == "relay" else
                          (lambda lb: lb.stage_release(static_id, tar)))
                if not all(ok):
                    return give_up(", ".join(lb.host for lb, good in zip(hosts, ok) if not good) + " failed to prepare")

        def publish(hd) -> None:
            outcomes[hd.host] = hd.publish()

        groups = batches(apps, rolling)
        stopped = ""
        for n, batch in enumerate(groups, 1):
            if stopped:
                for hd in batch:
                    not_switched(hd, stopped)
                continue
            if len(groups) > 1:
                printer.info(f"rolling: batch {n}/{len(groups)}: {', '.join(hd.host for hd in batch)}")
                if lbs and not all(step(lbs, lambda lb: lb.drain([hd.server.upstream_address for hd in batch]))):
                    stopped = f"the load balancer could not take batch {n} out of the upstream"
                    for hd in batch:
                        not_switched(hd, stopped)
                    continue
            good = step(batch, publish)
            if n < len(groups) and any(hd.held_interrupt for hd in batch):
                raise KeyboardInterrupt  # Ctrl-C held while this batch switched: no further batch
            if not all(good):
                bad = ", ".join(hd.host for hd, g in zip(batch, good) if not g)
                stopped = f"rolling deploy stopped: batch {n} failed ({bad})"
                if len(groups) > 1:
                    for hd, g in zip(batch, good):
                        if g:
                            hd.revert(stopped)
                            outcomes[hd.host] = Outcome(hd.host, rel_id, False,
                                                        f"{hd.host}: reverted: {stopped}",
                                                        time.monotonic() - hd.started)
        final = {"result": "ok"} if not stopped else {"result": "failed", "error": stopped}
        step(lbs, lambda lb: outcomes.__setitem__(lb.host, lb.finish(final)))
        return [outcomes[hd.host] for hd in everyone]

    try:
        return steps()
    except KeyboardInterrupt:
        interrupted()
        raise
    finally:
        _close(everyone)


def fold_key(cfg: Config, n_apps: int, adopt: str | None) -> str | None:
    """May the app hosts run setup and prepare in one invocation (steps/fold.py)? Not when the keys may move
    (--adopt-secret-key) or when several app hosts share a database (which one migrates is decided after
    every setup); else the SECRET_KEY fingerprint a folded host must have ("" any: one of its own)."""
    if adopt or (fleet.shared(cfg) and n_apps > 1):
        return None
    configured = cfg.secret_env.get("SECRET_KEY", "")
    return secret_key.key_fingerprint(configured) if configured else ""


def acme_order(lbs: list[LbDeploy], cfg: Config) -> list:
    """How the balancers prepare: all at once; with ACME and several balancers (front/acme_fleet.py) the
    others put the relay live, the issuer prepares (issues or keeps), its pair goes to the others (a
    callable), then they prepare."""
    if not acme_fleet.active(cfg):
        return [(lbs, "stage")]
    first = next(lb for lb in lbs if acme_fleet.is_issuer(cfg, lb.server))
    others = [lb for lb in lbs if lb is not first]

    def hand_over() -> None:
        pair = acme_fleet.pair_of(first.prepared_facts, first.host)
        for lb in others:
            lb.use_pair(pair)
    return [(others, "relay"), ([first], "stage"), hand_over, (others, "stage")]


def share_secret_key(apps: list[HostDeploy], adopt: str | None) -> None:
    """Give every app host of the run the same shared/secret_key (secret_key.decide): a new one when none has
    one (a single host makes its own, as always), else the holder's (read once, never shown) for the hosts
    without one, or the adopted host's for every host whose key differs; a SECRET_KEY of [secrets] to every
    host whose key is another."""
    configured = apps[0].cfg.secret_env.get("SECRET_KEY", "") if apps else ""
    if configured and adopt:
        raise FabdeployError("--adopt-secret-key: SECRET_KEY comes from [secrets]; every app host gets that one")
    if adopt:  # the host as in the summary, or its SSH target from deploy.toml / -H
        adopt = next((hd.host for hd in apps if adopt in (hd.host, hd.server.target)), adopt)
    plan = secret_key.decide({hd.host: hd.key_fp for hd in apps}, adopt, configured)
    if not plan.targets:
        return
    by_host = {hd.host: hd for hd in apps}
    stuck = [h for h in plan.targets if by_host[h].stage == "unchanged"]
    if stuck:
        raise FabdeployError(f"{', '.join(stuck)}: the live release is unchanged but the host needs the fleet's "
                             "SECRET_KEY: deploy with --force")
    if configured:
        key = configured
    elif plan.generate:
        key = secret_key.new_key()
    else:
        src = by_host[plan.source]
        res = run_script(src.conn, secret_key.read_script(src.cfg.paths.deploy_to), host=src.host, timeout=60)
        key = secret_key.parse_key("\n".join(res.phases["secret_key"].stdout), src.host)
    for h in plan.targets:
        by_host[h].secret_key = key
    src_text = "the [secrets] SECRET_KEY" if configured else "a new key" if plan.generate else \
        f"the key of {plan.source}"
    apps[0].printer.info(f"secret key: {src_text} goes to {', '.join(plan.targets)}")


def share_database(apps: list[HostDeploy], cfg: Config, printer: Printer, passwords: dict) -> None:
    """A fleet sharing one database (database/fleet.py): every app host gets the db host's passwords (read
    once before setup, never printed), and only the first app host that builds migrates (and dumps before
    it)."""
    if not apps:
        return
    for hd in apps:
        hd.state.fleet_passwords = dict(passwords)
    if fleet.shared(cfg):
        building = [hd for hd in apps if hd.stage != "unchanged"]
        for hd in building[1:]:
            hd.state.migrate = False
        if len(building) > 1:
            printer.info(f"migrate: once, on {building[0].host} (the app hosts share one database)")


def _close_all(conns) -> None:
    """Close connections opened early for a deploy that stops before any host was worked on."""
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing must not mask the error that stopped the deploy
            pass


def _close(hosts) -> None:
    """Close every connection but those of hosts still publishing (their thread finishes the switch; the
    remote half runs detached anyway)."""
    for hd in hosts:
        if hd.stage == "publish":
            continue
        try:
            hd.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not mask the outcome
            pass


__all__ = ["deploy_all", "Outcome", "RemoteError"]
