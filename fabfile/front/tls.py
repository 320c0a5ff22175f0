"""HTTPS ([tls]): where the certificate and key live on a host, what nginx's site needs to serve them, the
lines that install them (checked before anything changes), and what the Django overlay sets.

`files` mode: local files are read and checked on the deploying machine (fabdeploy.local.tls), carried in the
config phase's script, staged by the deploy user (0600) and installed by root at fixed paths (INSTALL_DIR;
key 0600 root); "host:/path" files stay where they are and are checked on the host (root's openssl). Either
way the site names two paths, so a later mode (ACME) only supplies certbot's live paths.

Every site fabdeploy writes serves /.well-known/acme-challenge/ from one fixed webroot directory on the
plain-HTTP port (also when TLS is on: port 80 redirects everything else to https).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fabdeploy.config import Config, ident
from fabdeploy.config.tls import HOST_PATH, hsts_header
from fabdeploy.hosts.layout import Layout
from fabdeploy.hosts.roles import Server, balanced
from fabdeploy.remote import root
from fabdeploy.remote.markers import fail, note
from fabdeploy.remote.shell import q, write_file

INSTALL_DIR = "/etc/fabdeploy/tls"  # INSTALL_DIR/<project>/fullchain.pem (0644) and privkey.pem (0600), root's
ACME_PATH = "/.well-known/acme-challenge/"
# Mozilla's "intermediate" configuration: TLS 1.2 and 1.3, forward-secret AEAD ciphers only
PROTOCOLS = "TLSv1.2 TLSv1.3"
CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
           "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
           "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")


def enabled(cfg: Config) -> bool:
    return cfg.tls.mode != "off"


def terminates(cfg: Config, server: Server | None) -> bool:
    """Does this host's nginx serve https? With TLS on: a host serving itself, or a balancer (an app host
    behind balancers gets plain HTTP from them, with X-Forwarded-Proto)."""
    if not enabled(cfg):
        return False
    return server is None or not balanced(cfg) or server.role == "lb"


def webroot(cfg: Config) -> str:
    """The ACME HTTP-01 webroot: nginx serves ACME_PATH from webroot/.well-known/acme-challenge/."""
    return f"{Layout(cfg.paths.deploy_to).shared}/acme"


@dataclass(frozen=True)
class Paths:
    certificate: str  # on the host: the chain (leaf first)
    key: str


def installed(cfg: Config) -> Paths:
    """The fixed paths root installs uploaded files at."""
    d = f"{INSTALL_DIR}/{cfg.project.name}"
    return Paths(f"{d}/fullchain.pem", f"{d}/privkey.pem")


def check_chain(cfg: Config) -> str:
    """The chain the health check trusts (its CA) on the host, readable by the deploy user: the uploaded
    chain, or a copy of a host file's (made at each deploy: the original may be root's only)."""
    from fabdeploy.front import acme_fleet
    if acme_fleet.active(cfg):  # (every balancer serves the pair at the installed paths: the chain readable)
        return installed(cfg).certificate
    if cfg.tls.certificate.startswith(HOST_PATH) or cfg.tls.mode == "acme":
        return f"{INSTALL_DIR}/{cfg.project.name}/check-chain.pem"
    return installed(cfg).certificate


def staged(cfg: Config) -> Paths:
    """Where the deploy user stages uploaded files for root's install (fixed: the sudoers drop-in lists them)."""
    c = Layout(cfg.paths.deploy_to).config
    return Paths(f"{c}/tls-fullchain.pem", f"{c}/tls-privkey.pem")


def host_paths(cfg: Config) -> Paths:
    """The certificate and key paths nginx reads on the host (acme: certbot's live files)."""
    from fabdeploy.front import acme, acme_fleet
    if acme_fleet.active(cfg):  # (several balancers: the issuer's pair, at the same paths on each)
        return installed(cfg)
    if cfg.tls.mode == "acme":
        return Paths(*acme.live(cfg))
    if cfg.tls.certificate.startswith(HOST_PATH):
        return Paths(cfg.tls.certificate[len(HOST_PATH):], cfg.tls.key[len(HOST_PATH):])
    return installed(cfg)


def port_suffix(cfg: Config) -> str:
    return "" if cfg.tls.port == 443 else f":{cfg.tls.port}"


def https_listen(cfg: Config) -> str:
    """nginx's https listen: nginx.listen's address (if any) with tls.port."""
    listen = str(cfg.nginx.listen)
    addr = listen.rpartition(":")[0] if ":" in listen else ""
    return f"{addr}:{cfg.tls.port}" if addr else str(cfg.tls.port)


