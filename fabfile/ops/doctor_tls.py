"""`fab doctor`'s TLS rules: what the installed nginx site's ssl_certificate / ssl_certificate_key really are
on the host (read by openssl in ops/doctor_facts.py, as the SSH user or root's; what sudo refused is left out): missing or not PEM,
a key of another certificate, a certificate expired or expiring (under cert_expiry.WARN_DAYS days), a
server_name the certificate does not cover. Pure functions of (facts, params), like ops/doctor_rules.py."""
from __future__ import annotations

import time

from fabdeploy.ops.cert_expiry import WARN_DAYS
from fabdeploy.ops.doctor_rules import Finding


def covers(patterns: list[str], name: str) -> bool:
    """Does a certificate for `patterns` (its DNS names; "*.x" one label deep) cover `name`?"""
    name = name.lower().rstrip(".")
    for p in (p.lower().rstrip(".") for p in patterns):
        if p == name or (p.startswith("*.") and "." in name and name.split(".", 1)[1] == p[2:]):
            return True
    return False


def _checkable(name: str) -> bool:
    """A server_name a certificate is for (not "_", a regex or a wildcard of nginx's own syntax)."""
    return bool(name) and name != "_" and not name.startswith(("~", ".")) and "*" not in name.lstrip("*.")


def _renew_fix(P: dict) -> str:
    return P.get("tls_renew_fix") or "install a new certificate ([tls] certificate/key) and `fab deploy`"


def files(F: dict, P: dict) -> list[Finding]:
    """The site's certificate and key: present, PEM, one pair."""
    t = F.get("tls")
    if not t:
        return []
    out = []
    c, k = t["certificate"], t["key"]
    for f, what, kind in ((c, "ssl_certificate", "PEM certificate"), (k, "ssl_certificate_key", "PEM private key")):
        if f.get("exists") is None or (f["exists"] and not f.get("read")):  # (sudo refused: unknown)
            continue
        if not f["exists"]:
            out.append(Finding("tls files", f"the nginx site's {what} {f['path'] or '(none)'} is missing: nginx "
                               "cannot load the site (`nginx -t` fails, a reload keeps the old config)",
                               "`fab deploy` installs it ([tls] mode = \"files\" uploads it, \"acme\" issues it)"))
        elif not f.get("pubkey"):
            out.append(Finding("tls files", f"the nginx site's {what} {f['path']} is not a readable {kind}",
                               "put the right file there (or `fab deploy` with [tls] certificate/key)"))
    if c.get("pubkey") and k.get("pubkey") and c["pubkey"] != k["pubkey"]:
        out.append(Finding("tls key", f"{k['path']} is not the key of {c['path']} (nginx: \"key values mismatch\"; "
                           "https does not start)", "put the certificate's own key there, or `fab deploy` "
                           "(files mode checks the pair before it installs it)"))
    return out


def expiry(F: dict, P: dict) -> list[Finding]:
    """The certificate expired, or expires in under WARN_DAYS days."""
    t = F.get("tls") or {}
    end = (t.get("certificate") or {}).get("not_after")
    if end is None:
        return []
    now = F.get("time") or time.time()
    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    path = t["certificate"]["path"]
    if end <= now:
        return [Finding("tls expiry", f"the certificate {path} expired on {day}: browsers refuse the site",
                        _renew_fix(P))]
    left = (end - now) / 86400
    if left < WARN_DAYS:
        return [Finding("tls expiry", f"the certificate {path} expires on {day} ({left:.0f} days left, under "
                        f"{WARN_DAYS})", _renew_fix(P))]
    return []


def names(F: dict, P: dict) -> list[Finding]:
    """A server_name of the site that the certificate does not cover."""
    t = F.get("tls") or {}
    cert = t.get("certificate") or {}
    if "names" not in cert:
        return []
    missing = [n for n in t.get("names", []) if _checkable(n) and not covers(cert["names"], n)]
    if not missing:
        return []
    return [Finding("tls name", f"the certificate {cert['path']} (for {', '.join(cert['names']) or 'no DNS name'}) "
                    f"does not cover {', '.join(missing)}: browsers refuse https for "
                    f"{'it' if len(missing) == 1 else 'them'}",
                    P.get("tls_names_fix") or "a certificate for every nginx.server_name, then `fab deploy`")]


RULES = (files, expiry, names)
