"""[tls] mode = "acme": certbot issues the site's certificate on the host that terminates TLS, through the
HTTP-01 webroot every fabdeploy site serves on port 80 (front/tls.webroot), and renews it from a systemd
timer (where systemd runs) or a cron.d entry; nginx serves certbot's live files (the https block exactly as
in files mode).

The config phase (issue_lines, before the site is installed):
- root's scripts under SCRIPT_DIR/<project>: `deploy-hook` (certbot runs it after each issue or renewal:
  the health check's copy of the chain refreshed, `nginx -t`, `nginx -s reload`) and `renew` (`certbot
  renew` for this certificate: what the timer/cron runs; extra arguments are certbot's), written only
  when they differ; the schedule likewise.
- The certificate is issued when it is missing or was issued for other names/server/email (the deploy
  user's note `shared/config/acme-issued`): first the site must answer the challenge on port 80, so a
  first issue installs the site without its https block (checked by `nginx -t`), starts or reloads nginx,
  runs `certbot certonly --webroot` (`--cert-name <project> --expand --keep-until-expiring`), then the
  normal site install puts the https site in place. Changed names: the new site (still the old
  certificate's files) goes live first, then certbot expands the certificate. Otherwise nothing runs:
  certbot keeps and renews it.
"""
from __future__ import annotations

from fabdeploy.config import Config, ident
from fabdeploy.hosts.layout import Layout
from fabdeploy.model import Facts
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, note
from fabdeploy.remote.shell import q, write_file

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LIVE_DIR = "/etc/letsencrypt/live"
SCRIPT_DIR = "/etc/fabdeploy/acme"
UNIT_DIR = "/etc/systemd/system"
CRON_DIR = "/etc/cron.d"
MANAGED = "# Managed by fabdeploy"


def server(cfg: Config) -> str:
    return cfg.tls.server or LETS_ENCRYPT


def cert_name(cfg: Config) -> str:
    return cfg.project.name


def live(cfg: Config) -> tuple[str, str]:
    """(fullchain, privkey): certbot's live paths nginx reads."""
    d = f"{LIVE_DIR}/{cert_name(cfg)}"
    return f"{d}/fullchain.pem", f"{d}/privkey.pem"


def scripts(cfg: Config) -> dict[str, str]:
    d = f"{SCRIPT_DIR}/{cfg.project.name}"
    return {"deploy-hook": f"{d}/deploy-hook", "renew": f"{d}/renew"}


def unit(cfg: Config) -> str:
    """The systemd units' name (without .service/.timer)."""
    return f"fabdeploy-certbot-{cfg.project.name}"


def cron_file(cfg: Config) -> str:
    return f"{CRON_DIR}/fabdeploy_{ident(cfg.project.name)}_certbot"


def _staged(cfg: Config, what: str) -> str:
    return f"{Layout(cfg.paths.deploy_to).config}/acme-{what}"


def _marker(cfg: Config) -> str:
    return f"{Layout(cfg.paths.deploy_to).config}/acme-issued"


def wanted(cfg: Config) -> str:
    """What the certificate was issued for (the marker's text): names and email, then the server."""
    return " ".join([*cfg.server_names, cfg.tls.email or "-"]) + "\n" + server(cfg)


def issue_argv(cfg: Config, force: bool = False) -> list[str]:
    """certbot certonly for the site's names through its webroot (args fixed by the config: sudoers lists them).
    `force`: a certificate of another CA (tls.server changed) is replaced now, not when it is due."""
    from fabdeploy.front.tls import webroot
    who = ["-m", cfg.tls.email] if cfg.tls.email else ["--register-unsafely-without-email"]
    names = [w for n in cfg.server_names for w in ("-d", n)]
    return ["certonly", "--webroot", "-w", webroot(cfg), "--cert-name", cert_name(cfg), *names,
            "--non-interactive", "--agree-tos", *who, "--server", server(cfg), "--expand", "--keep-until-expiring",
            "--deploy-hook", scripts(cfg)["deploy-hook"], *(["--force-renewal"] if force else [])]


