"""[cache] redis = true: the host's Redis (the distribution's package) bound to 127.0.0.1 with a password.

Three steps, after the layout (they use shared/config and the deploy user):
- redis-password: shared/config/redis.password (the deploy user's, 0600) holds the password: the one the
  Redis configuration already requires (a second project on the host shares it), else the file's, else a
  new one from /dev/urandom, generated on the host: it never crosses the wire and is never printed.
- redis-config: a file of ours beside redis.conf (redis-fabdeploy.conf, root:redis 0640: bind 127.0.0.1,
  protected-mode, port, requirepass) and `include` of it as the last line of redis.conf (later directives
  win), so the distribution's file is otherwise kept.
- redis: enabled and (re)started (systemctl where systemd runs; elsewhere, e.g. the test lab, the
  distribution's init script through `service`, a daemonized redis-server with its pidfile); "right" is
  decided by the server itself: a client without the password is refused (NOAUTH) and one with it answers
  PONG.
The deploy writes REDIS_URL (redis://:<password>@127.0.0.1:6379/0) into shared/config/app.env on the host
from that file (steps/code.py: redis_env_lines); the settings overlay sets CACHES from it.
"""
from __future__ import annotations

from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.provision.services import SYSTEMD
from fabdeploy.provision.steps import Step
from fabdeploy.provision.system import System
from fabdeploy.remote.markers import fail
from fabdeploy.remote.shell import q

PORT = 6379
BIND = "127.0.0.1"
# family -> (package, service)
NAMES = {"apt": ("redis-server", "redis-server"), "dnf": ("redis", "redis"), "yum": ("redis", "redis")}
# redis.conf (Debian and RHEL 9: /etc/redis/redis.conf; RHEL 8 and CentOS 7: /etc/redis.conf) and ours beside it
CONF = ('c=/etc/redis/redis.conf; [ -f "$c" ] || c=/etc/redis.conf; inc="${c%.conf}-fabdeploy.conf"')


def password_file(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).config}/redis.password"


def url_expr(pw_var: str = "pw", host: str = BIND) -> str:
    """REDIS_URL as a double-quoted shell word using the password in $pw_var (hex: URL-safe)."""
    return f'"redis://:${pw_var}@{host}:{PORT}/0"'


def package(system: System) -> str:
    return NAMES[system.family][0]


def password_step(cfg: Config) -> Step:
    f, user = q(password_file(cfg)), q(cfg.provision.deploy_user)
    required = 'req=$(sed -n "s/^requirepass //p" "$inc" 2>/dev/null | head -n 1)'
    check = [CONF, required, f'[ -s {f} ] && [ "$(stat -c %U:%a {f})" = {user}:600 ] && '
             f'{{ [ -z "$req" ] || [ "$(cat {f})" = "$req" ]; }}']
    apply = [CONF, required,
             f'pw="$req"; [ -n "$pw" ] || pw=$(cat {f} 2>/dev/null || true)',
             "[ -n \"$pw\" ] || pw=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \\n')",
             f"rm -f {f}.new", f"(umask 077; printf '%s\\n' \"$pw\" > {f}.new)",
             f'chown {user}:"$(id -gn {user})" {f}.new', f"chmod 600 {f}.new", f"mv -f {f}.new {f}"]
    return Step("redis-password", check, apply, what=f"{password_file(cfg)} holds the Redis password (0600)")


def _want_lines(cfg: Config, bind: str = BIND) -> list[str]:
    """$want: the text of our include file (the password read from the password file, never printed)."""
    f = q(password_file(cfg))
    head = (f"# Managed by fabdeploy provision ([cache] redis): included last by redis.conf, overrides it.\\n"
            f"bind {bind}\\nprotected-mode yes\\nport {PORT}\\n")
    return [f'pw=$(cat {f} 2>/dev/null)', f"want=$(printf '{head}requirepass %s' \"$pw\")"]


