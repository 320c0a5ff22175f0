"""A manager-less app server (app.manager = "pidfile") back after a reboot: an `@reboot` line in
/etc/cron.d/fabdeploy_<project> runs, as the deploy user, `<deploy_to>/bin/start-at-boot`, a script
fabdeploy writes that is the start phase of `fab start` itself (steps/control.start: the live release's app
server started and waited for, "already running" when it is), without the deploy lock; its output goes to
shared/log/boot.log. Debian's cron runs the `@reboot` lines of /etc/cron.d at boot; a host where no cron
daemon is enabled gets one warning line on each deploy.

Both files are written only when they differ (atomically: a temp file renamed over; cron ignores file names
with a dot, so its temp file is never read), and not even compared while shared/config/boot.stamp (written
after them: their digest and the deploy user) says they are as this deploy would write them and neither was
changed after it; they are removed when the host switches to a manager of its own
(Pidfile.remove_lines)."""
from __future__ import annotations

import hashlib

from fabdeploy.config import Config, ident
from fabdeploy.hosts.layout import Layout
from fabdeploy.manager.base import MANAGED, USER_PLACEHOLDER
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, note, warn
from fabdeploy.remote.shell import ME_WORD, q, read_word, write_file

CRON_DIR = "/etc/cron.d"
CRON_UNITS = ("cron", "cronie", "crond")  # Debian's, and the names elsewhere


def cron_path(cfg: Config) -> str:
    """/etc/cron.d/fabdeploy_<project> (ident: letters, digits and "_" only, as cron wants file names)."""
    return f"{CRON_DIR}/fabdeploy_{ident(cfg.project.name)}"


def script_path(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).bin}/start-at-boot"


def boot_log(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).log}/boot.log"


def cron_entry(cfg: Config, app) -> str:
    """The cron.d file (the deploy user filled in on the host; deploy_to has no `%`, cron's newline)."""
    cmd = f"{q(script_path(cfg))} >> {q(boot_log(cfg))} 2>&1"
    return "\n".join([
        f"# {MANAGED} for {cfg.project.name} ({app.title}, app.manager = \"pidfile\"): starts the app server "
        "at boot. Rewritten by every deploy.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        f"@reboot {USER_PLACEHOLDER} {cmd}",
        "",
    ])


def boot_script(cfg: Config, app) -> str:
    """The script the @reboot line runs: `fab start`'s start phase (steps/control.start), which starts the
    live release's app server the way the pidfile manager does and waits until every worker runs it."""
    from fabdeploy.remote.script import Script
    from fabdeploy.steps import control
    body = Script([control.start(cfg)]).text()
    lay = Layout(cfg.paths.deploy_to)
    return (f"#!/bin/sh\n# {MANAGED} for {cfg.project.name} ({app.title}): started by {cron_path(cfg)} at boot, "
            f"it starts the live release's\n# app server as `fab start` does (without the deploy lock). "
            f"Rewritten by every deploy.\n"
            f'if [ "$(cat {q(lay.config + "/manager")} 2>/dev/null || echo pidfile)" != pidfile ]; then\n'
            f'  echo "another process manager runs this site now: nothing to start"; exit 0\nfi\n' + body)


def cron_enabled_lines() -> list[str]:
    """Set $cron_on when a cron daemon starts at boot: where systemd runs, `systemctl is-enabled`; else its
    unit's link in /etc/systemd/system/*.wants (the way a systemd boot reads it) or, for a cron without a
    systemd unit, its /etc/rc?.d start link."""
    return [
        "cron_on=",
        f"for u in {' '.join(CRON_UNITS)}; do",
        "  if [ -d /run/systemd/system ]; then",
        '    if systemctl is-enabled --quiet "$u.service" 2>/dev/null; then cron_on=1; fi',
        '  elif [ -e "/lib/systemd/system/$u.service" ] || [ -e "/usr/lib/systemd/system/$u.service" ] || '
        '[ -e "/etc/systemd/system/$u.service" ]; then',
        '    for f in /etc/systemd/system/*.wants/"$u.service"; do if [ -e "$f" ]; then cron_on=1; fi; done',
        "  else",
        '    for f in /etc/rc[2345].d/S*"$u"; do if [ -e "$f" ]; then cron_on=1; fi; done',
        "  fi",
        "done",
    ]


