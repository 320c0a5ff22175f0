"""Packages and services: the planned packages installed with the system's own tool, nginx enabled and
started (systemctl where systemd runs; elsewhere, e.g. a container or the test lab, started by its pid)."""
from __future__ import annotations

from fabdeploy.hosts.layout import NGINX_PID
from fabdeploy.provision import packages
from fabdeploy.provision.steps import Step
from fabdeploy.remote.shell import ALIVE_FN, q

SYSTEMD = "[ -d /run/systemd/system ]"


def packages_step(family: str, names: list[str]) -> Step:
    """Every planned package installed; $what names the missing ones."""
    check = [packages.installed_check(family), "missing=",
             f"for p in {' '.join(q(n) for n in names)}; do installed \"$p\" || missing=\"$missing $p\"; done",
             'what="installed$missing"', '[ -z "$missing" ]']
    # (the apply runs in a subshell: it finds the missing ones again)
    return Step("packages", check, [*check[:3], *packages.install_lines(family)])


def nginx_step() -> Step:
    """nginx enabled at boot and running."""
    check = [ALIVE_FN,
             f"if {SYSTEMD}; then systemctl is-enabled --quiet nginx && systemctl is-active --quiet nginx; "
             f"else alive {q(NGINX_PID)} nginx >/dev/null; fi"]
    apply = [f"if {SYSTEMD}; then systemctl enable --now nginx; else nginx; fi"]
    return Step("nginx", check, apply, what="nginx enabled and started")

