"""nginx, the front end: the app site and the balancer site, installed only when `nginx -t` accepts
them, reloads that wait for new workers."""
from __future__ import annotations

import hashlib

from fabdeploy import appserver
from fabdeploy.front import tls
from fabdeploy.config import Config, ident
from fabdeploy.hosts.layout import Layout, nginx_site_paths
from fabdeploy.hosts.roles import Server, balanced, servers
from fabdeploy.local.render import render, render_file
from fabdeploy.model import Facts
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, note
from fabdeploy.remote.shell import ALIVE_FN, CHILDREN_FN, q, read_word, write_file


MANAGED = "# Managed by fabdeploy"  # the first line of every nginx site fabdeploy writes


def staged_site(cfg: Config) -> str:
    """Where the deploy user stages the site root installs (one fixed path per project: sudoers lists it)."""
    return f"{Layout(cfg.paths.deploy_to).config}/nginx-site.conf"


def site_commands(cfg: Config, layout_kind: str) -> dict[str, str]:
    """The root commands that change this project's site in one nginx layout ("sites" or "conf.d"):
    install (the staged file), remove, link and unlink (sites layout), park and unpark (conf.d: the site
    renamed .disabled takes it out of nginx)."""
    site, enabled = nginx_site_paths(layout_kind, cfg.project.name)
    cmds = {"install": root.install(staged_site(cfg), site), "remove": root.rm(site)}
    if enabled:
        cmds.update(link=root.root("ln", "-sfn", site, enabled), unlink=root.rm(enabled))
    else:
        cmds.update(park=root.root("mv", "-f", site, site + ".disabled"),
                    unpark=root.root("mv", "-f", site + ".disabled", site))
    return cmds


def root_lines(cfg: Config) -> list[str]:
    """Every root command this module (and nginx_toggle) can run for the project."""
    kinds = ["sites", "conf.d"] if cfg.nginx.layout == "auto" else [cfg.nginx.layout]
    return [root.NGINX_TEST, root.NGINX_RELOAD, root.NGINX_START, root.NGINX_ERROR_TAIL,
            *[c for k in kinds for c in site_commands(cfg, k).values()], *tls.root_lines(cfg)]


def install_copy(cfg: Config, source: str, site: str) -> str:
    """(one line) root installs `source` (a file the deploy user wrote) as the site, through the staged path."""
    staged = staged_site(cfg)
    kind = "sites" if site.startswith("/etc/nginx/sites-") else "conf.d"
    return f"cp {q(source)} {q(staged)} && {site_commands(cfg, kind)['install']}"



