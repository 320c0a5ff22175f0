"""deploy_to as the deploy creates it (steps/setup.py, steps/app_user.py): owners, groups and modes of its
directories; and [pip] index_url in the host's pip configuration (/etc/pip.conf)."""
from __future__ import annotations

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.provision.steps import Step
from fabdeploy.remote.shell import q

PIP_CONF = "/etc/pip.conf"
NGINX_GROUP = ('ng=$(sed -n "s/^[[:space:]]*user[[:space:]][[:space:]]*\\([^[:space:];]*\\).*/\\1/p" '
               '/etc/nginx/nginx.conf 2>/dev/null | head -n 1); ng=$(id -gn "${ng:-www-data}" 2>/dev/null || '
               'echo nginx)')


def table(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(path, owner, group, mode) of deploy_to's directories; $d is the deploy user, $a the app user and $ag
    its group, $ng nginx's group (shell words)."""
    lay = Layout(cfg.paths.deploy_to)
    own = app_user(cfg) != cfg.provision.deploy_user
    app, appg = ('"$a"', '"$ag"') if own else ('"$d"', '"$dg"')
    private = ("2750", "2770") if own else ("750", "750")
    out = [(lay.deploy_to, '"$d"', '"$dg"', "711"), (lay.shared, '"$d"', '"$dg"', "711")]
    out += [(p, '"$d"', appg, private[0]) for p in (lay.releases, lay.venvs, lay.tmp, lay.config)]
    out += [(f"{lay.shared}/media", app, '"$ng"', "2750"), (f"{lay.shared}/db", app, appg, "700"),
            (lay.run, app, '"$ng"', "2750"), (lay.log, '"$d"', appg, private[1]),
            (lay.static, '"$d"', '"$ng"', "2755")]  # (public: steps/setup._nginx_mode)
    return out


def layout_step(cfg: Config) -> Step:
    """Every directory of table() exists with its owner, group and mode (parents of deploy_to: root's)."""
    user, appu = cfg.provision.deploy_user, app_user(cfg)
    ids = [f"d={q(user)}", 'dg=$(id -gn "$d" 2>/dev/null || echo "$d")', f"a={q(appu)}",
           'ag=$(id -gn "$a" 2>/dev/null || echo "$a")', NGINX_GROUP]
    rows = table(cfg)
    check = [*ids, "wrong=",
             *[f'[ "$(stat -c %U:%G:%a {q(p)} 2>/dev/null)" = {o}:{g}:{m} ] || wrong="$wrong {p}"'
               for p, o, g, m in rows],
             f'what="{cfg.paths.deploy_to}: owner or mode set on$wrong"', '[ -z "$wrong" ]']
    apply = [*ids, f"mkdir -p {q(cfg.paths.deploy_to.rsplit('/', 1)[0] or '/')}",
             *[f"install -d -o {o} -g {g} -m {m} {q(p)} && chown {o}:{g} {q(p)} && chmod {m} {q(p)}"
               for p, o, g, m in rows]]
    return Step("layout", check, apply)


def pip_step(cfg: Config) -> list[Step]:
    """[pip] index_url as `index-url` of [global] in /etc/pip.conf (other settings kept); nothing unset."""
    url = cfg.pip.index_url
    if not url:
        return []
    want = f"index-url = {url}"
    f = q(PIP_CONF)
    replace = q("s|^index-url[[:space:]]*=.*|" + want.replace("|", "\\|") + "|")
    after_global = q("/^\\[global\\]/a " + want)
    apply = [f"if ! [ -f {f} ]; then printf '[global]\\n%s\\n' {q(want)} > {f}",
             f"elif grep -q '^index-url[[:space:]]*=' {f}; then "
             f"sed -i {replace} {f}",
             f"elif grep -q '^\\[global\\]' {f}; then sed -i {after_global} {f}",
             f"else printf '\\n[global]\\n%s\\n' {q(want)} >> {f}; fi", f"chmod 644 {f}"]
    return [Step("pip-index", [f"grep -qxF {q(want)} {f} 2>/dev/null"], apply,
                 what=f"{PIP_CONF}: index-url set")]
