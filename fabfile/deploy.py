"""The deploy engine: named phases with hooks, three remote invocations per host, hosts in parallel.

    invocation 1  setup                          create the layout, take the deploy lock, learn host facts
    (local)                                      every app host's SECRET_KEY fingerprint compared (one key)
    (local)                                      build wheels when the host's venv must be built
    invocation 2  code, venv, django, config     archive on stdin; nothing the live site uses changes
    invocation 3  switch, restart, health,       make it live, reload, check, prune, audit line, release the
                  cleanup, finish                lock: detached on the host (detach.py), so it finishes even
                                                 when fab dies or its connection drops

A failure (or Ctrl-C) before the switch stops the remote half, removes the half-built release and leaves
`current`, uWSGI and nginx as they were; the switch invocation is never cut in half by Ctrl-C. Every run
ends with an audit line and the lock released.
"""
from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass

from . import detach, hooks, lock, phases, secret_key
from .config import Config
from .connect import host_label, local_user, open_connection, reconnect
from .errors import FabdeployError, RemoteError
from .firewall import port_check
from .fleet import deferred_interrupt, for_each_host
from .lock import LockOwner
from .health import check_command, health
from .layout import Layout, nginx_site_paths
from .roles import batches, server_of
from .rollback import rollback_script
from .output import Printer
from .runner import Interrupted, run_script
from .script import MARK, Phase, Script, fact, fail_expanded, mask, parse_facts, q
from .source import Source, bundle, read_source, release_id
from .wheelhouse import build_wheels, venv_hash


@dataclass
class Outcome:
    host: str
    release: str = ""
    ok: bool = False
    error: str = ""
    duration: float = 0.0
    url: str = ""
    unchanged: bool = False  # the live release already was this revision with these configs