def site_restore(cfg: Config, facts: Facts, T: str) -> list[str]:
    """An abandoned deploy that installed a changed site (T/nginx-changed; nginx was not reloaded with it):
    put the site back as it was (its saved copy, disabled again if it was; or no site at all)."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    c = site_commands(cfg, facts.nginx_layout)
    prev = f"{T}/site.prev"
    unlink = (f"; if [ -f {q(T + '/site.unlinked')} ]; then {c['unlink']}; fi" if enabled else "")
    return [*tls.restore_lines(cfg, T),
            f"if [ -f {q(T + '/nginx-changed')} ]; then",
            f"  if [ -f {q(prev)} ]; then {install_copy(cfg, prev, site)}{unlink}; "
            f"else {c['remove']}" + (f"; {c['unlink']}" if enabled else "") + "; fi",
            "fi"]



def site_install(cfg: Config, content: str, facts: Facts, T: str) -> list[str]:
    """Install the nginx site only if it changed and only if `nginx -t` accepts it (else put the previous
    one back and fail). Leaves T/site.prev (for a revert) and T/nginx-changed (for the reload)."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    c = site_commands(cfg, facts.nginx_layout)
    new, prev, changed = staged_site(cfg), f"{T}/site.prev", f"{T}/nginx-changed"
    if not content.startswith(MANAGED):
        content = f"{MANAGED} for {cfg.project.name}; rewritten on every deploy.\n" + content
    link_ok = f"[ \"$(readlink {q(enabled)})\" = {q(site)} ]" if enabled else "true"
    unlink = f'[ "$had_link" = 1 ] || {c["unlink"]}; ' if enabled else ""
    restore = [f"if [ -f {q(prev)} ]; then {install_copy(cfg, prev, site)}; {unlink}"
               f"else {c['remove']}" + (f"; {c['unlink']}" if enabled else "") + "; fi"]
    # (the write and the compare skipped while the stamp, written once the site was found or installed as
    # `content`, says so and neither the site nor the staged copy changed after it)
    stamp, digest = new + ".stamp", hashlib.sha256(content.encode()).hexdigest()[:16]
    same = (f'[ "$site_stamp" = {digest} ] && [ -f {q(new)} ] && [ -f {q(site)} ] && [ ! {q(site)} -nt {q(stamp)} ] '
            f'&& [ ! {q(new)} -nt {q(stamp)} ] && {link_ok}')
    compare = [
        *write_file(new, content),
        f"if cmp -s {q(new)} {q(site)} && {link_ok}; then",
        "  " + note("nginx site unchanged"),
        "else",
        # never overwrite a site fabdeploy did not write (project.name = "default" would replace the
        # distribution's default site)
        f"  if [ -f {q(site)} ] && ! head -n 1 {q(site)} | grep -q {q(MANAGED)}; then "
        + fail(f"{site} exists and was not written by fabdeploy (its first line is not '{MANAGED} ...'): "
               "choose another project.name, or remove that file") + "; fi",
        f"  if [ -f {q(site)} ]; then cp {q(site)} {q(prev)}; fi",
        f"  had_link=0; if [ -L {q(enabled)} ]; then had_link=1; fi" if enabled else "  had_link=0",
        f'  [ "$had_link" = 1 ] || touch {q(T + "/site.unlinked")}',
        f"  {c['install']}",
        *([f"  {c['link']}"] if enabled else []),
        f"  if ! out=$({root.NGINX_TEST} 2>&1); then",
        *["    " + r for r in restore],
        "    printf '%s\\n' \"$out\" >&2",
        "    echo 'nginx -t rejected the new site; the previous nginx config was restored' >&2",
        "    exit 1",
        "  fi",
        f"  touch {q(changed)}",
        "  " + note(f"nginx site installed at {site}"),
        "fi",
        f"printf '%s\\n' {digest} > {q(stamp)}",
    ]
    lines = [
        f"mkdir -p {q(T)}",
        read_word("site_stamp", stamp),
        f"if {same}; then",
        "  " + note("nginx site unchanged"),
        "else",
        *["  " + ln for ln in compare],
        "fi",
    ]
    return lines


# `nginx -s reload` only signals the master. Wait until new workers run and every old one has stopped
# accepting (gone, or titled "shutting down"), so the next request sees the new config; a reload nginx
# refused (it keeps the old workers) is reported with its error log.
NGINX_RELOAD = [
    'old=" $(children "$npid" | tr \'\\n\' \' \') "',
    root.NGINX_RELOAD,
    "i=0; done_=",
    "while [ $i -lt 100 ]; do",
    "  fresh=0; stale=0",
    '  for c in $(children "$npid"); do',
    '    case "$old" in',
    '      *" $c "*) tr \'\\0\' \' \' < "/proc/$c/cmdline" 2>/dev/null | grep -q "shutting down" || stale=1;;',
    "      *) fresh=1;;",
    "    esac",
    "  done",
    '  if [ "$fresh" = 1 ] && [ "$stale" = 0 ]; then done_=1; break; fi',
    "  i=$((i + 1)); sleep 0.1",
    "done",
    '[ -n "$done_" ] || { echo "nginx did not reload within 10s; its error log says:" >&2; '
    f"{root.NGINX_ERROR_TAIL} >&2; exit 1; }}",
    note("nginx reloaded"),
]



def nginx_reload_lines(nginx_pid: str) -> list[str]:
    """Reload a running nginx and wait for it (nothing when it is not running)."""
    return [ALIVE_FN, CHILDREN_FN, f"npid=$(alive {q(nginx_pid)} nginx || true)",
            'if [ -n "$npid" ]; then', *["  " + ln for ln in NGINX_RELOAD], "fi"]



def nginx_restart_lines(facts: Facts, changed_flag: str) -> list[str]:
    """Start nginx when its pid is not alive; reload it (and wait) only when the site changed."""
    return [
        ALIVE_FN,
        CHILDREN_FN,
        f"npid=$(alive {q(facts.nginx_pid)} nginx || true)",
        'if [ -z "$npid" ]; then',
        f"  {root.NGINX_START}",
        "  " + note("nginx started"),
        f"elif [ -f {q(changed_flag)} ]; then",
        *["  " + ln for ln in NGINX_RELOAD],
        "else",
        "  " + note("nginx unchanged"),
        "fi",
    ]



