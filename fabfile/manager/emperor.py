"""uWSGI emperor: one emperor per host watches /etc/uwsgi/vassals; each project is a vassal there
(`<project>.ini`, a two-line ini that includes the project's live `shared/config/uwsgi.ini`). Several projects
on one host share the emperor. uWSGI only (refuse()).

What it writes on the host, each only when it differs, so a second deploy changes nothing of the emperor:
- its binary, `/usr/local/lib/fabdeploy/uwsgi`: a link to `uwsgi-<version>-<sha256>/uwsgi` there, a copy of
  the deploying release's `bin/uwsgi` (pip's uWSGI is one standalone binary, linked against the system
  libpython), made when the link is missing, no longer runs (its libpython is gone) or is an older version.
  Not the release's virtualenv: releases and virtualenvs are pruned, and the emperor runs for every project
  on the host. A copy is never overwritten: uWSGI re-executes /proc/self/exe at a reload, which must still
  exist (a replaced file would be "uwsgi (deleted)"); a newer copy is used from the emperor's next start
  (restarting it would stop every project's vassals). Older copies are removed once nothing runs or names
  them (prune_lines). One emperor runs one Python: a project whose uWSGI is
  built for another libpython fails with one line. The copy is root's: the emperor (root, as tyrant mode
  needs) runs what the deploy user's release built, which that user's sudo allows anyway.
- its unit, `/etc/systemd/system/fabdeploy-uwsgi-emperor.service` (Type=simple, Restart=always), enabled by
  a link in multi-user.target.wants: the boot starts it. When it is not running, fabdeploy starts it: with
  systemctl where systemd runs, else the unit's own command, daemonized (log: /var/log/fabdeploy-uwsgi-
  emperor.log).
- the vassal, owned by the app user ([app] user) and its group: the emperor runs in tyrant mode
  (`--emperor-tyrant`), so each vassal runs as its file's owner (never root: the emperor refuses root-owned vassals), without sudo rights of its
  own. uid/gid lines in the vassal would bind the socket and write the pidfile as root first.

A reload touches the vassal (a newer mtime: the emperor asks the vassal for a graceful reload; the vassal
re-reads its ini, so the live config, new chdir and home included). `fab stop` takes the vassal out of the
directory (the emperor stops it and starts it again only when it is back: `fab start` or a deploy).
"""
from __future__ import annotations

from fabdeploy.appserver.base import app_user
from fabdeploy.config import Config
from fabdeploy.hosts.layout import Layout
from fabdeploy.manager.base import MANAGED, LogFilter, Manager
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, fail_expanded, note
from fabdeploy.remote.shell import ALIVE_FN, q, write_file

VASSALS = "/etc/uwsgi/vassals"
LIB = "/usr/local/lib/fabdeploy"
BINARY = f"{LIB}/uwsgi"  # a link to the copy in use
UNIT_NAME = "fabdeploy-uwsgi-emperor.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
WANTS = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
PIDFILE = "/run/fabdeploy-uwsgi-emperor.pid"
LOCK = "/run/fabdeploy-uwsgi-emperor.lock"  # held while one deploy checks and starts the emperor
LOG = "/var/log/fabdeploy-uwsgi-emperor.log"
FREQ = 1  # seconds between two scans of the vassal directory (uWSGI's default: 3)


def emperor_argv() -> list[str]:
    """The emperor's command line (the unit's ExecStart; a direct start adds --daemonize)."""
    return [BINARY, "--emperor", VASSALS, "--emperor-tyrant", "--emperor-freq", str(FREQ), "--die-on-term",
            "--pidfile", PIDFILE]


