"""The django phase: import the app with the production settings, migrate (under a lock, after a backup),
collectstatic (skipped when the static inputs are unchanged), check --deploy: one Django boot (two when the
app user is not the SSH user), the program steps/django_program.py."""
from __future__ import annotations

import json
from pathlib import Path

from fabdeploy.appserver import warm
from fabdeploy.appserver.base import app_user
from fabdeploy.appserver.beside import Early
from fabdeploy.config import Config
from fabdeploy.database import backup, fleet
from fabdeploy.hosts.layout import SETTINGS_MODULE, Layout
from fabdeploy.model import Release
from fabdeploy.ops.starter import GENERIC_NAMES, PRODUCTION_NAMES
from fabdeploy.remote.markers import PY_MARKERS, note, prefix
from fabdeploy.steps import migration_record as record
from fabdeploy.steps.django_program import DUMP_OK, EARLY_OK, HASH_FILE, PROBE_CHANGED
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
PROGRAM_PY = PY_MARKERS + record.RECORD_PY + (Path(__file__).parent / "django_program.py").read_text()
MIGRATE_LOCK_WAIT = 600  # seconds a host waits for another one's migrate (app hosts sharing a database)


def program_args(cfg: Config, rel: Release, *, check_import: bool, migrate: bool, rest: bool) -> dict:
    """The program's parameters: which steps run (import check, migrate with its backup, and `rest`:
    collectstatic and check --deploy as configured) and what they need."""
    p: dict = {}
    if check_import:
        p.update({"import": cfg.project.wsgi, "production": PRODUCTION_NAMES, "generic": GENERIC_NAMES})
    if migrate:
        p["migrate"] = {"lock": f"fabdeploy-migrate-{cfg.project.name}", "wait": MIGRATE_LOCK_WAIT,
                        "backup": f"{backup.backups_dir(cfg)}/{rel.id}", "exts": backup.EXTS,
                        "record": not fleet.shared(cfg),  # (the migration record: steps/migration_record.py)
                        # (nothing pending: no `migrate` call, its checks being check --deploy's)
                        "skip_empty": not fleet.shared(cfg) and cfg.django.check_deploy}
    if rest:
        p.update({"static": cfg.django.collectstatic, "check": cfg.django.check_deploy})
    return p


def _out(cfg: Config, rel: Release, name: str) -> str:
    """The file a boot's stderr goes to, in the release's staging dir."""
    return f"{Layout(cfg.paths.deploy_to).staging(rel.id)}/{name}.out"


def _command(cfg: Config, rel: Release, params: dict, as_app: bool) -> str:
    python = q(Layout(cfg.paths.deploy_to).venv(rel.venv_hash) + "/bin/python")
    run = f"{app_env_words(cfg, rel, 'django')} {python}" if as_app else python
    return f'{run} -c "$DJANGO_PY" {q(json.dumps(params, separators=(",", ":")))}'


def _fresh(cfg: Config, rel: Release, E: str, also: str = "") -> list[str]:
    # (the output file private: tracebacks may show settings; the phase's umask, 027, back after it)
    return [f"mkdir -p {q(Layout(cfg.paths.deploy_to).staging(rel.id))}", f"rm -f {E} {E}.rc {E}.vars{also}",
            f"umask 077; : > {E}; umask 027"]


# One pass over what a boot said (its stderr, E), instead of a grep or sed per question: the note and warn
# markers to stdout; when it failed (rc != 0) every other line but the program's own to stderr; E.vars gets
# three lines (the dump's extension, "1" when the early master started, "1" when the static inputs changed);
# with `rec` set and rc 0, the migration records (steps/migration_record.py) into their files when complete
# (the counts of the last record line). Values are read back with `read`, never evaluated.
SCAN_AWK = r"""
function starts(s) { return index(line, s) == 1 }
{
  line = $0
  if (starts(NOTE) || starts(WARN)) { print line; next }
  own = starts(DUMP) || starts(EARLY) || starts(CHANGED) || starts(PREFIX)
  if (starts(DUMP) && ext == "") ext = substr(line, length(DUMP) + 1)
  if (index(line, EARLY)) early = 1
  if (index(line, CHANGED)) changed = 1
  if (starts(PREFIX "applied ")) applied[na++] = substr(line, length(PREFIX "applied ") + 1)
  if (starts(PREFIX "disk ")) disk[nd++] = substr(line, length(PREFIX "disk ") + 1)
  if (starts(PREFIX "record ")) n = substr(line, length(PREFIX "record ") + 1)
  if (!own && rc != 0) print line > "/dev/stderr"
}
END {
  print ext > VARS; print early > VARS; print changed > VARS
  if (rec != "" && rc == 0 && n != "" && n == (na + 0) " " (nd + 0)) {
    for (i = 0; i < nd; i++) print disk[i] > (rec "/""" + record.DISK + r"""")
    for (i = 0; i < na; i++) print applied[i] > (rec "/""" + record.APPLIED + r"""")
  }
}
"""


