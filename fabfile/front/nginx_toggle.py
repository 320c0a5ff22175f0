"""Taking this project's site out of nginx and putting it back (`fab stop --nginx`, `fab start --nginx`).

The site file stays: in the sites layout only its sites-enabled link goes; in the conf.d layout it is renamed
`<name>.conf.disabled` (nginx reads only `*.conf`). Every change is checked by `nginx -t` and undone when
nginx rejects it; a running nginx is then reloaded and waited for. Also here: how a host's nginx layout and
pidfile are found (the setup phase uses the same lines).
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.front.nginx import MANAGED, NGINX_RELOAD, site_commands
from fabdeploy.hosts.layout import NGINX_CONF, NGINX_PID, nginx_site_paths
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, CHILDREN_FN, q

# (one line) nginx.conf read once by the shell itself, no grep/sed/head: $fd_nu the first `user` directive's
# value, $nginx_pid the first `pid` directive's (else NGINX_PID), $fd_se non-empty when the file names
# sites-enabled anywhere. A `read` per line (the last one too without its newline); a directive's value ends at
# its `;`, as the sed expressions these replace had it.
SCAN_LINE = (f"fd_nu= nginx_pid= fd_se=; if [ -r {NGINX_CONF} ]; then "
             "while read -r fd_k fd_v fd_r || [ -n \"$fd_k\" ]; do "
             'case "$fd_k $fd_v $fd_r" in *sites-enabled*) fd_se=1;; esac; '
             'if [ -z "$nginx_pid" ] && [ "$fd_k" = pid ]; then nginx_pid=${fd_v%%;*}; fi; '
             'if [ -z "$fd_nu" ] && [ "$fd_k" = user ]; then fd_nu=${fd_v%%;*}; fi; '
             f"fd_k=; done < {NGINX_CONF}; fi; "
             f'[ -n "$nginx_pid" ] || nginx_pid={NGINX_PID}')


def layout_line(cfg: Config) -> str:
    """(after SCAN_LINE, on "auto") Set $nginx_layout ("sites" or "conf.d"): nginx.layout, or on "auto" whether
    the host's nginx.conf includes sites-enabled."""
    return {
        "auto": 'if [ -d /etc/nginx/sites-enabled ] && [ -n "$fd_se" ]; '
                "then nginx_layout=sites; else nginx_layout=conf.d; fi",
        "sites": "nginx_layout=sites",
        "conf.d": "nginx_layout=conf.d",
    }[cfg.nginx.layout]


def site_vars(cfg: Config) -> list[str]:
    """Set $site (the file fabdeploy writes), $live (the path nginx reads it by) and $parked (conf.d: where
    a site taken out waits; sites: empty) for the host's layout."""
    site, enabled = nginx_site_paths("sites", cfg.project.name)
    conf, _ = nginx_site_paths("conf.d", cfg.project.name)
    return [
        SCAN_LINE,
        layout_line(cfg),
        f'if [ "$nginx_layout" = sites ]; then site={q(site)}; live={q(enabled)}; parked=',
        f"else site={q(conf)}; live={q(conf)}; parked={q(conf + '.disabled')}; fi",
    ]


# (after site_vars) the site is out: kept on disk, not read by nginx
SITE_OUT = ('{ if [ -n "$parked" ]; then [ -f "$parked" ] && [ ! -e "$live" ]; '
            'else [ -f "$site" ] && [ ! -e "$live" ] && [ ! -L "$live" ]; fi; }')


def _by_layout(cfg: Config, sites: str, conf_d: str) -> str:
    """(one line) the root command of the host's layout (only nginx.layout's when it is not "auto")."""
    if cfg.nginx.layout != "auto":
        return site_commands(cfg, cfg.nginx.layout)[sites if cfg.nginx.layout == "sites" else conf_d]
    return (f'if [ -z "$parked" ]; then {site_commands(cfg, "sites")[sites]}; '
            f'else {site_commands(cfg, "conf.d")[conf_d]}; fi')


def _out(cfg: Config) -> str:
    """(one line) take the site out: the sites-enabled link removed, or the conf.d file renamed .disabled."""
    return _by_layout(cfg, "unlink", "park")


def _in(cfg: Config) -> str:
    """(one line) put the site back in (the reverse of _out)."""
    return _by_layout(cfg, "link", "unpark")


def _checked(undo: str, what: str) -> list[str]:
    """`nginx -t`; when it fails: undo, its output on stderr, fail."""
    return [
        f"if ! out=$({root.NGINX_TEST} 2>&1); then",
        f"  {undo}",
        "  printf '%s\\n' \"$out\" >&2",
        "  " + fail(f"nginx -t rejected the config {what}; left as it was"),
        "fi",
    ]


def take_out_lines(cfg: Config) -> list[str]:
    """Take the site out of nginx (see the module docstring); a site already out, or none, is a note."""
    return [
        *site_vars(cfg),
        f"if {SITE_OUT}; then",
        "  " + note("nginx site already out"),
        'elif [ ! -e "$live" ]; then',
        "  " + note("no nginx site for this project: nothing to take out"),
        "else",
        f'  head -n 1 "$site" 2>/dev/null | grep -q {q(MANAGED)} || '
        + fail_expanded("$site was not written by fabdeploy: left alone"),
        '  [ -n "$parked" ] || [ -L "$live" ] || ' + fail_expanded("$live is not a link: left alone"),
        f"  {_out(cfg)}",
        *["  " + ln for ln in _checked(_in(cfg), "without the site")],
        ALIVE_FN,
        CHILDREN_FN,
        '  npid=$(alive "$nginx_pid" nginx || true)',
        '  if [ -n "$npid" ]; then',
        *["    " + ln for ln in NGINX_RELOAD],
        "  fi",
        '  if [ -n "$parked" ]; then how="$live -> $parked"; else how="$live removed"; fi',
        "  " + note("nginx site taken out ($how)"),
        "fi",
    ]


def put_back_lines(cfg: Config) -> list[str]:
    """Put a site taken out back into nginx and reload it (start nginx when it is not running); a site that
    is in already is a note."""
    return [
        *site_vars(cfg),
        f"if {SITE_OUT}; then",
        f"  {_in(cfg)}",
        *["  " + ln for ln in _checked(_out(cfg), "with the site back")],
        "  back=1; " + note("nginx site put back ($live)"),
        'elif [ -e "$live" ]; then',
        "  back=; " + note("nginx site already in"),
        "else",
        "  " + fail("no nginx site for this project to put back (fab deploy writes it)"),
        "fi",
        ALIVE_FN,
        CHILDREN_FN,
        'npid=$(alive "$nginx_pid" nginx || true)',
        'if [ -z "$npid" ]; then',
        f"  {root.NGINX_START}",
        "  " + note("nginx started"),
        'elif [ -n "$back" ]; then',
        *["  " + ln for ln in NGINX_RELOAD],
        "fi",
    ]