def fingerprint(cfg: Config) -> str:
    """A digest of the uploaded chain and key, written into the site: new files change the site, so nginx
    reloads with them ("" for host files: whoever renews them reloads nginx)."""
    pair = cfg.tls_pair
    return hashlib.sha256((pair.chain + pair.key).encode()).hexdigest()[:16] if pair else ""


def site_context(cfg: Config, server: Server | None, lb: bool = False) -> dict:
    """The nginx templates' TLS words: `acme_webroot` always; `tls` (None when this host serves plain HTTP);
    `forwarded_proto`, the X-Forwarded-Proto the app gets; `trusted_proxies` (an app host behind balancers
    with its own nginx: the balancers whose X-Forwarded-Proto it passes on) and `proto_map`."""
    from fabdeploy.front.acme_fleet import RELAY_HEADER, relay_target
    ctx = dict(acme_webroot=webroot(cfg), acme_path=ACME_PATH, tls=None, forwarded_proto="$scheme",
               acme_relay=relay_target(cfg) if lb else "", relay_header=RELAY_HEADER,
               trusted_proxies=[], proto_map=f"fabdeploy_{ident(cfg.project.name)}_proto", tls_on=enabled(cfg))
    if lb and enabled(cfg) or terminates(cfg, server):
        p = host_paths(cfg)
        ctx["tls"] = dict(listen=https_listen(cfg), certificate=p.certificate, key=p.key, protocols=PROTOCOLS,
                          ciphers=CIPHERS, hsts=hsts_header(cfg.data["tls"]), port_suffix=port_suffix(cfg),
                          session_cache=f"fabdeploy_{ident(cfg.project.name)}", fingerprint=fingerprint(cfg))
    elif enabled(cfg) and balanced(cfg):
        from fabdeploy.front.firewall import lb_sources
        v4, v6, _ = lb_sources(cfg)
        ctx["trusted_proxies"] = [*v4, *v6]
        ctx["forwarded_proto"] = "$" + ctx["proto_map"]
    return ctx


def django_context(cfg: Config) -> dict:
    """What the settings overlay sets when TLS is on: {"origins": CSRF_TRUSTED_ORIGINS} (https://<each
    plain or wildcard server_name>), or {} when off."""
    if not enabled(cfg):
        return {}
    origins = []
    for n in cfg.server_names:
        if n in ("_", "") or n.startswith("~") or n.startswith(".") or ("*" in n and not n.startswith("*.")):
            continue
        origins.append(f"https://{n}{port_suffix(cfg)}")
    return {"origins": origins, "hsts": cfg.tls.hsts, "hsts_include_subdomains": cfg.tls.hsts_include_subdomains,
            "hsts_preload": cfg.tls.hsts_preload}


def root_lines(cfg: Config) -> list[str]:
    """Every root command of install_lines and (acme) front/acme.issue_lines (for the sudoers drop-in)."""
    if cfg.tls.mode == "acme":
        from fabdeploy.front import acme, acme_fleet
        return acme.root_lines(cfg) + (acme_fleet.root_lines(cfg) if acme_fleet.active(cfg) else [])
    if cfg.tls.mode != "files":
        return []
    if cfg.tls.certificate.startswith(HOST_PATH):
        return [*_host_checks(cfg), _copy_chain(cfg)]
    s, i = staged(cfg), installed(cfg)
    backup, restore = _backup_restore(cfg)
    return [root.install(s.certificate, i.certificate, "0644", parents=True),
            root.install(s.key, i.key, "0600", parents=True), *backup, *restore]


def _host_checks(cfg: Config) -> tuple[str, str]:
    p = host_paths(cfg)
    return (root.root("openssl", "x509", "-noout", "-pubkey", "-in", p.certificate),
            root.root("openssl", "pkey", "-pubout", "-in", p.key))


def _copy_chain(cfg: Config) -> str:
    return root.install(host_paths(cfg).certificate, check_chain(cfg), "0644", parents=True)