def scan_lines(out: str, rec_dir: str = "", before_exit: str = "", then: list[str] | None = None,
               cleanup: str = "") -> list[str]:
    """Show what a boot said (its output in the file `out`, its exit status in $rc: SCAN_AWK), set $fd_ext,
    $fd_early, $fd_changed; when it failed, stop (after `before_exit`); else `then`; `out` and its
    companions (and the files in `cleanup`) removed."""
    E = q(out)
    awk_vars = {"NOTE": prefix("note"), "WARN": prefix("warn"), "DUMP": DUMP_OK, "EARLY": EARLY_OK,
                "CHANGED": PROBE_CHANGED, "PREFIX": record.PREFIX, "VARS": f"{out}.vars", "rec": rec_dir}
    words = " ".join(f"-v {k}={q(v)}" for k, v in awk_vars.items())
    gone = f"rm -f {E} {E}.rc {E}.vars{cleanup}"
    return [
        f'awk -v rc="$rc" {words} {q(SCAN_AWK)} {E}',
        f"fd_ext= fd_early= fd_changed=; {{ read -r fd_ext; read -r fd_early; read -r fd_changed; }} < {E}.vars "
        "|| true",
        f'if [ "$rc" != 0 ]; then {gone}; {before_exit}exit 1; fi',
        *(then or []),
        gone,
    ]


def _rc(E: str) -> str:
    """$rc from E.rc (1 when it is missing), without a process."""
    return f"rc=1; if [ -f {E}.rc ]; then read -r rc < {E}.rc || rc=1; fi"


def boot_lines(cfg: Config, rel: Release, params: dict, as_app: bool, before_exit: str = "",
               then: list[str] | None = None) -> list[str]:
    """Run the program once with `params` (as the app user: `as_app`), then show what it said: its note and
    warn markers on stdout; when it failed, the rest on stderr and stop. With migrate, its fd 1 (a dump, when
    one is taken) is gzipped by the deploy user into shared/backups (0600 in 0700), then pruned; with the
    migration record, the records are written into the release from what it said."""
    cmd = _command(cfg, rel, params, as_app)
    out = _out(cfg, rel, "django")
    E = q(out)
    lay = Layout(cfg.paths.deploy_to)
    rec = params.get("migrate", {}).get("record")
    rec_dir = f"{lay.release(rel.id)}/.fabdeploy" if rec else ""
    # (no record from an earlier run left behind)
    old = f" {q(rec_dir + '/' + record.APPLIED)} {q(rec_dir + '/' + record.DISK)}" if rec else ""
    lines = _fresh(cfg, rel, E, old)
    cleanup = ""
    if "migrate" in params:
        d, b = backup.backups_dir(cfg), q(params["migrate"]["backup"])
        cleanup = f" {b}.tmp"
        lines += [
            f"(umask 077; mkdir -p {q(d)}) && chmod 700 {q(d)} && rm -f {b}.tmp",
            f"{{ {cmd} 2>{E}; echo $? > {E}.rc; }} | (umask 077; gzip -c > {b}.tmp)",
            _rc(E),
        ]
        scan = scan_lines(out, rec_dir, before_exit, then, cleanup)
        # (the dump kept whatever happened next: fd_ext is set by the scan's read, before its failure exit)
        scan[2:2] = [f'if [ -n "$fd_ext" ]; then chmod 600 {b}.tmp && mv -f {b}.tmp {b}."$fd_ext".gz; '
                     f'{"; ".join(backup.prune_lines(cfg))}; fi']
        return lines + scan
    lines += [f"rc=0; {cmd} 2>{E} || rc=$?"]
    return lines + scan_lines(out, rec_dir, before_exit, then)


def beside_lines(cfg: Config, rel: Release, params: dict) -> tuple[list[str], list[str]]:
    """The deploy user's boot (collectstatic, check --deploy) run in the background beside the app user's
    (import check, backup, migrate): (its start, its end). The end waits for it and shows what it said after
    the app user's boot; a failing app user's boot waits for it too (`wait "$bg"`) before it stops, so
    nothing still writes into the release when the failed deploy removes it."""
    out = _out(cfg, rel, "django-static")
    E = q(out)
    start = [*_fresh(cfg, rel, E), f"{{ {_command(cfg, rel, params, as_app=False)} 2>{E}; echo $? > {E}.rc; }} &",
             "bg=$!"]
    end = ['wait "$bg"', _rc(E), *scan_lines(out)]
    return start, end


