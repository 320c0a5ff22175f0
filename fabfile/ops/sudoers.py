"""`fab sudoers`: the sudoers drop-in that limits the deploy user to the root commands this project's config
can run (root_commands), and lets it run anything as the app user (whose rights are the app's anyway).

root_commands calls the same builders the scripts call (remote/root.py and each module's root_lines), so
what the drop-in lists and what a deploy runs are the same strings. Root commands whose arguments exist only
at run time (remote/root.py best_effort) are never listed: see the README, "Limiting the deploy user's sudo".
"""
from __future__ import annotations

import getpass
import re

from fabdeploy import manager
from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.errors import ConfigError
from fabdeploy.remote import root

# (managers whose root commands are not built by remote/root.py yet: the drop-in cannot list them)
UNCOVERED_MANAGERS = ("emperor",)


def root_commands(cfg: Config, user: str, nginx_group: str = "www-data") -> list[tuple[str, ...]]:
    """The argv (binary's full path first) of every root command the project's config can run, with the
    run-time words (root.RUNTIME) replaced by the deploy user, nginx's group and the app user's group (named
    after it: useradd --user-group)."""
    from fabdeploy.front import firewall_persist, nginx
    from fabdeploy.front import firewall
    from fabdeploy.front.firewall import firewall_rules
    from fabdeploy.hosts.roles import balanced
    from fabdeploy.manager import boot_cron
    from fabdeploy.steps import app_user as app_user_step, setup
    lines = [*setup.root_lines(cfg), *app_user_step.root_lines(cfg), *nginx.root_lines(cfg),
             *firewall_persist.remove_commands(firewall_rules(cfg)[0]).values()]
    current = manager.of(cfg)
    lines += current.root_lines(cfg)
    for other in manager.MANAGERS.values():  # (a host switching managers stops and removes the old one)
        if other is not current:
            lines += other.switch_root_lines(cfg)
    lines += boot_cron.root_lines(cfg)  # (the pidfile manager's boot file, or its removal)
    if cfg.balancer.firewall != "off" and balanced(cfg):  # (an app host behind balancers)
        lines += firewall.root_lines(cfg)
    subst = {"$(id -un)": user, "$nginx_group": nginx_group, "$appg": app_user(cfg)}
    return list(dict.fromkeys(root.argv(ln, subst) for ln in lines))


def uncovered(cfg: Config) -> list[str]:
    """What this config uses whose root commands a drop-in cannot list yet (one phrase each)."""
    out = []
    if cfg.app.manager in UNCOVERED_MANAGERS:
        out.append(f"app.manager = {cfg.app.manager!r}: the host-wide emperor (its uWSGI copy, unit, vassal "
                   "directory, start, pruning old copies); provision it once (a deploy with full sudo), the vassal is listed")
    return out


def _sudoers_word(word: str) -> str:
    if not word or re.search(r"[\s\"#*?\[\]!]", word):
        raise ConfigError(f"cannot write {word!r} into a sudoers rule (spaces, quotes, globs): "
                          "choose paths and names without them (paths.deploy_to, project.name)")
    return root.sudoers_escape(word)


def default_user(cfg: Config) -> str:
    """The SSH user of the config's first host that names one, else this machine's user (Fabric's default)."""
    from fabdeploy.hosts.roles import servers
    try:
        for s in servers(cfg):
            if "@" in s.target:
                return s.target.split("@", 1)[0]
    except ConfigError:
        pass
    return getpass.getuser()


def drop_in(cfg: Config, user: str, nginx_group: str = "www-data") -> str:
    """The drop-in's text (visudo -c clean)."""
    name = cfg.project.name
    alias = "FABDEPLOY_" + re.sub(r"[^A-Z0-9]", "_", name.upper())
    for who, what in ((user, "--user"), (nginx_group, "--nginx-group")):
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]*", who):
            raise ConfigError(f"sudoers: {what} {who!r} is not a user or group name")
    cmds = []
    for argv in root_commands(cfg, user, nginx_group):
        words = [_sudoers_word(w) for w in argv]
        cmds.append(" ".join(words) if len(words) > 1 else f'{words[0]} ""')  # "": no arguments at all
    app = app_user(cfg)
    out = [f"# fabdeploy: what the deploy user {user} may run with sudo for {name} (fab sudoers). Install:",
           f"#   fab sudoers > x && visudo -c -f x && install -m 0440 x /etc/sudoers.d/fabdeploy-{name}",
           "# Root-equivalent by content: the nginx site, boot file and unit it installs are written by "
           f"{user}.",
           *[f"# NOT covered (needs full sudo or provisioning): {u}" for u in uncovered(cfg)],
           f"Cmnd_Alias {alias} = " + ", \\\n    ".join(cmds),
           f"{user} ALL=(root) NOPASSWD: {alias}"]
    if app != user:
        out.append(f"{user} ALL=({app}) NOPASSWD: ALL")
    return "\n".join(out) + "\n"
