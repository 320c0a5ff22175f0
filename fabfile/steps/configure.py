"""The config phase: stage the app server's config in the release, install the web server's site
(checked), stage the firewall."""
from __future__ import annotations

from fabdeploy import appserver
from fabdeploy.config import Config
from fabdeploy.front import tls
from fabdeploy.front.firewall import firewall
from fabdeploy.front.nginx import nginx_site, site_install
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, runs_nginx
from fabdeploy.model import PENDING, Facts, Release
from fabdeploy.remote.markers import note
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import new_file, q


def config(cfg: Config, rel: Release, facts: Facts, server: Server | None = None) -> Phase:
    """Stage the app server's config in the release; install the nginx site only if it changed and only if `nginx -t` accepts it."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    lines = [
        # Staged in the release itself (never a shared name another run could touch): the switch installs
        # it, and a rollback restores exactly the config the release ran with.
        # (0640: the app user reads it through the release's group; it holds the [django] env. Nothing reads
        # it before the switch: written with printf under umask 027, no temp file and rename)
        "umask 027",
        new_file(app.staged_config(lay.release(rel.id)), app.render_config(cfg, rel, server)),
        # complete but not live yet: an automatic rollback never picks it (the switch removes the mark)
        f": > {q(lay.release(rel.id) + '/.fabdeploy/' + PENDING)}",
        "umask 022",
    ]
    if runs_nginx(cfg, server):
        lines += tls.install_lines(cfg, server, lay.staging(rel.id))  # (the files `nginx -t` of the new site reads)
        lines += tls.acme_lines(cfg, server, lambda c: nginx_site(c, server), facts, lay.staging(rel.id))
        lines += site_install(cfg, nginx_site(cfg, server), facts, lay.staging(rel.id))
        lines += tls.acme_after_lines(cfg, server, lay.staging(rel.id))
    else:
        lines.append(note("no nginx on this app host (the lb hosts balance it)"))
    lines += firewall(cfg, server, lay.staging(rel.id))
    return Phase("config", lines, sudo=True)
