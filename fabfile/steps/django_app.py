"""The django phase: import the app with the production settings, migrate (under a lock, after a backup),
collectstatic (skipped when the static inputs are unchanged), check --deploy: one Django boot (two when the
app user is not the SSH user), the program steps/django_program.py."""
from __future__ import annotations

import json
from pathlib import Path

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.database import backup
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.model import Release
from fabdeploy.ops.starter import GENERIC_NAMES, PRODUCTION_NAMES
from fabdeploy.remote.markers import PY_MARKERS, note, prefix
from fabdeploy.steps.django_program import DUMP_OK
from fabdeploy.remote.script import Phase
from fabdeploy.remote.shell import AS_APP, as_app_lines, q


def django_env(cfg: Config, rel: Release) -> list[str]:
    lay = Layout(cfg.paths.deploy_to)
    return [
        f"cd {q(lay.release(rel.id))}",
        "umask 027",  # what Django creates (an SQLite database, uploads) is not for other local users
        f"export DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} FABDEPLOY_RELEASE={q(rel.id)}",
        f"set -a; . {q(lay.env_file)}; set +a",
    ]


# Run "$@" with the env file's variables (sudo -u resets the environment): argv: the env file, the command.
APP_ENV_SH = 'umask 027; set -a; . "$1"; set +a; shift; exec "$@"'


def app_env_words(cfg: Config, rel: Release, name: str) -> str:
    """The words that run a command as the app user in the release with the production settings and the
    [django] env (migrate: it writes the database), the command's words to follow."""
    lay = Layout(cfg.paths.deploy_to)
    return (f"{AS_APP} sh -c {q(APP_ENV_SH)} {name} {q(lay.env_file)} env DJANGO_SETTINGS_MODULE={SETTINGS_MODULE} "
            f"FABDEPLOY_RELEASE={q(rel.id)}")


# The program (steps/django_program.py) run by the release's python: one Django boot for the import check,
# the backup, migrate, collectstatic and check --deploy. Its text is set once in the phase ($DJANGO_PY).
PROGRAM_PY = PY_MARKERS + (Path(__file__).parent / "django_program.py").read_text()
MIGRATE_LOCK_WAIT = 600  # seconds a host waits for another one's migrate (app hosts sharing a database)
MARKERS_OUT = f"^({prefix('note')}|{prefix('warn')})"  # what of the program's stderr goes to the phase's stdout


def program_args(cfg: Config, rel: Release, *, check_import: bool, migrate: bool, rest: bool) -> dict:
    """The program's parameters: which steps run (import check, migrate with its backup, and `rest`:
    collectstatic and check --deploy as configured) and what they need."""
    p: dict = {}
    if check_import:
        p.update({"import": cfg.project.wsgi, "production": PRODUCTION_NAMES, "generic": GENERIC_NAMES})
    if migrate:
        p["migrate"] = {"lock": f"fabdeploy-migrate-{cfg.project.name}", "wait": MIGRATE_LOCK_WAIT,
                        "backup": f"{backup.backups_dir(cfg)}/{rel.id}", "exts": backup.EXTS}
    if rest:
        p.update({"static": cfg.django.collectstatic, "check": cfg.django.check_deploy})
    return p