def _commands(cfg: Config) -> dict[str, str]:
    """The root commands of the boot cron file: install the staged file under a fixed temp name, rename it
    into place (cron never reads half a file), remove it."""
    staged = f"{Layout(cfg.paths.deploy_to).config}/pidfile.cron"
    tmp, cron = f"{CRON_DIR}/.fabdeploy_{ident(cfg.project.name)}.tmp", cron_path(cfg)
    return {"install": root.install(staged, tmp), "rename": root.root("mv", "-f", tmp, cron), "remove": root.rm(cron)}


def root_lines(cfg: Config) -> list[str]:
    return list(_commands(cfg).values())


def stamp_path(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).config}/boot.stamp"


def digest(cfg: Config, app) -> str:
    """What both files say (the deploy user apart): the stamp's first word."""
    return hashlib.sha256((boot_script(cfg, app) + "\0" + cron_entry(cfg, app)).encode()).hexdigest()[:16]


def install_lines(cfg: Config, app) -> list[str]:
    """Write the boot script and the cron.d file where they differ; warn when no cron daemon is enabled.
    Skipped (about twenty processes and a sudo less per deploy) when the stamp written after they were last
    written says the same digest and deploy user and neither file has changed since (`-nt`)."""
    script = boot_script(cfg, app)
    cron, sp, stamp = cron_path(cfg), script_path(cfg), stamp_path(cfg)
    staged = f"{Layout(cfg.paths.deploy_to).config}/pidfile.cron"
    c = _commands(cfg)
    write = [
        f"mkdir -p {q(Layout(cfg.paths.deploy_to).bin)}",
        *write_file(sp + ".new", script, mode="0755"),
        f"if cmp -s {q(sp + '.new')} {q(sp)}; then rm -f {q(sp + '.new')}; else mv -f {q(sp + '.new')} {q(sp)}; fi",
        f"if [ -e {q(cron)} ] && ! grep -qs {q(MANAGED)} {q(cron)}; then "
        + fail(f"{cron} exists and was not written by fabdeploy: rename the project (project.name) or remove "
               "that file") + "; fi",
        *write_file(staged, cron_entry(cfg, app)),
        f'sed -i "s/{USER_PLACEHOLDER}/$boot_me/" {q(staged)}',
        f"if ! cmp -s {q(staged)} {q(cron)}; then",
        f"  {c['install']} && {c['rename']} || "
        + fail(f"could not write {cron} (sudo: install, mv): the app server would not start after a reboot"),
        "  " + note(f"pidfile: {cron} written (starts {app.name} at boot: {sp})"),
        "fi",
        f"printf '%s\\n' {q(digest(cfg, app))}\" $boot_me\" > {q(stamp)}",
    ]
    return [
        f"boot_me={ME_WORD}",
        read_word("boot_stamp", stamp),
        f'if [ "$boot_stamp" != {q(digest(cfg, app))}" $boot_me" ] || [ ! -f {q(sp)} ] || [ ! -f {q(cron)} ] || '
        f"[ {q(sp)} -nt {q(stamp)} ] || [ {q(cron)} -nt {q(stamp)} ]; then",
        *["  " + ln for ln in write],
        "fi",
        *cron_enabled_lines(),
        '[ -n "$cron_on" ] || ' + warn(f"no cron daemon is enabled on this host (apt-get install cron): {app.name} "
                                       f"will not start after a reboot (the pidfile manager starts it from "
                                       f"{cron})"),
    ]


def remove_lines(cfg: Config) -> list[str]:
    """The cron.d file and the boot script gone (a host switching to a manager of its own)."""
    cron = q(cron_path(cfg))
    return [f"if [ -e {cron} ]; then {_commands(cfg)['remove']}; fi",
            f"rm -f {q(script_path(cfg))} {q(stamp_path(cfg))}"]
