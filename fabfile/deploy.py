"""The deploy engine: named phases with hooks, three remote invocations per host, hosts in parallel.

    invocation 1  setup                          create the layout, take the deploy lock, learn host facts
    (local)                                      build wheels when the host's venv must be built
    invocation 2  code, venv, django, config     archive on stdin; nothing the live site uses changes
    invocation 3  switch, restart, cleanup,      make it live, reload, prune, audit line, release the lock
                  finish

A failure (or Ctrl-C) before the switch stops the remote half, removes the half-built release and leaves
`current`, uWSGI and nginx as they were; the switch invocation is never cut in half by Ctrl-C. Every run
ends with an audit line and the lock released.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from . import hooks, lock, phases
from .config import Config
from .connect import host_label, local_user, open_connection, reconnect
from .errors import FabdeployError, RemoteError
from .fleet import deferred_interrupt, for_each_host
from .lock import LockOwner
from .health import health
from .layout import Layout, nginx_site_paths
from .output import Printer
from .runner import Interrupted, run_script
from .script import Script, mask, parse_facts
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
        self.wheels: dict[str, list] = {}
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
                 cancel: threading.Event, wait: int = 0, force: bool = False, fingerprint: str = ""):
        self.conn, self.cfg, self.source, self.rel_id = conn, cfg, source, rel_id
        self.cancel, self.wait, self.force, self.fingerprint = cancel, wait, force, fingerprint
        self.printer, self.shared = printer, shared
        self.host = host_label(conn)
        self.layout = Layout(cfg.paths.deploy_to)
        self.owner = LockOwner.new("deploy", local_user())
        self.remote: dict = {}  # the remote process group of the running invocation
        self.stage = "connect"
        self.rel: phases.Release | None = None
        self.facts: phases.Facts | None = None
        self.started = time.monotonic()

    def script(self, built: list, rel: phases.Release | None) -> Script:
        rel_id = rel.id if rel else self.rel_id
        ctx = hooks.HookContext(self.cfg, self.host, rel_id, self.layout.release(rel_id),
                                self.layout.venv(rel.venv_hash) if rel else "")
        return Script([hooks.wrap(p, self.cfg, ctx) for p in built], tuple(self.cfg.secret_values()))

    def run(self, script: Script, stdin: bytes | None = None):
        self.printer.debug(self.host, script.display())
        timeout = self.cfg.pip.timeout + 600
        interruptible = self.stage not in ("publish", "published")
        return run_script(self.conn, script, host=self.host, stdin=stdin, timeout=timeout, remote=self.remote,
                          cancel=self.cancel if interruptible else None,
                          on_phase=lambda ph: self.printer.phase(self.host, ph),
                          on_output=(lambda s, ln: self.printer.debug(self.host, ln)) if self.printer.verbose
                          else None)

    def prepare(self) -> None:
        """Invocations 1 and 2: lock, facts, upload, venv, migrate, static, config. Changes nothing the
        running site uses; on failure or Ctrl-C cleans up after itself and raises."""
        cfg = self.cfg
        try:
            open_connection(self.conn)
            self.stage = "setup"
            unchanged = [] if self.force else phases.unchanged_exit(cfg, self.fingerprint, [
                *lock.audit(cfg, self.owner, self.record("unchanged"), dynamic={"live": '"$(basename "$cur")"'}),
                *lock.release(cfg, self.owner)])
            result = self.run(self.script([phases.setup(cfg, lock.acquire(cfg, self.owner, self.wait), unchanged)],
                                          None))
            self.facts = facts = phases.Facts.parse(parse_facts(result.stdout))
            if facts.unchanged:
                self.stage = "unchanged"  # the lock is already released
                return
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
            prepare = [phases.code(cfg, rel), phases.venv(cfg, rel), phases.django(cfg, rel),
                       phases.config(cfg, rel, facts)]
            self.run(self.script(prepare, rel), stdin=archive)
            self.stage = "prepared"
        except (FabdeployError, KeyboardInterrupt) as exc:
            if self.stage != "connect":
                self.fail_cleanup(exc)
            raise

    def publish(self) -> Outcome:
        """Invocation 3: switch, reload, health gate (reverting by itself on failure), prune, audit, unlock.
        Never cut in half by Ctrl-C."""
        cfg, rel, facts = self.cfg, self.rel, self.facts
        if self.stage == "unchanged":
            return Outcome(self.host, facts.unchanged, True, "", time.monotonic() - self.started,
                           site_url(cfg, self.conn.host), unchanged=True)
        lay = self.layout
        site, _ = nginx_site_paths(facts.nginx_layout, cfg.project.name)
        steps = [phases.switch(cfg, rel), phases.restart(cfg, rel, facts),
                 health(cfg, self.conn.host, rel.id, facts.current, lay.staging(rel.id), site, facts.nginx_pid),
                 phases.cleanup(cfg, rel), lock.finish(cfg, self.owner, self.record("ok"))]
        self.stage = "publish"
        try:
            with deferred_interrupt():
                try:
                    self.run(self.script(steps, rel))
                finally:
                    self.stage = "published"
        except KeyboardInterrupt:
            if self.stage != "published":
                raise
            self.printer.line(self.host, "interrupt held until the switch finished; the deploy completed")
        except FabdeployError as exc:
            self.fail_cleanup(exc)
            raise
        return Outcome(self.host, self.rel_id, True, "", time.monotonic() - self.started,
                       site_url(cfg, self.conn.host))

    def abort(self, reason: str) -> None:
        """A prepared host whose fleet will not switch: remove its release, audit, unlock."""
        self.fail_cleanup(FabdeployError(reason))

    def check_cancel(self, where: str) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"{self.host}: interrupted during {where}")

    def record(self, result: str, error: str = "") -> dict:
        rec = {"release": self.rel_id, "revision": self.source.revision, "branch": self.source.branch,
               "result": result}
        if error:
            rec["error"] = error
        return rec

    def fail_cleanup(self, exc: BaseException) -> None:
        """Best effort, one invocation (reconnecting if the connection died): stop the remote half, drop the
        half-built release (before the switch only), write the audit line, release our lock."""
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        error = "interrupted" if interrupted else str(exc).splitlines()[0]
        before_switch = self.stage not in ("publish", "published")
        built = [phases.abandon(self.cfg, self.rel or phases.Release(self.rel_id, "", "", "", "", ""),
                                self.remote.get("pgid"))] if before_switch else []
        record = self.record("interrupted" if interrupted else "failed", mask(error, self.cfg.secret_values()))
        script = Script([*built, lock.failed_finish(self.cfg, self.owner, record)])
        try:
            conn = self.conn if self.conn.is_connected else reconnect(self.conn, self.cfg)
            run_script(conn, script, host=self.host, timeout=60)
        except FabdeployError:
            self.printer.line(self.host, "could not clean up (host unreachable): the lock stays until `fab unlock`")
            return
        if interrupted:
            self.printer.line(self.host, f"interrupted during {self.stage}; "
                              + ("the half-built release was removed, " if before_switch else "")
                              + "lock released")

    def wheels(self, key: str, facts: phases.Facts) -> list:
        with self.shared.lock:
            if key not in self.shared.wheels:
                self.printer.line(self.host, f"wheels   building the wheelhouse for Python {facts.python_version} ...")
                t = time.monotonic()
                self.shared.wheels[key] = build_wheels(self.cfg, self.source.requirements, facts.python_version, key)
                self.printer.line(self.host, f"wheels   {len(self.shared.wheels[key])} wheels ready "
                                  f"{time.monotonic() - t:6.2f}s")
            return self.shared.wheels[key]

    def archive(self, wheels: list) -> bytes:
        variant = tuple(str(w) for w in wheels)
        with self.shared.lock:
            if variant not in self.shared.bundles:
                self.shared.bundles[variant] = bundle(self.source.tar, wheels)
            return self.shared.bundles[variant]


def deploy_all(conns: list, cfg: Config, printer: Printer, wait: int | None = None,
               force: bool = False) -> list[Outcome]:
    """Deploy to every connection in two steps: prepare all hosts in parallel; only when every host
    prepared, publish on all (in parallel). One Outcome per host. Ctrl-C during preparation: every host
    cleans up (prepared ones abort), then KeyboardInterrupt propagates."""
    source = read_source(cfg)
    for w in source.warnings:
        printer.warn(w)
    rel_id = release_id(source)
    printer.width = max(len(host_label(c)) for c in conns)
    shared = _Shared()
    wait = cfg.lock.wait if wait is None else wait
    cancel = threading.Event()
    fp = phases.fingerprint(cfg, source.revision, source.requirements)
    hosts = [HostDeploy(conn, cfg, source, rel_id, printer, shared, cancel, wait, force, fp) for conn in conns]
    outcomes: dict[str, Outcome] = {}

    def prepare(hd, host_cancel) -> bool:
        hd.cancel = host_cancel
        try:
            hd.prepare()
            return True
        except FabdeployError as exc:
            outcomes[hd.host] = Outcome(hd.host, rel_id, False, str(exc), time.monotonic() - hd.started)
            return False

    try:
        prepared = for_each_host(hosts, prepare)
    except KeyboardInterrupt:
        for hd in hosts:
            if hd.stage == "prepared":  # ("unchanged" hosts hold no lock and built nothing)
                hd.abort("interrupted")
        _close(hosts)
        raise
    if not all(prepared):
        failed = ", ".join(hd.host for hd, ok in zip(hosts, prepared) if not ok)
        for hd, ok in zip(hosts, prepared):
            if ok and hd.stage == "unchanged":
                outcomes[hd.host] = hd.publish()  # nothing was built there; reports "already live"
            elif ok:
                reason = f"not switched: {failed} failed to prepare (no host switches unless all prepared)"
                hd.abort(reason)
                outcomes[hd.host] = Outcome(hd.host, rel_id, False, f"{hd.host}: {reason}",
                                            time.monotonic() - hd.started)
        _close(hosts)
        return [outcomes[hd.host] for hd in hosts]

    def publish(hd, host_cancel) -> Outcome:
        try:
            return hd.publish()
        except FabdeployError as exc:
            return Outcome(hd.host, rel_id, False, str(exc), time.monotonic() - hd.started)

    try:
        return for_each_host(hosts, publish)
    finally:
        _close(hosts)


def _close(hosts) -> None:
    for hd in hosts:
        try:
            hd.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection must not mask the outcome
            pass


__all__ = ["deploy_all", "Outcome", "RemoteError"]