class _Shared:
    """State shared by the host threads of one deploy: one wheel build and one bundle per variant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.wheels: dict[tuple, list] = {}
        self.bundles: dict[tuple, bytes] = {}


def site_url(cfg: Config, host: str) -> str:
    names = [n for n in cfg.server_names if n != "_" and not n.startswith(("~", "*", ".")) and "*" not in n]
    name = names[0] if names else host
    listen = str(cfg.nginx.listen)
    port = listen.rsplit(":", 1)[-1]
    return f"http://{name}/" if port == "80" else f"http://{name}:{port}/"


class HostDeploy:
    """One host of a deploy: prepare() everywhere first, then publish() (or abort()) everywhere."""

    def __init__(self, conn, cfg: Config, source: Source, rel_id: str, printer: Printer, shared: _Shared,
                 cancel: threading.Event, wait: int = 0, force: bool = False):
        self.conn, self.cfg, self.source, self.rel_id = conn, cfg, source, rel_id
        self.cancel, self.wait, self.force = cancel, wait, force
        self.printer, self.shared = printer, shared
        self.host = host_label(conn)
        self.server = server_of(conn)
        self.fingerprint = phases.fingerprint(cfg, source.revision, source.requirements, self.server)
        self.layout = Layout(cfg.paths.deploy_to)
        self.owner = LockOwner.new("deploy", local_user())
        self.remote: dict = {}  # the remote process group of the running invocation
        self.detached = ""  # the file prefix of the detached publish on the host (detach.py)
        self.stage = "connect"
        self.held_interrupt = False
        self.rel: phases.Release | None = None
        self.facts: phases.Facts | None = None
        self.key_fp = ""  # fingerprint of the host's shared/secret_key ("" = none)
        self.secret_key = ""  # the fleet's key, when this host must get it (never printed)
        self.started = time.monotonic()

    def script(self, built: list, rel: phases.Release | None) -> Script:
        """The phases wrapped in their hooks; once the lock is ours (a Release exists), the first one starts
        by keeping the lock fresh for the whole invocation."""
        rel_id = rel.id if rel else self.rel_id
        ctx = hooks.HookContext(self.cfg, self.host, rel_id, self.layout.release(rel_id),
                                self.layout.venv(rel.venv_hash) if rel else "")
        wrapped = [hooks.wrap(p, self.cfg, ctx) for p in built]
        if rel is not None:
            wrapped[0] = lock.kept_alive(wrapped[0], self.cfg, self.owner)
        return Script(wrapped, tuple(self.cfg.secret_values()) + ((self.secret_key,) if self.secret_key else ()))

    def run(self, script: Script, stdin: bytes | None = None):
        self.printer.debug(self.host, script.display())
        timeout = self.cfg.pip.timeout + 600 + self.wait
        interruptible = self.stage not in ("publish", "published")
        # (the pgid of an interruptible run: its cleanup stops it; a detached publish is never stopped)
        return run_script(self.conn, script, host=self.host, stdin=stdin, timeout=timeout,
                          remote=self.remote if interruptible else None,
                          cancel=self.cancel if interruptible else None,
                          on_phase=lambda ph: self.printer.phase(self.host, ph),
                          on_output=(lambda s, ln: self.printer.debug(self.host, ln)) if self.printer.verbose
                          else None)

    def setup(self) -> None:
        """Invocation 1: layout, lock, facts (with the fingerprint of the host's secret key). On failure or
        Ctrl-C cleans up after itself and raises."""
        cfg = self.cfg
        try:
            open_connection(self.conn)
            self.stage = "setup"
            unchanged = [] if self.force else phases.unchanged_exit(cfg, self.fingerprint, [
                *lock.audit(cfg, self.owner, self.record("unchanged"), dynamic={"live": '"$(basename "$cur")"'}),
                *lock.release(cfg, self.owner)])
            locked = [*lock.acquire(cfg, self.owner, self.wait), *port_check(cfg, self.server)]
            result = self.run(self.script([phases.setup(cfg, locked, unchanged)], None))
            raw = parse_facts(result.stdout)
            self.facts = facts = phases.Facts.parse(raw)
            self.key_fp = raw.get(secret_key.FACT, "")
            if facts.unchanged:
                self.stage = "unchanged"  # the lock is already released
                return
            self.stage = "locked"
        except (FabdeployError, KeyboardInterrupt) as exc:
            if self.stage != "connect":
                self.fail_cleanup(exc)
            raise

    def build(self) -> None:
        """Invocation 2: upload, venv, migrate, static, config. Changes nothing the running site uses; on
        failure or Ctrl-C cleans up after itself and raises."""
        cfg, facts = self.cfg, self.facts
        if self.stage == "unchanged":
            return
        try:
            key = venv_hash(cfg, self.source.requirements, facts.python_version)
            need_venv = key not in facts.venvs
            wheels = self.wheels(key, facts) if (need_venv and cfg.pip.wheelhouse) else []
            self.check_cancel("wheels")
            self.rel = rel = phases.Release(
                self.rel_id, self.source.revision, self.source.branch, self.source.kind,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self.owner.who, key, bool(wheels),
                self.fingerprint)
            archive = self.archive(wheels)
            self.printer.line(self.host, f"upload   release {rel.id} ({len(archive) // 1024} KiB"
                              + (f", {len(wheels)} wheels" if wheels else "") + ")")
            self.stage = "prepare"
            prepare = [phases.code(cfg, rel, self.secret_key or None), phases.venv(cfg, rel, self.source.requirement_files),
                       phases.django(cfg, rel),
                       phases.config(cfg, rel, facts, self.server)]
            self.run(self.script(prepare, rel), stdin=archive)
            self.stage = "prepared"
        except (FabdeployError, KeyboardInterrupt) as exc:
            if self.stage != "connect":
                self.fail_cleanup(exc)
            raise

    def publish(self) -> Outcome:
        """Invocation 3: switch, reload, health gate (reverting by itself on failure), prune, audit, unlock.
        Never cut in half by Ctrl-C; runs detached on the host, so not by a dead client either."""
        cfg, rel, facts = self.cfg, self.rel, self.facts
        if self.stage == "unchanged":
            return Outcome(self.host, facts.unchanged, True, "", time.monotonic() - self.started,
                           site_url(cfg, self.conn.host), unchanged=True)
        lay = self.layout
        site, _ = nginx_site_paths(facts.nginx_layout, cfg.project.name)
        steps = [phases.switch(cfg, rel, self.server), phases.restart(cfg, rel, facts, self.server),
                 health(cfg, self.conn.host, rel.id, facts.current, lay.staging(rel.id), site, facts.nginx_pid,
                        self.server),
                 phases.cleanup(cfg, rel), lock.finish(cfg, self.owner, self.record("ok"))]
        script = self.script(steps, rel)
        # runs detached on the host: it finishes (health gate, revert, audit, unlock) even if we die
        script.detach = self.detached = f"{lay.tmp}/{rel.id}.publish"
        script.on_failure = [f"rm -rf {q(lay.staging(rel.id))} || true",
                             *lock.failed_here(cfg, self.owner, self.record("failed"))]
        self.stage = "publish"
        try:
            with deferred_interrupt():
                try:
                    self.run(script)
                finally:
                    self.stage = "published"
        except KeyboardInterrupt:
            if self.stage != "published":
                raise
            self.held_interrupt = True  # (a rolling deploy stops after this batch)
            self.printer.line(self.host, "interrupt held until the switch finished; the deploy completed")
        except FabdeployError as exc:
            if self.fail_cleanup(exc) != "0":
                raise
            self.printer.line(self.host, "the SSH channel broke during publish; the host finished it by itself "
                              "(exit status 0)")
        return Outcome(self.host, self.rel_id, True, "", time.monotonic() - self.started,
                       site_url(cfg, self.conn.host))

    def abort(self, reason: str) -> None:
        """A prepared host whose fleet will not switch: remove its release, audit, unlock."""
        self.fail_cleanup(FabdeployError(reason))

    def live_release(self) -> str:
        """The release this host serves after preparing: the new one, or the live one when unchanged."""
        return self.facts.unchanged if self.stage == "unchanged" else self.rel_id

    def export_static(self) -> bytes:
        """The static root of this host's release as a tar.gz (for the load balancers), one invocation."""
        rid = self.live_release()
        static = Layout(self.cfg.paths.deploy_to).static
        script = Script([Phase("static", [
            f"[ -d {q(static + '/' + rid)} ] || {phases.fail(f'no static files for {rid} on this host')}",
            f"tar -czf - -C {q(static)} {q(rid)} | base64"])])
        res = run_script(self.conn, script, host=self.host, timeout=600)
        return base64.b64decode("".join(res.phases["static"].stdout))

    def revert(self, reason: str) -> None:
        """Switch a published host back to the release it ran before (its rolling batch failed)."""
        previous = self.facts.current.rsplit("/", 1)[-1] if self.facts and self.facts.current else ""
        if self.stage == "unchanged" or not previous:
            return
        owner = LockOwner.new("rollback", self.owner.who)
        try:
            run_script(self.conn, rollback_script(self.cfg, owner, previous, False, 0), host=self.host,
                       timeout=self.cfg.uwsgi.reload_timeout + 120,
                       on_phase=lambda ph: self.printer.phase(self.host, ph))
            self.printer.line(self.host, f"reverted to {previous}: {reason}")
        except FabdeployError as exc:
            self.printer.line(self.host, f"could not revert to {previous}: {exc}")

    def check_cancel(self, where: str) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"{self.host}: interrupted during {where}")

    def record(self, result: str, error: str = "") -> dict:
        rec = {"release": self.rel_id, "revision": self.source.revision, "branch": self.source.branch,
               "result": result}
        if error:
            rec["error"] = error
        return rec

    def fail_cleanup(self, exc: BaseException) -> str:
        """Best effort, one invocation (reconnecting if the connection died): stop the remote half, drop the
        half-built release (before the switch only), write the audit line, release our lock. After the
        switch, first let a detached publish our broken channel left behind finish (it audits and unlocks
        by itself); returns its exit status ("" when none was left behind)."""
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        error = "interrupted" if interrupted else str(exc).splitlines()[0]
        before_switch = self.stage not in ("publish", "published")
        timeout = self.cfg.pip.timeout + 600
        built = [phases.abandon(self.cfg, self.rel or phases.Release(self.rel_id, "", "", "", "", ""),
                                self.remote.get("pgid"), lock.held(self.cfg, self.owner), self.facts)] \
            if before_switch else [*([Phase("settle", detach.settle(self.detached, timeout))] if self.detached
                                     else []), phases.drop_staging(self.cfg, self.rel_id)]
        record = self.record("interrupted" if interrupted else "failed", mask(error, self.cfg.secret_values()))
        res = run_cleanup(self, Script([*built, lock.failed_finish(self.cfg, self.owner, record)]), timeout + 60)
        if not res:
            return ""
        if interrupted:
            self.printer.line(self.host, f"interrupted during {self.stage}; "
                              + ("the half-built release was removed, " if before_switch else "")
                              + "lock released")
        return parse_facts(res.stdout).get(detach.STATUS_FACT, "")

    def wheels(self, key: str, facts: phases.Facts) -> list:
        variant = (key, facts.python_platform)
        with self.shared.lock:
            if variant not in self.shared.wheels:
                self.printer.line(self.host, f"wheels   building the wheelhouse for Python {facts.python_version} "
                                  f"({facts.python_platform}) ...")
                t = time.monotonic()
                self.shared.wheels[variant] = build_wheels(self.cfg, self.source.requirement_files,
                                                           facts.python_version, facts.python_platform, key)
                self.printer.line(self.host, f"wheels   {len(self.shared.wheels[variant])} wheels ready "
                                  f"{time.monotonic() - t:6.2f}s")
            return self.shared.wheels[variant]

    def archive(self, wheels: list) -> bytes:
        variant = tuple(str(w) for w in wheels)
        with self.shared.lock:
            if variant not in self.shared.bundles:
                self.shared.bundles[variant] = bundle(self.source.tar, wheels)
            return self.shared.bundles[variant]