def issue_command(cfg: Config, force: bool = False) -> str:
    """The root line that issues (REQUESTS_CA_BUNDLE through env when tls.ca_bundle names one)."""
    argv = issue_argv(cfg, force)
    if cfg.tls.ca_bundle:
        return root.root("env", f"REQUESTS_CA_BUNDLE={cfg.tls.ca_bundle}", root.BINARIES["certbot"], *argv)
    return root.root("certbot", *argv)


def have_command(cfg: Config) -> str:
    """Root's openssl reads the live certificate (status 0: it exists)."""
    return root.root("openssl", "x509", "-noout", "-in", live(cfg)[0])


def copy_chain_command(cfg: Config) -> str:
    from fabdeploy.front.tls import check_chain
    return root.install(live(cfg)[0], check_chain(cfg), "0644", parents=True)


def deploy_hook(cfg: Config) -> str:
    """certbot's --deploy-hook (root, after an issue or a renewal): the health check's copy of the chain, and
    nginx reloaded when its config is valid and it runs."""
    from fabdeploy.front.acme_fleet import active
    from fabdeploy.front.tls import check_chain, installed
    fleet = active(cfg)  # (several balancers: the pair every balancer serves; the others get it at a deploy)
    return "\n".join([
        "#!/bin/sh", f"{MANAGED} for {cfg.project.name}: certbot runs it after issuing or renewing the certificate "
        f"{cert_name(cfg)}.", "set -e",
        f"{root.BINARIES['install']} -D -m 0644 {q(live(cfg)[0])} {q(check_chain(cfg))}",
        *([f"{root.BINARIES['install']} -D -m 0600 {q(live(cfg)[1])} {q(installed(cfg).key)}"] if fleet else []),
        f"{root.BINARIES['nginx']} -t -q",
        f"if [ -d /run/systemd/system ] && {root.BINARIES['systemctl']} is-active --quiet nginx; then "
        f"{root.BINARIES['systemctl']} reload nginx; else {root.BINARIES['nginx']} -s reload 2>/dev/null || true; fi",
        ""])


def renew_script(cfg: Config) -> str:
    """What the timer/cron runs: `certbot renew` of this certificate with the deploy hook (arguments passed on:
    `renew --force-renewal` renews now)."""
    env = f"export REQUESTS_CA_BUNDLE={q(cfg.tls.ca_bundle)}\n" if cfg.tls.ca_bundle else ""
    return (f"#!/bin/sh\n{MANAGED} for {cfg.project.name}: renews the ACME certificate {cert_name(cfg)} when due "
            f"(run by {unit(cfg)}.timer or {cron_file(cfg)}).\n{env}"
            f"exec {root.BINARIES['certbot']} renew --cert-name {q(cert_name(cfg))} --non-interactive "
            f"--deploy-hook {q(scripts(cfg)['deploy-hook'])} \"$@\"\n")


def timer_units(cfg: Config) -> dict[str, str]:
    """The systemd service and timer (twice a day, randomized, catching up after downtime)."""
    r = scripts(cfg)["renew"]
    return {
        "service": f"{MANAGED} for {cfg.project.name}\n[Unit]\nDescription=certbot renew for {cert_name(cfg)} "
                   f"(fabdeploy)\n\n[Service]\nType=oneshot\nExecStart={r} -q\n",
        "timer": f"{MANAGED} for {cfg.project.name}\n[Unit]\nDescription=certbot renew for {cert_name(cfg)} twice "
                 "a day\n\n[Timer]\nOnCalendar=*-*-* 00,12:00:00\nRandomizedDelaySec=43200\nPersistent=true\n\n"
                 "[Install]\nWantedBy=timers.target\n",
    }


def cron_entry(cfg: Config) -> str:
    return (f"{MANAGED} for {cfg.project.name}: renews its ACME certificate when due.\nSHELL=/bin/sh\n"
            f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"17 3,15 * * * root {scripts(cfg)['renew']} -q\n")