def config_step(cfg: Config, bind: str = BIND) -> Step:
    """Our include file (bind: 127.0.0.1, and on a fleet's db host its address too) included by redis.conf."""
    check = [CONF, *_want_lines(cfg, bind), '[ -f "$c" ] && [ "$(cat "$inc" 2>/dev/null)" = "$want" ] && '
             '[ "$(stat -c %U:%G:%a "$inc")" = root:redis:640 ] && '
             '[ "$(grep -v "^[[:space:]]*$" "$c" | tail -n 1)" = "include $inc" ]']
    apply = [CONF, *_want_lines(cfg, bind),
             '[ -f "$c" ] || { echo "no redis.conf (/etc/redis/redis.conf, /etc/redis.conf): is Redis installed?"; exit 1; }',
             'rm -f "$inc.new"', '(umask 077; printf "%s\\n" "$want" > "$inc.new")',
             'chown root:redis "$inc.new"', 'chmod 640 "$inc.new"', 'mv -f "$inc.new" "$inc"',
             # (rewritten in place: redis.conf keeps its owner and mode)
             '{ grep -vxF "include $inc" "$c" || true; } > "$c.fabdeploy-tmp"', 'cat "$c.fabdeploy-tmp" > "$c"',
             'rm -f "$c.fabdeploy-tmp"', 'printf "include %s\\n" "$inc" >> "$c"']
    return Step("redis-config", check, apply, what=f"Redis bound to {bind.replace(' ', ',')}:{PORT} with a password (include in redis.conf)")


def _answers(cfg: Config) -> str:
    """The server requires the password and accepts ours (REDISCLI_AUTH: not in any argv)."""
    cli = f"redis-cli -h {BIND} -p {PORT}"
    return (f'pw=$(cat {q(password_file(cfg))} 2>/dev/null); '
            f'{cli} ping 2>&1 | grep -q NOAUTH && [ "$(REDISCLI_AUTH="$pw" {cli} ping 2>/dev/null)" = PONG ]')


def service_step(cfg: Config, system: System) -> Step:
    svc = q(NAMES[system.family][1])
    answers = _answers(cfg)
    check = [f"{{ ! {SYSTEMD} || {{ systemctl is-enabled --quiet {svc} && systemctl is-active --quiet {svc}; }}; }} "
             f"&& {{ {answers}; }}"]
    apply = [CONF,
             f"if {SYSTEMD}; then systemctl enable {svc} && systemctl restart {svc}",
             f"elif command -v service >/dev/null && [ -x /etc/init.d/{NAMES[system.family][1]} ]; then "
             f"service {svc} stop >/dev/null 2>&1 || true; service {svc} start",
             # (no init script: the pid of redis.conf's pidfile stopped, the server started as redis)
             "else pf=$(sed -n 's/^pidfile[[:space:]]*//p' \"$c\" | tail -n 1); "
             '[ -z "$pf" ] || ! [ -s "$pf" ] || kill "$(cat "$pf")" 2>/dev/null || true; sleep 1; '
             'runuser -u redis -- redis-server "$c" --daemonize yes; fi',
             f"i=0; while ! ({answers}) && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
             f"({answers}) || {{ echo 'Redis does not answer with its password on {BIND}:{PORT} "
             f"(see /var/log/redis)'; exit 1; }}"]
    return Step("redis", check, apply, what="Redis enabled and (re)started with its password")


def redis_steps(cfg: Config, system: System, role: str) -> list[Step]:
    """The three steps on the host that runs the Redis of [cache] redis = true: the app host, or a fleet's db
    host (roles.db: bound to its address too, for the app hosts); none otherwise."""
    from fabdeploy.database import fleet
    if not cfg.cache.redis or role != (fleet.ROLE if fleet.has_db_host(cfg) else "app"):
        return []
    bind = f"{BIND} {fleet.address(cfg)}" if role == fleet.ROLE else BIND
    return [password_step(cfg), config_step(cfg, bind), service_step(cfg, system)]


def env_lines(cfg: Config, env_file: str) -> list[str]:
    """(deploy, code phase) REDIS_URL appended to the environment file being written, composed on the host
    from the password file; one line naming the file when it is missing (fab provision writes it)."""
    f = q(password_file(cfg))
    return [f"[ -s {f} ] || " + fail(f"cache.redis = true but {password_file(cfg)} is missing or unreadable: "
                                     "run `fab provision` (it installs Redis and writes the password)"),
            f'pw=$(cat {f}); printf "REDIS_URL=%s\\n" {url_expr(host=_server(cfg))} >> {q(env_file)}; pw=']


def _server(cfg: Config) -> str:
    """Where the app reaches Redis: the app host itself, or the fleet's db host."""
    from fabdeploy.database import fleet
    return fleet.address(cfg) if fleet.has_db_host(cfg) else BIND
