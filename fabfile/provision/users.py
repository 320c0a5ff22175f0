"""The users provision creates: the deploy user (the SSH user of `fab deploy`, [provision] deploy_user),
able to log in with a key only, with the public keys of [provision] authorized_keys (default: the public key
of the key fab connects with), and the app user ([app] user: steps/app_user.py's own lines)."""
from __future__ import annotations

from pathlib import Path

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.errors import ConfigError
from fabdeploy.provision.steps import Step
from fabdeploy.remote.shell import q
from fabdeploy.steps import app_user as _app_user

HOME = 'h=$(getent passwd "$u" | cut -d: -f6)'


def public_keys(cfg: Config, key_filename: str | None = None) -> list[str]:
    """[provision] authorized_keys, else the .pub beside the key fab connects with (ssh.identity_file, -i, or
    ~/.ssh/id_ed25519 / id_ecdsa / id_rsa); ConfigError naming the key when there is none."""
    if cfg.provision.authorized_keys:
        return list(cfg.provision.authorized_keys)
    tried = [p for p in (cfg.ssh.identity_file, key_filename) if p]
    tried += [f"~/.ssh/id_{kind}" for kind in ("ed25519", "ecdsa", "rsa")]
    for key in tried:
        pub = Path(key).expanduser().with_name(Path(key).name + ".pub")
        if pub.is_file():
            return [ln.strip() for ln in pub.read_text().splitlines() if ln.strip()]
    raise ConfigError("provision.authorized_keys is empty and no public key was found beside "
                      + ", ".join(tried) + ": the deploy user could not log in")


def deploy_user_steps(cfg: Config, keys: list[str]) -> list[Step]:
    """The deploy user exists (home, bash), is not locked (sshd without PAM refuses a locked account's
    keys: useradd's '!' becomes '*', no password), and its authorized_keys has every key."""
    user = cfg.provision.deploy_user
    u = f"u={q(user)}"
    create = Step("deploy-user", [u, 'id -u "$u" >/dev/null 2>&1'], [
        u, 'useradd --create-home --shell /bin/bash "$u"',
        # an existing home (not created by useradd) is given to it, not what is inside
        HOME, 'chown "$u:$(id -gn "$u")" "$h"'], what=f"user {user} created")
    unlock = Step("deploy-login", [
        u, 'pw=$(getent shadow "$u" | cut -d: -f2)', 'case "$pw" in "!"|"!!"|"!*") false;; esac'],
        [u, 'usermod -p "*" "$u"'], what=f"{user} may log in with a key (no password)")
    listed = " ".join(q(k) for k in keys)
    check = [u, HOME, "missing=0",
             f'for k in {listed}; do grep -qxF "$k" "$h/.ssh/authorized_keys" 2>/dev/null || missing=$((missing+1)); done',
             'what="$missing key(s) added to ~$u/.ssh/authorized_keys"', '[ "$missing" -eq 0 ]']
    add = [u, HOME, 'g=$(id -gn "$u")', 'install -d -m 700 -o "$u" -g "$g" "$h/.ssh"',
           'f="$h/.ssh/authorized_keys"; touch "$f"',
           f'for k in {listed}; do grep -qxF "$k" "$f" || printf "%s\\n" "$k" >> "$f"; done',
           'chown "$u:$g" "$f"', 'chmod 600 "$f"']
    return [create, unlock, Step("authorized-keys", check, add, what="keys added")]


def app_user_step(cfg: Config) -> list[Step]:
    """The app user ([app] user), created by steps/app_user.py's own lines; none when it is the deploy user."""
    user = app_user(cfg)
    if user == cfg.provision.deploy_user:
        return []
    return [Step("app-user", [f"id -u {q(user)} >/dev/null 2>&1"], _app_user.create_lines(cfg),
                 what=f"user {user} created")]
