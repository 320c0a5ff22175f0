"""Making a release live, one way for every path that does it: the deploy's switch and restart, the health
gate's revert, a rollback. `activate` installs the release's app-server config and points `current` (and the
static root) at it; `reload` starts or gracefully reloads the app server and waits until every worker runs
the release."""
from __future__ import annotations

from fabdeploy import appserver, manager
from fabdeploy.appserver import beside
from fabdeploy.config import Config
from fabdeploy.front.firewall import firewall_apply, firewall_unused
from fabdeploy.front.nginx import nginx_restart_lines
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, runs_nginx
from fabdeploy.model import PENDING, Facts, Release
from fabdeploy.remote.markers import note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import ALIVE_FN, CHILDREN_FN, q
from fabdeploy.steps import app_user
from fabdeploy.steps.static import static_switch


def activate(cfg: Config, release_word: str, id_word: str) -> list[str]:
    """Lines that make a release live (release_word: a shell word naming its directory, id_word its id): its
    own app-server config installed first, then `current` pointed at it atomically (a temp link renamed
    over; if anything before fails, `current` has not moved), then the static root. The app server is not
    touched (see reload)."""
    lay = Layout(cfg.paths.deploy_to)
    tmp = q(f"{lay.current}.fabdeploy-tmp")
    return [*appserver.of(cfg).install_lines(cfg, release_word),
            f"ln -sfn {release_word} {tmp}",
            f"mv -Tf {tmp} {q(lay.current)}",
            *static_switch(cfg, id_word)]


def reload(cfg: Config, release_word: str, venv_word: str, label: str) -> list[str]:
    """Stop any other app server still running here (`[app] server` changed), then start the app server, or
    reload it gracefully, and wait until every worker runs the release."""
    app = appserver.of(cfg)
    # (the old manager stops what it runs first: retiring another app server then finds nothing to stop)
    return defined_once([*manager.switch_lines(cfg, app), *appserver.retire_lines(cfg),
                         *app.reload_lines(cfg, release_word, venv_word, label)],
                        {ALIVE_FN, CHILDREN_FN, *app.as_app_lines(cfg)})


def defined_once(lines: list[str], defs: set[str]) -> list[str]:
    """lines without the copies of a definition in defs (a shell function, $ASAPP: always the same text) that
    come after it ran at the top level (unindented): every stop and pid block brings its own, and a deploy's
    publish script, which reloads more than once, must stay under the 128 KiB of one argument."""
    seen, out = set(), []
    for ln in lines:
        if ln.strip() in seen:
            continue
        if ln in defs:
            seen.add(ln)
        out.append(ln)
    return out


def switch(cfg: Config, rel: Release, server: Server | None = None) -> Phase:
    """Apply the staged firewall rules, then activate the release (its app-server config, `current`, the
    static root: see activate); if anything fails before `current` moves, it has not moved."""
    lay = Layout(cfg.paths.deploy_to)
    return Phase("switch", [
        *firewall_apply(cfg, server, lay.staging(rel.id)),
        *activate(cfg, q(lay.release(rel.id)), q(rel.id)),
        f"rm -f {q(lay.release(rel.id) + '/.fabdeploy/' + PENDING)}",
        # the fleet's key, when it replaces this host's own (fab deploy --adopt-secret-key): the restart loads it
        f"if [ -f {q(lay.staging(rel.id) + '/secret_key')} ]; then mv -f {q(lay.staging(rel.id) + '/secret_key')} "
        f"{q(lay.secret_key)}; {note('secret key replaced by the fleet key')}; fi",
        *app_user.key_lines(cfg),  # (readable by the app user's group)
        note(f"current -> {rel.id}"),
        *firewall_unused(cfg, server),
    ])



def restart(cfg: Config, rel: Release, facts: Facts, server: Server | None = None) -> Phase:
    """Start the app server or reload it gracefully and wait until every worker runs the new release (and
    have it started at boot, where the process manager does not do that itself); then nginx."""
    lay = Layout(cfg.paths.deploy_to)
    lines = beside.early_var_lines(cfg, rel) + reload(cfg, q(lay.release(rel.id)), q(lay.venv(rel.venv_hash)), rel.id)
    lines += manager.of(cfg).boot_lines(cfg, appserver.of(cfg))  # back after a reboot
    if runs_nginx(cfg, server):
        lines += nginx_restart_lines(facts, lay.staging(rel.id) + "/nginx-changed")
    return Phase("restart", lines, sudo=True, keep_going=True)