def boot_lines(cfg: Config, rel: Release, params: dict, as_app: bool) -> list[str]:
    """Run the program once with `params` (as the app user: `as_app`), then show what it said: its note and
    warn markers on stdout; when it failed, the rest on stderr and stop. With migrate, its fd 1 (a dump, when
    one is taken) is gzipped by the deploy user into shared/backups (0600 in 0700), then pruned."""
    lay = Layout(cfg.paths.deploy_to)
    python = q(lay.venv(rel.venv_hash) + "/bin/python")
    run = f"{app_env_words(cfg, rel, 'django')} {python}" if as_app else python
    cmd = f'{run} -c "$DJANGO_PY" {q(json.dumps(params, separators=(",", ":")))}'
    E = q(f"{lay.staging(rel.id)}/django.out")
    # (its output file private: tracebacks may show settings; the program itself keeps the phase's umask 027)
    lines = [f"mkdir -p {q(lay.staging(rel.id))}", f"rm -f {E} {E}.rc", f"(umask 077; : > {E})"]
    if "migrate" in params:
        d, b = backup.backups_dir(cfg), q(params["migrate"]["backup"])
        lines += [
            f"(umask 077; mkdir -p {q(d)}) && chmod 700 {q(d)} && rm -f {b}.tmp",
            f"{{ {cmd} 2>{E}; echo $? > {E}.rc; }} | (umask 077; gzip -c > {b}.tmp)",
            f"rc=$(cat {E}.rc 2>/dev/null || echo 1)",
            f"ext=$(sed -n 's/^{DUMP_OK}//p' {E} | head -n 1)",
            f'if [ -n "$ext" ]; then chmod 600 {b}.tmp && mv -f {b}.tmp {b}."$ext".gz; '
            f'{"; ".join(backup.prune_lines(cfg))}; else rm -f {b}.tmp; fi',
        ]
    else:
        lines += [f"rc=0; {cmd} 2>{E} || rc=$?"]
    return lines + [
        f"grep -E {q(MARKERS_OUT)} {E} || true",
        f'if [ "$rc" != 0 ]; then grep -Ev {q(MARKERS_OUT[:-1] + "|" + DUMP_OK + ")")} {E} >&2 || true; '
        f"rm -f {E} {E}.rc; exit 1; fi",
        f"rm -f {E} {E}.rc",
    ]


def django(cfg: Config, rel: Release, migrate: bool = True) -> Phase:
    """The import check (always), migrate (with a backup when migrations are pending), collectstatic and
    check --deploy, with the production settings, in one Django boot: the program above. The app user owns
    the database and the deploy user the static root: when they are two users, one boot as the app user
    (import check, migrate) and one as the deploy user (collectstatic, check --deploy). `migrate` False: an
    app host of a fleet sharing one database where another host migrates (and dumps) for this deploy."""
    here = cfg.django.migrate and migrate
    rest = cfg.django.collectstatic or cfg.django.check_deploy
    lines = [*django_env(cfg, rel), f"DJANGO_PY={q(PROGRAM_PY)}", *as_app_lines(app_user(cfg))]
    if cfg.django.migrate and not migrate:
        lines.append(note("migrate: done once for the fleet's shared database (on another app host)"))
    if not here:
        return Phase("django", lines + boot_lines(cfg, rel, program_args(cfg, rel, check_import=True, migrate=False,
                                                                         rest=rest), as_app=False)
                     + public_static(cfg, rel))
    both = program_args(cfg, rel, check_import=True, migrate=True, rest=rest)
    split = boot_lines(cfg, rel, program_args(cfg, rel, check_import=True, migrate=True, rest=False), as_app=True)
    if rest:
        split += boot_lines(cfg, rel, program_args(cfg, rel, check_import=False, migrate=False, rest=True),
                            as_app=False)
    return Phase("django", [*lines, f'if [ -z "{AS_APP}" ]; then  # the SSH user is the app user: one boot',
                            *["  " + ln for ln in boot_lines(cfg, rel, both, as_app=False)],
                            "else  # two: the app user migrates, the deploy user collects into its static root",
                            *["  " + ln for ln in split], "fi", *public_static(cfg, rel)])


def public_static(cfg: Config, rel: Release) -> list[str]:
    """The release's static root readable by anyone (what it holds is public; the app reads it too:
    ManifestStaticFilesStorage's staticfiles.json, WhiteNoise), as its parent shared/static (2755)."""
    if not cfg.django.collectstatic:
        return []
    root = f"{Layout(cfg.paths.deploy_to).static}/{rel.id}"
    return [f"[ ! -d {q(root)} ] || chmod -R o+rX {q(root)}"]
