"""The phases of a load balancer host (see pipeline.BALANCER): its static roots, its upstream site, drains
for rolling deploys, the check through the balancer, pruning."""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.front import nginx, tls
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.target import Target
from fabdeploy.model import Facts
from fabdeploy.remote.markers import fact, fail_expanded, note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import q
from fabdeploy.steps.cleanup import prune_lines
from fabdeploy.steps.health import check_command
from fabdeploy.steps.static import seed_static, static_switch

STATIC_FACT = "static_current"


def facts(cfg: Config) -> Phase:
    """The release whose static files the balancer serves now (to put it back if the deploy stops)."""
    st = Layout(cfg.paths.deploy_to).static
    return Phase("facts", [fact(STATIC_FACT, f'$(basename "$(readlink {q(st + "/current")})" 2>/dev/null || true)')])


def static(cfg: Config, static_id: str, upload: bool) -> Phase:
    """Unpack the release's static files from stdin (hard-linked onto the live ones, so pages of the old and
    the new release both find theirs) and point static/current at them."""
    st = Layout(cfg.paths.deploy_to).static
    if not upload:
        return Phase("static", [note(f"static files of {static_id} already here")])
    return Phase("static", [
        *seed_static(cfg, static_id),
        f"tar -xzf - -C {q(st)}",
        f"n=$(find {q(st + '/' + static_id)} -type f | wc -l)",
        *static_switch(cfg, q(static_id)),
        note(f"static files of {static_id}: $n files"),
    ])


def site(cfg: Config, host_facts: Facts, staging: str) -> Phase:
    """Install the upstream site of every app host, checked with `nginx -t` (not reloaded here)."""
    return Phase("config", [*tls.install_lines(cfg, None, staging, lb=True),
                            *tls.acme_lines(cfg, None, lambda c: nginx.lb_site(c), host_facts, staging, lb=True),
                            *nginx.site_install(cfg, nginx.lb_site(cfg), host_facts, staging),
                            *tls.acme_after_lines(cfg, None, staging, lb=True)], sudo=True)


def relay(cfg: Config, host_facts: Facts, staging: str) -> Phase:
    """ACME with several balancers, on each but the issuer: without a certificate yet, the plain-HTTP site that
    relays challenges to the issuer goes live (front/acme_fleet.relay_lines)."""
    from fabdeploy.front import acme_fleet
    return Phase("relay", acme_fleet.relay_lines(cfg, lambda c: nginx.lb_site(c), host_facts, staging), sudo=True)


def drain(cfg: Config, host_facts: Facts, staging: str, targets: tuple[str, ...]) -> Phase:
    """Mark these app hosts down in the upstream (every other one up), `nginx -t`, reload and wait."""
    lines = nginx.site_install(cfg, nginx.lb_site(cfg, drained=set(targets)), host_facts, staging + "/drain")
    lines += [f"rm -rf {q(staging + '/drain')}", *nginx.nginx_reload_lines(host_facts.nginx_pid)]
    names = ", ".join(targets) or "none"
    return Phase("drain", lines + [note(f"out of the upstream: {names}")], sudo=True)


def restart(host_facts: Facts, staging: str) -> Phase:
    """Start nginx, or reload it when the site changed."""
    return Phase("restart", nginx.nginx_restart_lines(host_facts, staging + "/nginx-changed"), sudo=True)


def health(cfg: Config, target: Target) -> Phase:
    """The health check through the balancer (the deploy's outcome does not change when it fails: the app
    hosts already serve the release)."""
    check = check_command(cfg, target.address, target.server)
    return Phase("health", [
        f'if answer=$({check}); then {note("through the balancer: $answer")}; else '
        + fail_expanded("health check through the load balancer failed: $answer") + "; fi"], keep_going=True)


def cleanup(cfg: Config, staging: str) -> Phase:
    """Keep the static roots of keep_releases releases (current and the way back first)."""
    st = Layout(cfg.paths.deploy_to).static
    keep = cfg.paths.keep_releases
    return Phase("cleanup", [
        f"cd {q(st)}",
        "cur=$(basename \"$(readlink current)\")",
        *prune_lines(keep),
        f"rm -rf {q(staging)}",
        note(f"static roots: removed $removed (keep_releases = {keep})"),
    ])
