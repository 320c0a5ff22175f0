"""One app host of a deploy: the three invocations of pipeline.APP, run in order by deploy_all (setup,
build, publish), and the cleanups that put the host back when the deploy stops. A code-only redeploy runs
setup and prepare in one invocation when the host's facts are what fab remembers (steps/fold.py)."""
from __future__ import annotations

import base64
import threading
import time

from fabdeploy import appserver, model, pipeline
from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.connect import open_connection
from fabdeploy.hosts.fleet import deferred_interrupt
from fabdeploy.hosts.roles import server_of
from fabdeploy.local import facts_cache
from fabdeploy.local.source import Source, bundle
from fabdeploy.local.wheelhouse import build_wheels, venv_hash
from fabdeploy.ops.host_run import HostRun
from fabdeploy.ops.outcome import Outcome, Shared, run_cleanup, site_url
from fabdeploy.output import Printer
from fabdeploy.database import fleet
from fabdeploy.remote import detach, markers
from fabdeploy.remote.runner import Interrupted, SpareChannel, run_script
from fabdeploy.remote.script import Phase, Script, mask
from fabdeploy.remote.shell import q
from fabdeploy.steps import cleanup, fold, live_check, lock, secret_key
from fabdeploy.steps.lock import LockOwner


class HostDeploy(HostRun):
    """One host of a deploy: prepare() everywhere first, then publish() (or abort()) everywhere."""

    kind = "app"

    def __init__(self, conn, cfg: Config, source: Source, rel_id: str, printer: Printer, shared: Shared,
                 cancel: threading.Event, wait: int = 0, force: bool = False, passwords: dict | None = None,
                 fold_key: str | None = None):
        self.source, self.rel_id, self.force, self.shared = source, rel_id, force, shared
        self.fingerprint = live_check.fingerprint(cfg, source.revision, source.requirements, server_of(conn),
                                                  fleet.digest(cfg, passwords or {}))
        super().__init__(conn, cfg, rel_id, printer, cancel, wait,
                         {"revision": source.revision, "branch": source.branch},
                         fingerprint="" if force else self.fingerprint, requirement_files=source.requirement_files)
        self.held_interrupt = False
        self.key_fp = ""  # fingerprint of the host's shared/secret_key ("" = none)
        # setup and prepare may run in one invocation (None: never; "" any SECRET_KEY, else that one's fingerprint)
        self.fold_key = fold_key
        self.cache_target = facts_cache.target_of(conn)
        self.spare: SpareChannel | None = None  # publish's channel, opened while prepare runs

    @property
    def rel(self) -> model.Release | None:
        return self.state.rel

    @property
    def secret_key(self) -> str:
        """The fleet's key, when this host must get it (never printed)."""
        return self.state.secret_key

    @secret_key.setter
    def secret_key(self, value: str) -> None:
        self.state.secret_key = value

    def setup(self) -> None:
        """Invocation 1: layout, lock, facts (with the fingerprint of the host's secret key). On failure or
        Ctrl-C cleans up after itself and raises."""
        with self.cleaned_up_on_failure():
            assumed = self.fold_plan()
            folded = self.fold_script(*assumed) if assumed else None  # (built while the SSH handshake runs)
            open_connection(self.conn)
            self.stage = "setup"
            res = self.run_folded(*folded) if folded else self.run("setup")
            raw = res.facts
            self.state.facts = facts = model.Facts.parse(raw)
            self.key_fp = raw.get(secret_key.FACT, "")
            # an unchanged host's lock is already released
            self.stage = "unchanged" if facts.unchanged else "prepared" if "code" in res.phases else "locked"
            if self.stage != "prepared":
                self.state.rel = None
            if assumed and self.stage == "locked":
                self.printer.line(self.host, "setup    the host is not as at its last deploy "
                                  f"({raw.get(fold.FACT) or 'setup'}): prepare runs on its own")

    def fold_plan(self) -> tuple[model.Facts, str] | None:
        """The remembered facts and venv hash to build this host's prepare from, when setup and prepare may run
        in one invocation: facts remembered, their venv complete there (a code-only redeploy), and not a likely
        no-op (the last fingerprint this host went live with is another; --force of the live one: as before)."""
        if self.fold_key is None:
            return None
        cached = facts_cache.load(self.cache_target, self.cfg.paths.deploy_to)
        if cached is None or cached[1] == self.fingerprint:
            return None
        facts = cached[0]
        key = venv_hash(self.cfg, self.source.requirements, facts.python_version)
        return (facts, key) if key in facts.venvs else None

    def fold_script(self, assumed: model.Facts, key: str) -> tuple:
        """Setup, the gate and prepare as one script (steps/fold.py), what --verbose lists for it, and the
        archive (no wheels) it reads on stdin."""
        setup_script = pipeline.script("app", "setup", self.state)
        self.state.facts, self.state.rel = assumed, self.new_release(key, False)
        archive = self.archive([])
        flag = f"{self.layout.tmp}/{self.rel_id}.fold"
        prepare = pipeline.script("app", "prepare", self.state)
        gate = fold.gate(assumed, self.layout.venv(key), flag, self.fold_key)
        built = fold.folded(setup_script, prepare, gate, flag)
        # (--verbose: the two invocations as --plan shows them, and how they are joined)
        shown = [("setup", setup_script), ("prepare", prepare), fold.joined(gate)]
        return built, shown, archive

    def run_folded(self, built: Script, shown: list, archive: bytes):
        """Run the folded script: the phase lines show as in two invocations; the stage becomes "prepare" once
        setup ended."""

        def before_line(ph) -> None:
            if ph.name == "setup" and ph.rc == 0:
                self.stage = "prepare"
            elif ph.name == "code":
                self.printer.line(self.host, f"upload   release {self.rel_id} ({len(archive) // 1024} KiB)")
        return self.run("setup+prepare", stdin=archive, built=built, shown=shown, on_phase=before_line,
                        spare_next=self.new_spare)

    def new_spare(self) -> None:
        """Open publish's channel in the background while prepare runs (one that was not used: closed)."""
        if self.spare is not None:
            self.spare.close()
        self.spare = SpareChannel(self.conn)

    def new_release(self, key: str, has_wheels: bool) -> model.Release:
        return model.Release(self.rel_id, self.source.revision, self.source.branch, self.source.kind,
                             time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), self.owner.who, key, has_wheels,
                             self.fingerprint)

    def build(self) -> None:
        """Invocation 2: upload, venv, migrate, static, config. Changes nothing the running site uses; on
        failure or Ctrl-C cleans up after itself and raises."""
        cfg, facts = self.cfg, self.facts
        if self.stage in ("unchanged", "prepared"):
            return
        with self.cleaned_up_on_failure():
            key = venv_hash(cfg, self.source.requirements, facts.python_version)
            need_venv = key not in facts.venvs
            wheels = self.wheels(key, facts) if (need_venv and cfg.pip.wheelhouse) else []
            self.check_cancel("wheels")
            self.state.rel = rel = self.new_release(key, bool(wheels))
            archive = self.archive(wheels)
            self.printer.line(self.host, f"upload   release {rel.id} ({len(archive) // 1024} KiB"
                              + (f", {len(wheels)} wheels" if wheels else "") + ")")
            self.stage = "prepare"
            self.run("prepare", stdin=archive, spare_next=self.new_spare)
            self.stage = "prepared"

    def publish(self) -> Outcome:
        """Invocation 3: switch, reload, health gate (reverting by itself on failure), prune, audit, unlock.
        Never cut in half by Ctrl-C; runs detached on the host, so not by a dead client either."""
        cfg, facts = self.cfg, self.facts
        if self.stage == "unchanged":
            return Outcome(self.host, facts.unchanged, True, "", time.monotonic() - self.started,
                           site_url(cfg, self.conn.host), unchanged=True)
        # runs detached on the host: it finishes (health gate, revert, audit, unlock) even if we die
        self.stage = "publish"
        try:
            with deferred_interrupt():
                try:
                    # (a detached publish is never stopped: no pgid kept, no cancel)
                    self.run("publish", interruptible=False, spare=self.spare)
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
        facts_cache.save(self.cache_target, cfg.paths.deploy_to, facts, self.fingerprint, self.rel.venv_hash)
        return Outcome(self.host, self.rel_id, True, "", time.monotonic() - self.started,
                       site_url(cfg, self.conn.host))

    def abort(self, reason: str) -> None:
        """A prepared host whose fleet will not switch: remove its release, audit, unlock."""
        if self.spare is not None:
            self.spare.close()
        self.fail_cleanup(FabdeployError(reason))

    def live_release(self) -> str:
        """The release this host serves after preparing: the new one, or the live one when unchanged."""
        return self.facts.unchanged if self.stage == "unchanged" else self.rel_id

    def export_static(self) -> bytes:
        """The static root of this host's release as a tar.gz (for the load balancers), one invocation."""
        rid = self.live_release()
        static = self.layout.static
        script = Script([Phase("static", [
            f"[ -d {q(static + '/' + rid)} ] || {markers.fail(f'no static files for {rid} on this host')}",
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
            state = pipeline.RunState(self.cfg, self.target, owner, previous, to=previous)
            run_script(self.conn, pipeline.script("rollback", "rollback", state), host=self.host,
                       timeout=appserver.of(self.cfg).reload_timeout(self.cfg) + 120,
                       on_phase=lambda ph: self.printer.phase(self.host, ph))
            self.printer.line(self.host, f"reverted to {previous}: {reason}")
        except FabdeployError as exc:
            self.printer.line(self.host, f"could not revert to {previous}: {exc}")

    def check_cancel(self, where: str) -> None:
        if self.cancel.is_set():
            raise Interrupted(f"{self.host}: interrupted during {where}")

    def fail_cleanup(self, exc: BaseException) -> str:
        """Best effort, one invocation (reconnecting if the connection died): stop the remote half, drop the
        half-built release (before the switch only), write the audit line, release our lock. After the
        switch, first let a detached publish our broken channel left behind finish (it audits and unlocks
        by itself); returns its exit status ("" when none was left behind)."""
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        error = "interrupted" if interrupted else str(exc).splitlines()[0]
        before_switch = self.stage not in ("publish", "published")
        timeout = self.cfg.pip.timeout + 600
        built = [cleanup.abandon(self.cfg, self.rel or model.Release(self.rel_id, "", "", "", "", ""),
                                self.remote.get("pgid"), lock.held(self.cfg, self.owner), self.facts)] \
            if before_switch else [*([Phase("settle", detach.settle(self.detached, timeout))] if self.detached
                                     else []), cleanup.drop_staging(self.cfg, self.rel_id)]
        record = self.state.audit("interrupted" if interrupted else "failed", mask(error, self.cfg.secret_values()))
        res = run_cleanup(self, Script([*built, lock.failed_finish(self.cfg, self.owner, record)]), timeout + 60)
        if not res:
            return ""
        if interrupted:
            self.printer.line(self.host, f"interrupted during {self.stage}; "
                              + ("the half-built release was removed, " if before_switch else "")
                              + "lock released")
        return res.facts.get(detach.STATUS_FACT, "")

    def wheels(self, key: str, facts: model.Facts) -> list:
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