class LbDeploy:
    """One load balancer host: setup (lock, facts), prepare (this release's static files, the upstream
    site, checked with `nginx -t`), drain (batches of a rolling deploy marked down), finish (final site,
    reload, health check through the balancer, prune static roots, audit, unlock)."""

    def __init__(self, conn, cfg: Config, rel_id: str, printer: Printer, cancel: threading.Event,
                 wait: int = 0, record: dict | None = None):
        self.conn, self.cfg, self.rel_id, self.printer, self.cancel, self.wait = conn, cfg, rel_id, printer, cancel, wait
        self.host = host_label(conn)
        self.server = server_of(conn)
        self.layout = Layout(cfg.paths.deploy_to)
        self.owner = LockOwner.new("deploy", local_user())
        self.base_record = dict(record or {})
        self.stage = "connect"
        self.remote: dict = {}  # the pgid of the running remote script: stopped when it fails or is interrupted
        self.detached = ""  # the file prefix of the detached finish on the host (detach.py)
        self.facts: phases.Facts | None = None
        self.static_before = ""
        self.started = time.monotonic()

    @property
    def staging(self) -> str:
        return self.layout.staging(self.rel_id) + "-lb"

    def run(self, phases_: list[Phase], stdin: bytes | None = None, interruptible: bool = True, detach: str = ""):
        if self.stage not in ("connect", "setup"):  # the lock is ours: keep it fresh in this invocation
            phases_ = [lock.kept_alive(phases_[0], self.cfg, self.owner), *phases_[1:]]
        script = Script(phases_, tuple(self.cfg.secret_values()), detach=detach)
        self.printer.debug(self.host, script.display())
        return run_script(self.conn, script, host=self.host, stdin=stdin,
                          timeout=self.cfg.pip.timeout + 600 + self.wait,
                          remote=self.remote if interruptible else None,
                          cancel=self.cancel if interruptible else None,
                          on_phase=lambda ph: self.printer.phase(self.host, ph))

    def prepare(self) -> None:
        """Invocation 1: layout, lock, facts (runs while the app hosts prepare)."""
        try:
            open_connection(self.conn)
            self.stage = "setup"
            st = self.layout.static
            res = self.run([phases.setup(self.cfg, lock.acquire(self.cfg, self.owner, self.wait), app=False),
                            Phase("facts", [fact("static_current", f'$(basename "$(readlink {q(st + "/current")})" '
                                                                '2>/dev/null || true)')])])
            raw = parse_facts(res.stdout)
            self.facts = phases.Facts.parse(raw)
            self.static_before = raw.get("static_current", "")
            self.stage = "locked"
        except (FabdeployError, KeyboardInterrupt) as exc:
            if self.stage != "connect":
                self.fail_cleanup(exc)
            raise

    def stage_release(self, static_id: str, tar: bytes) -> None:
        """Invocation 2: unpack the release's static files (hard-linked onto the live ones, so pages of the
        old and the new release both find theirs), point static/current at them, install the site."""
        self.rel_id = static_id
        upload = static_id != self.static_before
        if upload:
            lines = [
                *phases.seed_static(self.cfg, static_id),
                f"tar -xzf - -C {q(self.layout.static)}",
                f"n=$(find {q(self.layout.static + '/' + static_id)} -type f | wc -l)",
                *phases.static_switch(self.cfg, q(static_id)),
                phases.note(f"static files of {static_id}: $n files"),
            ]
        else:
            lines = [phases.note(f"static files of {static_id} already here")]
        site = phases.lb_site(self.cfg)
        try:
            self.stage = "prepare"
            self.run([Phase("static", lines),
                      Phase("config", phases.site_install(self.cfg, site, self.facts, self.staging), sudo=True)],
                     stdin=tar if upload else None)
            self.stage = "prepared"
        except (FabdeployError, KeyboardInterrupt) as exc:
            self.fail_cleanup(exc)
            raise

    def drain(self, targets: list[str]) -> None:
        """Mark these app hosts down in the upstream (every other one up), `nginx -t`, reload and wait."""
        lines = phases.site_install(self.cfg, phases.lb_site(self.cfg, drained=set(targets)), self.facts,
                                    self.staging + "/drain")
        lines += [f"rm -rf {q(self.staging + '/drain')}", *phases.nginx_reload_lines(self.facts.nginx_pid)]
        names = ", ".join(targets) or "none"
        self.run([Phase("drain", lines + [phases.note(f"out of the upstream: {names}")], sudo=True)],
                 interruptible=False)

    def finish(self, record: dict) -> Outcome:
        """The final site (every app host up), start or reload nginx, check through the balancer, prune
        static roots of releases no longer kept, audit, unlock."""
        cfg, lay = self.cfg, self.layout
        ok = record.get("result") == "ok"
        steps = [Phase("config", phases.site_install(cfg, phases.lb_site(cfg), self.facts, self.staging),
                       sudo=True),
                 Phase("restart", phases.nginx_restart_lines(self.facts, self.staging + "/nginx-changed"),
                       sudo=True)]
        if ok:
            check = check_command(cfg, self.conn.host, self.server)
            steps.append(Phase("health", [
                f'if answer=$({check}); then echo "{MARK} note through the balancer: $answer"; else '
                + fail_expanded("health check through the load balancer failed: $answer") + "; fi"],
                keep_going=True))
        keep = cfg.paths.keep_releases
        steps.append(Phase("cleanup", [
            f"cd {q(lay.static)}",
            "cur=$(basename \"$(readlink current)\")",
            *phases.prune_lines(keep),
            f"rm -rf {q(self.staging)}",
            phases.note(f"static roots: removed $removed (keep_releases = {keep})"),
        ]))
        steps.append(lock.finish(cfg, self.owner, {**self.base_record, "release": self.rel_id, **record}))
        # detached on the host like an app host's publish: it finishes (reload, audit, unlock) if we die
        self.detached = f"{lay.tmp}/{self.rel_id}-lb.publish"
        try:
            with deferred_interrupt():
                res = self.run(steps, interruptible=False, detach=self.detached)
        except FabdeployError as exc:
            if self.fail_cleanup(exc) != "0":
                return Outcome(self.host, self.rel_id, False, str(exc), time.monotonic() - self.started)
            self.printer.line(self.host, "the SSH channel broke during finish; the host finished it by itself "
                              "(exit status 0; see fab status for the check through the balancer)")
            return Outcome(self.host, self.rel_id, True, "", time.monotonic() - self.started,
                           site_url(cfg, self.conn.host))
        health_ph = res.phases.get("health")
        if health_ph is not None and health_ph.rc:
            error = f"{self.host}: health: " + (health_ph.errors or ["failed"])[-1]
            return Outcome(self.host, self.rel_id, False, error, time.monotonic() - self.started)
        # the balancer did its part (its audit line says how the deploy as a whole ended)
        return Outcome(self.host, self.rel_id, True, "", time.monotonic() - self.started,
                       site_url(cfg, self.conn.host))

    def abort(self, reason: str, keep_static: bool = False) -> None:
        """The deploy stops: see fail_cleanup. keep_static: app hosts already serve the new release, whose
        pages need its static files (the new root holds the old files as well)."""
        self.fail_cleanup(FabdeployError(reason), keep_static)

    def fail_cleanup(self, exc: BaseException, keep_static: bool = False) -> str:
        """Put static/current and the site back as they were, audit, unlock (best effort). After a broken
        channel in finish, first let the detached finish end (it unlocks when it succeeds, and then nothing
        is put back); returns its exit status ("" when none was left behind)."""
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        error = "interrupted" if interrupted else str(exc).splitlines()[0]
        st = self.layout.static
        lines = []
        if self.facts is not None and self.stage not in ("setup", "locked"):
            lines = phases.lb_restore_site(self.cfg, self.facts, self.staging)
            if self.static_before and self.rel_id != self.static_before and not keep_static:
                lines += [*phases.static_switch(self.cfg, q(self.static_before)), f"rm -rf {q(st + '/' + self.rel_id)}"]
            lines.append(f"rm -rf {q(self.staging)}")
        record = {**self.base_record, "release": self.rel_id, "result": "interrupted" if interrupted else "failed",
                  "error": mask(error, self.cfg.secret_values())}
        held = lock.held(self.cfg, self.owner)
        stop = phases.stop_group(self.remote.pop("pgid", None))  # e.g. a loop waiting for the lock
        timeout = self.cfg.pip.timeout + 600
        settle = [Phase("settle", detach.settle(self.detached, timeout))] if self.detached else []
        res = run_cleanup(self, Script([*settle, Phase("abandon", [*stop, f"if ! {held}; then exit 0; fi", *lines]),
                                        lock.failed_finish(self.cfg, self.owner, record)]), timeout + 60)
        return parse_facts(res.stdout).get(detach.STATUS_FACT, "") if res else ""