def _files(cfg: Config) -> dict[str, tuple[str, str, str]]:
    """name -> (target, mode, content) of every file installed (the schedule's chosen on the host)."""
    s, u = scripts(cfg), timer_units(cfg)
    return {"deploy-hook": (s["deploy-hook"], "0755", deploy_hook(cfg)), "renew": (s["renew"], "0755", renew_script(cfg)),
            "service": (f"{UNIT_DIR}/{unit(cfg)}.service", "0644", u["service"]),
            "timer": (f"{UNIT_DIR}/{unit(cfg)}.timer", "0644", u["timer"]),
            "cron": (cron_file(cfg), "0644", cron_entry(cfg))}


def _install(cfg: Config, name: str) -> str:
    """(one line) root installs the staged file; the cron.d file through a temp name cron ignores (a dot)
    renamed into place, so cron never reads half a file."""
    target, mode, _ = _files(cfg)[name]
    if name != "cron":
        return root.install(_staged(cfg, name), target, mode, parents=True)
    tmp = f"{CRON_DIR}/.fabdeploy_{ident(cfg.project.name)}_certbot.tmp"
    return f"{root.install(_staged(cfg, name), tmp, mode)} && {root.root('mv', '-f', tmp, target)}"


def _systemctl(cfg: Config) -> tuple[str, str]:
    return root.root("systemctl", "daemon-reload"), root.root("systemctl", "enable", "--now", f"{unit(cfg)}.timer")


def root_lines(cfg: Config) -> list[str]:
    """Every root command of issue_lines (for the sudoers drop-in)."""
    return [*[c for n in _files(cfg) for c in _install(cfg, n).split(" && ")], *_systemctl(cfg), root.rm(cron_file(cfg)), have_command(cfg),
            issue_command(cfg), issue_command(cfg, force=True), copy_chain_command(cfg)]


def _put(cfg: Config, name: str, changed: str = "") -> list[str]:
    """Write the file where it differs (staged by the deploy user, installed by root)."""
    target, _, content = _files(cfg)[name]
    return [*write_file(_staged(cfg, name), content),
            f"if ! cmp -s {q(_staged(cfg, name))} {q(target)}; then",
            f"  {_install(cfg, name)} || " + fail(f"could not install {target}"),
            *([f"  {changed}=1"] if changed else []),
            "  " + note(f"ACME: {target} written"), "fi",
            f"rm -f {q(_staged(cfg, name))}"]


def renewal_lines(cfg: Config) -> list[str]:
    """The hook, the renew script and the schedule: a systemd timer where systemd runs, else a cron.d entry."""
    reload_, enable = _systemctl(cfg)
    return [*_put(cfg, "deploy-hook"), *_put(cfg, "renew"),
            "if [ -d /run/systemd/system ]; then",
            "  units=", *["  " + ln for n in ("service", "timer") for ln in _put(cfg, n, "units")],
            f'  if [ -n "$units" ]; then {reload_} && {enable} || ' + fail(f"could not enable {unit(cfg)}.timer") + "; fi",
            f"  if [ -e {q(cron_file(cfg))} ]; then {root.rm(cron_file(cfg))}; fi",
            "else", *["  " + ln for ln in _put(cfg, "cron")], "fi"]


def http_only(cfg: Config) -> Config:
    """The config as if TLS were off: the site that answers the challenge before a certificate exists (with
    several balancers, still relaying tokens to the issuer: front/acme_fleet.py)."""
    from fabdeploy.front.acme_fleet import derived
    return derived(cfg, "off")