def nginx_site(cfg: Config, server: Server | None = None) -> str:
    """The site of a host that serves itself (or of a balanced app host with balancer.app_nginx)."""
    if server is not None and server.role == "lb" and balanced(cfg):
        return lb_site(cfg)
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    context = dict(
        name=cfg.project.name, listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
        client_max_body_size=cfg.nginx.client_max_body_size, shared=lay.shared,
        # (socket and uwsgi_pass: the names custom templates of earlier versions use)
        socket=app.paths(lay).socket, uwsgi_pass=app.upstream(cfg, server), app_pass=app.upstream(cfg, server),
        protocol=app.protocol, upgrade_var=f"fabdeploy_{ident(cfg.project.name)}_upgrade",
        # (ASGI: a second try on the same socket, see the template)
        retry_upstream=f"fabdeploy_{ident(cfg.project.name)}_app" if cfg.app.asgi and app.protocol == "http" else "",
        static_url=cfg.django.static_url, media_url=cfg.django.media_url, static_expires=cfg.nginx.static_expires,
        **tls.site_context(cfg, server))
    if cfg.nginx_template:
        return render_file(cfg.nginx_template, "nginx.template", **context)
    return render("nginx-site.conf.j2", **context)



def lb_site(cfg: Config, drained=()) -> str:
    """The load balancer's site: an upstream of every app host (those in `drained` marked down)."""
    lay = Layout(cfg.paths.deploy_to)
    apps = []
    for s in servers(cfg):
        if s.role == "app":
            addr = s.upstream_address.strip("[]")
            apps.append(dict(address=f"[{addr}]" if ":" in addr else addr, weight=s.weight, backup=s.backup,
                             max_fails=s.max_fails, fail_timeout=s.fail_timeout, down=s.upstream_address in drained))
    b = cfg.balancer
    return render(
        "nginx-lb.conf.j2", name=cfg.project.name, upstream=f"{ident(cfg.project.name)}_app",
        method=b.method, hash_key=b.hash_key, hash_consistent=b.hash_consistent, servers=apps, port=b.port,
        keepalive=b.keepalive, listen=cfg.nginx.listen, server_name=cfg.nginx.server_name,
        client_max_body_size=cfg.nginx.client_max_body_size, shared=lay.shared, static_url=cfg.django.static_url,
        media_url=cfg.django.media_url, static_expires=cfg.nginx.static_expires, media=b.media,
        protocol=appserver.of(cfg).protocol, websocket=passes_websockets(cfg),
        upgrade_var=f"fabdeploy_{ident(cfg.project.name)}_upgrade", websocket_timeout=b.websocket_timeout,
        **tls.site_context(cfg, None, lb=True))


def passes_websockets(cfg: Config) -> bool:
    """Does the balancer pass WebSocket upgrades on to the app hosts? When the app is ASGI (`[app] asgi`,
    which every ASGI app server requires) over HTTP."""
    return bool(cfg.app.asgi) and appserver.of(cfg).protocol == "http"



def lb_restore_site(cfg: Config, facts: Facts, staging: str) -> list[str]:
    """A balancer whose deploy is abandoned: put back the site as it was before the deploy (its saved copy
    when the deploy changed it, no site when the deploy created it, else the full upstream: a rolling drain
    may have marked hosts down) and reload a running nginx."""
    site, enabled = nginx_site_paths(facts.nginx_layout, cfg.project.name)
    c = site_commands(cfg, facts.nginx_layout)
    prev, full = f"{staging}/site.prev", f"{staging}/site.full"
    return [
        *tls.restore_lines(cfg, staging),
        *write_file(full, lb_site(cfg)),
        f"if [ -f {q(prev)} ]; then {install_copy(cfg, prev, site)}",
        f"elif [ -f {q(staging + '/nginx-changed')} ]; then {c['remove']}"
        + (f"; {c['unlink']}" if enabled else ""),
        f"else {install_copy(cfg, full, site)}; fi",
        f"if {root.NGINX_TEST} >/dev/null 2>&1; then",
        *["  " + ln for ln in nginx_reload_lines(facts.nginx_pid)],
        "fi",
    ]