def run_cleanup(hd, script: Script, timeout: float = 60):
    """Run a cleanup script on a host, best effort, over a fresh connection when the old one died: its
    RunResult, or None (and a line saying the lock stays) when the host cannot be reached."""
    try:
        conn = hd.conn if hd.conn.is_connected else reconnect(hd.conn, hd.cfg)
        return run_script(conn, script, host=hd.host, timeout=timeout)
    except FabdeployError:
        hd.printer.line(hd.host, "could not clean up (host unreachable): the lock stays until `fab unlock`")
        return None


def deploy_all(conns: list, cfg: Config, printer: Printer, wait: int | None = None, force: bool = False,
               parallel: int | None = None, rolling=None, adopt_secret_key: str | None = None) -> list[Outcome]:
    """Deploy to every connection, two-phase: prepare every host in parallel (app hosts: code, venv,
    migrate, static, config; load balancers: lock, then this release's static files and their upstream
    site); only when every host prepared, switch the app hosts (all at once, or in rolling batches that
    the load balancers take out of their upstream first), then finish on the load balancers. One Outcome
    per host. Ctrl-C during preparation: every host cleans up, then KeyboardInterrupt propagates.
    Between the app hosts' setup and their upload, their secret keys are made one (see share_secret_key);
    keys that differ (without adopt_secret_key) stop the deploy before any host changed anything."""
    source = read_source(cfg)
    for w in source.warnings:
        printer.warn(w)
    rel_id = release_id(source)
    printer.width = max(len(host_label(c)) for c in conns)
    shared = _Shared()
    wait = lock.capped_wait(cfg, cfg.lock.wait if wait is None else wait, printer.warn)
    parallel = parallel or cfg.fleet.parallel
    rolling = cfg.fleet.rolling if rolling is None else rolling
    cancel = threading.Event()
    apps = [HostDeploy(conn, cfg, source, rel_id, printer, shared, cancel, wait, force)
            for conn in conns if server_of(conn).role == "app"]
    record = {"revision": source.revision, "branch": source.branch}
    lbs = [LbDeploy(conn, cfg, rel_id, printer, cancel, wait, record) for conn in conns
           if server_of(conn).role == "lb"]
    if lbs and not apps:
        raise FabdeployError("the load balancers get this release's static files from the app hosts: deploy them "
                             "in the same run (fab deploy, or -H with the app hosts too and the FleetExecutor)")
    everyone = apps + lbs
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
        ok = step(apps, lambda hd: hd.build())
        if not all(ok):
            return give_up(", ".join(hd.host for hd, good in zip(apps, ok) if not good) + " failed to prepare")
        if lbs:
            try:
                static_id, tar = apps[0].live_release(), apps[0].export_static()
            except FabdeployError as exc:
                return give_up(f"could not read the static files from {apps[0].host}: {exc}")
            ok = step(lbs, lambda lb: lb.stage_release(static_id, tar))
            if not all(ok):
                return give_up(", ".join(lb.host for lb, good in zip(lbs, ok) if not good) + " failed to prepare")

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