def issue_lines(cfg: Config, site_for, facts: Facts, staging: str) -> list[str]:
    """Before the site install: renewal installed; the certificate issued when missing or for other names
    (see the module's docstring). `site_for(cfg)` renders this host's site for a config."""
    from fabdeploy.front import acme_fleet
    from fabdeploy.front.nginx import nginx_restart_lines, site_install
    pre = f"{staging}/acme"
    names = ", ".join(cfg.server_names)
    return [
        *renewal_lines(cfg),
        f"have=; if {have_command(cfg)} 2>/dev/null; then have=1; fi",
        # (several balancers: the pair every balancer serves, before a site that names it is checked)
        *([f'if [ -n "$have" ]; then {acme_fleet.copy_lines(cfg)}; fi'] if acme_fleet.active(cfg) else []),
        f'if [ -n "$have" ] && [ "$(cat {q(_marker(cfg))} 2>/dev/null)" = {q(wanted(cfg))} ]; then',
        "  " + note(f"ACME certificate {cert_name(cfg)} kept (certbot renews it)"),
        'elif [ -z "$have" ]; then',  # (first issue: the challenge needs the site on port 80 first)
        *["  " + ln for ln in site_install(cfg, site_for(http_only(cfg)), facts, pre)],
        "fi",
        'if [ -z "$have" ] || [ "$(cat {m} 2>/dev/null)" != {w} ]; then'.format(m=q(_marker(cfg)), w=q(wanted(cfg))),
        '  if [ -n "$have" ]; then',  # (other names: the new site, with the old certificate's files, first)
        *["    " + ln for ln in site_install(cfg, site_for(cfg), facts, pre)],
        "  fi",
        *["  " + ln for ln in nginx_restart_lines(facts, pre + "/nginx-changed")],
        # (the site before this deploy, for a revert or an abandoned deploy: see after_site_lines)
        f"  for f in site.prev site.unlinked nginx-changed; do if [ -f {q(pre)}/$f ]; then cp -p {q(pre)}/$f "
        f"{q(staging)}/$f; fi; done",
        # (another CA than the one that issued it: replaced now; certbot would keep it until due)
        f"  prev_server=$(sed -n 2p {q(_marker(cfg))} 2>/dev/null || true)",
        f'  if [ -n "$have" ] && [ -n "$prev_server" ] && [ "$prev_server" != {q(server(cfg))} ]; then '
        f"issue() {{ {issue_command(cfg, force=True)}; }}; else issue() {{ {issue_command(cfg)}; }}; fi",
        "  if ! out=$(issue 2>&1); then",
        # (one line: the CA's "Detail:" of the failed challenge, else certbot's last line)
        "    detail=$(printf '%s\\n' \"$out\" | sed -n 's/^ *Detail: *//p' | head -n 1)",
        "    [ -n \"$detail\" ] || detail=$(printf '%s\\n' \"$out\" | grep -v '^ *$' | tail -n 1)",
        "    " + fail(f"certbot could not get a certificate for {names} from {server(cfg)} (the CA fetches "
                     "http://<name>/.well-known/acme-challenge/ from this host; /var/log/letsencrypt/letsencrypt.log): ",
                     then='"$detail"'),
        "  fi",
        f"  printf '%s\\n' {q(wanted(cfg))} > {q(_marker(cfg))}",
        f"  touch {q(staging + '/nginx-changed')}",
        "  " + note(f"ACME certificate {cert_name(cfg)} issued for {names} by {server(cfg)}"),
        "fi",
        f"{copy_chain_command(cfg)} || " + fail("could not copy the certificate chain for the health check"),
        *(acme_fleet.issuer_lines(cfg) if acme_fleet.active(cfg) else []),
    ]


def after_site_lines(staging: str) -> list[str]:
    """After the site install: the site before this deploy stays what a revert puts back (the install just
    saved the pre-issue site)."""
    pre = f"{staging}/acme"
    return [f"if [ -f {q(pre + '/site.prev')} ]; then cp -p {q(pre + '/site.prev')} {q(staging + '/site.prev')}; "
            f"elif [ -f {q(pre + '/nginx-changed')} ]; then rm -f {q(staging + '/site.prev')}; fi",
            f"if [ -f {q(pre + '/site.unlinked')} ]; then touch {q(staging + '/site.unlinked')}; fi"]
