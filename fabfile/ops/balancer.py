"""One load balancer host of a deploy: the invocations of pipeline.BALANCER (setup, prepare, drain, finish),
run by deploy_all, and the cleanup that puts its site and static files back when the deploy stops."""
from __future__ import annotations

import threading
import time

from fabdeploy import model
from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.front import nginx
from fabdeploy.hosts.connect import open_connection
from fabdeploy.hosts.fleet import deferred_interrupt
from fabdeploy.ops.host_run import HostRun
from fabdeploy.ops.outcome import Outcome, run_cleanup, site_url
from fabdeploy.output import Printer
from fabdeploy.remote import detach, shell
from fabdeploy.remote.runner import Interrupted
from fabdeploy.remote.script import Phase, Script, mask
from fabdeploy.remote.shell import q
from fabdeploy.steps import balancer, lock, static


class LbDeploy(HostRun):
    """One load balancer host: setup (lock, facts), prepare (this release's static files, the upstream
    site, checked with `nginx -t`), drain (batches of a rolling deploy marked down), finish (final site,
    reload, health check through the balancer, prune static roots, audit, unlock)."""

    kind = "lb"

    def __init__(self, conn, cfg: Config, rel_id: str, printer: Printer, cancel: threading.Event,
                 wait: int = 0, record: dict | None = None):
        super().__init__(conn, cfg, rel_id, printer, cancel, wait, record)
        self.static_before = ""
        self.prepared_facts: dict = {}  # the prepare invocation's facts (the ACME issuer: its pair)

    @property
    def rel_id(self) -> str:
        """The release whose static files this balancer gets (the app hosts' live one once they prepared)."""
        return self.state.release_id

    @property
    def staging(self) -> str:
        return self.state.staging

    def prepare(self) -> None:
        """Invocation 1: layout, lock, facts (runs while the app hosts prepare)."""
        with self.cleaned_up_on_failure():
            open_connection(self.conn)
            self.stage = "setup"
            res = self.run("setup")
            raw = res.facts
            self.state.facts = model.Facts.parse(raw)
            self.static_before = raw.get(balancer.STATIC_FACT, "")
            self.stage = "locked"

    def relay(self) -> None:
        """ACME with several balancers (not the issuer): the plain-HTTP site relaying challenges to the issuer,
        live before the issuer asks the CA (front/acme_fleet.py)."""
        self.stage = "prepare"
        with self.cleaned_up_on_failure():
            self.run("relay")
            self.stage = "prepared"

    def use_pair(self, pair) -> None:
        """ACME with several balancers (not the issuer): install the issuer's certificate and key (in memory,
        masked) as in files mode."""
        from fabdeploy.front.acme_fleet import derived
        self.cfg = self.state.cfg = derived(self.cfg, "files", pair)

    def stage_release(self, static_id: str, tar: bytes) -> None:
        """Invocation 2: unpack the release's static files (hard-linked onto the live ones, so pages of the
        old and the new release both find theirs), point static/current at them, install the site."""
        self.state.release_id = static_id
        self.state.static_upload = upload = static_id != self.static_before
        self.stage = "prepare"
        with self.cleaned_up_on_failure():
            self.prepared_facts = self.run("prepare", stdin=tar if upload else None).facts
            self.stage = "prepared"

    def drain(self, targets: list[str]) -> None:
        """Mark these app hosts down in the upstream (every other one up), `nginx -t`, reload and wait."""
        self.state.drained = tuple(targets)
        self.run("drain", interruptible=False)

    def finish(self, record: dict) -> Outcome:
        """The final site (every app host up), start or reload nginx, check through the balancer, prune
        static roots of releases no longer kept, audit, unlock."""
        cfg = self.cfg
        self.state.outcome = dict(record)
        # detached on the host like an app host's publish: it finishes (reload, audit, unlock) if we die
        try:
            with deferred_interrupt():
                res = self.run("finish", interruptible=False)
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
            lines = nginx.lb_restore_site(self.cfg, self.facts, self.staging)
            if self.static_before and self.rel_id != self.static_before and not keep_static:
                lines += [*static.static_switch(self.cfg, q(self.static_before)), f"rm -rf {q(st + '/' + self.rel_id)}"]
            lines.append(f"rm -rf {q(self.staging)}")
        record = self.state.audit("interrupted" if interrupted else "failed", mask(error, self.cfg.secret_values()))
        held = lock.held(self.cfg, self.owner)
        stop = shell.stop_group(self.remote.pop("pgid", None))  # e.g. a loop waiting for the lock
        timeout = self.cfg.pip.timeout + 600
        settle = [Phase("settle", detach.settle(self.detached, timeout))] if self.detached else []
        res = run_cleanup(self, Script([*settle, Phase("abandon", [*stop, f"if ! {held}; then exit 0; fi", *lines]),
                                        lock.failed_finish(self.cfg, self.owner, record)]), timeout + 60)
        return res.facts.get(detach.STATUS_FACT, "") if res else ""


