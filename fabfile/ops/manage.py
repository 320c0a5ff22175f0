"""Django management commands in the live release, with the production settings and the [django] env.

One builder, two uses: `fab manage -- ARGS` runs these lines over SSH, and every deploy writes them as the
script <deploy_to>/bin/manage for people logged in on the host. Plain `python manage.py` in current/ would
fall back to the project's development settings (its manage.py defaults DJANGO_SETTINGS_MODULE).
"""
from __future__ import annotations

import sys

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.remote.shell import q
from fabdeploy.steps.migration_record import invalidate_line


def manage_lines(cfg: Config) -> list[str]:
    """Shell lines running `manage.py "$@"` in current/ with its virtualenv, the production settings module and
    the environment file (shared/config/app.env)."""
    lay = Layout(cfg.paths.deploy_to)
    missing = f"fabdeploy: no live release in {cfg.paths.deploy_to} (deploy first)"
    return [
        f"cd {q(lay.current)} 2>/dev/null && [ -f .fabdeploy/venv ] || {{ echo {q(missing)} >&2; exit 1; }}",
        'release=$(basename "$(pwd -P)")',
        "venv=$(cat .fabdeploy/venv)",
        f'export DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} FABDEPLOY_RELEASE="$release"',
        f"set -a; . {q(lay.env_file)}; set +a",
        f'exec {q(lay.venvs)}/"$venv"/bin/python {q(cfg.project.manage)} "$@"',
    ]


def wrapper(cfg: Config) -> str:
    """The text of <deploy_to>/bin/manage (run by another user, it runs itself again as the app user)."""
    user = q(app_user(cfg))
    return "\n".join([
        "#!/bin/sh",
        "# Written by fabdeploy on every deploy. Runs manage.py in the live release (current/) with the production",
        f"# settings ({SETTINGS_MODULE}) and the [django] env: {cfg.paths.deploy_to}/bin/manage createsuperuser",
        f"# As the app user ({app_user(cfg)}), which owns the database and the media.",
        "# (Any command may migrate: the live release's migration record is removed first.)",
        invalidate_line(Layout(cfg.paths.deploy_to).current),
        f'[ "$(id -un)" = {user} ] || exec sudo -n -u {user} "$0" "$@"',
        *manage_lines(cfg),
    ]) + "\n"


def remote_command(cfg: Config, args: list[str]) -> str:
    """The one remote command of `fab manage -- ARGS` (the same lines as bin/manage, args quoted), run as the
    app user (it writes the database and the media; sudo -n -u unless the SSH user is the app user), after
    the live release's migration record is removed (steps/migration_record.py: any command may migrate)."""
    user = q(app_user(cfg))
    return " ".join([invalidate_line(Layout(cfg.paths.deploy_to).current) + ";",
                     f'if [ "$(id -un)" = {user} ]; then set --; else set -- sudo -n -u {user}; fi;', '"$@"',
                     "sh", "-c", q("\n".join(manage_lines(cfg))), "manage", *(q(a) for a in args)])


def remainder(argv: list[str] | None = None) -> list[str]:
    """The words after the first `--` of the command line, exactly as given (invoke only keeps them joined
    with spaces, which loses the quoting of `shell -c "print(1)"`)."""
    argv = sys.argv if argv is None else argv
    return argv[argv.index("--") + 1:] if "--" in argv else []
