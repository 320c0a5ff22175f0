"""[tls] mode = "acme" with several lb hosts: issued once, the same certificate on every balancer.

- The ISSUER is the first host of roles.lb: certbot runs there only (front/acme.py: issue, renewal timer,
  deploy hook). Every balancer serves the pair from INSTALL_DIR/<project> (front/tls.installed): on the
  issuer root copies certbot's live files there (each deploy, and its deploy hook after a renewal).
- HTTP-01 reaches whichever balancer the name points at: every balancer's port-80 ACME location answers
  from its own webroot and relays a token it does not have to the issuer (`try_files` to a named location
  that proxies to <issuer address>:<nginx.listen port> once: a relayed request carries RELAY_HEADER and is
  never relayed again).
- Order of a deploy (ops/deploy.py): the other balancers put a plain-HTTP site with the relay live when they
  have no certificate yet (the `relay` invocation); then the issuer prepares (issues or keeps; its config
  phase reports the pair as facts, base64, the key read by root); then the others prepare with that pair
  (held in memory only, masked in every output) installed as in files mode (staged 0600, root's 0600).
- Renewal runs on the issuer only; the others get the renewed pair at the next `fab deploy` (README).
"""
from __future__ import annotations

import base64
import copy

from fabdeploy.config import Config
from fabdeploy.errors import FabdeployError
from fabdeploy.hosts.roles import Server, servers
from fabdeploy.remote import root
from fabdeploy.remote.markers import fact, fail, note
from fabdeploy.remote.shell import q

ORIGIN = "acme_origin"  # (internal key of a derived config's [tls]: the mode the user configured)
RELAY_HEADER = "X-Fabdeploy-Acme-Relay"
FACTS = ("acme_chain", "acme_key")


def _lbs(cfg: Config) -> list[Server]:
    return [s for s in servers(cfg) if s.role == "lb"]


def acme_configured(cfg: Config) -> bool:
    return cfg.data["tls"].get(ORIGIN, cfg.tls.mode) == "acme"


def active(cfg: Config) -> bool:
    """ACME with more than one balancer (also for the derived configs below)."""
    return acme_configured(cfg) and len(_lbs(cfg)) > 1


def issuer(cfg: Config) -> Server | None:
    """The balancer that runs certbot (the first of roles.lb), when active."""
    return _lbs(cfg)[0] if active(cfg) else None


def is_issuer(cfg: Config, server: Server | None) -> bool:
    i = issuer(cfg)
    return i is not None and server is not None and server.target == i.target


def relay_target(cfg: Config) -> str:
    """Where a balancer relays challenge tokens it does not have: the issuer's address and port 80 ("" none)."""
    i = issuer(cfg)
    if i is None:
        return ""
    addr = i.upstream_address.strip("[]")
    port = str(cfg.nginx.listen).rpartition(":")[2] or "80"
    return f"{f'[{addr}]' if ':' in addr else addr}:{port}"


def derived(cfg: Config, mode: str, pair=None) -> Config:
    """The config as `mode` ("off": the plain-HTTP site before a certificate exists; "files": another
    balancer installing the issuer's pair) that still knows it is ACME in a fleet (the relay, the paths)."""
    out = copy.copy(cfg)
    out.data = {**cfg.data, "tls": {**cfg.data["tls"], "mode": mode, ORIGIN: cfg.data["tls"].get(ORIGIN, cfg.tls.mode)}}
    out.tls_pair = pair
    return out


def issuer_lines(cfg: Config) -> list[str]:
    """(on the issuer, after certbot) certbot's live pair copied to the path every balancer serves, and
    reported (base64) for the other balancers."""
    from fabdeploy.front.tls import installed
    return [copy_lines(cfg),
            fact(FACTS[0], f"$(base64 -w0 {q(installed(cfg).certificate)})"),
            fact(FACTS[1], f"$({read_key_command(cfg)})")]


def copy_lines(cfg: Config) -> str:
    """(one line, the issuer) certbot's live chain and key installed where every balancer's site names them."""
    from fabdeploy.front.acme import copy_chain_command
    return (f"{{ {copy_chain_command(cfg)} && {copy_key_command(cfg)}; }} || "
            + fail("could not copy certbot's certificate and key to /etc/fabdeploy/tls (served by every balancer)"))


def copy_key_command(cfg: Config) -> str:
    from fabdeploy.front import acme
    from fabdeploy.front.tls import installed
    return root.install(acme.live(cfg)[1], installed(cfg).key, "0600", parents=True)


def read_key_command(cfg: Config) -> str:
    from fabdeploy.front.tls import installed
    return root.root("base64", "-w0", installed(cfg).key)


def root_lines(cfg: Config) -> list[str]:
    """The root commands of this module and of the other balancers' install (files mode's, for the sudoers
    drop-in)."""
    from fabdeploy.front import tls
    return [copy_key_command(cfg), read_key_command(cfg), *tls.root_lines(derived(cfg, "files"))]


def pair_of(facts: dict, host: str):
    """The issuer's pair from its facts (a LocalPair, checked: PEM, the key the certificate's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from fabdeploy.local.tls import LocalPair
    from fabdeploy.output import add_secrets
    add_secrets([facts.get(FACTS[1], "")])
    try:
        chain = base64.b64decode(facts.get(FACTS[0], ""), validate=True).decode("ascii")
        key = base64.b64decode(facts.get(FACTS[1], ""), validate=True).decode("ascii")
        add_secrets([key.strip()])
        certs = x509.load_pem_x509_certificates(chain.encode())
        private = serialization.load_pem_private_key(key.encode(), password=None)
    except ValueError:
        raise FabdeployError(f"{host}: the ACME certificate and key the issuing balancer reported are not PEM "
                             "(its config phase read them from /etc/fabdeploy/tls)") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(*der) != private.public_key().public_bytes(*der):
        raise FabdeployError(f"{host}: the ACME key on the issuing balancer does not match its certificate")
    return LocalPair(chain, key, None, None)


def relay_lines(cfg: Config, site_for, facts, staging: str) -> list[str]:
    """(another balancer, before the issuer prepares) No certificate here yet: the plain-HTTP site with the
    relay goes live (checked, nginx started or reloaded), so a challenge that reaches this balancer is
    answered by the issuer. The site before the deploy stays what a revert puts back (acme.after_site_lines)."""
    from fabdeploy.front.nginx import nginx_restart_lines, site_install
    from fabdeploy.front.tls import installed
    pre = f"{staging}/acme"
    i = installed(cfg)
    return [f"if [ ! -f {q(i.certificate)} ] || [ ! -f {q(i.key)} ]; then",
            *["  " + ln for ln in site_install(cfg, site_for(derived(cfg, "off")), facts, pre)],
            *["  " + ln for ln in nginx_restart_lines(facts, pre + "/nginx-changed")],
            f"  for f in site.prev site.unlinked nginx-changed; do if [ -f {q(pre)}/$f ]; then cp -p {q(pre)}/$f "
            f"{q(staging)}/$f; fi; done",
            "  " + note(f"ACME: no certificate here yet; challenges are relayed to {relay_target(cfg)} (the issuer)"),
            "else",
            "  " + note("ACME: the certificate is installed here; the deploy copies the issuer's"),
            "fi"]