def share_secret_key(apps: list[HostDeploy], adopt: str | None) -> None:
    """Give every app host of the run the same shared/secret_key (secret_key.decide): a new one when none has
    one (a single host makes its own, as always), else the holder's (read once, never shown) for the hosts
    without one, or the adopted host's for every host whose key differs."""
    if adopt:  # the host as in the summary, or its SSH target from deploy.toml / -H
        adopt = next((hd.host for hd in apps if adopt in (hd.host, hd.server.target)), adopt)
    plan = secret_key.decide({hd.host: hd.key_fp for hd in apps}, adopt)
    if not plan.targets:
        return
    by_host = {hd.host: hd for hd in apps}
    stuck = [h for h in plan.targets if by_host[h].stage == "unchanged"]
    if stuck:
        raise FabdeployError(f"{', '.join(stuck)}: the live release is unchanged but the host needs the fleet's "
                             "SECRET_KEY: deploy with --force")
    if plan.generate:
        key = secret_key.new_key()
    else:
        src = by_host[plan.source]
        res = run_script(src.conn, secret_key.read_script(src.cfg.paths.deploy_to), host=src.host, timeout=60)
        key = secret_key.parse_key("\n".join(res.phases["secret_key"].stdout), src.host)
    for h in plan.targets:
        by_host[h].secret_key = key
    src_text = "a new key" if plan.generate else f"the key of {plan.source}"
    apps[0].printer.info(f"secret key: {src_text} goes to {', '.join(plan.targets)}")


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