def django(cfg: Config, rel: Release, migrate: bool = True, early: Early | None = None) -> Phase:
    """The import check (always), migrate (with a backup when migrations are pending), collectstatic and
    check --deploy, with the production settings, in one Django boot: the program above. The app user owns
    the database and the deploy user the static root: when they are two users, a redeploy (the release's
    static root seeded from a live one that holds its hash) boots once as the app user (import check,
    migrate, whether the static inputs changed, check --deploy) and the deploy user's boot (collectstatic)
    follows only when they changed; a first deploy runs the two boots side by side (the app user's: import
    check, migrate; the deploy user's: collectstatic, check --deploy). `migrate` False: an app host of a
    fleet sharing one database where another host migrates (and dumps) for this deploy. `early`: the new
    master started beside the live one once the database is migrated (appserver/beside.py early): by the
    app user's boot itself after migrate (one boot), by the shell after the app user's boot while the deploy
    user's still runs (two), after the boot when nothing migrates; never on a host where another one
    migrates."""
    prep, after = (early.prep, early.lines) if early else ([], [])
    here = cfg.django.migrate and migrate
    rest = cfg.django.collectstatic or cfg.django.check_deploy
    lay = Layout(cfg.paths.deploy_to)
    lines = [*django_env(cfg, rel), f"DJANGO_PY={q(PROGRAM_PY)}", *as_app_lines(app_user(cfg)),
             record.invalidate_line(lay.current)]  # (whatever happens next: see there)
    if early and (here or not cfg.django.migrate):
        lines += prep
    if cfg.django.migrate and not migrate:
        lines.append(note("migrate: done once for the fleet's shared database (on another app host)"))
    if not here:
        return Phase("django", lines + boot_lines(cfg, rel, program_args(cfg, rel, check_import=True, migrate=False,
                                                                         rest=rest), as_app=False)
                     + public_static(cfg, rel) + ([] if cfg.django.migrate else after) + warm.done_lines(cfg, rel.id))
    with_early = {"early": early.params} if early else {}
    started = [f'[ -z "$fd_early" ] || : > {q(early.marker)}'] if early else []  # (tells the restart)
    both = {**program_args(cfg, rel, check_import=True, migrate=True, rest=rest), **with_early}
    app_params = program_args(cfg, rel, check_import=True, migrate=True, rest=False)
    if rest:  # (the two boots at once: they share nothing but the release's code; on two cores, one boot's time)
        start, end = beside_lines(cfg, rel, program_args(cfg, rel, check_import=False, migrate=False, rest=True))
        split = [*start, *boot_lines(cfg, rel, app_params, as_app=True, before_exit='wait "$bg"; '), *after, *end]
    else:
        split = [*boot_lines(cfg, rel, app_params, as_app=True), *after]
    if cfg.django.collectstatic:
        # a redeploy: one boot as the app user (it reads the static inputs and the seeded root's hash), the
        # deploy user's collectstatic only when they changed
        one = {**app_params, "probe": True, "check": cfg.django.check_deploy, **with_early}
        split = [f"if [ -f {q(f'{lay.static}/{rel.id}/{HASH_FILE}')} ]; then",
                 *["  " + ln for ln in boot_lines(cfg, rel, one, as_app=True, then=[
                     *started, 'changed=$fd_changed'])],
                 '  if [ -n "$changed" ]; then',
                 *["    " + ln for ln in boot_lines(cfg, rel, {"static": True}, as_app=False)],
                 "  fi",
                 "else",
                 *["  " + ln for ln in split],
                 "fi"]
    return Phase("django", [*lines, f'if [ -z "{AS_APP}" ]; then  # the SSH user is the app user: one boot',
                            *["  " + ln for ln in boot_lines(cfg, rel, both, as_app=False, then=started)],
                            "else  # two: the app user migrates, the deploy user collects into its static root",
                            *["  " + ln for ln in split], "fi", *public_static(cfg, rel),
                            *warm.done_lines(cfg, rel.id)])


def public_static(cfg: Config, rel: Release) -> list[str]:
    """The release's static root readable by anyone (what it holds is public; the app reads it too:
    ManifestStaticFilesStorage's staticfiles.json, WhiteNoise), as its parent shared/static (2755)."""
    if not cfg.django.collectstatic:
        return []
    root = f"{Layout(cfg.paths.deploy_to).static}/{rel.id}"
    return [f"[ ! -d {q(root)} ] || chmod -R o+rX {q(root)}"]
