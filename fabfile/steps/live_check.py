""""Already live": the fingerprint of everything a deploy would produce, and the setup lines that
end a deploy early when the live release has it."""
from __future__ import annotations

import hashlib
import json

from fabdeploy.ops.manage import wrapper as manage_wrapper
from fabdeploy import appserver
from fabdeploy.appserver import warm
from fabdeploy.config import Config
from fabdeploy.front.firewall import firewall
from fabdeploy.front.nginx import nginx_site
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, runs_nginx
from fabdeploy.local import render
from fabdeploy.local.secrets import digest as secrets_digest
from fabdeploy.model import Release
from fabdeploy.remote.markers import fact, note
from fabdeploy.remote.shell import ALIVE_FN, AS_APP, CHILDREN_FN, q
from fabdeploy.steps.code import settings_overlay


def fingerprint(cfg: Config, revision: str, requirements: bytes, server: Server | None = None,
                passwords: str = "") -> str:
    """A hash of the code revision and everything fabdeploy renders or installs for it (with placeholder
    release ids): when the live release has the same one, a deploy has nothing to do. fabdeploy's own templates
    count by their text and context (local/render.py `digests`: no jinja2 for a no-op redeploy). `passwords`: the
    digest of the fleet's db host passwords (database/fleet.digest: a rotated one, a real deploy)."""
    probe = Release("RELEASE", revision, "", "", "", "", "VENV")
    app = appserver.of(cfg)
    with render.digests():  # fabdeploy's templates: a digest of the template and its context, not jinja2
        parts = [revision, requirements.decode(errors="replace"), cfg.pip.packages, " ".join(app.requirements(cfg)),
                 nginx_site(cfg, server) if runs_nginx(cfg, server) else "", app.render_config(cfg, probe, server),
                 firewall(cfg, server, "STAGING"),
                 settings_overlay(cfg, "RELEASE"), warm.module_text(cfg) if warm.applies(cfg) else "",
                 sorted(cfg.django.env.items()), cfg.hooks.__dict__, cfg.health.__dict__, cfg.project.python,
                 manage_wrapper(cfg)]
    if cfg.tls.mode == "acme":  # (another server or email: a real deploy, which issues with them)
        from fabdeploy.front.acme import wanted
        parts.append(wanted(cfg))
    if cfg.secret_env:  # (a hash of the [secrets] values: one changed, a real deploy)
        parts.append(secrets_digest(cfg))
    if passwords:
        parts.append(passwords)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]



def serving_check(cfg: Config) -> str:
    """A shell command, true when the live app server serves `$1` (the release `current` points to): its master
    (the pidfile) is alive and every one of its workers runs in that release (not only the link: a switch whose
    reload never happened leaves the old code serving). One shell run as the app user ($ASAPP: reading the
    pidfile and the workers' cwd needs its uid), so one sudo, not one per file and per worker."""
    app = appserver.of(cfg)
    pidfile = app.paths(Layout(cfg.paths.deploy_to)).pidfile
    body = "\n".join([
        ALIVE_FN,
        CHILDREN_FN,
        app.workers_fn(),
        'mpid=$(alive "$2" "$3") || exit 1',
        'n=0; for c in $(workers "$mpid"); do n=$((n + 1)); [ "$(readlink "/proc/$c/cwd" 2>/dev/null)" = "$1" ] || exit 1; '
        'done; [ "$n" -gt 0 ]',
    ])
    return f'{AS_APP} sh -c {q(body)} serving "$cur" {q(pidfile)} {q(app.process)}'


def unchanged_exit(cfg: Config, fp: str, after: list[str]) -> list[str]:
    """Setup lines: when the live release has fingerprint `fp` and its app server is up, run `after` (audit,
    unlock), report `unchanged=<release>` and end the phase successfully."""
    lay = Layout(cfg.paths.deploy_to)
    app = appserver.of(cfg)
    return [
        *app.as_app_lines(cfg),
        f"cur=$(readlink {q(lay.current)} || true)",
        f'if [ -n "$cur" ] && grep -qs {q(chr(34) + "fingerprint" + chr(34) + ": " + chr(34) + fp + chr(34))} '
        f'"$cur/.fabdeploy/release.json" && {serving_check(cfg)}; then',
        *["  " + ln for ln in after],
        "  " + fact("unchanged", '$(basename "$cur")'),
        "  " + note('already live: $(basename "$cur") has this revision and these configs '
                    "(nothing to do; --force deploys anyway)"),
        "  exit 0",
        "fi",
    ]