def install_lines(cfg: Config, server: Server | None, staging: str, lb: bool = False) -> list[str]:
    """Before the site is installed (whose `nginx -t` then reads these files): the ACME webroot; in files
    mode, the certificate and key checked (host files: by root's openssl) and installed (uploaded ones: staged
    0600 by the deploy user, installed by root, the staged key removed; the files they replace kept for
    restore_lines: `staging`/tls-changed says it happened). A failed check changes nothing."""
    wr = webroot(cfg)
    lines = [f"mkdir -p {q(wr + ACME_PATH)} && chmod 0755 {q(wr)} {q(wr + '/.well-known')} {q(wr + ACME_PATH)}"]
    if cfg.tls.mode != "files" or not (lb or terminates(cfg, server)):
        return lines
    if cfg.tls_pair is None:  # files already on the host
        p = host_paths(cfg)
        cert_cmd, key_cmd = _host_checks(cfg)
        return lines + [
            f"cert_pub=$({cert_cmd} 2>/dev/null) || "
            + fail(f"tls.certificate {p.certificate} on the host is missing or not a PEM certificate"),
            f"key_pub=$({key_cmd} 2>/dev/null) || "
            + fail(f"tls.key {p.key} on the host is missing or not an unencrypted PEM private key"),
            '[ "$cert_pub" = "$key_pub" ] || '
            + fail(f"tls.key {p.key} does not match tls.certificate {p.certificate} on the host: nothing was changed"),
            f"{_copy_chain(cfg)} || " + fail(f"could not copy {p.certificate} to {check_chain(cfg)} (the health check's CA)"),
            note(f"TLS certificate {p.certificate} and its key checked"),
        ]
    s, i, fp = staged(cfg), installed(cfg), fingerprint(cfg)
    mark = _marker(cfg)
    flag = f"[ -f {q(i.certificate)} ] && [ -f {q(i.key)} ]"
    backup, _ = _backup_restore(cfg)
    return lines + [
        f'if [ "$(cat {q(mark)} 2>/dev/null)" = {q(fp)} ] && {flag}; then',
        "  " + note(f"TLS certificate unchanged at {i.certificate}"),
        "else",
        *write_file(s.certificate, cfg.tls_pair.chain, mode="0600"),
        *write_file(s.key, cfg.tls_pair.key, mode="0600"),
        # (the files a revert puts back: the site of the release before uses them)
        f"  mkdir -p {q(staging)}",
        f"  if {flag}; then {{ {' && '.join(backup)}; }} || "
        + fail("could not keep a copy of the TLS certificate and key in use") + f"; touch {q(staging + '/tls-prev')}; fi",
        f"  {{ {root.install(s.certificate, i.certificate, '0644', parents=True)} && "
        f"{root.install(s.key, i.key, '0600', parents=True)}; }} || "
        + fail(f"could not install the TLS certificate and key at {INSTALL_DIR}/{cfg.project.name}"),
        f"  rm -f {q(s.key)} {q(s.certificate)}",
        f"  printf '%s\\n' {q(fp)} > {q(mark)}",
        f"  touch {q(staging + '/tls-changed')}",
        "  " + note(f"TLS certificate installed at {i.certificate}"),
        "fi",
    ]


def acme_lines(cfg: Config, server: Server | None, site_for, facts, staging: str, lb: bool = False) -> list[str]:
    """mode = "acme" on a host that terminates TLS: front/acme.issue_lines (before the site install)."""
    if cfg.tls.mode != "acme" or not (lb or terminates(cfg, server)):
        return []
    from fabdeploy.front import acme
    return acme.issue_lines(cfg, site_for, facts, staging)


def acme_after_lines(cfg: Config, server: Server | None, staging: str, lb: bool = False) -> list[str]:
    from fabdeploy.front.acme_fleet import acme_configured
    if not acme_configured(cfg) or not (lb or terminates(cfg, server)):
        return []
    from fabdeploy.front import acme
    return acme.after_site_lines(staging)


def _marker(cfg: Config) -> str:
    """The deploy user's note of the uploaded files now installed (their fingerprint)."""
    return f"{Layout(cfg.paths.deploy_to).config}/tls-installed"


def _backup_restore(cfg: Config) -> tuple[list[str], list[str]]:
    i = installed(cfg)
    pairs = [(i.certificate, i.certificate + ".prev"), (i.key, i.key + ".prev")]
    return ([root.root("cp", "-p", a, b) for a, b in pairs], [root.root("cp", "-p", b, a) for a, b in pairs])


def restore_lines(cfg: Config, staging: str) -> list[str]:
    """A deploy that installed new uploaded files and is reverted or abandoned: the files before it back (the
    site put back uses them); nothing otherwise."""
    if cfg.tls.mode != "files" or cfg.tls_pair is None:
        return []
    _, restore = _backup_restore(cfg)
    return [f"if [ -f {q(staging + '/tls-changed')} ]; then",
            f"  if [ -f {q(staging + '/tls-prev')} ]; then {' && '.join(restore)} || true; fi",
            f"  rm -f {q(_marker(cfg))}",
            "fi"]