def unit_text() -> str:
    """The systemd unit of the host's emperor (the same for every project)."""
    return "\n".join([
        f"# {MANAGED}: the uWSGI emperor of this host, shared by every project deployed with",
        f'# [app] manager = "emperor" (their vassals: {VASSALS}/<project>.ini).',
        "[Unit]",
        "Description=uWSGI emperor (fabdeploy)",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(emperor_argv()),
        "Restart=always",
        "RestartSec=1",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def binary_lines(src: str) -> list[str]:
    """The host's emperor binary from the release's uWSGI at `src` when missing, broken or older."""
    return [
        f'ver=$({q(src)} --version 2>/dev/null) || {fail(f"the release uWSGI ({src}) does not run")}',
        f"have=$({q(BINARY)} --version 2>/dev/null || true)",
        "libpy() { grep -ao 'libpython3\\.[0-9]*' \"$1\" | head -n 1; }",
        f'if [ -n "$have" ] && [ "$(libpy {q(src)})" != "$(libpy {q(BINARY)})" ]; then',
        "  " + fail_expanded(f"the host's uWSGI emperor ({BINARY}) is built for $(libpy {q(BINARY)}), this "
                             f"project's uWSGI for $(libpy {q(src)}): one emperor runs one Python"),
        "fi",
        'if [ -z "$have" ] || { [ "$have" != "$ver" ] && '
        '[ "$(printf "%s\\n%s\\n" "$have" "$ver" | sort -V | head -n 1)" = "$have" ]; }; then',
        f'  d="uwsgi-$ver-$(sha256sum {q(src)} | cut -c 1-12)"',
        f'  [ -x {q(LIB)}/"$d/uwsgi" ] || {{ sudo -n install -D -m 0755 {q(src)} {q(LIB)}/"$d/uwsgi.tmp$$" && '
        f'sudo -n mv -f {q(LIB)}/"$d/uwsgi.tmp$$" {q(LIB)}/"$d/uwsgi"; }} || {fail(f"cannot copy uWSGI to {LIB} (sudo)")}',
        f'  {{ sudo -n ln -sfn "$d/uwsgi" {q(BINARY)}.tmp$$ && sudo -n mv -Tf {q(BINARY)}.tmp$$ {q(BINARY)}; }} || '
        + fail(f"cannot link {BINARY} (sudo)"),
        "  " + note(f"uWSGI emperor binary: $ver ({BINARY} -> $d/uwsgi)"),
        "fi",
    ]


UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system", "/etc/init.d",
             "/etc/supervisor/conf.d")  # where a unit or service that runs a copy by its own path would be
PRUNE_AFTER = 10  # minutes: a younger copy may be one another deploy is installing right now (not yet linked)


def prune_lines(lib: str = LIB, unit_dirs: tuple[str, ...] = UNIT_DIRS) -> list[str]:
    """Remove the copies of uWSGI under LIB that nothing uses: not the one BINARY links to, not one a running
    process executes (an emperor started before the link moved on, its vassals; "(deleted)" or not), not
    one a unit or service names by path, and none younger than PRUNE_AFTER minutes. Prints the removed
    names (as root: /proc/<pid>/exe of root's emperor). (lib, unit_dirs: other places, for a test.)"""
    dirs = " ".join(q(d) for d in unit_dirs)
    script = "; ".join([
        f"cd {q(lib)} 2>/dev/null || exit 0",
        f'keep=" $(readlink -f {q(lib + "/uwsgi")} 2>/dev/null) "',
        'for e in /proc/[0-9]*/exe; do t=$(readlink "$e" 2>/dev/null) || continue; '
        f'case "$t" in {q(lib)}/uwsgi-*) keep="$keep ${{t% (deleted)}} ";; esac; done',
        "for t in $(grep -rhoIs " + q(lib + '/uwsgi-[^/[:space:]"]*/uwsgi') + f' {dirs}); do keep="$keep $t "; done',
        f"for d in $(find {q(lib)} -mindepth 1 -maxdepth 1 -type d -name 'uwsgi-*' -mmin +{PRUNE_AFTER}); do "
        'case "$keep" in *" $d/uwsgi "*) continue;; esac; rm -rf "$d" && echo "${d##*/}"; done',
    ])
    # (best effort: a deploy user limited to the sudoers drop-in cannot prune; old copies then stay)
    return [f"pruned=$(sudo -n sh -c {q(script)} 2>/dev/null | tr '\\n' ' ')",
            '[ -z "$pruned" ] || ' + note("uWSGI emperor: old copies removed: $pruned")]


def guard(path: str) -> str:
    """Fail when `path` exists and fabdeploy did not write it."""
    return (f"if [ -e {q(path)} ] && ! grep -qs {q(MANAGED)} {q(path)}; then "
            + fail(f"{path} exists and was not written by fabdeploy: remove it or choose another manager") + "; fi")


def unit_lines(staged: str) -> list[str]:
    """The unit written when it differs ($unit is "changed" or "") and enabled (its link in
    multi-user.target.wants, what `systemctl enable` makes)."""
    return [
        guard(UNIT),
        *write_file(staged, unit_text(), mode="0644"),
        "unit=",
        f"if ! cmp -s {q(staged)} {q(UNIT)}; then",
        f"  sudo -n install -D -m 0644 {q(staged)} {q(UNIT)} || {fail(f'cannot write {UNIT} (sudo)')}",
        "  unit=changed; " + note(f"uWSGI emperor: {UNIT} written"),
        "fi",
        f'if [ "$(readlink {q(WANTS)})" != {q(UNIT)} ]; then',
        f'  {{ sudo -n install -d -m 0755 {q(WANTS.rsplit("/", 1)[0])} && sudo -n ln -sfn {q(UNIT)} {q(WANTS)}; }} || '
        + fail(f"cannot enable {UNIT_NAME} (sudo)"),
        "  " + note("uWSGI emperor enabled (started at boot)"),
        "fi",
        f"[ -d {q(VASSALS)} ] || sudo -n install -d -m 0755 {q(VASSALS)} || {fail(f'cannot create {VASSALS} (sudo)')}",
    ]


def running_lines() -> list[str]:
    """The emperor running; $emperor is its pid. Started when it is not (systemctl where systemd runs, else its
    command daemonized) under a host-wide lock, by whoever gets the lock first and finds it still not running:
    two projects deploying at once must not start two emperors."""
    systemd = "[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1"
    daemon = " ".join(q(w) for w in emperor_argv()) + f" --daemonize {q(LOG)}"
    start = "; ".join([
        ALIVE_FN,
        f"alive {q(PIDFILE)} uwsgi >/dev/null && exit 0",
        f"if {systemd}; then systemctl start {UNIT_NAME}; else {daemon}; fi",
        f"i=0; while ! alive {q(PIDFILE)} uwsgi >/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done",
        f"alive {q(PIDFILE)} uwsgi >/dev/null || exit 1",
        "echo started",
    ])
    return [
        ALIVE_FN,
        f'if {systemd} && [ -n "$unit" ]; then sudo -n systemctl daemon-reload; fi',
        f"emperor=$(alive {q(PIDFILE)} uwsgi || true)",
        'if [ -z "$emperor" ]; then',
        # (-o: the emperor started must not hold the lock; -w: never wait forever)
        f"  if ! how=$(sudo -n flock -o -w 60 {q(LOCK)} sh -c {q(start)}); then",
        f"    sudo -n tail -n 5 {q(LOG)} >&2 || true",
        "    " + fail_expanded("the uWSGI emperor did not start (see above)"),
        "  fi",
        f"  emperor=$(alive {q(PIDFILE)} uwsgi || true)",
        '  [ "$how" != started ] || ' + note("uWSGI emperor started (pid $emperor)"),
        "fi",
    ]


class Emperor(Manager):
    name = "emperor"
    title = "uWSGI emperor"

    def refuse(self, server) -> str | None:
        if server.name == "uwsgi":
            return None
        from fabdeploy.manager import MANAGERS
        others = " or ".join(f'"{n}"' for n, m in MANAGERS.items() if m is not self and not m.refuse(server))
        return f'"emperor" runs uWSGI vassals only, not {server.title} (app.server): choose {others}'

    def definition_path(self, cfg: Config) -> str:
        return f"{VASSALS}/{cfg.project.name}.ini"

    def definition(self, cfg: Config, app) -> str:
        return "\n".join([
            f"; {MANAGED} for {cfg.project.name}: a vassal of the host's uWSGI emperor, run as this file's",
            "; owner (tyrant mode). A deploy touches it (a graceful reload); fab stop removes it.",
            "[uwsgi]",
            f"ini = {app.paths(Layout(cfg.paths.deploy_to)).config}",
            "",
        ])

    def install_lines(self, cfg: Config, app) -> list[str]:
        """The emperor (binary, unit, running), then the vassal, written as the app user's file when it
        differs ($defined: "changed" or ""), through a temp file renamed over (the emperor scans the directory
        while it is written; it ignores names not ending in .ini)."""
        lay = Layout(cfg.paths.deploy_to)
        path = self.definition_path(cfg)
        staged = f"{lay.config}/emperor.definition"
        return [
            *binary_lines(app.venv_link(lay) + "/bin/uwsgi"),
            *unit_lines(f"{lay.config}/emperor.service"),
            *running_lines(),
            *prune_lines(),
            guard(path),
            *write_file(staged, self.definition(cfg, app), mode="0644"),
            f'appg=$(id -gn {q(app_user(cfg))}); me="{app_user(cfg)}:$appg"',
            # a vassal of another user (deployed before the app user, or since it changed): taken out until its
            # master is gone, so that the emperor starts it again as the new owner (a reload would keep the uid)
            f'if [ -e {q(path)} ] && [ "$(stat -c %U:%G {q(path)})" != "$me" ]; then',
            f"  {root.rm(path)}; i=0",
            f"  while alive {q(app.paths(lay).pidfile)} {q(app.process)} >/dev/null && "
            f"[ $i -lt {app.reload_timeout(cfg) * 10} ]; do sleep 0.1; i=$((i + 1)); done",
            "  " + note("uWSGI emperor: the vassal of another user "
                        "taken out (it starts again as the app user)"),
            "fi",
            f'if cmp -s {q(staged)} {q(path)} && [ "$(stat -c %U:%G {q(path)})" = "$me" ]; then defined=; else',
            f"  {{ {' && '.join(self._vassal_commands(cfg))}; }} || {fail(f'cannot write {path} (sudo)')}",
            "  defined=changed; " + note(f"uWSGI emperor: vassal {path} written"),
            "fi",
        ]

    def _vassal_commands(self, cfg: Config) -> list[str]:
        """root writes the staged vassal as the app user's file (tyrant mode), under a temp name renamed over."""
        staged = f"{Layout(cfg.paths.deploy_to).config}/emperor.definition"
        tmp = f"{VASSALS}/.{cfg.project.name}.ini.tmp"
        return [root.root("install", "-o", app_user(cfg), "-g", root.Raw(root.APP_GROUP), "-m", "0644", staged, tmp),
                root.root("mv", "-f", tmp, self.definition_path(cfg))]

    def root_lines(self, cfg: Config) -> list[str]:
        """The project's own root commands (the host-wide emperor, its binary copy, unit, vassal directory
        and start, are not fixed: provisioning, or full sudo; README)."""
        return [*self._vassal_commands(cfg), root.rm(self.definition_path(cfg))]

    def start_lines(self, cfg: Config, app, venv_word: str) -> list[str]:
        """The emperor starts a vassal it finds (within its scan interval); wait until its master is up (the
        app server's readiness wait follows)."""
        pidfile = q(app.paths(Layout(cfg.paths.deploy_to)).pidfile)
        steps = app.reload_timeout(cfg) * 10
        return [f"i=0; while ! pid=$(alive {pidfile} {q(app.process)}) && [ $i -lt {steps} ]; do "
                "sleep 0.1; i=$((i + 1)); done"]

    def reload_lines(self, cfg: Config, app) -> list[str]:
        """Touch the vassal with an mtime newer than its last one (the emperor compares whole seconds)."""
        v = q(self.definition_path(cfg))
        return [f'm=$(stat -c %Y {v}); t=$(date +%s); [ "$t" -gt "$m" ] || t=$((m + 1))',
                # (the vassal is the app user's file: touched as it, no root needed)
                f'touch -c -d "@$t" {v} 2>/dev/null || sudo -n -u {q(app_user(cfg))} touch -c -d "@$t" {v}']

    def stop_lines(self, cfg: Config, app) -> list[str]:
        return [root.rm(self.definition_path(cfg))]

    def stopped_lines(self, cfg: Config, app) -> list[str]:
        return self.stop_lines(cfg, app)  # (a crashed vassal the emperor is about to start again)

    def log_filter(self, cfg: Config) -> LogFilter | None:
        """The emperor's lines about this project's vassal (`<name>.ini`, never a longer name ending so):
        spawned, reloaded, cursed, removed, and what the vassal printed before its own log was open."""
        name = "".join("\\" + c if c == "." else c for c in cfg.project.name)
        return LogFilter("emperor", LOG, UNIT_NAME, f"(^|[^[:alnum:]_.-]){name}\\.ini([^[:alnum:]_-]|$)")

    def state_argv(self, cfg: Config) -> list[str] | None:
        """`vassal RUNNING` (in the directory, the emperor up), `vassal STOPPED` (out: fab stop) or
        `vassal EMPEROR-DOWN`."""
        script = ('e=$(cat "$2" 2>/dev/null | tr -dc 0-9); '
                  'if [ -z "$e" ] || ! grep -qs uwsgi "/proc/$e/comm"; then s=EMPEROR-DOWN; '
                  'elif [ -f "$1" ]; then s=RUNNING; else s=STOPPED; fi; echo "vassal $s"')
        return ["sh", "-c", script, "fabdeploy-status", self.definition_path(cfg), PIDFILE]
